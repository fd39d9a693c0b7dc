"""SIGINT and SIGTERM as one exception, so an interrupted operation undoes what it half-did.

`Interrupted` derives from KeyboardInterrupt, not from Exception: every `except BaseException`
and `finally` on the way out runs (pg_dump and psql are ended, the multipart upload aborted, the
scratch database dropped), while no `except Exception` mistakes it for a failure to retry or to
report as something else. Once one signal has been taken, the next ones are only noted, so a
second Ctrl-C cannot cut that cleanup short.

Child processes run in a process group of their own (`CHILD_GROUP`): a terminal's Ctrl-C goes to
pgvault's group alone, and pgvault ends its children itself, in the order its cleanup needs.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# For subprocess.Popen: the child leads a process group of its own.
CHILD_GROUP: dict[str, Any] = {"process_group": 0}


class Interrupted(KeyboardInterrupt):
    """A signal ended the operation; `str()` says what was interrupted and what is intact."""

    def __init__(self, signum: int, message: str | None = None, *, settled: bool = False) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        self.settled = settled
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")

    def saying(self, message: str, *, settled: bool = False) -> Interrupted:
        """The same interruption, said as the outermost operation says it, unless an inner
        one `settled` what is intact (the outer one's usual line would then be wrong)."""
        if self.settled:
            return self
        name = signal.Signals(self.signum).name
        return Interrupted(self.signum, f"{message} ({name})", settled=settled)


def _ignore_further(signum: int, frame: FrameType | None) -> None:
    """A second signal while the first one's cleanup runs: that cleanup finishes anyway."""


_taken = threading.Event()


def _raise(signum: int, frame: FrameType | None) -> None:
    _taken.set()
    for each in SIGNALS:
        signal.signal(each, _ignore_further)
    raise Interrupted(signum)


def handled_here() -> bool:
    """Whether a signal now is (or one already was) raised as `Interrupted`: false while a
    library's own handler holds the signals, as Dagster's does between a run's steps."""
    return _taken.is_set() or signal.getsignal(signal.SIGINT) in (_raise, _ignore_further)


class SignalsSeen:
    """`wait(seconds)` returns the signals that arrived meanwhile, whoever's handler took them
    (Python writes each signal's number to the wakeup fd whatever its handler does with it);
    `wake()` ends a wait at once, so a thread that watches stops without waiting it out."""

    def __init__(self, read: int | None = None, write: int | None = None) -> None:
        self._read, self._write = read, write
        self._woken = threading.Event()

    def wait(self, seconds: float) -> list[int]:
        if self._read is None:  # off the main thread no signal is ever seen
            self._woken.wait(seconds)
            return []
        ready, _, _ = select.select([self._read], [], [], seconds)
        if not ready:
            return []
        with contextlib.suppress(BlockingIOError):
            return [signum for signum in os.read(self._read, 64) if signum]
        return []

    def wake(self) -> None:
        self._woken.set()
        if self._write is not None:
            with contextlib.suppress(BlockingIOError):
                os.write(self._write, b"\0")  # no signal is numbered 0


@contextlib.contextmanager
def signals_seen() -> Iterator[SignalsSeen]:
    """The signals that arrive inside, for any thread to learn of. Off the main thread, where
    no signal is handled, none is ever seen."""
    if threading.current_thread() is not threading.main_thread():
        yield SignalsSeen()
        return
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    previous = signal.set_wakeup_fd(write)
    try:
        yield SignalsSeen(read, write)
    finally:
        signal.set_wakeup_fd(previous)
        os.close(read)
        os.close(write)


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Inside, SIGINT and SIGTERM raise `Interrupted` in the main thread; the handlers before
    are put back on the way out. Elsewhere than the main thread, signals cannot be handled
    and nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {each: signal.getsignal(each) for each in SIGNALS}
    for each in SIGNALS:
        signal.signal(each, _raise)
    try:
        yield
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)


def run_in_own_group(
    command: Sequence[str], *, timeout: float | None = None, **options: Any
) -> subprocess.CompletedProcess[Any]:
    """`subprocess.run(command, capture_output=True)` in a process group of its own; on a
    timeout or an interruption the whole group is killed, so what a wrapper such as `runuser`
    started ends with it, not only the wrapper."""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **CHILD_GROUP, **options
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@contextlib.contextmanager
def said_as(message: str, *, settled: bool = False) -> Iterator[None]:
    """An interruption inside is said as `message`: what was interrupted and what is intact."""
    try:
        yield
    except Interrupted as exc:
        raise exc.saying(message, settled=settled) from None
