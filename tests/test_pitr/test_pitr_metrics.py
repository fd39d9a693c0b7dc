"""The PITR metrics against a real pgBackRest stanza: the window and the lag Prometheus sees
are the ones `pgvault pitr status` prints, healthy and while archiving fails."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pgvault_assets.engine.pitr.archive import pitr_status
from pgvault_assets.settings import load_settings
from tests.test_metrics import samples
from tests.test_pitr.conftest import ArchivingServer, pgvault, wait_until

WHERE = 'database="default",environment="test"'
PRINTED_WINDOW = re.compile(
    r"recoverable window: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)Z \.\. (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)Z"
)


def exported(tmp_path: Path) -> dict[tuple[str, str], float]:
    target = tmp_path / "pgvault.prom"
    assert pgvault("metrics", "write", str(target)) == 0
    return samples(target.read_text())


def printed_window(capsys: pytest.CaptureFixture[str]) -> tuple[float, float]:
    capsys.readouterr()
    pgvault("pitr", "status")
    match = PRINTED_WINDOW.search(capsys.readouterr().out)
    assert match, "pitr status printed no window"
    start, end = (
        datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
        for text in match.groups()
    )
    return start, end


def test_the_exported_window_and_lag_are_what_pitr_status_says(
    pitr_server: ArchivingServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pitr_server.hold_still()
    pitr_server.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
    pitr_server.switch_and_wait()

    found = exported(tmp_path)
    start, end = printed_window(capsys)
    # pitr status prints whole seconds; the metrics carry pgBackRest's own instants.
    assert found[("pgvault_pitr_window_start_timestamp_seconds", WHERE)] == pytest.approx(
        start, abs=1
    )
    assert found[("pgvault_pitr_window_end_timestamp_seconds", WHERE)] == pytest.approx(end, abs=1)
    window = pitr_status(load_settings()).window
    assert window is not None and window.latest is not None and window.earliest is not None
    assert found[("pgvault_pitr_window_end_timestamp_seconds", WHERE)] == window.latest.timestamp()
    assert found[("pgvault_pitr_archive_lag_seconds", WHERE)] == 0  # nothing waits
    pitr_kinds = {
        labels: value
        for (name, labels), value in found.items()
        if name == "pgvault_alerts_open" and 'kind="pitr_' in labels
    }
    assert len(pitr_kinds) == 7 and set(pitr_kinds.values()) == {0}

    # The repository refuses new segments: archiving fails and WAL waits, growing the lag.
    archive = pitr_server.pitr_dir / "repo" / "archive"
    modes = {p: p.stat().st_mode for p in archive.rglob("*") if p.is_dir()}
    for folder in modes:
        folder.chmod(0o555)
    try:
        pitr_server.sql("INSERT INTO t VALUES (2)")
        pitr_server.sql("SELECT pg_logical_emit_message(false, 'pgvault-test', 'switch')")
        pitr_server.sql("SELECT pg_switch_wal()")
        wait_until(
            lambda: pitr_server.sql("SELECT failed_count FROM pg_stat_archiver")[0][0] > 0,
            "archiving to fail",
        )
        settings = load_settings()
        before = pitr_status(settings).archiver.lag
        found = exported(tmp_path)
        after = pitr_status(settings).archiver.lag
    finally:
        for folder, mode in modes.items():
            folder.chmod(mode)

    assert before is not None and after is not None
    lag = found[("pgvault_pitr_archive_lag_seconds", WHERE)]
    assert before.total_seconds() <= lag <= after.total_seconds()
    assert lag > 0
    assert found[("pgvault_alerts_open", f'{WHERE},kind="pitr_archive_failing"')] == 1
    assert found[("pgvault_pitr_window_end_timestamp_seconds", WHERE)] == window.latest.timestamp()
