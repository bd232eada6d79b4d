"""The ingress's ASGI middleware: the optional API key, and request metrics by route and status.

Pure ASGI (not BaseHTTPMiddleware), so streams pass through untouched and the mounted web UI is covered.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time

from serve_app.api.auth import presented_key
from serve_app.errors import ClientClosedError, UnauthorizedError
from serve_app.metrics import IngressMetrics

# Route label of the request metrics: the API's routes, everything under the UI as one, else "other".
API_ROUTES = ("/ocr", "/v1/chat/completions", "/v1/models", "/healthz", "/docs", "/openapi.json")


def app_path(scope) -> str:
    """The request's path inside the app: under a route prefix (root_path) Starlette's path includes it."""
    path, root_path = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root_path):] if root_path and path.startswith(root_path) else path


def in_ui(path: str, ui_path: str | None) -> bool:
    return bool(ui_path) and (path == ui_path or path.startswith(ui_path + "/"))


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
        if in_ui(app_path(scope), self.ui_path):
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


class RequestMetricsMiddleware:
    """Latency and count of every HTTP request by route and status (streams: until their last byte)."""

    def __init__(self, app, metrics: IngressMetrics, ui_path: str | None):
        self.app, self.metrics, self.ui_path = app, metrics, ui_path

    def route(self, scope) -> str:
        path = app_path(scope)
        if path in API_ROUTES:
            return path
        return "ui" if in_ui(path, self.ui_path) else "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status, responded = 500, False

        async def send_with_status(message):
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        except asyncio.CancelledError:
            if not responded:  # Serve cancels a request whose client left: not a failure of ours
                status = ClientClosedError.status_code
                self.metrics.errors.inc(tags={"error_type": ClientClosedError.error_type})
            raise
        finally:
            tags = {"route": self.route(scope), "status": str(status)}
            self.metrics.request_latency_ms.observe((time.perf_counter() - started) * 1000, tags=tags)
            self.metrics.requests.inc(tags=tags)
