"""``vmaild serve``: build everything from the config, listen, reload, drain.

A ``Runtime`` (runtime.py) is everything built from one configuration (database pool,
cache, lookups, and the auth and policy services). SIGHUP builds a new one from the
re-read file and swaps it in; a broken file is refused and the old runtime keeps serving.
Listeners whose address did not change stay open (listeners.py), so Postfix's long-lived
connections survive a reload. The cache learns changes from watch.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
from typing import TYPE_CHECKING, Any, TypeVar

from . import config as config_mod
from .cache import Cache
from .config import Config
from .listeners import ListenerSet, Wanted
from .lookup import Lookups
from .metrics import Metrics
from .runtime import Runtime
from .servers.base import ListenerContext, SequentialProtocol
from .servers.inherited import InheritedSockets
from .values import ConfigError, Listen
from .warm import CacheKeeper
from .watch import ChangeWatch

if TYPE_CHECKING:
    from .auth.service import AuthService
    from .policy.service import PolicyService

log = logging.getLogger("vmaild")
DRAIN_SECONDS = 10.0
SWEEP_SECONDS = 30.0


class App:
    """What the listeners hold on to; ``runtime`` is swapped on reload.

    The change watching (watch.py) and the listener bookkeeping (listeners.py) are parts
    the App owns; each is given getters and callables, never the App itself."""

    def __init__(
        self,
        cfg: Config,
        metrics: Metrics | None = None,
        inherited: InheritedSockets | None = None,
    ):
        self.metrics = metrics or Metrics()
        # Sockets systemd passed (vmaild.socket): used instead of binding, never unlinked.
        self.inherited = inherited if inherited is not None else InheritedSockets()
        self.runtime = Runtime.build(cfg, self.metrics)
        self.metrics.watch_cache(lambda: len(self.runtime.cache))
        self.connections: set[SequentialProtocol] = set()
        self.listener_context = ListenerContext(self.metrics, self.connections)
        self.listener_set = ListenerSet(
            self.listener_context, self.inherited, self.wanted_listeners, self.metrics.render
        )
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # The change log reader and the change counter's baseline; outlive reloads.
        self.watch = ChangeWatch(lambda: self.runtime, self.metrics, self._snapshot_stale)
        self.runtime.lookups.pending = self.watch.feed.pending
        self._fit_task: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None
        # [cache] snapshot: read at start (a reload keeps the running one)
        self.keeper = CacheKeeper.for_config(cfg)

    @property
    def config(self) -> Config:
        return self.runtime.config

    @property
    def listeners(self) -> dict[str, tuple[Listen, asyncio.Server]]:
        return self.listener_set.open

    def flush_cache(self, reason: str, detail: str = "") -> int:
        return self.watch.flush_cache(reason, detail)

    def _snapshot_stale(self) -> None:
        """The cache was flushed: the snapshot on disk no longer matches it."""
        if self.keeper is not None:
            self.keeper.invalidate()

    # -- what the listeners answer from (servers/interfaces.py) ------------------------------
    # Called per request, never kept: a reload swaps ``runtime`` under open connections.

    def current_lookups(self) -> Lookups:
        return self.runtime.lookups

    def current_auth(self) -> AuthService:
        return _configured(self.runtime.auth, "auth")

    def current_policy(self) -> PolicyService:
        return _configured(self.runtime.policy, "policy")

    async def control_flush(self) -> int:
        """vmailctl's ``flush`` (ChangeWatch.control_flush has the rule)."""
        return await self.watch.control_flush()

    async def control_changed(self, gtid: str | None, keys: tuple[str, ...] | None) -> str:
        """vmailctl's ``changed`` (ChangeWatch.control_changed)."""
        return await self.watch.control_changed(gtid, keys)

    # -- listeners ---------------------------------------------------------------------------

    def wanted_listeners(self, cfg: Config) -> Wanted:
        from .servers.control import ControlProtocol
        from .servers.socketmap import SocketmapProtocol
        from .servers.tcp_table import TcpTableProtocol

        ctx = self.listener_context
        wanted: Wanted = {}
        for name, m in cfg.maps.items():
            if m.tcp is not None:
                wanted[f"tcp:{name}"] = (
                    m.tcp,
                    functools.partial(TcpTableProtocol, ctx, self.current_lookups, name),
                )
        if cfg.socketmap.listen is not None:
            wanted["socketmap"] = (
                cfg.socketmap.listen,
                functools.partial(SocketmapProtocol, ctx, self.current_lookups),
            )
        if cfg.control.listen is not None:
            wanted["control"] = (
                cfg.control.listen,
                functools.partial(ControlProtocol, ctx, self.control_flush, self.control_changed),
            )
        if cfg.auth.listen is not None:
            from .servers.auth import AuthProtocol

            wanted["auth"] = (
                cfg.auth.listen,
                functools.partial(AuthProtocol, ctx, self.current_auth),
            )
        if cfg.sasl.listen is not None:
            from .servers.sasl import SaslProtocol

            # The mechanisms are read per connection, so a reload applies to new ones.
            wanted["sasl"] = (
                cfg.sasl.listen,
                lambda: SaslProtocol(ctx, self.current_auth, self.config.sasl.mechanisms),
            )
        if cfg.policy.listen is not None:
            from .servers.policy import PolicyProtocol

            # The limit is read per connection, so a reload applies to new connections.
            wanted["policy"] = (
                cfg.policy.listen,
                lambda: PolicyProtocol(
                    ctx, self.current_policy, self.config.policy.max_request_bytes
                ),
            )
        return wanted

    async def sync_listeners(self, cfg: Config) -> None:
        """Open what the config asks for, close what it no longer names, keep the rest."""
        await self.listener_set.sync(cfg)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        rt = self.runtime
        if self.keeper is not None:
            # What the restored answers are consistent with becomes the poller's baseline.
            restored = self.keeper.restore(rt.cache, rt.config, set(rt.lookups.maps))
            self.watch.restored(restored)
            self._tasks.append(asyncio.create_task(self.keeper.run(self._cache_state)))
        await self.sync_listeners(self.config)
        self.inherited.close_unclaimed()
        if rt.auth is not None:
            rt.auth.start()
        self._tasks.append(asyncio.create_task(self._sweep_loop()))
        self._tasks.append(asyncio.create_task(self.watch.poll_changes()))
        self._check_schema()

    def _check_schema(self) -> None:
        """Probe the running configuration's queries against the database, in the
        background: start-up and reloads never wait for the database (schema_fit.py)."""
        if self._fit_task is not None:
            self._fit_task.cancel()
        rt = self.runtime
        rt.fit.publish()
        self._fit_task = asyncio.create_task(rt.fit.watch(rt.db))
        # The replica lag check (lagcheck.py) of the running configuration's hosts.
        if self._lag_task is not None:
            self._lag_task.cancel()
        self._lag_task = asyncio.create_task(rt.lag.run()) if rt.lag is not None else None

    async def reload(self, path: str) -> bool:
        sd_notify("RELOADING=1")
        try:
            cfg = config_mod.load(path)
            new = Runtime.build(cfg, self.metrics)
        except (ConfigError, ValueError, ImportError) as e:
            log.error("reload refused, keeping the running configuration: %s", e)
            self.metrics.reloads.labels("refused").inc()
            sd_notify("READY=1")
            return False
        old, self.runtime = self.runtime, new
        new.lookups.pending = self.watch.feed.pending
        try:
            await self.sync_listeners(cfg)
        except OSError as e:
            log.error("reload: cannot open a listener: %s; keeping the old configuration", e)
            self.runtime = old
            new.close()
            await self.sync_listeners(old.config)
            self.metrics.reloads.labels("refused").inc()
            sd_notify("READY=1")
            return False
        old.fit.active = False  # its requests in flight no longer touch the gauge
        if self.keeper is not None:
            self.keeper.invalidate()  # the cache starts empty: so does the next start
        self._check_schema()
        if new.auth is not None:
            new.auth.start()
        if old.auth is not None:
            await old.auth.aclose()
        await asyncio.get_running_loop().run_in_executor(None, old.close)
        self.watch.reloaded()
        self.metrics.reloads.labels("ok").inc()
        log.info("configuration reloaded from %s; cache flushed", path)
        sd_notify("READY=1")
        return True

    async def stop(self) -> None:
        """Stop accepting, let requests in progress finish, close everything."""
        sd_notify("STOPPING=1")
        self.listener_set.stop_accepting()
        for task in self._tasks:
            task.cancel()
        for bg in (self._fit_task, self._lag_task):
            if bg is not None:
                bg.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_SECONDS
        while any(c.busy for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        self.listener_set.release()
        if self.keeper is not None:
            await self.keeper.save(*self._cache_state())
        if self.runtime.auth is not None:
            await self.runtime.auth.aclose()  # the login history still pending
        await loop.run_in_executor(None, self.runtime.close)

    def _cache_state(self) -> tuple[Cache, Config, Any]:
        """What a snapshot is made of: the cache, its configuration, the poller's baseline
        (the change log position, or the version counter without a log)."""
        return self.runtime.cache, self.runtime.config, self.watch.baseline()

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            self.runtime.cache.sweep()


_S = TypeVar("_S")


def _configured(service: _S | None, section: str) -> _S:
    """The service, or an error for a connection that outlived a reload which turned
    ``[section] listen`` off (the listener logs it as an internal error and closes)."""
    if service is None:
        raise LookupError(f"[{section}] is no longer configured")
    return service


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about readiness, reloads and shutdown; no-op elsewhere."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(state.encode(), addr)


async def serve(cfg: Config) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads. Returns the exit status."""
    app = App(cfg, inherited=InheritedSockets.from_environment())
    try:
        await app.start()
    except OSError as e:
        log.error("cannot listen: %s", e)
        await app.stop()
        return 1
    loop = asyncio.get_running_loop()
    reloading: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        task = loop.create_task(app.reload(cfg.path))
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGTERM, app.stopping.set)
    loop.add_signal_handler(signal.SIGINT, app.stopping.set)
    sd_notify("READY=1")
    log.info("vmaild ready (%d listeners)", len(app.listeners))
    await app.stopping.wait()
    log.info("stopping: draining requests in progress")
    await app.stop()
    log.info("stopped")
    return 0
