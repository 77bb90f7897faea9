"""Temporarily replacing system-wide files, safely.

Courier's authdaemond has its configuration path, its authProg path and its
socket path compiled in, so a test has no choice but to overwrite files in
/etc/courier. :class:`FileGuard` makes that tolerable:

* an exclusive ``flock`` serialises harness runs on one machine (a second
  pytest session waits instead of clobbering the first one's files);
* the originals are copied to /var/lib/vmaild-harness/NAME/ together with a
  manifest *before* anything is changed, and restored on release;
* if a run died without restoring (SIGKILL, power loss), the next
  :meth:`FileGuard.acquire` finds the manifest, stops the processes that run
  recorded, and restores the files first.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from harness.common.wait import HarnessTimeout, wait_until

STATE_ROOT = Path("/var/lib/vmaild-harness")
LOCK_ROOT = Path("/run/lock")


class FileGuard:
    """Lock, back up and restore a fixed set of system files."""

    def __init__(self, name: str, paths: Iterable[str | os.PathLike[str]]) -> None:
        self.name = name
        self.paths = [Path(p) for p in paths]
        self.state_dir = STATE_ROOT / name
        self.manifest_path = self.state_dir / "manifest.json"
        self.lock_path = LOCK_ROOT / f"vmaild-harness-{name}.lock"
        self._lock: TextIO | None = None
        self.state: dict[str, Any] = {}

    # ------------------------------------------------------------ locking
    def acquire(
        self,
        timeout: float = 120.0,
        recover: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """Take the lock (waiting up to ``timeout``), recover from a crashed
        previous holder (``recover`` gets its recorded state, to stop its
        processes, before its files are restored), then back up our files."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(self.lock_path, "a+")

        def try_lock() -> bool:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        try:
            wait_until(try_lock, timeout, f"lock {self.lock_path}", interval=0.1)
        except HarnessTimeout:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise RuntimeError(
                f"{self.lock_path} is held by another harness run ({holder}) for more "
                f"than {timeout:.0f}s; it owns the global {self.name} files"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        self._lock = lock
        try:
            if self.manifest_path.exists():
                old = json.loads(self.manifest_path.read_text())
                if recover is not None:
                    recover(old.get("state", {}))
                self._restore(old)
            self._backup()
        except BaseException:
            self.release(restore=False)
            raise

    def release(self, *, restore: bool = True) -> None:
        """Restore the originals (if backed up) and drop the lock."""
        try:
            if restore and self.manifest_path.exists():
                self._restore(json.loads(self.manifest_path.read_text()))
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    # ------------------------------------------------------------- backup
    def _backup(self) -> None:
        files_dir = self.state_dir / "files"
        shutil.rmtree(self.state_dir, ignore_errors=True)
        files_dir.mkdir(parents=True)
        entries: dict[str, str | None] = {}
        for i, path in enumerate(self.paths):
            if path.is_symlink() or path.exists():
                copy = files_dir / str(i)
                shutil.copy2(path, copy, follow_symlinks=False)
                st = path.lstat()
                os.chown(copy, st.st_uid, st.st_gid, follow_symlinks=False)
                entries[str(path)] = str(copy)
            else:
                entries[str(path)] = None
        self.state = {}
        self._write_manifest(entries)

    def _write_manifest(self, entries: dict[str, str | None]) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"files": entries, "state": self.state}, indent=1))
        os.replace(tmp, self.manifest_path)

    def record(self, **state: Any) -> None:
        """Persist facts a crash recovery needs (e.g. pids we started)."""
        self.state.update(state)
        manifest = json.loads(self.manifest_path.read_text())
        self._write_manifest(manifest["files"])

    def _restore(self, manifest: dict[str, Any]) -> None:
        for original, copy in manifest["files"].items():
            target = Path(original)
            if target.is_symlink() or target.exists():
                target.unlink()
            if copy is not None:
                shutil.copy2(copy, target, follow_symlinks=False)
                st = Path(copy).lstat()
                os.chown(target, st.st_uid, st.st_gid, follow_symlinks=False)
        shutil.rmtree(self.state_dir, ignore_errors=True)
