"""``vmaild serve``: build everything from the config, listen, reload, drain.

A ``Runtime`` is everything built from one configuration (database pool, cache, lookups,
and the auth and policy services). SIGHUP builds a new one from the re-read file and swaps
it in; a broken file is refused and the old runtime keeps serving. Listeners whose address
did not change stay open, so Postfix's long-lived connections survive a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from . import config as config_mod
from .cache import Cache, TTLs
from .changes import Drop, Scope
from .config import Config
from .db import Database, DatabaseError
from .invalidation import ChangeFeed
from .lagcheck import LagCheck, default_name
from .lookup import Lookups
from .metrics import Metrics
from .metrics_http import MetricsEndpoint
from .schema_fit import SchemaFit
from .servers.base import ListenerContext, SequentialProtocol, start_listener
from .servers.inherited import InheritedSockets
from .servers.limits import fit_descriptor_limit, limits_of
from .values import ConfigError, Listen
from .warm import CacheKeeper

if TYPE_CHECKING:
    from .auth.service import AuthService
    from .policy.service import PolicyService

log = logging.getLogger("vmaild")
DRAIN_SECONDS = 10.0
SWEEP_SECONDS = 30.0
# How long a control flush waits for the change counter before flushing without it
# (vmailctl waits 3 s for the whole answer).
CONTROL_VERSION_SECONDS = 1.0
_UNREAD = object()  # the change counter could not be read
# Without a change log (a version 2 schema) the poller reads the counter, and looks for a
# log again every this many polls (``vmailctl db migrate`` while vmaild runs).
LOG_PROBE_POLLS = 60


@dataclass
class Runtime:
    config: Config
    db: Database
    cache: Cache
    lookups: Lookups
    fit: SchemaFit
    auth: AuthService | None = None  # built only with [auth] or [sasl] listen
    policy: PolicyService | None = None  # built only with [policy] listen
    lag: LagCheck | None = None  # built only when some read host is a replica

    @classmethod
    def build(cls, cfg: Config, metrics: Metrics) -> Runtime:
        db = Database(cfg.database, metrics)
        c = cfg.cache
        cache = Cache(TTLs(c.ttl, c.negative_ttl, c.stale_ttl), c.max_entries)
        fit = SchemaFit(cfg, metrics)
        rt = cls(cfg, db, cache, Lookups(cfg, db, cache, metrics, fit=fit), fit)
        # The auth and policy services live in their own packages and are only imported
        # when configured.
        if cfg.auth.listen is not None or cfg.sasl.listen is not None:
            from .auth.service import AuthService

            rt.auth = AuthService.for_config(cfg, db, metrics, fit=fit)
        if cfg.policy.listen is not None:
            from .policy.service import PolicyService

            rt.policy = PolicyService(cfg, db, metrics, fit=fit)
        d = cfg.database
        if d.replicated and d.lag_check_interval > 0:
            rt.lag = LagCheck(d, db.hosts, default_name(cfg.path), metrics)
        return rt

    def close(self) -> None:
        self.fit.active = False
        for service in (self.auth, self.policy):
            if service is not None:
                service.close()
        if self.lag is not None:
            self.lag.close()
        self.db.close()


class App:
    """What the listeners hold on to; ``runtime`` is swapped on reload."""

    def __init__(
        self,
        cfg: Config,
        metrics: Metrics | None = None,
        inherited: InheritedSockets | None = None,
    ):
        self.metrics = metrics or Metrics()
        # Sockets systemd passed (vmaild.socket): used instead of binding, never unlinked.
        self.inherited = inherited if inherited is not None else InheritedSockets()
        # The socket files vmaild bound itself, by path: (st_dev, st_ino), so that stop()
        # unlinks only its own file, never one that replaced it meanwhile (systemd's).
        self._bound_files: dict[str, tuple[int, int]] = {}
        self.runtime = Runtime.build(cfg, self.metrics)
        self.metrics.watch_cache(lambda: len(self.runtime.cache))
        self.connections: set[SequentialProtocol] = set()
        self.listener_context = ListenerContext(self.metrics, self.connections)
        self.listeners: dict[str, tuple[Listen, asyncio.Server]] = {}
        self.stopping = asyncio.Event()
        self._metrics_server: MetricsEndpoint | None = None
        self._metrics_listen: Listen | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # The change poller's baseline: the counter as read before the latest flush (None:
        # not read yet). _flushes tells a poll that a flush happened while it was reading.
        self._version: Any = None
        self._flushes = 0
        # The change log reader (targeted drops, GTID waits); its position outlives reloads.
        self.feed = ChangeFeed(self, self.metrics)
        self.runtime.lookups.pending = self.feed.pending
        self._fit_task: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None
        # [cache] snapshot: read at start (a reload keeps the running one)
        self.keeper = CacheKeeper.for_config(cfg)

    @property
    def config(self) -> Config:
        return self.runtime.config

    def flush_cache(self, reason: str, detail: str = "") -> int:
        dropped = len(self.runtime.cache)
        self.runtime.cache.flush()
        self._flushes += 1
        self.metrics.cache_flushes.labels(reason).inc()
        if self.keeper is not None:
            self.keeper.invalidate()
        log.info("cache flushed (%s): %d entries dropped", detail or reason, dropped)
        return dropped

    # -- what the change feed drops from (invalidation.Target) --------------------------------

    def flush_all(self, reason: str, label: str = "change") -> int:
        """A full flush the change log asks for: a part of it was missed (``change``), or
        the first position is taken with entries cached before it (``start``)."""
        if not len(self.runtime.cache):
            self.runtime.cache.flush()  # still covers the fetches in flight
            return 0
        return self.flush_cache(label, reason)

    def drop(self, drop: Drop) -> int:
        rt = self.runtime
        if drop.scope is Scope.DOMAIN:
            return rt.cache.drop_domain(drop.value)
        if rt.auth is not None:
            rt.auth.rows.forget(drop.value)  # the login row kept for outages
        return rt.cache.drop_address(drop.value)

    # -- what the listeners answer from (servers/interfaces.py) ------------------------------
    # Called per request, never kept: a reload swaps ``runtime`` under open connections.

    def current_lookups(self) -> Lookups:
        return self.runtime.lookups

    def current_auth(self) -> AuthService:
        return _configured(self.runtime.auth, "auth")

    def current_policy(self) -> PolicyService:
        return _configured(self.runtime.policy, "policy")

    # -- listeners ---------------------------------------------------------------------------

    def wanted_listeners(self, cfg: Config) -> dict[str, tuple[Listen, Callable[[], Any]]]:
        from .servers.control import ControlProtocol
        from .servers.socketmap import SocketmapProtocol
        from .servers.tcp_table import TcpTableProtocol

        ctx = self.listener_context
        wanted: dict[str, tuple[Listen, Callable[[], Any]]] = {}
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
        self._apply_limits(cfg)
        wanted = self.wanted_listeners(cfg)
        for name in list(self.listeners):
            listen, server = self.listeners[name]
            if name not in wanted or wanted[name][0] != listen:
                server.close()
                del self.listeners[name]
                log.info("closed listener %s on %s", name, listen)
        for name, (listen, factory) in wanted.items():
            if name not in self.listeners:
                sock = self.inherited.take(listen)
                server = await start_listener(listen, factory, sock=sock)
                self.listeners[name] = (listen, server)
                if sock is not None:
                    log.info("listening: %s on %s (socket passed by systemd)", name, listen)
                    continue
                if listen.path is not None:
                    with contextlib.suppress(OSError):
                        st = os.stat(listen.path)
                        self._bound_files[listen.path] = (st.st_dev, st.st_ino)
                log.info("listening: %s on %s", name, listen)
        await self._sync_metrics_endpoint(cfg)

    def _apply_limits(self, cfg: Config) -> None:
        """Caps and idle timeouts (servers/limits.py): open listeners take them at once;
        the descriptor limit is raised to fit the caps, or a warning says it does not."""
        limits = limits_of(cfg)
        self.listener_context.limits.configure(limits)
        warning = fit_descriptor_limit(sum(x.max_connections for x in limits.values()))
        if warning:
            log.warning("%s", warning)

    async def _sync_metrics_endpoint(self, cfg: Config) -> None:
        listen = cfg.metrics.listen
        if listen == self._metrics_listen:
            return
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None
        if listen is not None:
            if listen.is_unix:
                raise OSError("[metrics] listen must be host:port")
            assert listen.host is not None and listen.port is not None
            endpoint = MetricsEndpoint(self.metrics.render)
            sock = self.inherited.take(listen)
            await endpoint.start(listen.host, listen.port, sock=sock)
            self._metrics_server = endpoint
            passed = " (socket passed by systemd)" if sock is not None else ""
            log.info("listening: metrics on %s%s", listen, passed)
        self._metrics_listen = listen

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        rt = self.runtime
        if self.keeper is not None:
            # The change log position (or, on a version 2 schema, the change counter) the
            # restored answers are consistent with becomes the poller's baseline: a change
            # made while vmaild was stopped drops (or flushes) them.
            restored = self.keeper.restore(rt.cache, rt.config, set(rt.lookups.maps))
            self.feed.position = self.feed.position.from_baseline(restored)
            if self.feed.position.done is None:
                self._version = restored
            self._tasks.append(asyncio.create_task(self.keeper.run(self._cache_state)))
        await self.sync_listeners(self.config)
        self.inherited.close_unclaimed()
        if rt.auth is not None:
            rt.auth.start()
        self._tasks.append(asyncio.create_task(self._sweep_loop()))
        self._tasks.append(asyncio.create_task(self._poll_changes()))
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
        new.lookups.pending = self.feed.pending
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
        self._version = None
        self._flushes += 1
        self.metrics.reloads.labels("ok").inc()
        log.info("configuration reloaded from %s; cache flushed", path)
        sd_notify("READY=1")
        return True

    async def stop(self) -> None:
        """Stop accepting, let requests in progress finish, close everything."""
        sd_notify("STOPPING=1")
        for _, server in self.listeners.values():
            server.close()
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
        for listen, _ in self.listeners.values():
            if listen.path is not None:
                self._unlink_own(listen.path)
        self.listeners.clear()
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self.keeper is not None:
            await self.keeper.save(*self._cache_state())
        if self.runtime.auth is not None:
            await self.runtime.auth.aclose()  # the login history still pending
        await loop.run_in_executor(None, self.runtime.close)

    def _unlink_own(self, path: str) -> None:
        """Remove a socket file vmaild bound itself; systemd's (vmaild.socket keeps it
        across restarts, so that Postfix's connections wait instead of failing) and any
        other process's file that replaced ours stay."""
        identity = self._bound_files.pop(path, None)
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(path)
            if identity == (st.st_dev, st.st_ino):
                os.unlink(path)

    def _cache_state(self) -> tuple[Cache, Config, Any]:
        """What a snapshot is made of: the cache, its configuration, the poller's baseline
        (the change log position, or the version counter without a log)."""
        baseline = self.feed.baseline() if self.feed.has_log is not False else None
        return self.runtime.cache, self.runtime.config, baseline or self._version

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            self.runtime.cache.sweep()

    async def control_flush(self) -> int:
        """vmailctl's flush (the control socket), which also settles the change poller.

        The rule the poller keeps: it flushes when the change counter differs from its
        baseline, the value read before the latest flush. vmailctl commits a change (the
        triggers bump the counter in the same transaction), then asks for this flush. So
        the counter is read first, the cache flushed next, and the value read becomes the
        baseline: every change it counts was committed before the read, hence before this
        flush, which covers it. The poller does not flush for that change a second time,
        up to ``check_interval`` later, emptying a cache that has been warming since (and
        leaving lookups nothing stale to serve should the database fail then). Hence:
        - a change committed after the read (SQL by hand, another vmailctl, even between
          the read and the flush) moves the counter past the baseline: the poller flushes;
        - a change nobody notified moves it as well: flushed at the next poll, as always;
        - when the counter cannot be read here (database down, slow beyond
          ``CONTROL_VERSION_SECONDS``, no table, polling off) the cache is flushed all the
          same and the baseline left alone: the poller flushes once more when it sees the
          change, as it did before;
        - a poll whose read was under way during a flush is set aside: its value may
          predate the flush; the next poll compares with the baseline the flush left.
        The counter does not count every change (unwatched tables, password rehashes):
        a control flush always flushes, whatever the counter says.
        """
        rt = self.runtime
        version = await self._read_version(rt, CONTROL_VERSION_SECONDS)
        dropped = self.flush_cache("control")
        if version is not _UNREAD and rt is self.runtime:
            self._version = version
        return dropped

    async def control_changed(self, gtid: str | None, keys: tuple[str, ...] | None) -> str:
        """vmailctl's ``changed``: wait (``[cache] gtid_wait``) for the read host to apply
        the commit, then drop what the change log names. Without a change log, a whole
        flush as ``flush`` does. If the log cannot be read now, the entries stay (they are
        what an outage is served from) and the polls apply it later."""
        rt = self.runtime
        try:
            result = await self.feed.notified(
                rt.db, gtid, None if keys is None else list(keys), rt.config.cache.gtid_wait
            )
        except DatabaseError as e:
            log.warning("change notification: the change log cannot be read now: %s", e)
            return "ok 0 pending"
        if result is None:
            return f"ok {await self.control_flush()}"
        dropped, applied = result
        return f"ok {dropped}" + ("" if applied else " pending")

    @staticmethod
    async def _read_version(rt: Runtime, timeout: float) -> Any:
        """The change counter, or _UNREAD (polling off, an error, no row, too slow)."""
        query = rt.config.cache.version_query
        if rt.config.cache.check_interval <= 0 or not query:
            return _UNREAD
        try:
            rows = await asyncio.wait_for(rt.db.fetch(query), timeout)
        except (DatabaseError, TimeoutError):
            return _UNREAD
        return rows[0][0] if rows else _UNREAD

    async def _poll_changes(self) -> None:
        """Apply the change log (invalidation.py: targeted drops); without one (a version 2
        schema), flush the cache when the schema's change counter moves (vmailctl, or SQL
        typed by hand: the triggers bump it) away from the value read before the latest
        flush; a control flush sets that baseline itself (``control_flush`` has the
        rule). A database without either just is not polled."""
        warned = False
        polls = 0
        while True:
            rt = self.runtime
            interval = rt.config.cache.check_interval
            if interval <= 0:
                await asyncio.sleep(5)
                if len(self.feed.pending):  # polling off: still settle notified changes
                    with contextlib.suppress(DatabaseError):
                        await self.feed.poll(rt.db)
                continue
            await asyncio.sleep(interval)
            polls += 1
            if self.feed.has_log is not False or polls % LOG_PROBE_POLLS == 0:
                try:
                    if await self.feed.poll(rt.db):
                        await self.feed.maybe_prune(rt.db, rt.config.cache.change_log_retention)
                        continue
                except DatabaseError:
                    continue
            if not rt.config.cache.version_query:
                continue
            flushes = self._flushes
            try:
                rows = await rt.db.fetch(rt.config.cache.version_query)
            except DatabaseError as e:
                if e.errno in (1146, 1054) and not warned:  # no such table / column
                    log.warning("change polling off: %s (run 'vmailctl db migrate')", e)
                    warned = True
                continue
            if flushes != self._flushes or rt is not self.runtime:
                continue  # flushed (or reloaded) while reading: that baseline stands
            version = rows[0][0] if rows else None
            if self._version is not None and version != self._version:
                self.flush_cache("change")
            self._version = version


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
