"""pgBackRest's commands, run as the `postgres` OS user with pgvault's configuration.

Only the configuration file speaks for pgBackRest: `PGBACKREST_*` variables of the caller's
environment are dropped, so what pgvault runs is what the archive command runs. The
database password reaches libpq as PGPASSWORD, never on a command line.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgvault_assets.engine.basics.interrupts import run_in_own_group
from pgvault_assets.engine.pitr.config import OS_USER, pgbackrest_binary
from pgvault_assets.errors import PgvaultError
from pgvault_assets.redact import redact

DEFAULT_TIMEOUT_SECONDS = 6 * 3600


class PitrFailed(PgvaultError):
    """A pgBackRest command failed; its own one-line reason is in the message."""


def _as_postgres() -> list[str]:
    return ["runuser", "-u", OS_USER, "--"] if os.geteuid() == 0 else []


def _reason(output: str, fallback: str) -> str:
    """pgBackRest's own error line (`ERROR: [055]: ...`), else the last line it wrote."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    chosen = next((line for line in lines if "ERROR:" in line), lines[-1] if lines else fallback)
    return redact(chosen.split("ERROR:", 1)[-1].strip())


@dataclass(frozen=True)
class PgBackRest:
    config: Path
    stanza: str
    password: str | None = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # PGBACKREST_* too
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    def command(self, command: str, *options: str, path: str | None = None) -> list[str]:
        return [
            *_as_postgres(),
            pgbackrest_binary(),
            f"--config={self.config}",
            f"--stanza={self.stanza}",
            *options,
            command,
            *([path] if path is not None else []),
        ]

    def run(
        self,
        command: str,
        *options: str,
        path: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> str:
        """Run a command; its standard output, or `PitrFailed` with pgBackRest's reason."""
        try:
            result = run_in_own_group(
                self.command(command, *options, path=path),
                text=True,
                timeout=timeout,
                cwd="/",
                env=self.env(),
            )
        except subprocess.TimeoutExpired:
            raise PitrFailed(
                f"pgbackrest {command} did not finish within {timeout:g} s; see {self.config.parent / 'log'}"
            ) from None
        if result.returncode != 0:
            reason = _reason(
                result.stderr + "\n" + result.stdout, f"exit status {result.returncode}"
            )
            raise PitrFailed(f"pgbackrest {command} failed: {reason}")
        return result.stdout

    def json(
        self, command: str, *options: str, path: str | None = None, timeout: float = 600
    ) -> Any:
        output = self.run(command, "--output=json", *options, path=path, timeout=timeout)
        try:
            return json.loads(output)
        except json.JSONDecodeError:
            raise PitrFailed(
                f"pgbackrest {command} wrote no JSON; is pgbackrest 2.45 or newer?"
            ) from None
