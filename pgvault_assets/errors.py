"""Operator-facing errors: each carries one line saying what went wrong and what to do.

The CLI catches `PgvaultError` once and prints `error: <message>` with exit status 2 (bad
input or configuration) or 1 (an operation failed); the Dagster layer lets it fail the step.
"""


class PgvaultError(Exception):
    """A failure an operator can act on; `str()` is safe to print and log (no secrets)."""

    exit_code = 1


class ConfigError(PgvaultError):
    """A setting or argument is invalid; nothing was done."""

    exit_code = 2


class BackupFailed(PgvaultError):
    """The backup did not complete; no new backup was recorded."""


class BackupNotFound(PgvaultError):
    """No complete backup (manifest) exists for the requested date."""


class IntegrityError(PgvaultError):
    """A stored backup does not match its manifest or fails authenticated decryption."""


class RestoreFailed(PgvaultError):
    """A restore did not complete; the target database was left as it was."""


class StoreError(PgvaultError):
    """The backup store (S3 or the local directory) refused or failed an operation."""


class KeyUnavailable(PgvaultError):
    """The encryption key could not be used (missing, unreadable, access denied)."""


class LockBusy(PgvaultError):
    """Another pgvault process holds the lock for this operation."""
