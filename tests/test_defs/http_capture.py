"""A local HTTP server standing in for Sentry's ingest and for a Slack webhook.

It records every POST body (gunzipped) so tests can read what pgvault actually sent over the
wire, not what it meant to send.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Captured:
    port: int
    requests: list[tuple[str, bytes]] = field(default_factory=list)

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

    def posts(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(body) for p, body in self.requests if p == path]


@contextmanager
def capture_http() -> Iterator[Captured]:
    captured = Captured(0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            captured.requests.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    captured.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield captured
    finally:
        server.shutdown()
        server.server_close()
