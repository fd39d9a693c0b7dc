"""A loopback TCP proxy that breaks connections on purpose, for real network faults in tests.

pgvault's boto3 clients reach moto through it (`AWS_ENDPOINT_URL` points here). Each
connection counts the bytes it carries in each direction; once one direction passes
`after_bytes`, the proxy either cuts the connection (a reset, both ends) or stalls it
(forwards nothing more and leaves the sockets open, as a hung middlebox does). `faults`
bounds how many connections are broken, so a test can cause one fault and watch the retry.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["upload", "download"]
Mode = Literal["cut", "stall"]


@dataclass
class Fault:
    direction: Direction
    mode: Mode
    after_bytes: int
    faults: int  # how many connections to break; -1 for every one


@dataclass
class FaultyProxy:
    upstream: tuple[str, int]
    fault: Fault | None = None
    connections: int = 0
    broken: int = 0
    _server: socket.socket = field(init=False)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> str:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        thread = threading.Thread(target=self._accept, name="faulty-proxy", daemon=True)
        thread.start()
        self._threads.append(thread)
        host, port = self._server.getsockname()
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            with self._lock:
                self.connections += 1
            thread = threading.Thread(target=self._relay, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _claim_fault(self) -> bool:
        with self._lock:
            if self.fault is None or self.fault.faults == 0:
                return False
            if self.fault.faults > 0:
                self.fault.faults -= 1
            self.broken += 1
            return True

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        counts: dict[Direction, int] = {"upload": 0, "download": 0}
        ends = {client: (upstream, "upload"), upstream: (client, "download")}
        stalled = False
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([] if stalled else list(ends), [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    other, direction = ends[sock]
                    fault = self.fault
                    if (
                        fault is not None
                        and fault.direction == direction
                        and counts[direction] + len(data) > fault.after_bytes
                        and self._claim_fault()
                    ):
                        keep = max(fault.after_bytes - counts[direction], 0)
                        other.sendall(data[:keep])
                        if fault.mode == "cut":
                            # SO_LINGER 0: a reset, as a dropped route or a killed peer sends.
                            for end in (client, upstream):
                                end.setsockopt(
                                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                                )
                            return
                        stalled = True
                        break
                    counts[direction] += len(data)
                    other.sendall(data)
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()
