"""Password verification and hashing off the event loop, with bounded concurrency.

A small thread pool of its own, separate from the database pool: a burst of logins then
queues here while tcp: lookups keep their database connections. An asyncio semaphore of
the pool's size admits the work, so nothing piles up inside the executor's unbounded
queue, and a request whose client went away while waiting is simply cancelled.

The hashes themselves release the GIL (libxcrypt through ctypes, the bcrypt and
argon2-cffi packages; see cryptlib.py), so the event loop keeps running while they work.
The exception is a hash that costs microseconds (the seed's DES, clear text): a thread
hop would cost more than the check, so it runs inline.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor

from .. import passwords
from ..metrics import Metrics


class Hasher:
    def __init__(self, workers: int, scheme: str, rounds: int, metrics: Metrics | None = None):
        self.workers = workers or min(8, os.cpu_count() or 2)
        self.scheme = scheme
        self.rounds = rounds
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="vmaild-hash")
        self._slots: asyncio.Semaphore | None = None

    def _semaphore(self) -> asyncio.Semaphore:
        # Made on first use, inside the running loop.
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers)
        return self._slots

    async def verify(self, password: str, stored: str) -> bool:
        if passwords.is_cheap(stored):
            started = time.perf_counter()
            ok = passwords.verify(password, stored)
            if self.metrics is not None:
                self.metrics.login_verify_seconds.observe(time.perf_counter() - started)
            return ok
        async with self._semaphore():
            started = time.perf_counter()
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(self._pool, passwords.verify, password, stored)
            if self.metrics is not None:
                self.metrics.login_verify_seconds.observe(time.perf_counter() - started)
            return ok

    async def hash(self, password: str) -> str:
        async with self._semaphore():
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._pool, passwords.hash_password, password, self.scheme, self.rounds
            )

    def close(self) -> None:
        # Work already handed to the pool finishes (its callers are waiting for it); new
        # work is refused with RuntimeError, which the service turns into a temporary
        # failure. Never cancel: a cancelled request task would leave its client waiting.
        self._pool.shutdown(wait=False)
