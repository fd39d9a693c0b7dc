"""A bad setting is refused at start with one line naming the variable."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgvault_assets import settings
from pgvault_assets.errors import ConfigError
from pgvault_assets.redact import redact, secrets_in
from pgvault_assets.settings import (
    DatabaseUrl,
    Environment,
    PitrSettings,
    PlatformSettings,
    RecoverySettings,
    RestoreLoad,
    RetentionPolicy,
    bounds,
    declared,
    load_settings,
    secret_variables,
)


def test_embedded_default_needs_no_settings(tmp_path):
    settings = load_settings({"XDG_DATA_HOME": str(tmp_path)})
    assert not settings.uses_s3
    assert settings.environment == "development"
    assert settings.local_dir == tmp_path / "pgvault" / "store"
    assert settings.local_key_file == tmp_path / "pgvault" / "backup.key"
    assert (
        settings.retention.daily_days,
        settings.retention.weekly_days,
        settings.retention.monthly_days,
    ) == (30, 90, 365)


def test_retention_days_come_from_the_environment(tmp_path):
    settings = load_settings(
        {
            "BACKUP_RETENTION_DAYS_DAILY": "7",
            "BACKUP_RETENTION_DAYS_WEEKLY": "28",
            "BACKUP_RETENTION_DAYS_MONTHLY": "730",
        },
    )
    assert (
        settings.retention.daily_days,
        settings.retention.weekly_days,
        settings.retention.monthly_days,
    ) == (7, 28, 730)


def test_only_the_variables_exact_names_count_stripped_and_blank_as_unset(tmp_path):
    home = {"XDG_DATA_HOME": str(tmp_path)}
    settings = load_settings(
        {
            **home,
            "BACKUP_RETENTION_DAYS_DAILY": " 7\n",  # stripped, as a file's line would need
            "backup_retention_days_weekly": "28",  # not the variable: its name is upper case
            "ENVIRONMENT_NAME": "   ",  # blank is unset: the default, not an error
            "BACKUP_COMPRESSION_LEVEL": "",
        },
    )
    assert settings.retention.daily_days == 7
    assert settings.retention.weekly_days == 90
    assert settings.environment == "development"
    assert settings.compression_level == load_settings(home).compression_level


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DATABASE_URL": "mysql://x@h/db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://u@host"}, "DATABASE_URL"),
        ({"STAGING_DATABASE_URL": "postgresql://u@h:99999/db"}, "STAGING_DATABASE_URL"),
        ({"RESTORE_CHECK_DATABASE_URL": "mysql://u@h/db"}, "RESTORE_CHECK_DATABASE_URL"),
        ({"RESTORE_CHECK_DATABASE_URL": "postgresql://u@h:5432"}, "RESTORE_CHECK_DATABASE_URL"),
        ({"ENVIRONMENT_NAME": "../etc"}, "ENVIRONMENT_NAME"),
        ({"ENVIRONMENT_NAME": "Prod/1"}, "ENVIRONMENT_NAME"),
        ({"BACKUP_RETENTION_DAYS_DAILY": "thirty"}, "BACKUP_RETENTION_DAYS_DAILY"),
        ({"BACKUP_RETENTION_DAYS_WEEKLY": "0"}, "BACKUP_RETENTION_DAYS_WEEKLY"),
        ({"BACKUP_COMPRESSION_LEVEL": "9"}, "BACKUP_COMPRESSION_LEVEL"),
        ({"BACKUP_S3_BUCKET": "my-bucket"}, "BACKUP_KMS_KEY_ID"),
        ({"BACKUP_KMS_KEY_ID": "alias/k"}, "BACKUP_S3_BUCKET"),
        ({"BACKUP_S3_BUCKET": "Bad_Bucket", "BACKUP_KMS_KEY_ID": "alias/k"}, "BACKUP_S3_BUCKET"),
        ({"BACKUP_STORAGE_BUDGET_BYTES": "-5"}, "BACKUP_STORAGE_BUDGET_BYTES"),
        ({"ALERT_WEBHOOK_URL": "ftp://x"}, "ALERT_WEBHOOK_URL"),
        ({"BACKUP_ROLE_PASSWORDS": "no"}, "BACKUP_ROLE_PASSWORDS"),
        ({"RESTORE_PARALLEL_LOADERS": "0"}, "RESTORE_PARALLEL_LOADERS"),
        ({"RESTORE_PARALLEL_LOADERS": "many"}, "RESTORE_PARALLEL_LOADERS"),
        ({"RESTORE_READ_AHEAD_MIB": "0"}, "RESTORE_READ_AHEAD_MIB"),
        ({"RESTORE_READ_AHEAD_MIB": "1.5"}, "RESTORE_READ_AHEAD_MIB"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(tmp_path, env, variable):
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert variable in str(caught.value)
    assert "\n" not in str(caught.value)


def test_restore_proofs_use_restore_check_database_url_or_none_never_database_url(tmp_path):
    production = {"DATABASE_URL": "postgresql://app@prod/app"}
    assert load_settings(production).restore_check_database_url is None
    configured = load_settings(
        {**production, "RESTORE_CHECK_DATABASE_URL": "postgresql://u:pw@proof:5433/postgres"},
    ).restore_check_database_url
    assert configured is not None and str(configured) == "postgresql://u@proof:5433/postgres"


def test_database_url_hides_its_password_everywhere_but_libpq():
    url = DatabaseUrl.parse(
        "postgresql://app:s3cret%21pw@db.internal:5433/api?sslmode=require", "DATABASE_URL"
    )
    for shown in (str(url), repr(url), url.redacted, repr(url.with_dbname("postgres"))):
        assert "s3cret" not in shown
    assert url.dbname == "api"
    assert url.password == "s3cret!pw"
    assert "s3cret" in url.secret


def test_redact_masks_url_credentials_in_any_text():
    text = "could not connect: postgresql://app:pa55word@db/api and s3://k:v@x"
    assert "pa55word" not in redact(text)
    assert "postgresql://app:[redacted]@db/api" in redact(text)


@given(st.text(max_size=40))
def test_any_environment_name_is_accepted_only_if_it_is_a_safe_key_prefix(name):
    try:
        settings = load_settings({"ENVIRONMENT_NAME": name})
    except ConfigError as exc:
        assert "ENVIRONMENT_NAME" in str(exc)
        return
    env = settings.environment
    assert "/" not in env and ".." not in env and env == env.strip() and env


@given(st.text(max_size=60))
def test_any_database_url_is_parsed_or_refused_in_one_line(text):
    try:
        url = DatabaseUrl.parse(text, "DATABASE_URL")
    except ConfigError as exc:
        assert "DATABASE_URL" in str(exc) and "\n" not in str(exc)
        return
    assert url.dbname


def test_the_key_and_store_are_the_same_wherever_pgvault_runs_from(tmp_path, monkeypatch):
    env = {"HOME": str(tmp_path / "home")}
    monkeypatch.setenv("HOME", env["HOME"])
    monkeypatch.chdir(tmp_path)
    here = load_settings(env)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    there = load_settings(env)
    assert (here.local_key_file, here.local_dir) == (there.local_key_file, there.local_dir)
    assert here.local_key_file == tmp_path / "home" / ".local" / "share" / "pgvault" / "backup.key"
    pinned = load_settings({**env, "PGVAULT_HOME": str(tmp_path / "pinned")})
    assert pinned.local_dir == tmp_path / "pinned" / "store"


def test_the_point_in_time_window_stays_inside_the_daily_tier(tmp_path):
    base = {"XDG_DATA_HOME": str(tmp_path), "BACKUP_RETENTION_DAYS_DAILY": "7"}
    assert load_settings({**base, "PITR_RETENTION_DAYS": "7"}).pitr.retention_days == 7
    with pytest.raises(ConfigError) as refused:
        load_settings({**base, "PITR_RETENTION_DAYS": "8"})
    assert str(refused.value) == (
        "PITR_RETENTION_DAYS (8) is longer than BACKUP_RETENTION_DAYS_DAILY (7); keep the "
        "point-in-time window inside the daily tier"
    )


def test_a_restore_loads_over_the_hosts_cores_at_most_eight_with_256_mib_read_ahead(tmp_path):
    load = load_settings({"XDG_DATA_HOME": str(tmp_path)}).restore_load
    assert load.loaders == min(8, len(os.sched_getaffinity(0)))
    assert load.read_ahead_bytes == 256 * 1024 * 1024
    chosen = load_settings({"RESTORE_PARALLEL_LOADERS": "3", "RESTORE_READ_AHEAD_MIB": "2"})
    assert (chosen.restore_load.loaders, chosen.restore_load.read_ahead_bytes) == (
        3,
        2 * 1024 * 1024,
    )


def test_every_variable_declared_secret_is_redacted():
    assert "PAGERDUTY_ROUTING_KEY" in secret_variables("value")
    for name in secret_variables("value"):
        value = f"value-of-{name.lower()}"
        assert value in secrets_in({name: value}), name
    for name in secret_variables("password"):
        assert "pw-in-url" in secrets_in({name: "postgresql://u:pw-in-url@h/db"}), name


def test_secret_values_never_show_in_the_read_environment():
    read = Environment.read(
        {"SENTRY_DSN": "https://dsnkey@sentry.example/1", "AWS_SECRET_ACCESS_KEY": "awssecret"}
    )
    assert "dsnkey" not in repr(read) and "awssecret" not in repr(read)
    assert read.sentry_dsn is not None
    assert read.sentry_dsn.get_secret_value() == "https://dsnkey@sentry.example/1"


@pytest.mark.parametrize(
    ("name", "bounds"),
    [
        (name, bounds(info))
        for name, info in declared().items()
        if bounds(info) != (None, None) and name != "RESTORE_REQUEST_TTL_HOURS"
    ],
)
def test_each_bounded_variable_refuses_a_value_past_its_bound_in_one_line(name, bounds):
    low, high = bounds
    for value in (str(high * 2 + 1), str(low - 1), "many"):
        with pytest.raises(ConfigError) as caught:
            load_settings({name: value})
        message = str(caught.value)
        assert message.startswith(f"{name} must be ") and "\n" not in message
        assert f"from {low} to {high}" in message


def test_the_records_defaults_are_the_declared_ones(tmp_path):
    loaded = load_settings({"XDG_DATA_HOME": str(tmp_path)})
    assert loaded.retention == RetentionPolicy()
    assert loaded.platform == PlatformSettings()
    assert loaded.pitr == PitrSettings(tmp_path / "pgvault" / "pitr")
    assert loaded.recovery == RecoverySettings()
    assert loaded.restore_load == RestoreLoad()
    declared_lock_mode = declared()["BACKUP_OBJECT_LOCK_MODE"].default
    assert loaded.object_lock_mode == declared_lock_mode == "governance"


def _settings_table_script():
    path = Path(__file__).resolve().parent.parent / "scripts" / "settings_table.py"
    spec = importlib.util.spec_from_file_location("settings_table", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_table_is_the_one_generated_from_the_declarations():
    script = _settings_table_script()
    readme = script.README.read_text()
    assert script.rewritten(readme) == readme, "run scripts/settings_table.py"
    for name in declared():
        assert f"| `{name}` |" in readme


def test_a_variable_declared_without_regenerating_the_table_is_caught(monkeypatch):
    script = _settings_table_script()
    readme = script.README.read_text()

    class Added(settings.PitrVariables):
        pitr_new_knob: int = settings.variable(1, "a knob added without the table", ge=1, le=2)

    groups = tuple(Added if g is settings.PitrVariables else g for g in settings.GROUPS)
    monkeypatch.setattr(settings, "GROUPS", groups)
    assert script.rewritten(readme) != readme
    assert "| `PITR_NEW_KNOB` | a knob added without the table (1 to 2) | `1` |" in script.table()
