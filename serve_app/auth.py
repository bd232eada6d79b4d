"""Optional API key on every route of the ingress (the APIs, health, and the web UI with its API).

Callers send `Authorization: Bearer <key>`. Browsers cannot add that header to the web UI's own
requests, so the UI answers 401 with a Basic challenge: the browser asks once (any user name, the
key as password) and then attaches the credentials to every request of the page. The key is
compared in constant time and never logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
from pathlib import Path

from serve_app.config import SecurityConfig
from serve_app.errors import UnauthorizedError


class APIKeyError(RuntimeError):
    """The configured key cannot be read: the replica must not start without it."""


def load_api_key(security: SecurityConfig) -> str | None:
    """The key from `api_key_file` (wins) or the `api_key_env` variable; None: no key configured."""
    if security.api_key_file:
        path = Path(security.api_key_file).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as error:
            raise APIKeyError(f"security.api_key_file {str(path)!r} cannot be read: {error.strerror}") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise APIKeyError(f"security.api_key_file {str(path)!r} is empty")
        return key
    if security.api_key_env:
        return os.environ.get(security.api_key_env, "").strip() or None
    return None


def presented_key(authorization: str) -> str | None:
    """The key in an Authorization header: `Bearer <key>`, or Basic with the key as password."""
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        return decoded.partition(":")[2] or None
    return None


class APIKeyMiddleware:
    """Pure ASGI middleware: checks every HTTP request (and websocket) before any route runs."""

    def __init__(self, app, api_key: str, ui_path: str | None):
        self.app = app
        self.expected = api_key.encode("utf-8")
        self.ui_path = ui_path

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}
        key = presented_key(headers.get("authorization", ""))
        if key is not None and hmac.compare_digest(key.encode("utf-8"), self.expected):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        message = (
            "Missing API key: send 'Authorization: Bearer <key>'."
            if key is None
            else "Invalid API key."
        )
        error = UnauthorizedError(message)
        challenge = "Bearer"
        path, root_path = scope.get("path", ""), scope.get("root_path", "")
        if root_path and path.startswith(root_path):  # under a route prefix, the path includes it
            path = path[len(root_path):]
        if self.ui_path and (path == self.ui_path or path.startswith(self.ui_path + "/")):
            challenge = 'Basic realm="OCR web UI (password: the API key)", charset="UTF-8"'
        body = json.dumps(error.to_dict()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": error.status_code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", challenge.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
