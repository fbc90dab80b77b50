"""TLS material made at test time with trustme: a CA, a server certificate for 127.0.0.1 and
localhost, a client certificate signed by the same CA, and one signed by a stranger CA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Certs:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    #: A client certificate the server's CA never signed.
    rogue_cert: str
    rogue_key: str


def make_certs(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client.spark.test")
    rogue = trustme.CA().issue_cert("rogue.spark.test")

    def write(name: str, blob) -> str:
        path = directory / name
        blob.write_to_path(str(path))
        return str(path)

    return Certs(
        ca=write("ca.pem", ca.cert_pem),
        server_cert=write("server.pem", server.cert_chain_pems[0]),
        server_key=write("server.key", server.private_key_pem),
        client_cert=write("client.pem", client.cert_chain_pems[0]),
        client_key=write("client.key", client.private_key_pem),
        rogue_cert=write("rogue.pem", rogue.cert_chain_pems[0]),
        rogue_key=write("rogue.key", rogue.private_key_pem),
    )
