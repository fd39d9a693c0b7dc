"""The resources read the variables settings.py declares, bound by name, never by value."""

from __future__ import annotations

from dagster import EnvVar, build_resources

from pgvault_assets.defs.resources import AlertsResource, VaultResource, resource_defs
from pgvault_assets.settings import PlatformVariables, declared, own_variables

PASSWORD = "resource-pw-5c1e"
URL = f"postgresql://app:{PASSWORD}@db.internal:5432/app"
DSN = "https://resourcedsnkey@sentry.example/7"


def test_the_vault_resource_has_a_field_for_each_variable_a_run_reads_described_as_declared():
    fields = VaultResource.model_fields
    platform = dict(PlatformVariables.variables())
    for name, declaration in declared().items():
        if name in platform or name not in own_variables():
            # Read when the code location loads, or another tool's (AWS_*): never bound.
            assert name.lower() not in fields, name
            continue
        assert name.lower() in fields, name
        assert fields[name.lower()].description == declaration.description
    assert set(AlertsResource.model_fields) == {
        "sentry_dsn",
        "alert_webhook_url",
        "pagerduty_routing_key",
    }


def test_set_variables_are_bound_by_name_and_their_secret_values_stay_out_of_the_definitions(
    monkeypatch,
):
    monkeypatch.setenv("DATABASE_URL", URL)
    monkeypatch.setenv("SENTRY_DSN", DSN)
    monkeypatch.setenv("BACKUP_RETENTION_DAYS_DAILY", "9")
    resources = resource_defs()
    vault, alerts = resources["vault"], resources["alerts"]
    assert isinstance(vault.database_url, EnvVar) and vault.database_url == "DATABASE_URL"
    assert vault.backup_retention_days_daily == EnvVar("BACKUP_RETENTION_DAYS_DAILY")
    assert alerts.sentry_dsn == EnvVar("SENTRY_DSN")
    assert vault.staging_database_url is None  # unset: not bound, settings.py's default holds
    assert "aws_access_key_id" not in type(vault).model_fields  # boto3's: read where it is
    for shown in (repr(vault), repr(alerts), str(vault.__dict__), str(alerts.__dict__)):
        assert PASSWORD not in shown and "resourcedsnkey" not in shown

    with build_resources(resources) as started:
        assert started.vault.database_url == URL  # resolved when a run starts
        settings = started.vault.settings()
        assert settings.database_url is not None and settings.database_url.password == PASSWORD
        assert settings.retention.daily_days == 9
        assert started.alerts.sentry_dsn == DSN
