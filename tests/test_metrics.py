"""Prometheus metrics as a scraper sees them: the names the rules and dashboards use, textfile
output promtool accepts, a real Prometheus scraping `pgvault metrics serve`, cheap scrapes,
and the shipped rules proven by promtool."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml

from pgvault_assets.cli.exposition import families
from pgvault_assets.defs.run_episodes import HISTORY_KINDS, RunHistory
from pgvault_assets.engine.basics import names
from pgvault_assets.engine.monitoring.metrics import DatabaseFigures, MetricsReader, Snapshot
from pgvault_assets.engine.recovery.restore_check import (
    RestoreProof,
    record_restore_verified,
    restore_verified_dates,
    verify_restorable,
)
from pgvault_assets.errors import PgvaultError
from pgvault_assets.settings import DatabaseUrl, load_settings
from tests.test_engine.helpers import DAY, back_up, vault

PGVAULT = Path(sys.executable).with_name("pgvault")
REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
AMTOOL = shutil.which("amtool")
needs_prometheus = pytest.mark.skipif(
    PROMTOOL is None or PROMETHEUS is None,
    reason="Debian's prometheus package is missing; run scripts/setup.sh",
)
SAMPLE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def samples(text: str) -> dict[tuple[str, str], float]:
    """(name, labels as written) -> value, from Prometheus' text format."""
    found = {}
    for line in text.splitlines():
        if match := SAMPLE.match(line):
            found[(match["name"], match["labels"])] = float(match["value"])
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, what: str, seconds: float = 60) -> bytes:
    """The body of `url` once it answers 200; polls, failing early if `process` exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, (
            f"{what} exited: {process.stderr.read() if process.stderr else ''}"
        )
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise AssertionError(f"{what} did not answer {url}")


@contextlib.contextmanager
def running(argv: list[str], what: str) -> Iterator[subprocess.Popen]:
    """A process for the test's duration, stopped (SIGTERM, then waited for) afterwards."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.returncode in (0, -signal.SIGTERM), f"{what} exited {process.returncode}"


@needs_prometheus
def test_metrics_write_gives_a_textfile_promtool_accepts_with_the_last_backup(
    local_env, make_database, tmp_path
):
    manifest = back_up(make_database())
    target = tmp_path / "textfile" / "pgvault.prom"
    target.parent.mkdir()

    result = subprocess.run(
        [PGVAULT, "metrics", "write", str(target)], capture_output=True, text=True, check=True
    )

    assert f"wrote {target}" in result.stdout
    assert [p.name for p in target.parent.iterdir()] == ["pgvault.prom"]  # no temporary left
    text = target.read_text()
    found = samples(text)
    where = 'database="default",environment="test"'
    assert found[("pgvault_backup_last_success_timestamp_seconds", where)] == pytest.approx(
        manifest.finished_at.timestamp()
    )
    assert found[("pgvault_backup_last_size_bytes", where)] == manifest.size_bytes
    assert found[("pgvault_backups_stored", where)] == 1
    assert found[("pgvault_storage_bytes", where)] == manifest.size_bytes
    assert found[("pgvault_alerts_open", f'{where},kind="backup_stale"')] == 0
    checked = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_restore_proof_and_a_stale_database_show_in_the_figures(local_env, make_database):
    manifest = back_up(make_database())
    proven_at = manifest.finished_at + timedelta(hours=1)
    record_restore_verified(
        vault(), RestoreProof(manifest.date, proven_at, "scratch", 1, 3, 0.5, manifest.sha256)
    )
    later = [manifest.finished_at + timedelta(hours=37)]
    reader = MetricsReader(load_settings(), os.environ, clock=lambda: later[0])

    (figures,) = reader.read().databases
    assert figures.restore_proof_last_success_at == proven_at
    assert figures.open_alerts(later[0])["backup_stale"] == 1
    assert figures.open_alerts(manifest.finished_at + timedelta(hours=1))["backup_stale"] == 0


def test_a_failed_restore_proof_is_the_last_result_and_never_counts_as_verified(
    local_env, make_database
):
    manifest = back_up(make_database())
    proof_server = DatabaseUrl.parse(make_database("proof"), "RESTORE_CHECK_DATABASE_URL")
    proven_at = manifest.finished_at + timedelta(hours=1)
    record_restore_verified(
        vault(), RestoreProof(manifest.date, proven_at, "scratch", 1, 3, 0.5, manifest.sha256)
    )
    store = vault().store
    stored = store.root / manifest.object_key  # the disk flips a byte of the object
    damaged = bytearray(stored.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    stored.write_bytes(bytes(damaged))
    failed_at = proven_at + timedelta(days=1)

    with pytest.raises(PgvaultError):
        verify_restorable(vault(), manifest.date, proof_server, now=lambda: failed_at)

    failure = json.loads(store.get_bytes(names.restore_failed_key("test", manifest.date)))
    assert failure["failed_at"] == failed_at.isoformat() and failure["reason"]
    # The earlier proof of the same object still counts; the failure never does.
    assert restore_verified_dates(vault()) == {manifest.date: proven_at}
    reader = MetricsReader(load_settings(), os.environ, clock=lambda: failed_at)
    (figures,) = reader.read().databases
    assert figures.restore_proof_last_success_at == proven_at
    assert figures.restore_proof_last_attempt_at == failed_at
    assert figures.restore_proof_last_passed is False
    assert figures.open_alerts(failed_at)["restorable"] == 1
    found = samples(exposition(reader.read()))
    where = 'database="default",environment="test"'
    assert found[("pgvault_restore_proof_last_result", where)] == 0
    assert found[("pgvault_restore_proof_last_attempt_timestamp_seconds", where)] == (
        failed_at.timestamp()
    )
    assert found[("pgvault_alerts_open", f'{where},kind="restorable"')] == 1

    record_restore_verified(  # proven again later: the last result is a pass
        vault(),
        RestoreProof(manifest.date, failed_at + timedelta(hours=1), "s", 1, 3, 0.5, "0" * 64),
    )
    later = MetricsReader(load_settings(), os.environ, clock=lambda: failed_at).read()
    assert later.databases[0].restore_proof_last_passed is True
    assert samples(exposition(later))[("pgvault_restore_proof_last_result", where)] == 1


def exposition(snapshot: Snapshot) -> str:
    """The snapshot in Prometheus' text format, as `metrics serve` answers a scrape."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.registry import Collector

    class Fixed(Collector):
        def collect(self):
            return families(snapshot, RunHistory())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    return generate_latest(registry).decode()


class CountingStore:
    """The store, counting what a scrape asks of it."""

    def __init__(self, store) -> None:
        self.store = store
        self.lists = 0
        self.reads = 0

    def list(self, prefix: str):
        self.lists += 1
        return self.store.list(prefix)

    def get_bytes(self, key: str):
        self.reads += 1
        return self.store.get_bytes(key)


def test_scrapes_list_once_per_refresh_and_read_each_manifest_once(local_env, make_database):
    url = make_database()
    back_up(url, day=DAY - timedelta(days=1))
    back_up(url)
    now = [datetime(2026, 3, 10, 12, 0, tzinfo=UTC)]
    reader = MetricsReader(
        load_settings(), os.environ, refresh=timedelta(seconds=60), clock=lambda: now[0]
    )
    (database,) = reader.databases
    counting = CountingStore(database.vault.store)
    database.vault.store = counting

    assert reader.read().databases[0].backups_stored == 2
    assert (counting.lists, counting.reads) == (1, 2)
    for _ in range(3):  # scrapes every 15 s inside the refresh: nothing read at all
        now[0] += timedelta(seconds=15)
        reader.read()
    assert (counting.lists, counting.reads) == (1, 2)
    now[0] += timedelta(seconds=15)  # a minute on: listed again, manifests from the cache
    assert reader.read().databases[0].backups_stored == 2
    assert (counting.lists, counting.reads) == (2, 2)


@needs_prometheus
def test_prometheus_scrapes_metrics_serve_and_queries_the_last_backup(
    local_env, make_database, tmp_path
):
    manifest = back_up(make_database())
    pgvault_port, prometheus_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: pgvault\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{pgvault_port}']}}]\n"
    )
    serve = [PGVAULT, "metrics", "serve", "--port", str(pgvault_port)]
    prometheus = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
    ]
    api = f"http://127.0.0.1:{prometheus_port}"
    query = 'pgvault_backup_last_success_timestamp_seconds{environment="test",database="default"}'
    with (
        running(serve, "pgvault metrics serve") as server,
        running(prometheus, "prometheus") as prom,
    ):
        wait_for(f"http://127.0.0.1:{pgvault_port}/metrics", server, "pgvault metrics serve")
        wait_for(f"{api}/-/ready", prom, "prometheus")
        deadline = time.monotonic() + 60
        result: list = []
        while not result and time.monotonic() < deadline:
            body = wait_for(
                f"{api}/api/v1/query?query={urllib.parse.quote(query)}", prom, "prometheus"
            )
            result = json.loads(body)["data"]["result"]
            if not result:
                time.sleep(0.5)  # the next scrape is due within a second
        assert result, "prometheus never scraped the backup's timestamp"
        (series,) = result
        assert series["metric"]["job"] == "pgvault"
        assert float(series["value"][1]) == pytest.approx(manifest.finished_at.timestamp())


@needs_prometheus
def test_the_shipped_rules_pass_promtool_check_and_their_unit_tests():
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", "pgvault.rules.yml"],
        cwd=RULES,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 10 rules found" in checked.stdout
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", "pgvault.rules.test.yml"],
        cwd=RULES,
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_metrics_serve_refuses_a_port_it_cannot_use(local_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [PGVAULT, "metrics", "serve", "--port", str(port)], capture_output=True, text=True
        )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0]


def test_metrics_write_refuses_a_missing_folder(local_env, tmp_path):
    result = subprocess.run(
        [PGVAULT, "metrics", "write", str(tmp_path / "absent" / "pgvault.prom")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: {tmp_path / 'absent'} is not a directory; create it or write elsewhere"
    )


def test_the_dashboard_and_the_rules_ask_only_for_metrics_pgvault_emits():
    snapshot = Snapshot(
        "test",
        datetime(2026, 3, 10, tzinfo=UTC),
        (DatabaseFigures("default"),),
        storage_budget_bytes=1,
    )
    emitted = {family.name for family in families(snapshot, RunHistory())}
    dashboard = json.loads((REPO / "deploy" / "grafana" / "pgvault-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    texts = [*exprs, (RULES / "pgvault.rules.yml").read_text()]
    asked = {name for text in texts for name in re.findall(r"\bpgvault_[a-z_]+", text)}
    assert asked <= emitted, asked - emitted
    assert {
        "pgvault_backup_last_success_timestamp_seconds",
        "pgvault_backup_last_size_bytes",
        "pgvault_backup_last_duration_seconds",
        "pgvault_restore_proof_last_success_timestamp_seconds",
        "pgvault_backups_stored",
        "pgvault_storage_bytes",
        "pgvault_pitr_window_end_timestamp_seconds",
        "pgvault_pitr_archive_lag_seconds",
        "pgvault_drill_last_rto_seconds",
        "pgvault_alerts_open",
    } <= emitted


@pytest.mark.skipif(
    AMTOOL is None, reason="Debian's prometheus-alertmanager is missing; run scripts/setup.sh"
)
def test_amtool_accepts_the_alertmanager_example_and_routes_critical_to_pagerduty_and_slack():
    checked = subprocess.run(
        [AMTOOL, "check-config", "alertmanager.yml"], cwd=RULES, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout and "2 receivers" in checked.stdout

    def receivers(*labels: str) -> str:
        routed = subprocess.run(
            [AMTOOL, "config", "routes", "test", "--config.file=alertmanager.yml", *labels],
            cwd=RULES,
            capture_output=True,
            text=True,
        )
        assert routed.returncode == 0, routed.stdout + routed.stderr
        return routed.stdout.strip()

    rules = yaml.safe_load((RULES / "pgvault.rules.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        labels = [f"alertname={rule['alert']}", f"severity={rule['labels']['severity']}"]
        expected = {
            "critical": "pagerduty-oncall,slack-ops-alerts",
            "warning": "slack-ops-alerts",
        }[rule["labels"]["severity"]]
        assert receivers(*labels) == expected, rule["alert"]


def test_the_dashboard_is_a_grafana_dashboard_over_metrics_write_output(
    local_env, make_database, tmp_path
):
    """Every panel has a datasource and at least one query, each query asks only for metric
    names `pgvault metrics write` actually wrote (not merely declared), and the layout fits
    Grafana's 24-column grid."""
    back_up(make_database())
    target = tmp_path / "pgvault.prom"
    settings_env = {**os.environ, "BACKUP_STORAGE_BUDGET_BYTES": str(10**12)}
    subprocess.run(
        [PGVAULT, "metrics", "write", str(target)],
        env=settings_env,
        check=True,
        capture_output=True,
    )
    written = set(re.findall(r"^# TYPE (pgvault_[a-z_]+) gauge$", target.read_text(), re.M))

    dashboard = json.loads((REPO / "deploy" / "grafana" / "pgvault-dashboard.json").read_text())
    assert isinstance(dashboard["title"], str) and dashboard["uid"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 30
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "environment", "database"} <= variables
    panels = dashboard["panels"]
    assert panels and len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["type"] in {"stat", "table", "timeseries", "gauge", "bargauge"}, panel
        assert panel["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], f"panel {panel['title']} queries nothing"
        for query in panel["targets"]:
            assert query["refId"] and query["expr"]
            asked = set(re.findall(r"\bpgvault_[a-z_]+", query["expr"]))
            assert asked and asked <= written, (panel["title"], asked - written)
            for variable in re.findall(r"\$(\w+)", query["expr"]):
                assert variable in variables, (panel["title"], variable)


def test_the_alertmanager_example_pages_critical_and_posts_everything_to_slack():
    config = yaml.safe_load((RULES / "alertmanager.yml").read_text())
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    page, rest = config["route"]["routes"]
    assert page["receiver"] == "pagerduty-oncall" and 'severity = "critical"' in page["matchers"]
    assert page["continue"] is True and rest["receiver"] == "slack-ops-alerts"
    assert receivers["pagerduty-oncall"]["pagerduty_configs"][0]["send_resolved"] is True
    assert receivers["slack-ops-alerts"]["slack_configs"][0]["channel"] == "#ops-alerts"
    severities = set(re.findall(r"severity: (\w+)", (RULES / "pgvault.rules.yml").read_text()))
    assert severities == {"critical", "warning"}


def raised_alert_kinds() -> set[str]:
    """Every episode kind the sensors and the alert path raise, asked of the code that raises
    them (resolved notices, which end episodes, are not kinds of trouble)."""
    from dagster import AssetCheckEvaluation, AssetCheckSeverity

    from pgvault_assets.defs.alerting import (
        failed_check_alert,
        failed_run_alert,
        staleness_step,
    )
    from pgvault_assets.defs.backup import BACKUP_CHECK_NAMES
    from pgvault_assets.defs.naming import BACKUP_KEY
    from pgvault_assets.defs.recovery import drill_alert
    from pgvault_assets.engine.monitoring.report import FailedRun, HealthFigures, health_warnings
    from pgvault_assets.engine.recovery.drill import DrillReport

    now = datetime(2026, 3, 10, tzinfo=UTC)
    kinds = {staleness_step(None, None, now)[0].kind}  # type: ignore[union-attr]
    kinds |= {failed_run_alert(r, "2026-03-09", "r").kind for r in ("S3 refused", "pg_dump")}
    for check in BACKUP_CHECK_NAMES:
        for severity in (AssetCheckSeverity.ERROR, AssetCheckSeverity.WARN):
            failed = AssetCheckEvaluation(BACKUP_KEY, check, passed=False, severity=severity)
            kinds.add(failed_check_alert(failed, "2026-03-09").kind)  # type: ignore[union-attr]
    drill = DrillReport("test", now, now.date(), "newest", "0" * 64, 1.0, {"restore": 5.0})
    kinds |= {
        drill_alert(drill, "r").kind,
        drill_alert(dataclasses.replace(drill, failure="broke"), "r").kind,
    }
    unhealthy = HealthFigures(now.date(), 30, 0, (FailedRun(now.date(), "x"),), None, 2, None, None)
    kinds |= {kind for kind, _ in health_warnings(unhealthy, storage_budget_bytes=1)}
    sources = [
        REPO / "pgvault_assets" / "engine" / "pitr" / "archive.py",
        REPO / "pgvault_assets" / "defs" / "pitr.py",
    ]
    kinds |= {
        kind
        for source in sources
        for kind in re.findall(r'\(\s*"(pitr_[a-z_]+)",\s*f?"', source.read_text())
    }
    literal = re.compile(r'Alert\(\s*"([a-z_]+)",')
    for source in (REPO / "pgvault_assets").rglob("*.py"):
        kinds |= set(literal.findall(source.read_text()))
    return {kind for kind in kinds if not kind.endswith("_resolved")}


def test_alerts_open_has_a_series_for_every_alert_kind_raised():
    """Each kind the alert path raises is exported, from the store or from Dagster's run and
    check history (0 when healthy, so absent means "not exported", never "fine"), or named as
    one nothing records."""
    from pgvault_assets.engine.monitoring.metrics import (
        DATABASE_KINDS,
        ENVIRONMENT_KINDS,
        PITR_KINDS,
        RUN_HISTORY_KINDS,
        PitrFigures,
    )

    raised = raised_alert_kinds()
    assert {"backup_stale", "restorable", "drill_over_objective", "pitr_archive_gap"} <= raised
    assert {"pitr_status_unreadable", "success_rate_low", "pagerduty_failed"} <= raised
    exported = set(DATABASE_KINDS) | set(PITR_KINDS) | set(ENVIRONMENT_KINDS) | set(HISTORY_KINDS)
    assert {"backup_failed", "checksum_mismatch", "success_rate_low"} <= exported
    assert raised <= exported | set(RUN_HISTORY_KINDS), raised - exported - set(RUN_HISTORY_KINDS)
    assert not exported & set(RUN_HISTORY_KINDS)

    now = datetime(2026, 3, 10, tzinfo=UTC)
    healthy = DatabaseFigures("default", last_success_at=now, pitr=PitrFigures(now, now, 0.0))
    snapshot = Snapshot("test", now, (healthy,), storage_budget_bytes=1)
    (alerts,) = [
        family
        for family in families(snapshot, RunHistory())
        if family.name == "pgvault_alerts_open"
    ]
    series = {sample.labels["kind"]: sample.value for sample in alerts.samples}
    assert set(series) == exported and set(series.values()) == {0}


def test_alerts_open_counts_each_kind_from_the_stores_records(local_env, make_database):
    """A failed drill, a slow and shrunken backup and a failed restore proof, as written by
    pgvault itself, each open their own kind."""
    from pgvault_assets.engine.monitoring.metrics import PitrFigures
    from pgvault_assets.engine.recovery.drill import DrillReport, store_report
    from pgvault_assets.engine.recovery.restore_check import record_restore_failed

    url = make_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE big AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g"
        )
    back_up(url, day=DAY - timedelta(days=1))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE big")
    newest = back_up(url)
    at = newest.finished_at + timedelta(hours=1)
    record_restore_failed(vault(), newest.date, at, newest.sha256, "row counts differ")
    drill = DrillReport("test", at, newest.date, "newest", newest.sha256, 1.0, {"restore": 5.0})
    store_report(vault(), drill)
    lagging = PitrFigures(None, None, 1200.0, ("pitr_archive_lag",))
    settings = dataclasses.replace(load_settings(), storage_budget_bytes=1)
    reader = MetricsReader(settings, os.environ, clock=lambda: at, pitr=lambda _: lagging)

    found = samples(exposition(reader.read()))
    where = 'database="default",environment="test"'
    opened = {
        kind
        for (name, labels), value in found.items()
        if name == "pgvault_alerts_open" and value == 1
        for kind in re.findall(r'kind="([a-z_]+)"', labels)
    }
    assert opened == {
        "restorable",
        "drill_over_objective",
        "size_not_shrunk",
        "pitr_archive_lag",
        "storage_over_budget",
    }
    assert found[("pgvault_alerts_open", f'{where},kind="backup_stale"')] == 0
