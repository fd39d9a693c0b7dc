"""Recovery settings fail at start with one line naming the variable."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pgvault_assets.errors import ConfigError
from pgvault_assets.settings import recovery_section as load_recovery_settings


def test_requests_live_four_hours_unless_configured():
    assert load_recovery_settings({}).request_ttl == timedelta(hours=4)
    assert load_recovery_settings({"RESTORE_REQUEST_TTL_HOURS": "0.5"}).request_ttl == timedelta(
        minutes=30
    )


@pytest.mark.parametrize("value", ["0", "-1", "soon", "100"])
def test_a_bad_request_lifetime_is_refused_naming_the_variable(value):
    with pytest.raises(ConfigError, match="RESTORE_REQUEST_TTL_HOURS"):
        load_recovery_settings({"RESTORE_REQUEST_TTL_HOURS": value})


def test_a_missing_approvers_file_is_refused_when_needed(tmp_path):
    settings = load_recovery_settings({"RESTORE_APPROVERS_FILE": str(tmp_path / "absent")})

    with pytest.raises(ConfigError, match="RESTORE_APPROVERS_FILE"):
        settings.require_approvers_file()
    with pytest.raises(ConfigError, match="RESTORE_APPROVERS_FILE is not set"):
        load_recovery_settings({}).require_approvers_file()


def test_a_missing_drill_queries_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="DRILL_QUERIES_FILE"):
        load_recovery_settings({"DRILL_QUERIES_FILE": str(tmp_path / "absent.sql")})
