"""Bearer-token checks and the server's TLS context."""

from __future__ import annotations

import hashlib
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
        presented = self._presented(request, query)
        return presented is not None and self._valid(presented)

    def principal(self, request: web.Request, *, query: bool = False) -> str | None:
        """Who is calling, as far as the edge knows: a digest of their valid token.

        Scopes idempotency keys, so one caller's key never answers another caller's request.
        None without authentication (every caller is the same principal then).
        """
        if not self._tokens:
            return None
        presented = self._presented(request, query)
        if presented is None or not self._valid(presented):
            return None
        return hashlib.sha256(presented.encode()).hexdigest()[:16]

    @staticmethod
    def _presented(request: web.Request, query: bool) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        if query and request.query.get("token"):
            return request.query["token"]
        return None


def server_ssl_context(certfile: str, keyfile: str, ca_certs: str | None = None) -> ssl.SSLContext:
    """TLS 1.2+; with `ca_certs`, a client certificate signed by it is required (mTLS)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    if ca_certs:
        ctx.load_verify_locations(cafile=ca_certs)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
