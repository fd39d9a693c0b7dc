"""Shared fixtures: a moto S3/KMS server, isolated pgvault environments, throwaway databases.

Every database a test makes is named `pgvault_test_<hint>_<uuid>` and dropped at teardown, along
with the siblings pgvault's restore creates next to it (`<name>_pre_restore_<ts>`, ...), so tests
never touch databases they did not create.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
import sentry_sdk
from dagster import DagsterInstance, instance_for_test
from psycopg import sql

from pgvault_assets import redact, settings
from pgvault_assets.engine.basics import testpoints
from pgvault_assets.engine.basics.interrupts import run_in_own_group
from pgvault_assets.engine.postgres import cluster as cluster_module
from pgvault_assets.engine.postgres.cluster import Cluster, start_cluster
from tests.test_defs.http_capture import Captured, capture_http
from tests.test_engine import helpers  # noqa: F401 (imported first: pins the run's one clock)

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
PG_SERVER_URL = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}"
MAINTENANCE_URL = f"{PG_SERVER_URL}/postgres"
TEST_DB_PREFIX = "pgvault_test_"
FIXTURES_DIR = Path(__file__).parent / "fixtures"
AWKWARD_SCHEMA = FIXTURES_DIR / "awkward_schema.sql"
PG_BIN = Path("/usr/lib/postgresql/15/bin")

# The definitions' day partitions start at the environment's first backup unless this is set;
# tests materialize named days, so they name a start before any of them. A test of the start
# itself removes it.
os.environ["BACKUP_START_DATE"] = "2024-01-01"


def pgvault_variables() -> frozenset[str]:
    """Every variable pgvault reads: each one settings.py declares, the secret variables
    redact.py hides besides (children's `PGPASSWORD`, say) and the fault tests' pause point.
    Taken from the declarations, so a variable added there is cleared without anyone
    remembering to. PGVAULT_HOME is left out: every test gets a home of its own instead
    (`pgvault_home_of_its_own`)."""
    hidden = {*redact._SECRET_VARIABLES, *redact._URL_VARIABLES, testpoints.VARIABLE}
    return frozenset(settings.declared().keys() | hidden) - {"PGVAULT_HOME"}


# Real credentials or profiles in the developer's shell must never reach moto-backed tests.
_AWS_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)
# What no test inherits from the shell that started the run.
CLEARED_VARIABLES = pgvault_variables() | set(_AWS_VARIABLES)


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


def admin_connect() -> psycopg.Connection[Any]:
    """An autocommit connection to the maintenance database; times out instead of hanging."""
    return psycopg.connect(MAINTENANCE_URL, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """Fail fast with one clear line when the test PostgreSQL server is not reachable."""
    problem = None
    try:
        with admin_connect() as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        problem = " ".join(str(exc).split()) or repr(exc)
    if problem:  # failed outside the handler, so pytest shows one line, not a chained trace
        pytest.fail(
            f"PostgreSQL is not reachable at {MAINTENANCE_URL} (user {PG_USER}, trust auth "
            f"expected): {problem}",
            pytrace=False,
        )
    return PG_SERVER_URL


def _drop_databases(prefixes: list[str]) -> None:
    """Drop every database named by, or starting with, one of `prefixes` (all ours)."""
    with admin_connect() as conn:
        names = {
            row[0]
            for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datname::text ^@ ANY(%s)",
                [prefixes],
            )
        }
        for name in sorted(names, key=len, reverse=True):
            if not name.startswith(TEST_DB_PREFIX):  # belt and braces: never drop others
                continue
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def make_database(postgres_server: str) -> Iterator[Callable[..., str]]:
    """Factory: `make_database(name_hint="src") -> url` of a fresh empty database."""
    created: list[str] = []

    def make(name_hint: str = "src", *, template: str | None = None) -> str:
        hint = re.sub(r"[^a-z0-9_]", "_", name_hint.lower())[:12] or "db"
        name = f"{TEST_DB_PREFIX}{hint}_{uuid.uuid4().hex[:8]}"
        create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with admin_connect() as conn:
            conn.execute(create)
        created.append(name)
        return f"{postgres_server}/{name}"

    yield make
    if created:
        _drop_databases(created)


def load_sql_file(url: str, path: Path) -> None:
    """Load a SQL file with psql exactly as a user would, stopping at the first error."""
    psql = shutil.which("psql")
    if psql is None:
        pytest.fail("psql is not on PATH; install the PostgreSQL client tools", pytrace=False)
    result = subprocess.run(
        [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"psql could not load {path.name}:\n{result.stderr}", pytrace=False)


@pytest.fixture(scope="session")
def awkward_template(postgres_server: str) -> Iterator[str]:
    """tests/fixtures/awkward_schema.sql, loaded by psql once per run into a database that only
    ever serves as a template (nothing connects to it again); dropped at the end."""
    name = f"{TEST_DB_PREFIX}awkward_tpl_{uuid.uuid4().hex[:8]}"
    with admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        load_sql_file(f"{postgres_server}/{name}", AWKWARD_SCHEMA)
        yield name
    finally:
        _drop_databases([name])


@pytest.fixture
def awkward_database(make_database: Callable[..., str], awkward_template: str) -> str:
    """A source database holding tests/fixtures/awkward_schema.sql; returns its URL. Copied
    from the run's template (CREATE DATABASE ... TEMPLATE copies files, where psql replays
    every statement), so each test still gets a database of its own, as loaded."""
    return make_database("src", template=awkward_template)


# --------------------------------------------------------------------------------------------
# A private PostgreSQL cluster: restarted by fault tests, a new server for restores
# --------------------------------------------------------------------------------------------


@dataclass
class PrivateCluster:
    """A throwaway cluster from the engine's `start_cluster`, the one way pgvault starts one."""

    cluster: Cluster

    @property
    def server_url(self) -> str:
        return self.cluster.url.secret.rsplit("/", 1)[0]

    def url(self, dbname: str) -> str:
        return self.cluster.url.with_dbname(dbname).secret

    def restart(self) -> None:
        """What an operator's `systemctl restart` does: fast shutdown, every session ended."""
        result = self.cluster.pg_ctl(
            "-m", "fast", "-l", str(self.cluster.base / "log"), "-w", "restart"
        )
        assert result.returncode == 0, result.stderr

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C, the checksum PostgreSQL keeps at the end of pg_control."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class InitdbTemplate:
    """One data directory initdb'd the engine's way, made at its first use in a run (on each
    worker); a throwaway cluster's directory is a copy of it instead of an initdb of its own.
    initdb builds the system catalogs and template databases from scratch, a copy is a
    fraction of that, and a test makes a cluster per proof, drill and fault.

    A copy is made another cluster, as initdb would make it: a database system identifier of
    its own (in pg_control, with its checksum, and the WAL rewritten for it by pg_resetwal:
    pgBackRest tells clusters apart by it) and its own random password (single-user mode)."""

    def __init__(self) -> None:
        self._root: Path | None = None
        self._bindir: Path | None = None
        self._crc_at = 0
        self._lock = threading.Lock()

    def _data(self, bindir: Path) -> Path | None:
        """The template for `bindir`'s major version; None for another (initdb runs then)."""
        with self._lock:
            if self._root is None:
                root = Path(tempfile.mkdtemp(prefix="pgv-initdb-", dir="/tmp"))
                root.chmod(0o755)  # the postgres OS user reads the copy's source
                base = root / "template"
                base.mkdir()
                if cluster_module._owner_prefix():
                    shutil.chown(base, cluster_module.OS_USER, cluster_module.OS_USER)
                _REAL_INITDB(bindir, base, secrets.token_urlsafe(24))
                control = (base / "data" / "global" / "pg_control").read_bytes()
                # Where pg_control's checksum sits: after the bytes it sums.
                (self._crc_at,) = [
                    n
                    for n in range(8, 1024, 4)
                    if crc32c(control[:n]) == int.from_bytes(control[n : n + 4], "little")
                ]
                self._root, self._bindir = root, bindir
        return self._root / "template" / "data" if bindir == self._bindir else None

    def _another_system(self, bindir: Path, data: Path, owner: list[str]) -> None:
        """A new database system identifier in the copy's pg_control, and its WAL reset to it."""
        control_file = data / "global" / "pg_control"
        control = bytearray(control_file.read_bytes())
        # Below 2**63, as initdb's (seconds << 32 | ...) are: PostgreSQL shows it as a bigint.
        control[:8] = secrets.randbits(63).to_bytes(8, "little")
        at = self._crc_at
        control[at : at + 4] = crc32c(bytes(control[:at])).to_bytes(4, "little")
        control_file.write_bytes(bytes(control))
        reset = run_in_own_group(
            [*owner, str(bindir / "pg_resetwal"), "-f", "-D", str(data)], text=True, cwd="/"
        )
        assert reset.returncode == 0, reset.stderr

    def initdb(self, bindir: Path, base: Path, password: str) -> None:
        """What the engine's `_initdb` leaves in `base`: a data directory whose postgres role
        has `password`, and the same configuration and authentication."""
        template = self._data(bindir)
        if template is None:
            _REAL_INITDB(bindir, base, password)
            return
        owner = cluster_module._owner_prefix()
        copied = run_in_own_group([*owner, "cp", "-a", str(template), str(base / "data")])
        assert copied.returncode == 0, copied.stderr
        self._another_system(bindir, base / "data", owner)
        # A token_urlsafe password: letters, digits, - and _, nothing to escape.
        single = subprocess.run(
            [*owner, str(bindir / "postgres"), "--single", "-D", str(base / "data"), "postgres"],
            input=f"ALTER ROLE postgres PASSWORD '{password}'\n",
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
            check=False,
        )
        assert single.returncode == 0, single.stderr

    def remove(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)


_REAL_INITDB = cluster_module._initdb


@pytest.fixture(scope="session")
def initdb_template() -> Iterator[InitdbTemplate]:
    template = InitdbTemplate()
    yield template
    template.remove()


@pytest.fixture(autouse=True)
def clusters_copied_from_a_template(
    request: pytest.FixtureRequest,
    initdb_template: InitdbTemplate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every throwaway cluster this process starts (the tests' own, the restore proofs' and
    drills') is a copy of the run's initdb'd template. A test of how a cluster is created
    (`@pytest.mark.real_initdb`) runs initdb itself."""
    if request.node.get_closest_marker("real_initdb") is None:
        monkeypatch.setattr(cluster_module, "_initdb", initdb_template.initdb)


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivateCluster]:
    with start_cluster() as cluster:
        yield PrivateCluster(cluster)


@pytest.fixture
def own_cluster() -> Iterator[PrivateCluster]:
    """A private cluster for this test alone: whatever it restarts, kills or counts there is
    its own, whichever tests ran before it and whatever else runs on the machine."""
    with start_cluster() as cluster:
        yield PrivateCluster(cluster)


# --------------------------------------------------------------------------------------------
# Environments
# --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_pgvault_variables_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's shell settings (an approvers file, a fleet file, PITR_*, a start date)
    never reach a test: each test starts from pgvault's defaults and sets what it means."""
    for name in CLEARED_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def no_dagster_instance_left_current() -> Iterator[None]:
    """Each test starts with no earlier test's Dagster instance current. Entering an instance
    makes its definitions-state storage the current one (a context variable), and one left
    there after its instance is gone fails the next in-process definitions load with
    "undefined DagsterInstance weakref", in whatever test runs next. An ephemeral instance
    (it has no such storage) is current instead, for the length of the test."""
    with DagsterInstance.ephemeral():
        yield


@pytest.fixture(autouse=True)
def pgvault_home_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_pgvault_variables_from_the_shell: None
) -> None:
    """No test reads or writes the machine's own pgvault home (~/.local/share/pgvault)."""
    monkeypatch.setenv("PGVAULT_HOME", str(tmp_path / "pgvault-home"))


@pytest.fixture
def local_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """pgvault with its embedded defaults: local store and key file under `tmp_path`."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("BACKUP_LOCAL_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("BACKUP_LOCAL_KEY_FILE", str(tmp_path / "key" / "backup.key"))
    monkeypatch.setenv("ENVIRONMENT_NAME", "test")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    yield tmp_path


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server (S3, KMS, ...) on a free loopback port; yields `http://127.0.0.1:PORT`."""
    from moto.server import ThreadedMotoServer

    # werkzeug logs every request at INFO; failure reports should show pgvault's logs instead.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@dataclass(frozen=True)
class AwsEnv:
    """What a test needs to inspect the moto-backed S3 bucket and KMS key pgvault uses."""

    endpoint: str
    bucket: str
    kms_key_id: str  # the alias, as BACKUP_KMS_KEY_ID holds it
    kms_key_arn: str
    s3: Any  # boto3 S3 client
    kms: Any  # boto3 KMS client


@pytest.fixture
def aws_env(local_env: Path, moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsEnv]:
    """pgvault pointed at moto: a fresh versioned bucket and a KMS key behind a fresh alias."""
    for name in _AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("BACKUP_LOCAL_DIR", raising=False)
    monkeypatch.delenv("BACKUP_LOCAL_KEY_FILE", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    suffix = uuid.uuid4().hex[:12]
    bucket = f"pgvault-test-{suffix}"
    alias = f"alias/pgvault-test-{suffix}"

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    kms = boto3.client("kms", region_name="us-east-1")
    key = kms.create_key(Description=f"pgvault test key {suffix}")["KeyMetadata"]
    kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])

    monkeypatch.setenv("BACKUP_S3_BUCKET", bucket)
    monkeypatch.setenv("BACKUP_KMS_KEY_ID", alias)
    yield AwsEnv(
        endpoint=moto_server,
        bucket=bucket,
        kms_key_id=alias,
        kms_key_arn=key["Arn"],
        s3=s3,
        kms=kms,
    )


@pytest.fixture
def alerts_captured(monkeypatch) -> Iterator[Captured]:
    """Sentry and the webhook both pointed at a local server that records what arrives."""
    with capture_http() as captured:
        monkeypatch.setenv("SENTRY_DSN", captured.sentry_dsn)
        monkeypatch.setenv("ALERT_WEBHOOK_URL", captured.url)
        yield captured
    sentry_sdk.init()


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as test_instance:
        yield test_instance
