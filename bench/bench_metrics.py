"""Count the S3 requests a Prometheus scrape of `pgvault metrics serve` costs for a fleet.

A moto server stands in for S3 and KMS, behind a counting proxy (`AWS_ENDPOINT_URL` points at
the proxy), so what is counted is what went over the wire. The fleet: `--databases` databases
with `--backups` daily backups each (synthetic manifests and tiny objects, written straight
into the bucket). `pgvault metrics serve` runs as its own process; the script scrapes
`/metrics` `--scrapes` times, first with the default refresh (60 s: scrapes inside it are
answered from memory), then with `--refresh-seconds 1` and a pause past it before each scrape,
the worst case, in which every scrape lists each database once and reads nothing it read before.

Goal: after the first scrape, at most one S3 list per database per scrape, and no GET.

Usage: .venv/bin/python bench/bench_metrics.py [--databases 50] [--backups 30] [--scrapes 5]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import yaml
from moto.server import ThreadedMotoServer

REPO = Path(__file__).resolve().parent.parent
PGVAULT = Path(sys.executable).with_name("pgvault")
sys.path.insert(0, str(REPO))

from pgvault_assets.engine.basics import names  # noqa: E402
from pgvault_assets.engine.vault import manifest as mf  # noqa: E402
from pgvault_assets.engine.vault.manifest import Manifest  # noqa: E402


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_kind: Counter[str] = Counter()

    def add(self, kind: str) -> None:
        with self.lock:
            self.by_kind[kind] += 1

    def take(self) -> Counter[str]:
        with self.lock:
            taken, self.by_kind = self.by_kind, Counter()
        return taken


def kind_of(method: str, path: str) -> str:
    query = urlsplit(path).query
    if method == "GET" and ("list-type=2" in query or "prefix=" in query):
        return "list"
    if method == "GET" and urlsplit(path).path.count("/") >= 2 and not query.startswith("version"):
        return "get"
    return f"{method.lower()} other"


@contextlib.contextmanager
def counting_proxy(upstream: str, counts: Counts) -> Iterator[str]:
    """A plain HTTP proxy to `upstream` that counts each request by kind."""
    target = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        def relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            counts.add(kind_of(self.command, self.path))
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            connection.request(self.command, self.path, body=body, headers=dict(self.headers))
            response = connection.getresponse()
            data = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            connection.close()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = relay

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def manifest(namespace: str, day: date) -> Manifest:
    started = datetime.combine(day + timedelta(days=1), clock_time(2, 0), UTC)
    return Manifest(
        environment=namespace,
        date=day,
        object_key=names.object_key(namespace, day),
        sha256=hashlib.sha256(b"backup").hexdigest(),
        size_bytes=6,
        dump_size_bytes=24,
        compressed_size_bytes=6,
        started_at=started,
        finished_at=started + timedelta(seconds=60),
        stage_seconds={"total": 60.0},
        server_version="PostgreSQL 15",
        pg_dump_version="pg_dump (PostgreSQL) 15",
        database="app",
        table_rows={"public.t": 3},
        key_id="local",
        pgvault_version="0.1.0",
        encryption_context=mf.encryption_context(namespace, day),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(url: str, process: subprocess.Popen, seconds: float = 300) -> bytes:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"pgvault metrics serve exited {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=300) as response:
                return response.read()
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise SystemExit(f"{url} never answered")


def run_serve(env: dict[str, str], counts: Counts, args, refresh: int, pause: float) -> list:
    port = free_port()
    process = subprocess.Popen(
        [PGVAULT, "metrics", "serve", "--port", str(port), "--refresh-seconds", str(refresh)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    rows = []
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        counts.take()
        for index in range(args.scrapes):
            if index:
                time.sleep(pause)
            body = scrape(url, process)
            taken = counts.take()
            rows.append((index + 1, taken, body.count(b"pgvault_backups_stored{")))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--databases", type=int, default=50)
    parser.add_argument("--backups", type=int, default=30)
    parser.add_argument("--scrapes", type=int, default=5)
    args = parser.parse_args()

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    counts = Counts()
    try:
        with (
            counting_proxy(f"http://{host}:{port}", counts) as endpoint,
            tempfile.TemporaryDirectory() as tmp,
        ):
            env = {
                key: value
                for key, value in os.environ.items()
                if not key.startswith(("BACKUP_", "PGVAULT_", "AWS_", "PAGERDUTY_"))
                and key not in ("DATABASE_URL", "SENTRY_DSN", "ALERT_WEBHOOK_URL")
            }
            env.update(
                AWS_ENDPOINT_URL=endpoint,
                AWS_ACCESS_KEY_ID="testing",
                AWS_SECRET_ACCESS_KEY="testing",
                AWS_REGION="us-east-1",
                AWS_DEFAULT_REGION="us-east-1",
                AWS_EC2_METADATA_DISABLED="true",
                ENVIRONMENT_NAME="bench",
                PGVAULT_HOME=str(Path(tmp) / "home"),
                MAIN_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/postgres",
            )
            s3 = boto3.client(
                "s3",
                endpoint_url=f"http://{host}:{port}",
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            kms = boto3.client(
                "kms",
                endpoint_url=f"http://{host}:{port}",
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            s3.create_bucket(Bucket="pgvault-bench")
            s3.put_bucket_versioning(
                Bucket="pgvault-bench", VersioningConfiguration={"Status": "Enabled"}
            )
            key = kms.create_key()["KeyMetadata"]["KeyId"]
            env.update(BACKUP_S3_BUCKET="pgvault-bench", BACKUP_KMS_KEY_ID=key)
            databases = [f"db{index:03d}" for index in range(args.databases)]
            fleet = {
                "servers": [{"name": "main", "url_env": "MAIN_DATABASE_URL"}],
                "databases": [
                    {"name": name, "server": "main", "dbname": name} for name in databases
                ],
            }
            fleet_file = Path(tmp) / "fleet.yaml"
            fleet_file.write_text(yaml.safe_dump(fleet))
            env["PGVAULT_FLEET_FILE"] = str(fleet_file)
            first = date(2026, 1, 1)
            for name in databases:
                namespace = names.namespace("bench", name)
                for offset in range(args.backups):
                    made = manifest(namespace, first + timedelta(days=offset))
                    s3.put_object(Bucket="pgvault-bench", Key=made.object_key, Body=b"backup")
                    s3.put_object(
                        Bucket="pgvault-bench",
                        Key=names.manifest_key(namespace, made.date),
                        Body=made.to_json(),
                    )
            print(f"{args.databases} databases x {args.backups} backups in s3://pgvault-bench")
            for title, refresh, pause in (
                ("default refresh (60 s), scrapes back to back", 60, 0.0),
                ("worst case: refresh 1 s, each scrape after it", 1, 1.1),
            ):
                print(f"\n{title}")
                print("scrape  lists  gets  other  databases  lists per database")
                worst = 0.0
                for index, taken, exposed in run_serve(env, counts, args, refresh, pause):
                    lists = taken["list"]
                    other = sum(v for k, v in taken.items() if k not in ("list", "get"))
                    per = lists / args.databases
                    if index > 1:
                        worst = max(worst, per)
                    print(
                        f"{index:>6}  {lists:>5}  {taken['get']:>4}  {other:>5}  {exposed:>9}  {per:.2f}"
                    )
                verdict = "ok" if worst <= 1.0 else "MISSED"
                print(
                    f"after the first scrape: at most {worst:.2f} lists per database per scrape (goal <= 1) {verdict}"
                )
    finally:
        moto.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
