"""Optional API key on every route of the ingress (the APIs, health, and the web UI with its API).

Callers send `Authorization: Bearer <key>`. Browsers cannot add that header to the web UI's own
requests, so the UI answers 401 with a Basic challenge: the browser asks once (any user name, the
key as password) and then attaches the credentials to every request of the page. The key is
compared in constant time (serve_app.api.middleware) and never logged.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from serve_app.config import SecurityConfig


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
