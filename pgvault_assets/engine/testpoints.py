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


def pause_point(name: str) -> None:
    if os.environ.get(VARIABLE) != name:
        return
    sys.stderr.write(f"pgvault: paused at {name}\n")
    sys.stderr.flush()
    while True:
        time.sleep(3600)
