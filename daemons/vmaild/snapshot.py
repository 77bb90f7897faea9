"""The lookup cache's snapshot file: what a restart keeps (README, "Warm restarts").

Only the lookup cache (``cache.Cache``) is ever written: never the login cache, nor anything
else holding a password digest. Text, UTF-8, one JSON document per line::

    {"format": "vmaild-cache-snapshot", "version": 1, "config": FINGERPRINT,
     "written": UNIX_TIME, "changes": COUNTER}
    ["MAP", [[KEY, VALUE or null, FETCHED_AT], ...]]      (chunks of CHUNK entries)
    ...
    {"entries": N, "sha256": HEX}

Times are wall-clock (the cache counts in monotonic time, which restarts with the machine):
``FETCHED_AT`` is when the answer came from the database, so a restored entry keeps its age.
``COUNTER`` is the schema's change counter the cached answers are consistent with (the change
poller's baseline, watch.py), or null. The last line covers every byte before it: a file cut
short or changed in place is "damaged". It is written to a temporary file in the same
directory, mode 0600, fsync'ed and renamed over the old one, so a crash leaves the old file
or the new one, never a mix.

A snapshot is ignored (``Ignored``, one log line) when it is damaged, was written for another
configuration (``fingerprint``: the maps, their queries and TTLs, the cache TTLs and the
database), is older than any of its entries could still be served, or could have been written
by someone else (not owned by this user, or writable by others: its answers route mail).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .config import Config

MAGIC = "vmaild-cache-snapshot"
VERSION = 1
CHUNK = 5000  # entries per line: one json.dumps call each, so the GIL is let go between them

# key -> (value, fetched_at) per map, as Cache.export gives them
Exported = dict[str, dict[str, tuple[str | None, float]]]


class Ignored(Exception):
    """The snapshot cannot be used; the message says why, for the one log line.
    ``expected``: what follows a configuration change or a long stop, not a fault."""

    def __init__(self, reason: str, expected: bool = False):
        super().__init__(reason)
        self.expected = expected


@dataclass(frozen=True)
class Snapshot:
    config: str
    written: float  # wall clock
    changes: int | str | None
    maps: dict[str, list[tuple[str, str | None, float]]]  # key, value, fetched_at (wall clock)

    def __len__(self) -> int:
        return sum(len(entries) for entries in self.maps.values())


def fingerprint(cfg: Config) -> str:
    """What the cached answers depend on: a snapshot from a configuration with another one
    is ignored. Listen addresses, pool sizes and the like do not change an answer."""
    maps = {
        name: {
            "query": m.query,
            "chain": list(m.chain),
            "catchall": m.catchall,
            "delimiter": cfg.delimiter_for(m),
            "fold_case": m.fold_case,
            "ttl": m.ttl,
            "negative_ttl": m.negative_ttl,
            "stale_negative": m.stale_negative,
        }
        for name, m in sorted(cfg.maps.items())
    }
    c, d = cfg.cache, cfg.database
    doc = {
        "maps": maps,
        "cache": [c.ttl, c.negative_ttl, c.stale_ttl],
        "database": [[str(h) for h in d.hosts], d.dbname, d.user],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def encode(
    config: str, written: float, changes: Any, exported: Exported, wall_offset: float
) -> Iterator[bytes]:
    """The file's lines. ``wall_offset`` turns the cache's clock into wall-clock time
    (``time.time() - clock()``, read together with the export)."""
    if not isinstance(changes, int | str) or isinstance(changes, bool):
        changes = None
    digest, count = hashlib.sha256(), 0
    header = {
        "format": MAGIC,
        "version": VERSION,
        "config": config,
        "written": round(written, 3),
        "changes": changes,
    }
    line = _line(header)
    digest.update(line)
    yield line
    for name, entries in exported.items():
        items = iter(entries.items())
        while True:
            rows = [
                [key, value, round(at + wall_offset, 1)]
                for key, (value, at) in itertools.islice(items, CHUNK)
            ]
            if not rows:
                break
            count += len(rows)
            line = _line([name, rows])
            digest.update(line)
            yield line
    yield _line({"entries": count, "sha256": digest.hexdigest()})


def _line(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def decode(data: bytes) -> Snapshot:
    """A snapshot from the file's bytes; raises Ignored("damaged ...")."""
    body, _, last = data.rstrip(b"\n").rpartition(b"\n")
    body += b"\n"
    try:
        trailer = json.loads(last)
        if hashlib.sha256(body).hexdigest() != trailer["sha256"]:
            raise Ignored("damaged (checksum mismatch)")
        lines = body.splitlines()
        header = json.loads(lines[0])
        if header.get("format") != MAGIC or header.get("version") != VERSION:
            raise Ignored("damaged (not a version 1 snapshot)")
        maps: dict[str, list[tuple[str, str | None, float]]] = {}
        for raw in lines[1:]:
            name, rows = json.loads(raw)
            entries = maps.setdefault(name, [])
            for key, value, at in rows:
                if not (isinstance(key, str) and isinstance(value, str | None)):
                    raise Ignored("damaged (an entry that is not text)")
                entries.append((key, value, float(at)))
        if sum(map(len, maps.values())) != trailer["entries"]:
            raise Ignored("damaged (entry count)")
        return Snapshot(header["config"], float(header["written"]), header["changes"], maps)
    except Ignored:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise Ignored(f"damaged ({type(e).__name__})") from None


def read(path: str) -> Snapshot:
    """Read and check ``path``; FileNotFoundError when there is none, Ignored when it is
    damaged or not safely ours."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise Ignored("not a regular file")
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise Ignored(
                f"unsafe: owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o} "
                f"(wanted: uid {os.geteuid()}, not writable by others)"
            )
        return decode(f.read())


def write(
    path: str,
    lines: Iterable[bytes],
    lock: threading.Lock | None = None,
    still_wanted: Callable[[], bool] = lambda: True,
) -> bool:
    """Write ``lines`` to ``path`` atomically, mode 0600: a temporary file in the same
    directory, fsync, rename, fsync of the directory. The rename happens under ``lock``
    and only if ``still_wanted()``: a flush while it was being written (which removes the
    file under the same lock) must not be undone. Returns whether the file was replaced;
    raises OSError."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # mkstemp's mode already; said for the reader
            for line in lines:
                f.write(line)
            f.flush()
            os.fsync(f.fileno())
        with lock or threading.Lock():
            if not still_wanted():
                os.unlink(tmp)
                return False
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True
