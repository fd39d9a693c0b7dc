"""Run this Python process, and every Python process it starts, as if today were another day.

`scripts/test-dates.sh` puts this folder on PYTHONPATH with PGVAULT_TEST_TODAY=YYYY-MM-DD, so
pytest, the `pgvault` commands and the Dagster processes the tests start all read the same
shifted wall clock (time-machine patches it inside each process; the monotonic clock, which
timeouts and waits use, is left alone). The time of day is kept and the clock keeps ticking.
"""

import os
from datetime import UTC, date, datetime

_TODAY = os.environ.get("PGVAULT_TEST_TODAY")

if _TODAY:
    import time_machine

    _real = datetime.now(UTC)
    _destination = datetime.combine(date.fromisoformat(_TODAY), _real.timetz())
    time_machine.travel(_destination, tick=True).start()
