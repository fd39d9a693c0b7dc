"""The repository passphrase: sealed in the store, plaintext only in the 0600 configuration."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest
from dagster import DagsterInstance, build_sensor_context, materialize

from pgvault_assets.defs.resources import AlertsResource, VaultResource
from pgvault_assets.engine.basics import names
from pgvault_assets.engine.pitr.passphrase import passphrase_context, stored_passphrase
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.settings import load_settings
from tests.test_defs.single import pitr_archive_sensor, pitr_base_backup, pitr_restorable
from tests.test_pitr.conftest import ArchivingServer, pgvault


def files_under(*roots: Path) -> list[Path]:
    return [path for root in roots for path in root.rglob("*") if path.is_file()]


def test_the_passphrase_is_in_no_output_log_event_or_stored_object(
    pitr_server: ArchivingServer,
    local_env: Path,
    instance: DagsterInstance,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    pitr_server.sql("CREATE TABLE orders (id int)")
    pitr_server.sql("INSERT INTO orders VALUES (1)")
    target = pitr_server.now()
    pitr_server.sql("INSERT INTO orders VALUES (2)")
    pitr_server.switch_and_wait()
    assert pgvault("pitr", "backup", "--type", "diff") == 0
    pgvault("pitr", "status")
    assert pgvault("restore-to-time", "--time", target.isoformat(), "--target", "staging") == 0
    pgvault("restore-to-time", "--time", "2000-01-01T00:00:00Z", "--target", "staging")
    resources = {"vault": VaultResource(), "alerts": AlertsResource()}
    result = materialize(
        [pitr_base_backup, pitr_restorable], instance=instance, resources=resources
    )
    assert result.success
    context = build_sensor_context(instance=instance, resources=resources)
    pitr_archive_sensor.evaluate_tick(context)
    events = "\n".join(
        str(entry) for run in instance.get_runs() for entry in instance.all_logs(run.run_id)
    )
    settings = load_settings()
    passphrase = stored_passphrase(Vault.from_settings(settings))
    forms = {passphrase, base64.b64encode(passphrase.encode()).decode(), passphrase.encode().hex()}

    captured = capsys.readouterr()
    config = names.pitr_stanza(settings).config_file
    written = [p for p in files_under(pitr_server.pitr_dir, local_env) if p != config]
    texts = {
        "stdout": captured.out,
        "stderr": captured.err,
        "log records": caplog.text,
        "server log": (pitr_server.cluster.base / "log").read_text(errors="replace"),
        "Dagster events": events,
        **{str(path): path.read_bytes().decode(errors="replace") for path in written},
    }
    leaks = [where for where, text in texts.items() if any(form in text for form in forms)]
    assert leaks == []
    assert any(name.endswith("-backup.log") for name in texts)  # pgBackRest's logs were read
    assert "pitr_base_backup" in events
    assert passphrase in config.read_text()


def test_the_sealed_passphrase_names_its_purpose_and_environment(
    pitr_server: ArchivingServer, local_env: Path
) -> None:
    settings = load_settings()
    sealed = Vault.from_settings(settings).store.get_bytes(
        names.pitr_passphrase_key(settings.environment)
    )
    assert sealed is not None
    assert passphrase_context(settings.environment)["purpose"] == "backup"
    assert stored_passphrase(Vault.from_settings(settings)).encode() not in sealed
