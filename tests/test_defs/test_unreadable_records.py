"""One bad record never blinds the platform: a manifest that cannot be read (damaged, or
written by a newer pgvault) is reported once, naming its date and why, and skipped; listing,
cleanup and the other sensors go on, and its backup is never deleted."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

from dagster import build_sensor_context

from pgvault_assets.cli import main
from pgvault_assets.defs.alerting import make_alert_sensor
from pgvault_assets.defs.resources import AlertsResource, VaultResource
from pgvault_assets.engine.backup.cleanup import run_cleanup
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.fleet import single_fleet
from pgvault_assets.settings import RetentionPolicy, load_settings
from test_defs.backup_history import fake_manifest, write_backup, write_history

RESOURCES = {"vault": VaultResource(), "alerts": AlertsResource()}
DAMAGED = date(2025, 6, 3)
NEWER = date(2025, 6, 4)


def _history_with_two_bad_records(vault: Vault) -> None:
    write_history(vault, date(2025, 6, 1), date(2025, 6, 10))
    vault.store.put_bytes(vault.manifest_key(DAMAGED), b'{"not": "a manifest"')
    newer = json.loads(fake_manifest("test", NEWER).to_json())
    newer["format_version"] = 99
    vault.store.put_bytes(vault.manifest_key(NEWER), json.dumps(newer).encode())


def test_list_backups_skips_an_unreadable_manifest_and_shows_the_rest(local_env, capsys):
    vault = Vault.from_settings(load_settings())
    _history_with_two_bad_records(vault)

    assert main(["list-backups", "--json"]) == 0
    captured = capsys.readouterr()
    listed = [row["date"] for row in json.loads(captured.out)]
    assert len(listed) == 8 and "2025-06-03" not in listed and "2025-06-04" not in listed
    assert "skipped the backup of 2025-06-03" in captured.err
    assert "written by a newer pgvault (format version 99; this one reads 1); upgrade pgvault" in (
        captured.err
    )


def test_cleanup_goes_on_and_never_deletes_what_it_cannot_read(local_env):
    vault = Vault.from_settings(load_settings())
    _history_with_two_bad_records(vault)
    later = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)  # every backup far past its tier
    write_backup(vault, fake_manifest("test", date(2026, 11, 30)))

    result = run_cleanup(vault, RetentionPolicy(), now=later)

    # Retention goes on for the others: all expired, the seven newest readable ones stay.
    assert {d.day for d in result.plan.delete} == {date(2025, 6, 1), date(2025, 6, 2)}
    for day in (DAMAGED, NEWER):
        assert vault.store.get_bytes(vault.manifest_key(day)) is not None
        assert vault.store.get_bytes(vault.object_key(day)) is not None
        assert any(
            f"kept the backup of {day.isoformat()} untouched" in line
            for line in result.kept_leftovers
        )


def test_the_record_sensor_alerts_once_per_unreadable_manifest_with_its_date_and_why(
    local_env, instance, alerts_captured
):
    vault = Vault.from_settings(load_settings())
    _history_with_two_bad_records(vault)

    def tick(cursor: str | None) -> str | None:
        context = build_sensor_context(instance=instance, cursor=cursor, resources=RESOURCES)
        make_alert_sensor(single_fleet()).evaluate_tick(context)
        return context.cursor

    cursor = tick(tick(None))  # a second tick sends nothing new
    posts = [p for p in alerts_captured.posts("/hook") if p["alert"] == "manifest_unreadable"]
    assert sorted(p["tags"]["date"] for p in posts) == ["2025-06-03", "2025-06-04"]
    assert any("upgrade pgvault" in p["text"] for p in posts)

    write_backup(vault, fake_manifest("test", DAMAGED))  # repaired
    tick(cursor)
    assert (
        len([p for p in alerts_captured.posts("/hook") if p["alert"] == "manifest_unreadable"]) == 2
    )
