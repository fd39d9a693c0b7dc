"""Load one streamed plain-SQL dump over several psql sessions at once.

`pg_restore -j` needs a seekable custom-format archive; a pgvault backup is a plain dump read
once, in order. `ParallelLoad` splits that stream at the comment pg_dump writes before each
entry (`-- Name: ...; Type: ...`): the prologue runs on every session, the schema before the
data on the first, each table's `COPY` on the session with least queued (as `BEGIN; TRUNCATE
ONLY; COPY ... FREEZE; COMMIT`, so no later vacuum rewrites its pages), and the statements
after the data in phases that respect their dependencies: keys and indexes, then the
attachments of partitions' indexes, then foreign keys, then the rest in pg_dump's order.

Bytes handed to a session but not yet written to it never exceed the read-ahead bound, so a
table larger than it streams through one session at the pace that session loads it, while
the tables after it load beside it on the others. The sessions are psql itself, so every
statement, meta-command and `COPY` block is read exactly as `psql < dump` would read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import threading
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from pgvault_assets.engine.basics.interrupts import CHILD_GROUP
from pgvault_assets.engine.postgres.postgres import connect, tool_env, tool_reason, user_tables
from pgvault_assets.errors import RestoreFailed
from pgvault_assets.settings import MIB, DatabaseUrl

# pg_dump's comment before each entry; a name may hold anything, the type never.
_HEADER = re.compile(
    rb"-- (?:Data for )?Name: (.*); Type: ([A-Z][A-Z ]*); Schema: (.*); Owner: (.*?)"
    rb"(?:; Tablespace: .*)?\n"
)
_DATA_TYPES = {b"TABLE DATA", b"SEQUENCE SET", b"BLOBS", b"LARGE OBJECTS"}
# Written right after the object they annotate: they go with it.
_ANNOTATIONS = {b"COMMENT", b"SECURITY LABEL"}
_COPY = re.compile(
    rb'COPY ((?:"(?:[^"]|"")+"|[^\s".]+)\.(?:"(?:[^"]|"")+"|[^\s".]+)) .*FROM stdin;\n'
)
_IDENT = r'(?:"(?:[^"]|"")+"|[^\s".(),;]+)'
_ALTER_TABLE = re.compile(rf"^ALTER TABLE (?:ONLY )?({_IDENT}\.{_IDENT})\s", re.M)
_REFERENCES = re.compile(rf"\bREFERENCES ({_IDENT}\.{_IDENT})\s*\(")
_INDEX_ON = re.compile(
    rf"^CREATE (?:UNIQUE )?INDEX {_IDENT} ON (?:ONLY )?({_IDENT}\.{_IDENT})\s", re.M
)
_TERMINATOR = b"\\.\n"
# What a database-wide ANALYZE takes (tables, materialized views, partitioned tables) and
# this role may analyze (superuser, owner, or the database's owner but for shared catalogs)
# and name (a table is named through its schema, which needs USAGE).
_ANALYZED = """
    SELECT format('%I.%I', n.nspname, c.relname), pg_relation_size(c.oid)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'm', 'p') AND n.nspname NOT LIKE 'pg\\_temp\\_%'
      AND has_schema_privilege(n.oid, 'USAGE')
      AND (pg_has_role(c.relowner, 'USAGE') OR (NOT c.relisshared AND pg_has_role(
          (SELECT datdba FROM pg_database WHERE datname = current_database()), 'USAGE')))
    ORDER BY 2 DESC, 1
"""
_FLUSH_AT = 64 * 1024
# A psql's stdin as large as Linux lets anyone make it (fs.pipe-max-size's default): a
# 64 KiB pipe makes the writer wake and write sixteen times per MiB of rows.
_PIPE_BYTES = MIB


# A hop from one backslash to the next (memchr) costs about what a search for the three
# bytes costs over this many: past that density, the plain search is cheaper.
_BYTES_PER_HOP = 256


def _find_terminator(buffer: bytes, start: int) -> int:
    """Where the next `\\.\\n` begins at or after `start`; -1 if nowhere.

    In most rows backslashes are rare (an escaped newline, tab or backslash), and a jump
    from one to the next is memchr's speed, several times a search for three bytes; where
    they are dense (bytea, say) the plain search takes over.
    """
    at = buffer.find(b"\\", start)
    hops = 0
    while at >= 0:
        if buffer.startswith(b".\n", at + 1):
            return at
        hops += 1
        if hops * _BYTES_PER_HOP > at - start + 16 * _BYTES_PER_HOP:
            return buffer.find(_TERMINATOR, at + 1)
        at = buffer.find(b"\\", at + 1)
    return -1


def _unquote(part: str) -> str:
    return part[1:-1].replace('""', '"') if part.startswith('"') else part


def _split_name(qualified: bytes, encoding: str = "utf-8") -> tuple[str, str]:
    text = qualified.decode(encoding, errors="replace")
    parts = re.findall(r'"(?:[^"]|"")+"|[^".]+', text)
    return _unquote(parts[0]), _unquote(parts[-1])


@dataclass
class _Unit:
    """One post-data entry (with its comments): what it runs and which tables it locks.

    `locks` None: not known, so it runs alone. An index locks nothing others wait on (CREATE
    INDEX takes a share lock), as in pg_restore; anything else may take an exclusive lock
    on its tables, so two such never run at once on one table (and never deadlock)."""

    kind: bytes
    state: dict[bytes, bytes]
    lines: list[bytes] = field(default_factory=list)

    @property
    def phase(self) -> int:
        if self.kind in (b"INDEX", b"CONSTRAINT"):
            return 0
        if self.kind == b"INDEX ATTACH":
            return 1
        if self.kind == b"FK CONSTRAINT":
            return 2
        return 3

    def tables(self) -> list[str]:
        """The tables it works on, as the dump names them."""
        text = b"".join(self.lines).decode(errors="replace")
        found = [_INDEX_ON.search(text), _ALTER_TABLE.search(text), _REFERENCES.search(text)]
        return [match.group(1) for match in found if match]

    def locks(self) -> frozenset[str] | None:
        if self.kind == b"INDEX":
            return frozenset()
        text = b"".join(self.lines).decode(errors="replace")
        table = _ALTER_TABLE.search(text)
        if table is None:
            return None
        if self.kind != b"FK CONSTRAINT":
            return frozenset({table.group(1)})
        referenced = _REFERENCES.search(text, table.end())
        return frozenset({table.group(1), referenced.group(1)}) if referenced else None


class _Session:
    """One psql session: a queue of bytes a thread writes into its stdin, and its output
    read for the markers that say how far it has got."""

    def __init__(self, owner: ParallelLoad, index: int, psql: str, url: DatabaseUrl) -> None:
        self.owner = owner
        self.index = index
        self.queue: deque[bytes | memoryview] = deque()
        self.queued = 0
        self.sent = 0
        self.acked = 0
        self.closing = False
        self.applied: dict[bytes, bytes] = {}
        self.errors: deque[str] = deque(maxlen=20)
        self.proc = subprocess.Popen(
            [
                psql,
                "--no-password",
                "--no-psqlrc",
                "--quiet",
                "--no-align",
                "--tuples-only",
                "-v",
                "ON_ERROR_STOP=1",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=tool_env(url),
            **CHILD_GROUP,  # a terminal's Ctrl-C reaches pgvault alone, which ends them
        )
        stdin, stdout, stderr = self.proc.stdin, self.proc.stdout, self.proc.stderr
        if stdin is None or stdout is None or stderr is None:  # asked for above; never None
            self.proc.kill()
            raise RestoreFailed("psql started without its pipes; nothing was restored")
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        with contextlib.suppress(OSError):  # a smaller pipe only costs more system calls
            fcntl.fcntl(stdin.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        self.threads = [
            threading.Thread(target=self._write, daemon=True),
            threading.Thread(target=self._read_markers, daemon=True),
            threading.Thread(target=self._collect_errors, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _write(self) -> None:
        cond = self.owner.cond
        fd = self.stdin.fileno()
        while True:
            with cond:
                while not self.queue and not self.closing and not self.owner.halted:
                    cond.wait()
                if self.owner.halted or not self.queue:
                    break
                piece = self.queue[0]
            try:
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                self.owner.failed(self)
                break
            with cond:
                self.queue.popleft()
                self.queued -= len(piece)
                self.owner.queued -= len(piece)
                cond.notify_all()
        with contextlib.suppress(OSError):
            self.stdin.close()

    def _read_markers(self) -> None:
        prefix, rows = self.owner.marker_prefix, self.owner.rows_prefix
        for line in iter(self.stdout.readline, b""):
            if line.startswith(prefix):
                with self.owner.cond:
                    self.acked = int(line[len(prefix) :])
                    self.owner.cond.notify_all()
            elif line.startswith(rows):
                copy, count = line[len(rows) :].split()
                self.owner.copied(int(copy), int(count))
        if not self.closing:
            self.owner.failed(self)

    def _collect_errors(self) -> None:
        for line in iter(self.stderr.readline, b""):
            self.errors.append(line.decode(errors="replace").rstrip())

    def reason(self) -> str:
        """What psql said when it stopped: its first ERROR, once it has said all of it."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.threads[2].join(5)
        return tool_reason(self.errors, f"exit status {self.proc.returncode}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for thread in self.threads:
            thread.join(5)


class ParallelLoad:
    """A sink for the plain dump: `write` its bytes in order, then `finish` (after the object
    proved intact) or `abort`. A failure in any session stops all of them; `write` and
    `finish` then raise `RestoreFailed` with psql's reason in one line."""

    def __init__(self, psql: str, url: DatabaseUrl, loaders: int, read_ahead_bytes: int) -> None:
        self.url = url
        self.bound = read_ahead_bytes
        self.piece = max(16 * 1024, min(MIB, read_ahead_bytes // 4))
        self.cond = threading.Condition()
        self.queued = 0
        self.peak_queued = 0
        """The most bytes ever handed to sessions and not yet written to them."""
        self.failure: _Session | None = None
        token = uuid.uuid4().hex
        self.marker_prefix = f"pgvault-done {token} ".encode()
        self.rows_prefix = f"pgvault-rows {token} ".encode()
        self.copied_rows: dict[str, int] = {}
        """Rows each table's COPY loaded, as the server counted them (`schema.table`)."""
        self._copies: list[str] = []
        self._encoding = "utf-8"
        self.tables_by_session: list[list[str]] = [[] for _ in range(loaders)]
        """Which session loaded which table's rows (`schema.table`), for the tests."""
        self._carry = b""
        self._in_copy = False
        self._copy_line_start = True
        self._copy_commit = False
        self._copied = False
        self.stopped = False
        self._section = "prologue"
        self._prologue: list[bytes] = []
        self._held: list[bytes] = []
        self._state: dict[bytes, bytes] = {}
        self._entry_kind = b""
        self._target: _Session | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._units: list[_Unit] = []
        self._freezable: set[tuple[str, str]] = set()
        self._table_bytes: dict[str, int] = {}
        self._copying = ""
        self.sessions: list[_Session] = []
        try:
            for index in range(loaders):
                self.sessions.append(_Session(self, index, psql, url))
        except BaseException:
            self.abort()
            raise

    # -- what the sessions report -------------------------------------------------------------

    @property
    def halted(self) -> bool:
        return self.stopped or self.failure is not None

    def failed(self, session: _Session) -> None:
        with self.cond:
            if self.failure is None:
                self.failure = session
            self.cond.notify_all()

    def copied(self, copy: int, rows: int) -> None:
        """A session's report that the `copy`-th table's COPY loaded `rows`."""
        with self.cond:
            self.copied_rows[self._copies[copy]] = rows

    def _raise_if_failed(self) -> None:
        if self.failure is not None:
            raise RestoreFailed(f"psql failed while restoring ({self.failure.reason()})")

    def _wait(self) -> None:
        """Wait (holding `cond`) for a session's news; raise if one failed."""
        self._raise_if_failed()
        self.cond.wait(1.0)
        self._raise_if_failed()

    # -- handing bytes to sessions --------------------------------------------------------------

    def _send(self, session: _Session, data: bytes | memoryview) -> None:
        for start in range(0, len(data), self.piece):
            piece = data[start : start + self.piece]
            with self.cond:
                while self.queued and self.queued + len(piece) > self.bound:
                    self._wait()
                self._raise_if_failed()
                self.queued += len(piece)
                self.peak_queued = max(self.peak_queued, self.queued)
                session.queued += len(piece)
                session.queue.append(piece)
                self.cond.notify_all()

    def _apply_state(self, session: _Session, state: dict[bytes, bytes]) -> None:
        """The session settings pg_dump sets between entries (default_tablespace, ...) as they
        stood at this entry, on the session that runs it."""
        changed = [line for key, line in state.items() if session.applied.get(key) != line]
        if changed:
            session.applied.update(state)
            self._send(session, b"".join(changed))

    def _mark(self, session: _Session) -> int:
        session.sent += 1
        self._send(session, b"SELECT '%s%d';\n" % (self.marker_prefix, session.sent))
        return session.sent

    def _sync(self, sessions: Iterable[_Session]) -> None:
        """Return once everything handed to `sessions` has run."""
        waiting = [(session, self._mark(session)) for session in sessions]
        with self.cond:
            while any(session.acked < mark for session, mark in waiting):
                self._wait()

    def _least_busy(self) -> _Session:
        """An idle session (all it was given has run), else the one with least queued."""
        with self.cond:
            return min(
                self.sessions,
                key=lambda session: (session.acked < session.sent, session.queued),
            )

    # -- reading the stream ----------------------------------------------------------------------

    def write(self, chunk: bytes) -> None:
        """Take the next bytes of the dump; raise `RestoreFailed` once any session failed."""
        self._raise_if_failed()
        position = 0
        if self._in_copy and self._carry and len(chunk) >= len(_TERMINATOR):
            # Inside a table's rows only the few bytes that may begin its end line are
            # carried: they are looked at beside the chunk's first bytes, never joined to it.
            buffer, position = chunk, self._copy_seam(chunk)
        else:
            buffer, self._carry = (self._carry + chunk if self._carry else chunk), b""
        while position < len(buffer):
            if self._in_copy:
                position = self._copy_data(buffer, position)
                continue
            end = buffer.find(b"\n", position)
            if end < 0:
                self._carry = buffer[position:]
                return
            self._line(buffer[position : end + 1])
            position = end + 1

    def _copy_seam(self, chunk: bytes) -> int:
        """The carried bytes, with `chunk` after them: where in `chunk` the rows go on."""
        carry, self._carry = self._carry, b""
        seam = carry + chunk[: len(_TERMINATOR)]
        search = 0
        while 0 <= (found := seam.find(_TERMINATOR, search)) < len(carry):
            if seam[found - 1] == 0x0A if found else self._copy_line_start:
                self._stream(carry[:found])
                self._end_copy()
                return found + len(_TERMINATOR) - len(carry)
            search = found + 1
        self._stream(carry)
        self._copy_line_start = carry[-1] == 0x0A
        return 0

    def _copy_data(self, buffer: bytes, position: int) -> int:
        """Pass a table's rows to its session up to the `\\.` line that ends them."""
        search = position
        while (found := _find_terminator(buffer, search)) >= 0:
            at_line_start = buffer[found - 1] == 0x0A if found > position else self._copy_line_start
            if at_line_start:
                self._stream(memoryview(buffer)[position:found])
                self._end_copy()
                return found + len(_TERMINATOR)
            search = found + 1
        # The last two bytes may begin the terminator: keep them for the next chunk.
        keep = max(position, len(buffer) - 2)
        if keep > position:
            self._stream(memoryview(buffer)[position:keep])
            self._copy_line_start = buffer[keep - 1] == 0x0A
        self._carry = buffer[keep:]
        return len(buffer)

    def _end_copy(self) -> None:
        # The rows the server loaded, said by psql before anything else can change them.
        # (A query, not \echo: a dump's \restrict allows no meta-command, only variables.)
        rows = b"SELECT '%s%d ' || :ROW_COUNT;\n" % (self.rows_prefix, len(self._copies) - 1)
        end = _TERMINATOR + rows + (b"COMMIT;\n" if self._copy_commit else b"")
        self._send(self._current(), end)
        self._in_copy = False

    def _current(self) -> _Session:
        """The session the entry being read goes to (chosen by then, always)."""
        if self._target is None:
            raise RestoreFailed("the dump's rows came before their COPY; nothing was swapped in")
        return self._target

    def _stream(self, data: bytes | memoryview) -> None:
        if data:
            self._table_bytes[self._copying] = self._table_bytes.get(self._copying, 0) + len(data)
            self._send(self._current(), data)

    def _line(self, line: bytes) -> None:
        if (
            line == b"--\n"
            or line == b"\n"
            or (line.startswith(b"SET ") and self._section != "prologue")
        ):
            # Between entries pg_dump writes blank lines, the comment's first line and the
            # settings the next entry needs: held until it is clear whose they are.
            self._held.append(line)
            return
        header = _HEADER.fullmatch(line)
        if header and self._held[-1:] == [b"--\n"] and self._held[-2:-1] in ([], [b"\n"]):
            for held in self._held[:-1]:
                if held.startswith(b"SET "):
                    self._state[held.split()[1]] = held
            self._held = []
            self._begin(header.group(2), b"--\n" + line)
            return
        waiting, self._held = self._held, []
        for each in waiting:
            self._add(each)
        self._add(line)

    def _add(self, line: bytes) -> None:
        if self._section == "prologue":
            self._prologue.append(line)
        elif self._section == "post":
            self._units[-1].lines.append(line)
        elif self._section == "pre":
            self._text(line)
        elif (
            self._entry_kind == b"TABLE DATA"
            and not self._copied
            and (copy := _COPY.fullmatch(line))
        ):
            self._copied = True
            self._begin_copy(line, copy.group(1))
        elif self._target is not None or line.strip():
            self._text(line)

    def _text(self, line: bytes) -> None:
        if self._target is None:
            self._target = self._least_busy()
            self._apply_state(self._target, self._state)
        self._pending.append(line)
        self._pending_size += len(line)
        if self._pending_size >= _FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._send(self._current(), b"".join(self._pending))
            self._pending, self._pending_size = [], 0

    def _begin(self, kind: bytes, header: bytes) -> None:
        """A new entry: it may end a section, and says where its text goes."""
        self._flush()
        if self._section == "data" and self._target is not None:
            self._mark(self._target)  # so it counts as busy until its entry has run
        if self._section == "prologue":
            prologue = b"".join(self._prologue)
            for session in self.sessions:
                self._send(session, prologue)
            self._section = "pre"
        if self._section == "pre" and kind in _DATA_TYPES:
            # The schema before the data, whole, before any row: then which tables take FREEZE.
            self._sync(self.sessions)
            self._freezable = self._ordinary_tables()
            self._section = "data"
        elif self._section == "data" and kind not in _DATA_TYPES:
            self._section = "post"
        self._entry_kind = kind
        if self._section == "pre":
            self._target = self.sessions[0]
            self._apply_state(self._target, self._state)
            self._add(header)
        elif self._section == "data":
            self._target = None
            self._copied = False
        elif kind in _ANNOTATIONS and self._units:
            self._units[-1].lines.append(header)
        else:
            self._units.append(_Unit(kind, dict(self._state), [header]))

    def _ordinary_tables(self) -> set[tuple[str, str]]:
        with connect(self.url) as conn:
            self._encoding = conn.info.encoding  # the dump's, in which it names the tables
            return set(user_tables(conn))

    def _begin_copy(self, line: bytes, target: bytes) -> None:
        if self._target is None:
            self._target = self._least_busy()
            self._apply_state(self._target, self._state)
        self._flush()
        name = _split_name(target, self._encoding)
        self._copies.append(".".join(name))
        self._copying = target.decode(errors="replace")
        self.tables_by_session[self._target.index].append(".".join(name))
        # FREEZE needs the table truncated in the same transaction, and applies to ordinary
        # tables only: not a partitioned table (a dump made with --load-via-partition-root
        # copies into the root) and not an extension's configuration table, whose rows the
        # extension inserted and TRUNCATE would lose. Those take their COPY as written.
        self._copy_commit = name in self._freezable
        if self._copy_commit:
            line = (
                b"BEGIN;\nTRUNCATE ONLY "
                + target
                + b";\n"
                + line.removesuffix(b"FROM stdin;\n")
                + b"FROM stdin WITH (FREEZE);\n"
            )
        self._send(self._target, line)
        self._in_copy = True
        self._copy_line_start = True

    # -- after the last byte ------------------------------------------------------------------

    def finish(self) -> None:
        """Run what comes after the data, analyze, wait for every session, and close them."""
        self._raise_if_failed()
        if self._in_copy:
            raise RestoreFailed("the dump ended inside a table's rows; nothing was swapped in")
        if self._carry:
            self._line(self._carry)
            self._carry = b""
        held, self._held = self._held, []
        for line in held:
            self._add(line)
        if self._section == "prologue":
            self._begin(b"", b"")
        self._flush()
        self._sync(self.sessions)
        for phase in range(4):
            units = [unit for unit in self._units if unit.phase == phase]
            if phase in (0, 2):
                self._run_side_by_side(units)
            elif units:
                self._run_in_order(units)
        self._analyze()
        with self.cond:
            for session in self.sessions:
                session.closing = True
            self.cond.notify_all()
        for session in self.sessions:
            session.proc.wait()
            session.stop()
            if session.proc.returncode != 0:
                self.failed(session)
        self._raise_if_failed()

    def _analyze(self) -> None:
        """What a database-wide `ANALYZE` does, one table at a time spread over the sessions,
        largest first, each to the session with the fewest bytes to sample so far: on two
        cores the statistics of the big table and of all the others are taken side by side."""
        with connect(self.url) as conn:
            relations = conn.execute(_ANALYZED).fetchall()
        load = dict.fromkeys(self.sessions, 0)
        for name, size in relations:
            session = min(load, key=lambda each: (load[each], each.index))
            load[session] += max(size, 1)
            self._send(session, b"ANALYZE %s;\n" % name.encode(self._encoding))
        self._sync(self.sessions)

    def _run_in_order(self, units: list[_Unit]) -> None:
        session = self.sessions[0]
        for unit in units:
            self._apply_state(session, unit.state)
            self._send(session, b"".join(unit.lines))
        self._sync([session])

    def _run_side_by_side(self, units: list[_Unit]) -> None:
        """Each unit on an idle session, never two at once that lock the same table."""
        # Largest tables first: the longest statements start early, the short fill in after.
        units = sorted(
            units, key=lambda u: -max((self._table_bytes.get(t, 0) for t in u.tables()), default=0)
        )
        pending = [(unit, self._ordinary_only(unit.locks())) for unit in units]
        running: dict[int, tuple[frozenset[str] | None, int]] = {}
        while pending or running:
            with self.cond:
                self._raise_if_failed()
                for index, (_, mark) in list(running.items()):
                    if self.sessions[index].acked >= mark:
                        del running[index]
            started = False
            for session in self.sessions:
                if session.index in running or not pending:
                    continue
                held = [locks for locks, _ in running.values()]
                choice = next(
                    (item for item in pending if not any(_conflict(item[1], h) for h in held)),
                    None,
                )
                if choice is None:
                    break
                pending.remove(choice)
                unit, locks = choice
                self._apply_state(session, unit.state)
                self._send(session, b"".join(unit.lines))
                running[session.index] = (locks, self._mark(session))
                started = True
            if running and not started:
                with self.cond:
                    if all(self.sessions[i].acked < mark for i, (_, mark) in running.items()):
                        self._wait()

    def _ordinary_only(self, locks: frozenset[str] | None) -> frozenset[str] | None:
        """A statement on a partitioned table also locks its partitions, in an order another
        statement may take the other way round: it runs alone."""
        if locks is None or all(_split_name(t.encode()) in self._freezable for t in locks):
            return locks
        return None

    def abort(self) -> None:
        """Stop every session at once (a failure elsewhere, an interrupt); idempotent."""
        with self.cond:
            for session in self.sessions:
                session.closing = True
            self.stopped = True
            self.cond.notify_all()
        for session in self.sessions:
            session.stop()


def _conflict(one: frozenset[str] | None, other: frozenset[str] | None) -> bool:
    return one is None or other is None or not one.isdisjoint(other)
