"""How full a Maildir is: maildir++ ``maildirsize``, or a bounded count when it is missing.

PROTOCOLS.md 4.6: delivery tools (maildrop, deliverquota, Courier) keep ``Maildir/maildirsize``:
a first line with the quota (``10000000S,1000C``), then ``<bytes> <count>`` deltas, one per
delivery or expunge, padded with spaces; the usage is the sum of the deltas. The file is
rewritten by whoever next finds it missing or too long, so it may be absent (a Maildir that
never saw a quota-aware delivery). Then the files of ``cur/`` and ``new/`` (of the inbox and
of each ``.Folder``) are counted, the way a recalculation does, in a worker thread and up to
a bound, and the result is reused for a while: a large mailbox is not walked at every RCPT.

The quota itself comes from the database (users.quota_bytes, quota_messages), not from the
file's first line: the database is what the administrator changed last.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

MAILDIRSIZE = "maildirsize"
# A maildirsize this large is corrupt rather than overdue for recalculation (4.6: tools
# rewrite it past 5120 bytes); do not read megabytes on the strength of it.
MAX_MAILDIRSIZE = 1 << 20
_CACHE_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Usage:
    bytes: int
    messages: int
    counted: bool = False  # True: from walking the Maildir, not from maildirsize
    complete: bool = True  # False: the walk stopped at the file limit (a lower bound)


def parse_maildirsize(text: str) -> Usage | None:
    """Sum a maildirsize file's delta lines; None when it is unusable (then count).

    Line 1 is the quota definition and is skipped. Every other non-blank line must be two
    integers (negative after an expunge). A truncated last line (no LF: a writer crashed or
    is appending right now) is ignored.
    """
    lines = text.split("\n")
    if len(lines) < 2:
        return None  # not even a complete quota line
    total_bytes = total_count = 0
    for line in lines[1:-1]:
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            return None
        try:
            b, c = int(parts[0]), int(parts[1])
        except ValueError:
            return None
        total_bytes += b
        total_count += c
    return Usage(max(total_bytes, 0), max(total_count, 0))


def _size_from_name(name: str) -> int | None:
    """Maildir++ puts the size in the file name (``...,S=1234:2,S``): no stat needed."""
    i = name.find(",S=")
    if i < 0:
        return None
    digits = []
    for ch in name[i + 3 :]:
        if not ch.isdigit():
            break
        digits.append(ch)
    return int("".join(digits)) if digits else None


def count_maildir(path: str, max_files: int) -> Usage:
    """Walk cur/ and new/ of the inbox and of each ``.Folder``; at most ``max_files`` files.

    Blocking: run it in a thread. A missing Maildir is an empty one (never delivered to).
    """
    folders = [path]
    try:
        with os.scandir(path) as it:
            folders += [
                e.path
                for e in it
                if e.name.startswith(".")
                and e.name not in (".", "..")
                and e.is_dir(follow_symlinks=False)
            ]
    except FileNotFoundError:
        return Usage(0, 0, counted=True)
    total = count = 0
    for folder in folders:
        for sub in ("cur", "new"):
            try:
                it = os.scandir(os.path.join(folder, sub))
            except (FileNotFoundError, NotADirectoryError):
                continue
            with it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    if count >= max_files:
                        return Usage(total, count, counted=True, complete=False)
                    size = _size_from_name(entry.name)
                    if size is None:
                        try:
                            size = entry.stat(follow_symlinks=False).st_size
                        except FileNotFoundError:
                            continue  # expunged while we looked
                    total += size
                    count += 1
    return Usage(total, count, counted=True)


def read_usage(path: str, max_files: int) -> Usage:
    """maildirsize if usable, else a count. Blocking; OSError other than "missing" is
    raised (e.g. permission denied: the daemon runs as the wrong user)."""
    try:
        with open(os.path.join(path, MAILDIRSIZE), "rb") as f:
            data = f.read(MAX_MAILDIRSIZE + 1)
    except FileNotFoundError:
        data = None
    if data is not None and len(data) <= MAX_MAILDIRSIZE:
        usage = parse_maildirsize(data.decode("ascii", "replace"))
        if usage is not None:
            return usage
    return count_maildir(path, max_files)


class UsageReader:
    """``read_usage`` off the event loop, with counted results reused for ``count_ttl``.

    Its own small thread pool keeps slow disks from taking the database's workers.
    """

    def __init__(
        self,
        max_files: int,
        count_ttl: float,
        workers: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_files = max_files
        self.count_ttl = count_ttl
        self.clock = clock
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vmaild-quota")
        self._counted: dict[str, tuple[float, Usage]] = {}

    async def usage(self, path: str) -> Usage:
        hit = self._counted.get(path)
        if hit is not None and hit[0] > self.clock():
            return hit[1]
        loop = asyncio.get_running_loop()
        usage = await loop.run_in_executor(self._executor, read_usage, path, self.max_files)
        if usage.counted and self.count_ttl > 0:
            if len(self._counted) >= _CACHE_ENTRIES:
                self._counted.pop(next(iter(self._counted)))  # the oldest entry
            self._counted[path] = (self.clock() + self.count_ttl, usage)
        return usage

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
