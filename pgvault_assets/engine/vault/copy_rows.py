"""Per-table row counts read off the plain-SQL dump as it streams: no second scan of production.

pg_dump writes each table's data as `COPY <schema>.<table> (<columns>) FROM stdin;`, one line
per row, ended by a line `\\.`. In COPY's text format a row never holds a raw newline (it is
written `\\n`) nor a line that is only `\\.` (a backslash is written `\\\\`), so counting newlines
inside a block counts its rows exactly. Chunks split lines anywhere: only the last few bytes
are carried from one chunk to the next, never a whole line, so a row of a gigabyte costs no
more memory than a short one.
"""

from __future__ import annotations

import re

_COPY_START = b"\nCOPY "
_COPY_END = b"\n\\.\n"
# A COPY header longer than this is not one of pg_dump's (its column list would be absurd).
_HEADER_LIMIT = 1024 * 1024
_IDENTIFIER = re.compile(r'"((?:[^"]|"")*)"|([^".\s]+)')


def copy_table_name(header: str) -> str | None:
    """`schema.table` as the manifest keys it (unquoted) from the text after `COPY `, or None
    when the line is not a COPY of table data from stdin."""
    if not header.endswith(" FROM stdin;"):
        return None
    parts: list[str] = []
    position = 0
    while True:
        match = _IDENTIFIER.match(header, position)
        if match is None:
            return None
        quoted, plain = match.groups()
        parts.append(quoted.replace('""', '"') if quoted is not None else plain)
        position = match.end()
        if header.startswith(".", position):
            position += 1
            continue
        break
    if len(parts) != 2 or not header.startswith(" ", position):
        return None
    return ".".join(parts)


class CopyRowCounter:
    """Fed the dump's bytes in order, in chunks of any size; `counts` holds rows per table.

    Outside a COPY block it looks only for the next line starting `COPY `; inside one it
    counts newlines with `bytes.count` and looks for the end line, so the cost per byte is
    two C-level scans of the chunk.
    """

    def __init__(self, encoding: str = "utf-8") -> None:
        """`encoding`: the dump's (the database's), in which its table names are written."""
        self.counts: dict[str, int] = {}
        self._encoding = encoding
        # The stream is read as if a newline came first, so a COPY on the first line is found.
        self._carry = b"\n"
        self._header: bytearray | None = None
        self._table: str | None = None

    def feed(self, chunk: bytes) -> None:
        position = 0
        while position < len(chunk):
            if self._table is not None:
                position = self._in_block(self._table, chunk, position)
            elif self._header is not None:
                position = self._in_header(self._header, chunk, position)
            else:
                position = self._scanning(chunk, position)

    def _find(self, pattern: bytes, chunk: bytes, position: int) -> int | None:
        """Where `pattern` starts, in `chunk`'s offsets (negative: in the bytes carried from
        the previous chunk); None, with the carry updated, when it is not there yet."""
        carry = self._carry
        keep = len(pattern) - 1
        found = (carry + chunk[position : position + keep]).find(pattern)
        if found >= 0:
            return position + found - len(carry)
        found = chunk.find(pattern, position)
        if found >= 0:
            return found
        if len(chunk) - position >= keep:
            self._carry = chunk[len(chunk) - keep :]
        else:
            self._carry = (carry + chunk[position:])[-keep:]
        return None

    def _scanning(self, chunk: bytes, position: int) -> int:
        found = self._find(_COPY_START, chunk, position)
        if found is None:
            return len(chunk)
        self._header = bytearray()
        self._carry = b""
        return found + len(_COPY_START)

    def _in_header(self, header: bytearray, chunk: bytes, position: int) -> int:
        end = chunk.find(b"\n", position)
        if end < 0:
            header += chunk[position:]
            if len(header) > _HEADER_LIMIT:
                self._header = None
            return len(chunk)
        header += chunk[position:end]
        self._header = None
        self._table = copy_table_name(header.decode(self._encoding, errors="replace"))
        if self._table is not None:
            self.counts.setdefault(self._table, 0)
        # The header's own newline: an empty table's end line follows it directly.
        self._carry = b"\n"
        return end + 1

    def _in_block(self, table: str, chunk: bytes, position: int) -> int:
        found = self._find(_COPY_END, chunk, position)
        if found is None:
            self.counts[table] += chunk.count(b"\n", position)
            return len(chunk)
        # Rows end with the newline the end marker starts with (one carried was counted before).
        self.counts[table] += chunk.count(b"\n", position, max(position, found + 1))
        self._table = None
        self._carry = b"\n"
        return found + len(_COPY_END)
