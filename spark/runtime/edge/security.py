"""Bearer-token checks and the server's TLS context."""

from __future__ import annotations

import hmac
import ssl

from aiohttp import web


class TokenCheck:
    """Accepts `Authorization: Bearer <token>` (and, for WebSocket handshakes from browsers,
    which cannot set headers, a `?token=` query parameter) against the configured tokens."""

    def __init__(self, tokens: list[str]):
        self._tokens = [t.encode() for t in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def _valid(self, presented: str) -> bool:
        given = presented.encode()
        ok = False
        for token in self._tokens:  # every comparison runs: no early exit to time
            ok |= hmac.compare_digest(given, token)
        return ok

    def allows(self, request: web.Request, *, query: bool = False) -> bool:
        if not self._tokens:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return self._valid(value.strip())
        if query and request.query.get("token"):
            return self._valid(request.query["token"])
        return False


def server_ssl_context(
    certfile: str, keyfile: str | None = None, ca_certs: str | None = None
) -> ssl.SSLContext:
    """TLS 1.2+; with `ca_certs`, a client certificate signed by it is required (mTLS)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    if ca_certs:
        ctx.load_verify_locations(cafile=ca_certs)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
