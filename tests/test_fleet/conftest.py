"""Fixtures the fleet's tests share with the recovery tests."""

from tests.test_recovery.conftest import approvers  # noqa: F401 (the shared fixture)
