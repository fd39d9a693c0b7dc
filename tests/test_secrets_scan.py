"""No secret ever leaves pgvault: every command runs with real secrets set, then everything
pgvault wrote or sent anywhere is scanned for them.

The secrets are a password in DATABASE_URL (percent-encoded, so both spellings are searched),
another in STAGING_DATABASE_URL, AWS access keys, the Sentry DSN's key, a webhook token and a
PagerDuty routing key.
The scan covers each command's output, every file under the test's folder (the Dagster
instance's SQLite event log and compute logs, the local store, reports), every version of
every object in the bucket (manifests, audit records, reports, locks), Dagster's event log
read through its API, the metrics pgvault exports, and the bodies that reached Sentry, the
webhook and PagerDuty (less the routing key field the Events API needs). It must find none.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sentry_sdk
from dagster import DagsterInstance, RunsFilter
from test_defs.http_capture import Captured, capture_http
from test_defs.run_failure import sense_run_failure

from pgvault_assets.engine.backup.backup import backup_database
from pgvault_assets.engine.basics.clock import latest_complete_day, utcnow
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.settings import DatabaseUrl, load_settings
from tests.conftest import AwsEnv
from tests.test_recovery import conftest as recovery_fixtures
from tests.test_recovery.conftest import Approvers

DB_PASSWORD = "Db-Pa55%40word-SCAN-7f3a"  # percent-encoded '@' in the URL
STAGING_PASSWORD = "Stg-Pa55word-SCAN-91c2"
AWS_ACCESS_KEY_ID = "AKIASCANSECRETS12345"
AWS_SECRET_ACCESS_KEY = "scan/Secret+Access+Key/0123456789abcdefXYZ"
SENTRY_KEY = "sentrykeyscan0123456789abcdef"
WEBHOOK_TOKEN = "T0KEN-scan-webhook-9d8e7f"
ROUTING_KEY = "PdScanRoutingKey0123456789abcdef"
MAINTENANCE_JOB = "weekly_maintenance_job"


def with_password(url: str, password: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@", 1)


def secret_spellings() -> dict[str, bytes]:
    """Each secret as it could appear: raw, percent-decoded, and base64 of the raw value."""
    values = {
        "database password": DB_PASSWORD,
        "database password (decoded)": DB_PASSWORD.replace("%40", "@"),
        "staging password": STAGING_PASSWORD,
        "AWS access key id": AWS_ACCESS_KEY_ID,
        "AWS secret access key": AWS_SECRET_ACCESS_KEY,
        "Sentry DSN key": SENTRY_KEY,
        "webhook token": WEBHOOK_TOKEN,
        "PagerDuty routing key": ROUTING_KEY,
    }
    spellings = {name: value.encode() for name, value in values.items()}
    for name, value in values.items():
        spellings[f"{name} (base64)"] = base64.b64encode(value.encode())
    return spellings


class Scan:
    """Everything pgvault produced, by where it was found."""

    def __init__(self) -> None:
        self.places: dict[str, bytes] = {}

    def add(self, where: str, data: bytes | str) -> None:
        self.places[where] = data.encode() if isinstance(data, str) else data

    def leaks(self) -> list[str]:
        return [
            f"{name} in {where}"
            for where, data in self.places.items()
            for name, secret in secret_spellings().items()
            if secret in data
        ]


approvers = recovery_fixtures.approvers


@pytest.fixture
def captured() -> Iterator[Captured]:
    with capture_http() as capture:
        yield capture
    sentry_sdk.init()


@pytest.fixture
def pagerduty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Captured]:
    """PagerDuty's Events API, over HTTPS (its client speaks nothing else)."""
    with capture_http(tmp_path_factory.mktemp("pagerduty")) as capture:
        yield capture


@pytest.fixture
def secret_env(
    aws_env: AwsEnv,
    make_database: Callable[..., str],
    awkward_template: str,
    approvers: Approvers,
    captured: Captured,
    pagerduty: Captured,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """pgvault on moto with every kind of secret configured, in this process and for children."""
    source = make_database("scansrc", template=awkward_template)
    staging = make_database("scanstg")
    # moto accepts any credentials; these stand in for real ones.
    settings = {
        "DATABASE_URL": with_password(source, DB_PASSWORD),
        "STAGING_DATABASE_URL": with_password(staging, STAGING_PASSWORD),
        "AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET_ACCESS_KEY,
        "SENTRY_DSN": f"http://{SENTRY_KEY}@127.0.0.1:{captured.port}/1",
        "ALERT_WEBHOOK_URL": f"http://127.0.0.1:{captured.port}/hook/{WEBHOOK_TOKEN}",
        "PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
        "PAGERDUTY_EVENTS_URL": pagerduty.events_url,
        "SSL_CERT_FILE": str(pagerduty.cert_file),
        "BACKUP_MAX_RETRIES": "0",
        "BACKUP_RETRY_DELAY_SECONDS": "0",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)


def pgvault(env: dict[str, str], scan: Scan, *argv: str, expect: set[int] | None = None) -> str:
    """Run `pgvault ARGV` in a process of its own, as an operator would; record its output.

    `expect` is the set of acceptable exit statuses (default: success only).
    """
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pgvault_assets.cli import main; raise SystemExit(main())",
            *argv,
        ],
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    label = "pgvault " + " ".join(argv)
    output = (result.stdout + result.stderr).decode()
    scan.add(f"output of `{label}`", output)
    assert result.returncode in (expect or {0}), f"{label} exited {result.returncode}:\n{output}"
    assert "Traceback" not in output and "Stack Trace" not in output, output
    return output


def scan_dagster(scan: Scan) -> int:
    """Dagster's event log, as its API hands it to the UI; returns how many runs it holds."""
    with DagsterInstance.get() as instance:
        runs = instance.get_runs(RunsFilter())
        for run in runs:
            records = instance.all_logs(run.run_id)
            scan.add(
                f"Dagster event log of run {run.run_id[:8]}",
                "\n".join(
                    json.dumps(
                        {
                            "message": record.user_message,
                            "event": repr(record.dagster_event),
                            "tags": run.tags,
                        },
                        default=str,
                    )
                    for record in records
                ),
            )
        return len(runs)


def alert_on_failed_runs(scan: Scan) -> int:
    """The failure sensor over every failed run, as the daemon would; returns how many."""
    with DagsterInstance.get() as instance:
        failed = sum(sense_run_failure(instance, run.run_id) for run in instance.get_runs())
    sentry_sdk.flush()
    return failed


def scan_files(scan: Scan, root: Path, *, skip: set[Path]) -> int:
    count = 0
    for path in sorted(root.rglob("*")):
        if path.is_file() and path not in skip:
            scan.add(f"file {path.relative_to(root)}", path.read_bytes())
            count += 1
    return count


def scan_bucket(scan: Scan, aws_env: AwsEnv) -> list[str]:
    keys = []
    pages = aws_env.s3.get_paginator("list_object_versions").paginate(Bucket=aws_env.bucket)
    for page in pages:
        for item in page.get("Versions", []):
            body = aws_env.s3.get_object(
                Bucket=aws_env.bucket, Key=item["Key"], VersionId=item["VersionId"]
            )["Body"].read()
            scan.add(f"s3://{aws_env.bucket}/{item['Key']}?versionId={item['VersionId']}", body)
            keys.append(item["Key"])
    return keys


def test_every_command_with_secrets_set_leaves_no_secret_anywhere(
    secret_env: dict[str, str],
    aws_env: AwsEnv,
    approvers: Approvers,
    captured: Captured,
    pagerduty: Captured,
    local_env: Path,
) -> None:
    scan = Scan()
    env = secret_env
    day = latest_complete_day(utcnow()).isoformat()
    # The drill restores last month's backup: make one through the engine, same secrets set.
    last_month = (utcnow().date().replace(day=1) - timedelta(days=1)).replace(day=1)
    backup_database(
        Vault.from_settings(load_settings()),
        DatabaseUrl.parse(env["DATABASE_URL"], "DATABASE_URL"),
        last_month,
        now=lambda: utcnow().replace(year=last_month.year, month=last_month.month, day=2),
    )

    def run(*argv: str, expect: set[int] | None = None, **changes: str) -> str:
        return pgvault({**env, **changes}, scan, *argv, expect=expect)

    run("init-storage")
    run("doctor", expect={0, 1})  # moto lacks some bucket settings; the table is what counts
    assert "backing up postgresql://postgres@127.0.0.1" in run("backup", "--prove-restorable")
    run("list-backups")
    run("verify-backup", "--date", day)
    run("status", expect={0, 1})
    run("restore-from-backup", "--date", day, "--target", "staging", "--verify")
    run("check-database-integrity", "--database", "staging", "--date", day)
    run("compare", "--source", "production", "--target", "staging")
    run("rollback-restore", "--target", "staging")
    run("restore-from-backup", "--date", day, "--target", "staging")
    run("recover-rows", "--date", day, "--table", "public.users", "--target", "staging")
    run("drill")

    # A production restore with its request and two approvals fills the audit trail.
    requested = run(
        "request-restore", "--date", day, "--target", "production", "--reason", "secret scan"
    )
    request_id = requested.split()[0]
    run("approve-restore", request_id, "--key", str(approvers.alice))
    run("approve-restore", request_id, "--key", str(approvers.bob))
    run(
        "restore-from-backup",
        *("--date", day, "--target", "production", "--request", request_id),
        "--skip-confirmation",
    )
    run("audit")
    run("audit", "--json")
    run("cleanup", "--dry-run")
    run("cleanup")
    run("metrics", "write", str(local_env / "pgvault.prom"))  # scanned with the files
    run("alerts", "test", "--resolve")

    # The weekly maintenance job, as the schedule runs it, writes the health report.
    maintenance = subprocess.run(
        (
            str(Path(sys.executable).with_name("dagster")),
            "job",
            "execute",
            "-m",
            "pgvault_assets.definitions",
            "-j",
            MAINTENANCE_JOB,
        ),
        env=env,
        capture_output=True,
        check=False,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    output = (maintenance.stdout + maintenance.stderr).decode()
    scan.add("output of `dagster job execute -j weekly_maintenance_job`", output)
    assert maintenance.returncode == 0, output[-3000:]

    # Failures carry the most detail, so that is where secrets slip out: each is reported.
    missing = env["DATABASE_URL"].rsplit("/", 1)[0] + "/pgvault_test_missing"
    run("backup", expect={1, 2}, DATABASE_URL=missing)
    run("check-database-integrity", "--database", "production", expect={1, 2}, DATABASE_URL=missing)
    run("doctor", expect={1}, DATABASE_URL=f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:1/x")
    run("list-backups", expect={1, 2}, BACKUP_S3_BUCKET="pgvault-test-no-such-bucket")
    pagerduty.statuses.extend([500] * 4)  # every attempt of the first page refused
    assert "PagerDuty did not accept" in run("alerts", "test", expect={2})
    assert alert_on_failed_runs(scan) >= 1

    assert scan_dagster(scan) >= 3  # the backups, the failed backup, the maintenance job
    files = scan_files(scan, local_env, skip=set((local_env / "keys").rglob("*")))
    keys = scan_bucket(scan, aws_env)
    for index, (path, body) in enumerate(captured.requests):
        if "/envelope/" in path:
            # The envelope's header names the DSN to Sentry itself, its destination; the items
            # are what Sentry stores and shows, and they must be clean.
            body = body.split(b"\n", 1)[1]
        scan.add(f"HTTP body #{index} to {path.replace(WEBHOOK_TOKEN, '<token>')}", body)
    pages = pagerduty.pagerduty_events()
    for index, event in enumerate(pages):
        # The routing key addresses the event to its service, as the DSN does to Sentry;
        # everything else (summary, custom_details, links) must be clean.
        assert event.pop("routing_key") == ROUTING_KEY
        scan.add(f"PagerDuty event #{index}", json.dumps(event))

    # The scan saw the real thing: events reached Sentry and the webhook, audit records and
    # a report reached the bucket, the Dagster instance holds runs.
    assert captured.events(), "no Sentry event arrived"
    assert any(WEBHOOK_TOKEN in path for path, _ in captured.requests), "no webhook arrived"
    actions = {event["event_action"] for event in pages}
    assert actions == {"trigger", "resolve"}, "no page or no resolve reached PagerDuty"
    assert any(event.get("payload", {}).get("class") == "backup_failed" for event in pages), (
        "the failed backup did not page"
    )
    assert (local_env / "pgvault.prom").read_text().count("pgvault_backup_last_success") > 1
    assert any("/audit/" in key for key in keys) and any("/reports/" in key for key in keys)
    assert any(key.endswith("manifest.json") for key in keys)
    assert files > 5
    assert scan.leaks() == []


def test_the_local_key_never_leaves_its_file(
    local_env: Path, awkward_database: str, make_database: Callable[..., str]
) -> None:
    """On the embedded default the key file is the secret: raw, hex or base64, it is nowhere else."""
    env = {
        **os.environ,
        "DATABASE_URL": with_password(awkward_database, DB_PASSWORD),
        "STAGING_DATABASE_URL": with_password(make_database("scanstg"), STAGING_PASSWORD),
    }
    scan = Scan()
    day = latest_complete_day(utcnow()).isoformat()
    for argv in (
        ("backup", "--prove-restorable"),
        ("list-backups",),
        ("verify-backup", "--date", day),
        ("restore-from-backup", "--date", day, "--target", "staging", "--verify"),
    ):
        pgvault(env, scan, *argv)
    pgvault(env, scan, "doctor", expect={0, 1})
    key_file = Path(os.environ["BACKUP_LOCAL_KEY_FILE"])
    key = key_file.read_bytes()
    assert len(key) == 32
    assert scan_files(scan, local_env, skip={key_file}) > 5
    spellings = (key, key.hex().encode(), base64.b64encode(key), base64.urlsafe_b64encode(key))
    found = [where for where, data in scan.places.items() for s in spellings if s in data]
    assert found == []
    assert scan.leaks() == []


def test_redact_masks_the_pagerduty_routing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any text pgvault prints, logs or sends passes through redact: the routing key is one of
    the secrets it knows, whichever path the text took."""
    from pgvault_assets.redact import REDACTED, redact

    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
    assert redact(f"Events API refused key {ROUTING_KEY}: 400") == (
        f"Events API refused key {REDACTED}: 400"
    )
