"""The outermost layer of the server (an ASGI middleware): authentication and body size.

* With an API key, every route but ``/health`` needs ``Authorization: Bearer <key>`` (or HTTP
  Basic with the key as the password, so a browser can open the web page and play videos);
  the key is compared in constant time (:func:`hmac.compare_digest`).
* A body larger than ``max_body_bytes`` is refused with 413: at once when its Content-Length
  says so, else as soon as the bytes read pass the limit (:class:`BodyTooLarge`).
* Every response says ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from starlette.responses import JSONResponse

OPEN_PATHS = ("/health",)
PAGE_PATHS = ("/", "/static/app.js", "/static/style.css")
_EXTRA_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]


class BodyTooLarge(Exception):
    """The request body passed the server's limit."""


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error" if status != 401
                                   else "authentication_error", "param": None, "code": code}},
                        status_code=status, headers=headers)


def token_of(header: str) -> str | None:
    """The key sent in an Authorization header (Bearer, or Basic's password)."""
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip() or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        return decoded.partition(":")[2] or None
    return None


class Guard:
    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.key = api_key.encode("utf-8") if api_key else None
        self.max_body = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + _EXTRA_HEADERS}
            await send(message)

        path = scope.get("path", "")
        if self.key is not None and path not in OPEN_PATHS and not self._authorized(headers):
            challenge = 'Basic realm="fastdit", charset="UTF-8"' if path in PAGE_PATHS else 'Bearer realm="fastdit"'
            response = _error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "invalid_api_key",
                              {"WWW-Authenticate": challenge})
            return await response(scope, receive, send_with_headers)
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await _error(400, "bad Content-Length", "bad_request")(scope, receive, send_with_headers)
            if int(length) > self.max_body:
                return await _error(413, f"the request body is {int(length)} bytes; this server takes at most "
                                    f"{self.max_body}", "request_too_large")(scope, receive, send_with_headers)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(f"the request body is larger than this server's limit of {self.max_body} bytes")
            return message

        return await self.app(scope, limited_receive, send_with_headers)

    def _authorized(self, headers: dict[str, str]) -> bool:
        token = token_of(headers.get("authorization", ""))
        if token is None:
            hmac.compare_digest(self.key, self.key)  # same work either way
            return False
        return hmac.compare_digest(token.encode("utf-8"), self.key)
