"""A TLS front for the plain-HTTP moto server: pgBackRest speaks only HTTPS to S3.

moto's own TLS mode broke pgBackRest's uploads; terminating TLS here and relaying plain
bytes works. The certificate names `DNS:localhost` only (pgBackRest 2.45 rejects an IP
address in it) and is its own CA, which `repo1-storage-ca-file` trusts.
"""

from __future__ import annotations

import contextlib
import datetime
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def write_localhost_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for DNS:localhost and its key; the certificate world-readable
    (the archive command reads it as postgres), the key not."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Fixed, wide validity: scripts/test-dates.sh moves Python's clock, not pgBackRest's.
        .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2099, 12, 31, tzinfo=datetime.UTC))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "localhost.pem", directory / "localhost.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    cert_file.chmod(0o644)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def _relay(secure: ssl.SSLSocket, plain: socket.socket) -> None:
    """Relay both ways in one thread (an SSL socket must not be used by two at once) until
    one side ends; end the TLS side with close_notify, which a TLS client expects."""
    try:
        while True:
            if secure.pending():
                readable = [secure]
            else:
                readable, _, _ = select.select([secure, plain], [], [], 1)
            for source in readable:
                data = source.recv(65536)
                if not data:
                    return
                (plain if source is secure else secure).sendall(data)
    except (OSError, ValueError):
        return
    finally:
        with contextlib.suppress(OSError, ValueError):
            secure.unwrap()
        secure.close()
        plain.close()


@contextlib.contextmanager
def tls_proxy(upstream: tuple[str, int], cert_file: Path, key_file: Path) -> Iterator[int]:
    """Serve TLS on a free loopback port and relay each connection to `upstream`; yields
    the port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def relay(client: socket.socket) -> None:
        try:
            client.settimeout(30)
            secure = context.wrap_socket(client, server_side=True)
            plain = socket.create_connection(upstream)
        except OSError:
            client.close()
            return
        _relay(secure, plain)

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=relay, args=(client,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        acceptor.join(5)
        server.close()


@contextlib.contextmanager
def silent_endpoint() -> Iterator[int]:
    """A port that accepts connections (the kernel completes them) and never answers."""
    server = socket.create_server(("127.0.0.1", 0), backlog=128)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
