"""What pgBackRest's JSON says about the recoverable window and the WAL archive's health.

`info` gives the base backups and the archive's oldest and newest segment names; it does not
see a segment missing in between (nor does `verify`, which reports ok with one deleted), so
the archive is listed (`repo-ls`) and the segments are checked for continuity from the
oldest base backup's first segment on.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pgvault_assets.engine.pitr.runner import PgBackRest, PitrFailed

# WAL segments of the default 16 MiB: 256 per 4 GiB "log" file of the name's middle part.
SEGMENTS_PER_LOG = 0x100
_SEGMENT_FILE = re.compile(
    r"(?:^|/)([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})-[0-9a-f]{40}(?:\.\w+)?$"
)
_SEGMENT_NAME = re.compile(r"^[0-9A-F]{24}$")
LISTED_TIME_RESOLUTION = timedelta(seconds=1)


@dataclass(frozen=True)
class BaseBackup:
    label: str
    kind: str
    """full, diff or incr"""
    started_at: datetime
    stopped_at: datetime
    wal_start: str
    wal_stop: str
    size_bytes: int
    repository_size_bytes: int
    annotation: dict[str, str]


@dataclass(frozen=True)
class Segment:
    timeline: int
    index: int
    name: str
    archived_at: datetime


@dataclass(frozen=True)
class Gap:
    """Segments missing between two present ones: recovery cannot replay past `after`."""

    after: str
    before: str
    missing: int

    def __str__(self) -> str:
        return f"{self.missing} WAL segment(s) missing between {self.after} and {self.before}"


@dataclass(frozen=True)
class Window:
    """The times a recovery can reach: from the oldest base backup's end to the newest
    archived segment; `gaps` cut it, and are an alert."""

    backups: tuple[BaseBackup, ...]
    segments: tuple[Segment, ...]
    gaps: tuple[Gap, ...]
    archive_id: str | None
    major: int | None = None
    """The PostgreSQL major version the stanza archives."""

    @property
    def earliest(self) -> datetime | None:
        return self.backups[0].stopped_at if self.backups else None

    @property
    def latest(self) -> datetime | None:
        """The window's end, which `pitr status` shows and `restore-to-time` accepts up to:
        the second after the newest segment reached the archive (the repository lists its
        time truncated to the second), when everything in it had been written."""
        newest = max((s.archived_at for s in self.segments), default=None)
        return None if newest is None else newest + LISTED_TIME_RESOLUTION

    @property
    def newest_segment(self) -> str | None:
        return (
            max(self.segments, key=lambda s: (s.index, s.timeline)).name if self.segments else None
        )

    def backup_for(self, at: datetime) -> BaseBackup | None:
        """The newest base backup a recovery to `at` starts from (one that ended by then)."""
        usable = [b for b in self.backups if b.stopped_at <= at]
        return usable[-1] if usable else None


def _time(epoch: int | float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def segment_index(name: str) -> int:
    return int(name[8:16], 16) * SEGMENTS_PER_LOG + int(name[16:24], 16)


def parse_major(info: Any) -> int | None:
    databases = info[0].get("db") or [] if isinstance(info, list) and info else []
    version = str(databases[-1].get("version", "")) if databases else ""
    return int(version.split(".")[0]) if version.split(".")[0].isdigit() else None


def parse_system_id(info: Any) -> int | None:
    """The system identifier of the cluster the stanza archives (None: no stanza yet)."""
    databases = info[0].get("db") or [] if isinstance(info, list) and info else []
    return int(databases[-1]["system-id"]) if databases else None


def parse_backups(info: Any) -> tuple[tuple[BaseBackup, ...], str | None]:
    """The stanza's base backups, oldest first, and its current archive id (`15-1`)."""
    if not isinstance(info, list) or not info or not isinstance(info[0], dict):
        raise PitrFailed("pgbackrest info returned no stanza; run pgvault pitr init")
    stanza = info[0]
    status = stanza.get("status", {})
    if status.get("code") not in (0, 2):  # 2: no backup yet, which is a state, not an error
        raise PitrFailed(f"pgbackrest info: {status.get('message', 'unknown status')}")
    backups = []
    for raw in stanza.get("backup", []):
        if raw.get("error"):
            continue
        backups.append(
            BaseBackup(
                label=raw["label"],
                kind=raw["type"],
                started_at=_time(raw["timestamp"]["start"]),
                stopped_at=_time(raw["timestamp"]["stop"]),
                wal_start=raw["archive"]["start"],
                wal_stop=raw["archive"]["stop"],
                size_bytes=int(raw["info"]["size"]),
                repository_size_bytes=int(raw["info"]["repository"]["size"]),
                annotation=dict(raw.get("annotation") or {}),
            )
        )
    archives = stanza.get("archive") or []
    archive_id = archives[-1]["id"] if archives else None
    return tuple(sorted(backups, key=lambda b: b.stopped_at)), archive_id


def parse_segments(listing: Any) -> tuple[Segment, ...]:
    """The WAL segments in a `repo-ls --recurse --output=json` of one archive id's folder."""
    if not isinstance(listing, dict):
        raise PitrFailed("pgbackrest repo-ls returned something other than a listing")
    found = []
    for path, entry in listing.items():
        match = _SEGMENT_FILE.search(path)
        if match is None or not isinstance(entry, dict) or entry.get("type") != "file":
            continue
        name = "".join(match.groups())
        found.append(
            Segment(int(match.group(1), 16), segment_index(name), name, _time(entry["time"]))
        )
    return tuple(sorted(found, key=lambda s: (s.index, s.timeline)))


def find_gaps(segments: tuple[Segment, ...], start: str | None) -> tuple[Gap, ...]:
    """Holes in the segment sequence from `start` (the oldest base backup's first segment)
    to the newest; any timeline's copy of a segment counts as present."""
    if start is None or not _SEGMENT_NAME.match(start):
        return ()
    first = segment_index(start)
    present: dict[int, str] = {}
    for segment in segments:
        if segment.index >= first:
            present.setdefault(segment.index, segment.name)
    gaps = []
    ordered = sorted(present)
    for before, after in itertools.pairwise(ordered):
        if after - before > 1:
            gaps.append(Gap(present[before], present[after], after - before - 1))
    if ordered and ordered[0] > first:
        gaps.insert(0, Gap(start, present[ordered[0]], ordered[0] - first))
    return tuple(gaps)


def read_window(tool: PgBackRest) -> Window:
    info = tool.json("info")
    backups, archive_id = parse_backups(info)
    segments: tuple[Segment, ...] = ()
    if archive_id is not None:
        listing = tool.json("repo-ls", "--recurse", path=f"archive/{tool.stanza}/{archive_id}")
        segments = parse_segments(listing)
    start = backups[0].wal_start if backups else None
    return Window(backups, segments, find_gaps(segments, start), archive_id, parse_major(info))
