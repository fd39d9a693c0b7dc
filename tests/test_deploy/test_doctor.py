"""`pgvault doctor` passes a sound deployment and names each broken part of a bad one."""

from __future__ import annotations

import uuid

import pytest

from pgvault_assets.cli import main
from pgvault_assets.engine.storage.storage_setup import init_storage
from pgvault_assets.settings import load_settings

DB_PASSWORD = "doctor-db-pass-8f3k"
SENTRY_KEY = "5f1e2d3c4b5a69788796a5b4c3d2e1f0"
SENTRY_DSN = f"https://{SENTRY_KEY}@o4507.ingest.sentry.io/4242"


def doctor(capsys) -> tuple[int, dict[str, tuple[str, str]], str, str]:
    """Run `pgvault doctor`; return the exit status, `check -> (result, detail)`, out, err."""
    capsys.readouterr()
    code = main(["doctor"])
    out, err = capsys.readouterr()
    rows = {}
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.strip("│ ").split("│")]
        if len(cells) == 3 and cells[1] in ("ok", "warn", "FAIL", "skipped"):
            rows[cells[0]] = (cells[1], cells[2])
    return code, rows, out, err


@pytest.fixture
def deployment(aws_env, make_database, monkeypatch):
    """A sound S3 deployment: storage set up by init-storage, both databases, Sentry."""
    for variable, hint in (("DATABASE_URL", "prod"), ("STAGING_DATABASE_URL", "staging")):
        url = make_database(hint).replace("postgres@", f"postgres:{DB_PASSWORD}@")
        monkeypatch.setenv(variable, url)
    monkeypatch.setenv("SENTRY_DSN", SENTRY_DSN)
    init_storage(load_settings())
    return aws_env


def test_a_sound_deployment_is_all_green_and_exits_0(deployment, capsys):
    code, rows, out, err = doctor(capsys)

    assert code == 0, out + err
    assert {name for name, (result, _) in rows.items() if result != "ok"} == set(), rows
    for name in (
        "database (DATABASE_URL)",
        "database (STAGING_DATABASE_URL)",
        "pg_dump",
        "psql",
        "encryption key",
        "bucket versioning",
        "bucket public access",
        "bucket default encryption",
        "store round trip",
        "dagster instance",
        "sentry",
    ):
        assert name in rows
    assert "fits server" in rows["pg_dump"][1] and "purpose=backup" in rows["encryption key"][1]


def test_the_doctor_prints_no_secret(deployment, capsys):
    _, rows, out, err = doctor(capsys)
    assert DB_PASSWORD not in out + err and SENTRY_KEY not in out + err
    assert rows["sentry"][1].startswith("https://***@o4507.ingest.sentry.io/4242")


def test_the_round_trip_leaves_no_object_or_version_behind(deployment, capsys):
    doctor(capsys)
    listing = deployment.s3.list_object_versions(Bucket=deployment.bucket, Prefix="test/.doctor/")
    assert listing.get("Versions", []) == [] and listing.get("DeleteMarkers", []) == []


def break_database(env, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/gone")


def break_key(env, monkeypatch):
    env.kms.disable_key(KeyId=env.kms_key_arn.rsplit("/", 1)[1])


def break_bucket(env, monkeypatch):
    monkeypatch.setenv("BACKUP_S3_BUCKET", f"pgvault-missing-{uuid.uuid4().hex[:8]}")


def break_versioning(env, monkeypatch):
    env.s3.put_bucket_versioning(Bucket=env.bucket, VersioningConfiguration={"Status": "Suspended"})


@pytest.mark.parametrize(
    ("breakage", "check", "says"),
    [
        (break_database, "database (DATABASE_URL)", "cannot connect to"),
        (break_key, "encryption key", "Disabled"),
        (break_bucket, "bucket", "does not exist; run pgvault init-storage"),
        (break_versioning, "bucket versioning", "suspended"),
    ],
    ids=["unreachable-database", "disabled-key", "missing-bucket", "unversioned-bucket"],
)
def test_each_broken_part_is_named_with_what_to_do_and_exits_1(
    deployment, monkeypatch, capsys, breakage, check, says
):
    breakage(deployment, monkeypatch)
    code, rows, _, err = doctor(capsys)

    assert code == 1
    assert rows[check][0] == "FAIL" and says in rows[check][1], rows
    assert check in err.splitlines()[-1]
    failing = {name for name, (result, _) in rows.items() if result == "FAIL"}
    assert check in failing and "sentry" not in failing


def test_an_unreachable_database_skips_the_tool_checks_instead_of_guessing(
    deployment, monkeypatch, capsys
):
    break_database(deployment, monkeypatch)
    monkeypatch.delenv("STAGING_DATABASE_URL")
    _, rows, _, _ = doctor(capsys)
    assert rows["pg_dump"][0] == "skipped" and rows["psql"][0] == "skipped"


def test_a_malformed_sentry_dsn_fails_without_being_echoed(deployment, monkeypatch, capsys):
    monkeypatch.setenv("SENTRY_DSN", "sentry.example.com/no-key-here")
    code, rows, out, _ = doctor(capsys)
    assert code == 1 and rows["sentry"][0] == "FAIL"
    assert "no-key-here" not in out


def test_a_missing_dagster_home_folder_fails(deployment, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "nowhere"))
    code, rows, _, _ = doctor(capsys)
    assert code == 1 and rows["dagster instance"][0] == "FAIL"


def test_the_embedded_default_is_checked_too(local_env, make_database, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", make_database("prod"))
    code, rows, out, err = doctor(capsys)

    assert code == 0, out + err
    assert rows["local store"][0] == "ok" and rows["store round trip"][0] == "ok"
    assert rows["encryption key"][0] == "ok"
    assert not (local_env / "store" / "test" / ".doctor").exists()


def test_a_local_store_others_can_read_fails(local_env, make_database, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", make_database("prod"))
    (local_env / "store").mkdir(mode=0o755)
    (local_env / "store").chmod(0o755)
    code, rows, _, _ = doctor(capsys)
    assert code == 1
    assert rows["local store"][0] == "FAIL" and "chmod go-rwx" in rows["local store"][1]
