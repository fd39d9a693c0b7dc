"""Terminal output: rich tables and progress bars on a terminal, plain lines elsewhere."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from pgvault_assets.redact import redact

# Piped or logged output gets a wide fixed width, so tables are never cut to 80 columns.
_WIDTH = None if sys.stdout.isatty() else 200
console = Console(highlight=False, soft_wrap=True, width=_WIDTH)
errors = Console(stderr=True, highlight=False, soft_wrap=True, width=_WIDTH)

ProgressCallback = Callable[[int], None]


def ago(hours: float) -> str:
    """How long ago, in the unit a person would say: minutes, hours, then days."""
    if hours < 1:
        return f"{round(hours * 60)} min ago"
    if hours < 48:
        return f"{round(hours)} h ago"
    return f"{hours / 24:.1f} d ago"


def on_target(dbname: str, target: str) -> str:
    """A target database in a sentence: "the staging database staging", never "staging on staging"."""
    return f"the {target} database {dbname}"


@contextlib.contextmanager
def progress(description: str, total: int | None = None) -> Iterator[ProgressCallback | None]:
    """A byte-count progress bar on a terminal; nothing when output is piped or logged."""
    if not sys.stderr.isatty():
        yield None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=errors,
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


class _WarningLines(logging.Handler):
    """pgvault's logged warnings as `warning: ...` lines on stderr, secrets masked."""

    def emit(self, record: logging.LogRecord) -> None:
        errors.print(f"warning: {redact(record.getMessage())}", markup=False)


def print_warnings() -> None:
    """Show what the engine warns about (an unsafe bucket, a backup still locked) on stderr."""
    logger = logging.getLogger("pgvault_assets")
    if not any(isinstance(handler, _WarningLines) for handler in logger.handlers):
        logger.addHandler(_WarningLines(logging.WARNING))


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
