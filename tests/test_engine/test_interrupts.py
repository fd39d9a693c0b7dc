"""Signals as the CLI's watch threads learn of them (engine/basics/interrupts.py)."""

from __future__ import annotations

import signal
import threading

from pgvault_assets.engine.basics.interrupts import signals_seen


def test_a_signal_is_seen_whoever_handles_it():
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        with signals_seen() as seen:
            signal.raise_signal(signal.SIGUSR1)
            assert seen.wait(10) == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_watch_woken_stops_waiting_at_once_and_sees_no_signal():
    """A backup's interrupt watch polls every half second; its command's end wakes it
    instead of waiting the poll out."""
    with signals_seen() as seen:
        found: list[list[int]] = []
        watch = threading.Thread(target=lambda: found.append(seen.wait(600)))
        watch.start()
        seen.wake()
        watch.join(60)  # a bound for a broken wake, not the expected time
        assert not watch.is_alive()
        assert found == [[]]
