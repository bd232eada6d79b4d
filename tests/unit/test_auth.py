"""The optional API key: where it comes from, how it is presented, and the middleware's answers."""

from __future__ import annotations

import base64

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve_app.api.auth import APIKeyError, load_api_key, presented_key
from serve_app.api.middleware import APIKeyMiddleware
from serve_app.config import SecurityConfig

KEY = "s3cret-key"


def test_key_from_environment_file_or_none(tmp_path, monkeypatch):
    monkeypatch.delenv("OCR_API_KEY", raising=False)
    assert load_api_key(SecurityConfig()) is None
    monkeypatch.setenv("OCR_API_KEY", f"  {KEY}\n")
    assert load_api_key(SecurityConfig()) == KEY
    assert load_api_key(SecurityConfig(api_key_env=None)) is None
    key_file = tmp_path / "key"
    key_file.write_text("from-file\nsecond line ignored\n")
    assert load_api_key(SecurityConfig(api_key_file=str(key_file))) == "from-file"  # the file wins


def test_a_configured_key_file_that_cannot_be_read_is_an_error(tmp_path):
    with pytest.raises(APIKeyError, match="cannot be read"):
        load_api_key(SecurityConfig(api_key_file=str(tmp_path / "missing")))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(APIKeyError, match="empty"):
        load_api_key(SecurityConfig(api_key_file=str(tmp_path / "empty")))


def basic(password: str, user: str = "anyone") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_presented_key():
    assert presented_key(f"Bearer {KEY}") == KEY
    assert presented_key(f"bearer   {KEY} ") == KEY
    assert presented_key(basic(KEY)) == KEY
    assert presented_key("Basic !!!notbase64") is None
    assert presented_key("Token abc") is None
    assert presented_key("") is None


@pytest.fixture()
def client():
    app = FastAPI()

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/ui/config")
    def ui_config():
        return {"ui": True}

    app.add_middleware(APIKeyMiddleware, api_key=KEY, ui_path="/ui")
    return TestClient(app)


def test_every_route_needs_the_key(client):
    missing = client.get("/healthz")
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert "Bearer" in missing.json()["error"]["message"]
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = client.get("/healthz", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "Invalid API key."
    assert KEY not in wrong.text
    assert client.get("/healthz", headers={"Authorization": f"Bearer {KEY}"}).json() == {"status": "ok"}
    assert client.get("/nowhere", headers={"Authorization": "Bearer nope"}).status_code == 401  # no route probing


def test_the_web_ui_asks_the_browser_for_the_key(client):
    challenge = client.get("/ui/config")
    assert challenge.status_code == 401 and challenge.headers["www-authenticate"].startswith("Basic ")
    assert client.get("/ui/config", headers={"Authorization": basic(KEY)}).json() == {"ui": True}
    assert client.get("/ui/config", headers={"Authorization": basic("wrong")}).status_code == 401
