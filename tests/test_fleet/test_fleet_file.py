"""The fleet file: what it declares, and one line naming the field when it is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgvault_assets.errors import ConfigError
from pgvault_assets.fleet import load_fleet, parse_fleet, pin_database
from pgvault_assets.settings import RetentionPolicy, load_settings

GOOD = """
servers:
  - name: main
    url_env: MAIN_URL
    max_concurrent_backups: 3
    staging_url_env: MAIN_STAGING_URL
  - name: reports
    url_env: REPORTS_URL
databases:
  - name: billing
    server: main
    dbname: billing_prod
    schedule_hour: 3
    retention: {daily_days: 7}
    run_tags: {ecs/cpu: "1024", ecs/memory: "4096"}
    max_runtime_seconds: 7200
    restore_proof: weekly
  - name: analytics
    server: reports
    dbname: analytics
"""
SOURCE = Path("fleet.yaml")
ENV = {
    "MAIN_URL": "postgresql://backup:s3cret@main.internal:5432/postgres",
    "MAIN_STAGING_URL": "postgresql://backup:s3cret@staging.internal:5432/postgres",
    "REPORTS_URL": "postgresql://backup@reports.internal/postgres",
    "ENVIRONMENT_NAME": "prod",
}


def fleet_settings(tmp_path: Path, text: str = GOOD, **extra: str):
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return load_settings({**ENV, **extra, "PGVAULT_FLEET_FILE": str(path)})


def test_fleet_file_declares_servers_and_databases():
    fleet = parse_fleet(GOOD, SOURCE)

    billing = fleet.choose("billing")
    assert fleet.server(billing.server).max_concurrent_backups == 3
    assert billing.schedule_hour == 3
    assert billing.run_tags == {"ecs/cpu": "1024", "ecs/memory": "4096"}
    assert billing.max_runtime_seconds == 7200
    assert fleet.choose("analytics").schedule_hour == 2
    assert fleet.server("reports").max_concurrent_backups == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            GOOD.replace("server: reports", "server: db9"),
            "fleet file fleet.yaml: databases[1].server: no server named 'db9'",
        ),
        (
            GOOD.replace("max_concurrent_backups: 3", "max_concurrent_backups: 0"),
            "fleet file fleet.yaml: servers[0].max_concurrent_backups: Input should be greater than or equal to 1",
        ),
        (
            GOOD.replace("name: billing", "name: Billing"),
            "fleet file fleet.yaml: databases[0].name: 'Billing' is not a name",
        ),
        (
            GOOD.replace("name: analytics", "name: billing"),
            "fleet file fleet.yaml: databases[1].name: 'billing' is already databases[0]",
        ),
        (
            GOOD.replace("name: main", "name: db-main")
            .replace("server: main", "server: db-main")
            .replace("name: reports", "name: db_main")
            .replace("server: reports", "server: db_main"),
            "fleet file fleet.yaml: servers[1].name: 'db_main' differs from servers[0] ('db-main') "
            "only in '-' and '_', which Dagster's names do not tell apart; rename one",
        ),
        (
            GOOD.replace("    dbname: analytics\n", ""),
            "fleet file fleet.yaml: databases[1].dbname: is required",
        ),
        (
            GOOD.replace("schedule_hour: 3", "schedule_hour: 24"),
            "fleet file fleet.yaml: databases[0].schedule_hour: Input should be less than or equal to 23",
        ),
        (
            GOOD.replace("schedule_hour: 3", "schedule_at: 3"),
            "fleet file fleet.yaml: databases[0].schedule_at: is not a field pgvault knows",
        ),
        (
            GOOD.replace("name: analytics", "name: audit"),
            "fleet file fleet.yaml: databases[1].name: 'audit' is reserved",
        ),
        (
            GOOD.replace("name: analytics", "name: staging"),
            "fleet file fleet.yaml: databases[1].name: 'staging' is reserved",
        ),
        (
            GOOD.replace("restore_proof: weekly", "restore_proof: hourly"),
            "fleet file fleet.yaml: databases[0].restore_proof: Input should be 'daily' or 'weekly'",
        ),
        ("servers: [", "fleet file fleet.yaml: not valid YAML at line 1"),
        ("- a list", "fleet file fleet.yaml: expected a mapping"),
    ],
)
def test_a_bad_fleet_file_fails_with_one_line_naming_the_field(text, message):
    with pytest.raises(ConfigError) as raised:
        parse_fleet(text, SOURCE)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_a_url_in_the_file_is_refused_without_being_repeated():
    text = GOOD.replace("url_env: MAIN_URL", "url_env: postgresql://backup:s3cret@main/postgres")
    with pytest.raises(ConfigError) as raised:
        parse_fleet(text, SOURCE)
    assert str(raised.value).startswith("fleet file fleet.yaml: servers[0].url_env:")
    assert "s3cret" not in str(raised.value)


def test_a_missing_fleet_file_is_named(tmp_path):
    settings = load_settings({"PGVAULT_FLEET_FILE": str(tmp_path / "nowhere.yaml")})
    with pytest.raises(ConfigError, match=r"^PGVAULT_FLEET_FILE .*nowhere.yaml does not exist"):
        load_fleet(settings.platform.fleet_file)


def test_without_a_fleet_file_database_url_is_a_fleet_of_one():
    env = {"DATABASE_URL": "postgresql://u@h/app", "ENVIRONMENT_NAME": "prod"}
    settings = load_settings(env)

    assert not load_fleet(settings.platform.fleet_file).from_file
    assert pin_database(settings, env, None) == settings
    with pytest.raises(ConfigError, match="needs a fleet file"):
        pin_database(settings, env, "app")


def test_pinning_takes_the_database_from_its_server_variable(tmp_path):
    settings = fleet_settings(tmp_path, BACKUP_RETENTION_DAYS_WEEKLY="60")

    billing = pin_database(settings, ENV, "billing")

    assert billing.database == "billing"
    assert billing.database_url.redacted == "postgresql://backup@main.internal:5432/billing_prod"
    assert billing.staging_database_url.redacted == (
        "postgresql://backup@staging.internal:5432/billing_prod"
    )
    assert billing.retention == RetentionPolicy(daily_days=7, weekly_days=60, monthly_days=365)
    assert billing.backup_hour == 3  # its Sentry monitor expects it at its own hour
    analytics = pin_database(settings, ENV, "analytics")
    assert analytics.backup_hour == 2
    assert analytics.staging_database_url is None
    assert analytics.retention == settings.retention


def test_several_databases_need_a_name_and_the_error_lists_them(tmp_path):
    settings = fleet_settings(tmp_path)
    with pytest.raises(ConfigError, match=r"pass --database with one of: billing, analytics$"):
        pin_database(settings, ENV, None)
    with pytest.raises(ConfigError, match="no database named 'bill'; choose one of: billing"):
        pin_database(settings, ENV, "bill")


def test_an_unset_server_variable_is_named_when_the_database_is_used(tmp_path):
    settings = fleet_settings(tmp_path)
    env = {k: v for k, v in ENV.items() if k != "REPORTS_URL"}
    with pytest.raises(ConfigError, match=r"^REPORTS_URL is not set; the fleet file names it"):
        pin_database(settings, env, "analytics")


def test_restore_proof_is_per_database_and_defaults_to_restore_verify_schedule(tmp_path):
    settings = fleet_settings(tmp_path, RESTORE_VERIFY_SCHEDULE="daily")

    assert pin_database(settings, ENV, "billing").restore_verify_weekly
    assert not pin_database(settings, ENV, "analytics").restore_verify_weekly
    weekly = fleet_settings(tmp_path, RESTORE_VERIFY_SCHEDULE="weekly")
    assert pin_database(weekly, ENV, "analytics").restore_verify_weekly


def test_the_readmes_fleet_file_is_a_valid_fleet():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Many databases") :]
    example = section[
        section.index("```yaml\n") + 8 : section.index("```", section.index("```yaml\n") + 8)
    ]

    fleet = parse_fleet(example, Path("README.md"))

    assert [database.name for database in fleet.databases] == ["billing", "analytics"]
    assert fleet.databases[0].run_size is not None and fleet.max_concurrent_restore_proofs == 2
