"""A local HTTP server standing in for Sentry's ingest, a Slack webhook and PagerDuty's
Events API v2 (`/v2/enqueue`, answered as PagerDuty does, with the event's `dedup_key`).

It records every POST body (gunzipped) so tests can read what pgvault actually sent over the
wire, not what it meant to send.
"""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Captured:
    port: int
    requests: list[tuple[str, bytes]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    """Statuses to answer the next requests with, first to last, before answering normally."""

    @property
    def sentry_dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.port}/1"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def envelope_items(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Every (item header, payload) in the Sentry envelopes received."""
        items = []
        for path, body in self.requests:
            if "/envelope/" not in path:
                continue
            lines = body.split(b"\n")
            index = 1  # the first line is the envelope header
            while index + 1 < len(lines) and lines[index]:
                header = json.loads(lines[index])
                items.append((header, json.loads(lines[index + 1])))
                index += 2
        return items

    def events(self) -> list[dict[str, Any]]:
        return [payload for header, payload in self.envelope_items() if header["type"] == "event"]

    def checkins(self) -> list[dict[str, Any]]:
        return [
            payload for header, payload in self.envelope_items() if header["type"] == "check_in"
        ]

    cert_file: Path | None = None
    """With TLS: the receiver's self-signed certificate, for SSL_CERT_FILE."""

    @property
    def events_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def pagerduty_events(self) -> list[dict[str, Any]]:
        return self.posts("/v2/enqueue")

    def posts(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(body) for p, body in self.requests if p == path]


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as files in `folder`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "receiver.crt", folder / "receiver.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@contextmanager
def capture_http(tls_folder: Path | None = None) -> Iterator[Captured]:
    """The receiver; over HTTPS with a certificate made in `tls_folder` when one is given
    (PagerDuty's client speaks HTTPS only)."""
    captured = Captured(0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            captured.requests.append((self.path, body))
            status, answer = 200, b"{}"
            if captured.statuses:
                status = captured.statuses.pop(0)
            elif self.path == "/v2/enqueue":
                key = json.loads(body).get("dedup_key", "generated")
                status = 202
                answer = json.dumps(
                    {"status": "success", "message": "Event processed", "dedup_key": key}
                ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls_folder is not None:
        cert_file, key_file = self_signed_certificate(tls_folder)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        captured.cert_file = cert_file
    captured.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield captured
    finally:
        server.shutdown()
        server.server_close()
