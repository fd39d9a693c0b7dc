"""A test-only hook: stop at a named point so a fault test can SIGKILL pgvault exactly there.

Some stages last microseconds (the manifest write, the rename inside the swap), too short to
hit by polling from outside. With `PGVAULT_TEST_PAUSE_AT=<name>` set, reaching that point
prints `pgvault: paused at <name>` on stderr and sleeps until the process is killed. It is set
only by the fault tests; unset, `pause_point` returns at once.
"""

from __future__ import annotations

import os
import sys
import time

VARIABLE = "PGVAULT_TEST_PAUSE_AT"


def pausing_at(name: str) -> bool:
    """Whether this run is to pause at `name`: for a point that must first wait for its state
    (an upload's first part stored) so the test sees it however fast the rest goes."""
    return os.environ.get(VARIABLE) == name


def pause_point(name: str) -> None:
    if not pausing_at(name):
        return
    sys.stderr.write(f"pgvault: paused at {name}\n")
    sys.stderr.flush()
    while True:
        time.sleep(3600)
