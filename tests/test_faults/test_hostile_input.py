"""Hostile and malformed input, property-based: every parser refuses cleanly or accepts.

"Cleanly" means a `PgvaultError` (one line for the operator) and nothing else: any other
exception escaping a parser is a bug. Row recovery's `--table` and `--where` also get the
classic injection payloads; the tables of both databases must come out untouched.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pgvault_assets.cli.args import parse_date, positive_int
from pgvault_assets.engine.approvals import authorization as auth
from pgvault_assets.engine.basics.names import manifest_key, object_key
from pgvault_assets.engine.recovery.rows import plan_row_recovery
from pgvault_assets.engine.vault.manifest import Manifest, encryption_context
from pgvault_assets.errors import IntegrityError, PgvaultError
from pgvault_assets.settings import DatabaseUrl, load_settings, recovery_section
from tests.test_engine.helpers import DAY, vault

QUICK = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
NOW = datetime(2025, 11, 7, 3, 0, tzinfo=UTC)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["2025-11-06", "2025-11-06T01:02:03", "2025-11-06T01:02:03+00:00", "0" * 64]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
hostile_text = st.text() | st.sampled_from(
    [
        "../prod",
        "a/b",
        "",
        " ",
        "\x00",
        "\ud800",
        "prod\n",
        "\uff50\uff52\uff4f\uff44",
        "PROD",
        "-x",
        "a" * 64,
    ]
)


def _valid_manifest() -> Manifest:
    day = date(2025, 11, 6)
    return Manifest(
        environment="test",
        date=day,
        object_key=object_key("test", day),
        sha256="a" * 64,
        size_bytes=10,
        dump_size_bytes=30,
        compressed_size_bytes=10,
        started_at=NOW,
        finished_at=NOW + timedelta(seconds=5),
        stage_seconds={"dump": 1.0},
        server_version="PostgreSQL 15",
        pg_dump_version="pg_dump 15",
        database="app",
        table_rows={"public.t": 3},
        key_id="pgvault-local:backup-key",
        pgvault_version="0.1",
        encryption_context=encryption_context("test", day),
    )


def _use(manifest: Manifest) -> None:
    """What the catalog, retention and reports do with a manifest they accepted."""
    assert manifest.duration_seconds >= 0 or manifest.duration_seconds < 0
    _ = manifest.row_total, manifest.compression_ratio, manifest.to_json()
    assert manifest.object_version_id is None or isinstance(manifest.object_version_id, str)


# --- dates, numbers and durations ------------------------------------------------------------


@QUICK
@given(hostile_text)
@example("2025-02-30")
@example("9999-12-31")
@example("+2025-01-01")
def test_cli_dates_are_a_date_or_a_usage_error(text: str) -> None:
    with contextlib.suppress(argparse.ArgumentTypeError):
        assert isinstance(parse_date(text), date)


@QUICK
@given(hostile_text | st.integers().map(str))
@example("9" * 5000)
@example("99999999999")
def test_cli_counts_are_a_sane_number_or_a_usage_error(text: str) -> None:
    try:
        value = positive_int(text)
    except argparse.ArgumentTypeError:
        return
    assert 1 <= value <= 36500
    assert timedelta(days=value)  # list-backups --days turns it into a timedelta


@QUICK
@given(
    st.sampled_from(
        [
            "BACKUP_RETENTION_DAYS_DAILY",
            "BACKUP_COMPRESSION_LEVEL",
            "BACKUP_STORAGE_BUDGET_BYTES",
            "BACKUP_S3_READ_TIMEOUT_SECONDS",
            "ENVIRONMENT_NAME",
            "DATABASE_URL",
            "STAGING_DATABASE_URL",
            "BACKUP_S3_BUCKET",
            "ALERT_WEBHOOK_URL",
        ]
    ),
    hostile_text | st.integers().map(str) | st.floats().map(str),
)
def test_settings_from_hostile_environment_values_load_or_fail_in_one_line(
    name: str, value: str
) -> None:
    env = {name: value}
    if name == "BACKUP_S3_BUCKET":
        env["BACKUP_KMS_KEY_ID"] = "alias/x"
    try:
        loaded = load_settings(env)
    except PgvaultError as exc:
        assert "\n" not in str(exc)
        return
    assert "/" not in loaded.environment and ".." not in loaded.environment
    assert loaded.environment.isascii()
    for url in (loaded.database_url, loaded.staging_database_url):
        if url is not None:
            _ = url.dbname, url.password, str(url), repr(url), url.with_dbname("postgres")


@QUICK
@given(hostile_text | st.floats().map(str))
@example("nan")
@example("inf")
@example("1e-320")
def test_request_lifetime_hours_load_or_fail_in_one_line(value: str) -> None:
    try:
        loaded = recovery_section({"RESTORE_REQUEST_TTL_HOURS": value})
    except PgvaultError:
        return
    assert timedelta(0) < loaded.request_ttl <= timedelta(hours=72)
    assert NOW + loaded.request_ttl > NOW


@QUICK
@given(
    st.builds(
        "{}://{}{}{}/{}{}".format,
        st.sampled_from(["postgresql", "postgres", "http", "", "postgresql:"]),
        st.sampled_from(["", "user@", "user:p%40ss@", "u:@", ":@", "%zz@"]),
        st.text(max_size=12),
        st.sampled_from(["", ":5432", ":0", ":99999", ":x", ":"]),
        st.text(max_size=12),
        st.sampled_from(["", "?sslmode=require", "?host=/tmp", "?password=x", "#frag"]),
    )
    | hostile_text
)
def test_database_urls_parse_or_fail_in_one_line(text: str) -> None:
    try:
        url = DatabaseUrl.parse(text, "DATABASE_URL")
    except PgvaultError as exc:
        assert "\n" not in str(exc)
        return
    _ = url.dbname, url.password, str(url), url.with_dbname("x_restore_1").dbname


# --- manifests --------------------------------------------------------------------------------


@QUICK
@given(st.binary() | json_values.map(lambda v: json.dumps(v).encode()))
@example(b"[" * 100_000)
@example(b'{"a": ' * 50_000)
@example("\ud800".encode("utf-8", "surrogatepass"))
def test_manifest_from_arbitrary_bytes_raises_only_integrity_error(raw: bytes) -> None:
    with contextlib.suppress(IntegrityError):
        _use(Manifest.from_json(raw, expected_key=manifest_key("test", date(2025, 11, 6))))


@QUICK
@given(st.sampled_from(sorted(json.loads(_valid_manifest().to_json()))), json_values)
@example("started_at", "2025-11-06T01:02:03")  # no time zone: unusable against aware times
@example("object_version_id", {"not": "a version"})
@example("environment", "prod")  # a manifest of another environment in this one's folder
def test_manifest_with_one_hostile_field_is_refused_or_usable(field: str, value: object) -> None:
    data = json.loads(_valid_manifest().to_json())
    data[field] = value
    key = manifest_key("test", date(2025, 11, 6))
    try:
        manifest = Manifest.from_json(json.dumps(data).encode(), expected_key=key)
    except IntegrityError:
        return
    _use(manifest)
    assert manifest_key(manifest.environment, manifest.date) == key


# --- restore requests and approvals ---------------------------------------------------------


def _request_dict() -> dict:
    return auth.RestoreRequest(
        id="20251107030000-1a2b3c4d",
        kind="restore",
        environment="test",
        target="production",
        database="app",
        date=date(2025, 11, 6),
        sha256="a" * 64,
        reason="orders corrupted",
        requester="alice",
        created_at=NOW,
        expires_at=NOW + timedelta(hours=4),
    ).to_dict()


@SLOW
@given(
    st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps({"request": v}).encode()),
        st.tuples(st.sampled_from(sorted(_request_dict())), json_values).map(
            lambda fv: json.dumps({"request": {**_request_dict(), fv[0]: fv[1]}}).encode()
        ),
    )
)
@example(json.dumps({"request": {**_request_dict(), "expires_at": "2099-01-01T00:00:00"}}).encode())
@example(b'{"request": ' * 50_000)
def test_stored_request_of_any_shape_is_refused_or_usable(local_env, raw: bytes) -> None:
    v = vault()
    request_id = "20251107030000-1a2b3c4d"
    v.store.put_bytes(auth.request_key("test", request_id), raw)
    try:
        request = auth.read_request(v, request_id)
        auth._refuse_unusable(v, request, NOW)
    except PgvaultError as refused:  # refused: in one line that names the request
        assert "\n" not in str(refused)
        assert f"request {request_id}" in str(refused)
        return
    # usable: the request it was stored as, unexpired, and it reads back as itself
    assert (request.id, request.environment) == (request_id, "test")
    assert request.expires_at > NOW
    assert request.summary()
    assert auth.RestoreRequest.from_dict(request.to_dict()).canonical_bytes() == (
        request.canonical_bytes()
    )


@SLOW
@given(json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=100))
def test_approval_records_of_any_shape_never_count_and_never_crash(
    local_env, tmp_path_factory, raw: bytes
) -> None:
    v = vault()
    request = auth.RestoreRequest.from_dict(_request_dict())
    folder = local_env / "store" / "test" / "audit" / "approvals" / request.id
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    (folder / "forged.json").write_bytes(raw)
    approvers = local_env / "allowed_signers"
    approvers.write_text("")
    assert auth.valid_approvals(v, request, approvers) == ()


@pytest.mark.parametrize(
    "name", ["../../etc", "a/b", "", "Prod", "\uff50\uff52\uff4f\uff44", "x" * 64, "-x"]
)
def test_hostile_environment_names_are_refused(name: str) -> None:
    with pytest.raises(PgvaultError, match="ENVIRONMENT_NAME"):
        load_settings({"ENVIRONMENT_NAME": name} if name else {"ENVIRONMENT_NAME": "é"})


# --- row recovery: --table and --where --------------------------------------------------------

INJECTIONS = [
    "1=1; DROP TABLE victim",
    "1=1); DROP TABLE victim; --",
    ") OR (1=1",
    "true) OR (true",
    "1=1 --",
    "1=1 /*",
    "id = 1'; DELETE FROM items; --",
    "(SELECT pg_sleep(0.01)) IS NOT NULL",
    "id IN (SELECT 1 FROM victim)",
    "nextval('items_seq') > 0",
    "(SELECT count(*) FROM (DELETE FROM victim RETURNING 1) d) >= 0",
    "id > 0 UNION SELECT 1, 'x', '1', 'x'",
    "name = 'ü'; COMMIT; DROP TABLE victim",
    "%s",
    "%(x)s",
    "{}",
    "\x00",
    "\ud800",
    "name LIKE '%x%'",
    "pg_terminate_backend(pg_backend_pid())",
    "lo_import('/etc/passwd') > 0",
    "set_config('default_transaction_read_only', 'off', false) = 'off'",
]
TABLES = [
    "items; DROP TABLE victim",
    'public."items"',
    "public.items WHERE 1=1",
    "pg_catalog.pg_authid",
    "victim\x00",
    "\ud800",
    "public.",
    ".items",
    "a.b.c",
    "ité ms",
]


@pytest.fixture
def row_databases(make_database) -> tuple[str, str]:
    scratch, target = make_database("scratch"), make_database("target")
    for url, rows in ((scratch, 5), (target, 2)):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE SEQUENCE items_seq; CREATE TABLE items (id int PRIMARY KEY, name text);"
                "CREATE TABLE victim (id int); INSERT INTO victim VALUES (1)"
            )
            conn.execute(
                "INSERT INTO items SELECT i, 'n' || i FROM generate_series(1, %s) i", (rows,)
            )
    return scratch, target


def _untouched(url: str, items: int) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT (SELECT count(*) FROM items), (SELECT count(*) FROM victim), "
            "current_setting('default_transaction_read_only')"
        ).fetchone() == (items, 1, "off")


@SLOW
@given(
    table=st.sampled_from(["items", "public.items"])
    | st.sampled_from(TABLES)
    | st.text(max_size=20),
    where=st.none() | st.sampled_from(INJECTIONS) | st.text(max_size=40),
)
def test_row_recovery_table_and_where_cannot_inject_or_write(
    row_databases: tuple[str, str], table: str, where: str | None
) -> None:
    scratch, target = row_databases
    try:
        recovery = plan_row_recovery(
            DatabaseUrl(scratch), DatabaseUrl(target), DAY, table, where=where
        )
    except PgvaultError as exc:
        assert "\n" not in str(exc)
    else:
        assert recovery.table == "public.items"
        assert all(s.startswith('INSERT INTO "public"."items"') for s in recovery.statements)
    assert _untouched(scratch, 5) and _untouched(target, 2)


def test_every_injection_payload_is_refused_or_only_filters(row_databases) -> None:
    scratch, target = row_databases
    outcomes = {}
    for where in INJECTIONS:
        try:
            found = plan_row_recovery(
                DatabaseUrl(scratch), DatabaseUrl(target), DAY, "items", where=where
            )
            outcomes[where] = len(found.statements)
        except PgvaultError:
            outcomes[where] = "refused"
        assert _untouched(scratch, 5) and _untouched(target, 2), where
    assert outcomes["1=1; DROP TABLE victim"] == "refused"
    assert outcomes["(SELECT count(*) FROM (DELETE FROM victim RETURNING 1) d) >= 0"] == "refused"
    assert all(v == "refused" or v <= 3 for v in outcomes.values())
