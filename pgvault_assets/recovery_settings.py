"""The recovery operations' settings: who may approve, how long a request lives, the drill.

Kept apart from `settings.py` only until it is merged there; read once, a bad value fails with
one line naming the variable, like every other setting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from pgvault_assets.errors import ConfigError

DEFAULT_REQUEST_TTL = timedelta(hours=4)
RECOVERY_TIME_OBJECTIVE = timedelta(hours=4)


@dataclass(frozen=True)
class RecoverySettings:
    approvers_file: Path | None
    request_ttl: timedelta = DEFAULT_REQUEST_TTL
    drill_queries_file: Path | None = None
    recovery_time_objective: timedelta = RECOVERY_TIME_OBJECTIVE

    def require_approvers_file(self) -> Path:
        if self.approvers_file is None:
            raise ConfigError(
                "RESTORE_APPROVERS_FILE is not set; set it to an OpenSSH allowed-signers file listing the approvers"
            )
        if not self.approvers_file.is_file():
            raise ConfigError(
                f"RESTORE_APPROVERS_FILE {self.approvers_file} does not exist; point it at the allowed-signers file"
            )
        return self.approvers_file


def _path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name, "").strip()
    return Path(value).expanduser().absolute() if value else None


def load_recovery_settings(env: Mapping[str, str] | None = None) -> RecoverySettings:
    env = os.environ if env is None else env
    raw_ttl = env.get("RESTORE_REQUEST_TTL_HOURS", "").strip()
    ttl = DEFAULT_REQUEST_TTL
    if raw_ttl:
        try:
            hours = float(raw_ttl)
        except ValueError:
            hours = -1.0
        # At least a minute: a tinier float is above 0 yet rounds to a lifetime of nothing.
        if not 1 / 60 <= hours <= 72:
            raise ConfigError(
                f"RESTORE_REQUEST_TTL_HOURS must be a number of hours from 0.017 (a minute) to 72 (got {raw_ttl!r})"
            )
        ttl = timedelta(hours=hours)
    queries = _path(env, "DRILL_QUERIES_FILE")
    if queries is not None and not queries.is_file():
        raise ConfigError(f"DRILL_QUERIES_FILE {queries} does not exist; point it at a SQL file")
    return RecoverySettings(
        approvers_file=_path(env, "RESTORE_APPROVERS_FILE"),
        request_ttl=ttl,
        drill_queries_file=queries,
    )
