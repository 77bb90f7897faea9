"""The daemon's open listeners, kept in step with the configuration across reloads.

``ListenerSet`` opens what a configuration asks for, closes what it no longer names and
keeps the rest, so that Postfix's long-lived connections survive a reload. It applies the
caps and idle timeouts, serves ``[metrics] listen``, uses the sockets systemd passed, and
at stop unlinks only the socket files vmaild bound itself.

Which protocol answers on which address from what is the App's business (daemon.py): it
is given as ``wanted``, a callable from a configuration to the listeners it asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from .config import Config
from .metrics_http import MetricsEndpoint
from .servers.base import ListenerContext, start_listener
from .servers.inherited import InheritedSockets
from .servers.limits import fit_descriptor_limit, limits_of
from .values import Listen

log = logging.getLogger("vmaild")

# Per listener name: its address and the protocol factory for its connections.
Wanted = dict[str, tuple[Listen, Callable[[], Any]]]


class ListenerSet:
    def __init__(
        self,
        context: ListenerContext,
        inherited: InheritedSockets,
        wanted: Callable[[Config], Wanted],
        render_metrics: Callable[[], bytes],
    ):
        self.context = context
        self.inherited = inherited
        self._wanted = wanted
        self._render_metrics = render_metrics
        self.open: dict[str, tuple[Listen, asyncio.Server]] = {}
        # The socket files vmaild bound itself, by path: (st_dev, st_ino), so that stop()
        # unlinks only its own file, never one that replaced it meanwhile (systemd's).
        self._bound_files: dict[str, tuple[int, int]] = {}
        self._metrics_server: MetricsEndpoint | None = None
        self._metrics_listen: Listen | None = None

    async def sync(self, cfg: Config) -> None:
        """Open what the config asks for, close what it no longer names, keep the rest."""
        self._apply_limits(cfg)
        wanted = self._wanted(cfg)
        for name in list(self.open):
            listen, server = self.open[name]
            if name not in wanted or wanted[name][0] != listen:
                server.close()
                del self.open[name]
                log.info("closed listener %s on %s", name, listen)
        for name, (listen, factory) in wanted.items():
            if name not in self.open:
                sock = self.inherited.take(listen)
                server = await start_listener(listen, factory, sock=sock)
                self.open[name] = (listen, server)
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
        self.context.limits.configure(limits)
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
            endpoint = MetricsEndpoint(self._render_metrics)
            sock = self.inherited.take(listen)
            await endpoint.start(listen.host, listen.port, sock=sock)
            self._metrics_server = endpoint
            passed = " (socket passed by systemd)" if sock is not None else ""
            log.info("listening: metrics on %s%s", listen, passed)
        self._metrics_listen = listen

    def stop_accepting(self) -> None:
        """The first step of a stop: no new connections (open ones go on draining)."""
        for _, server in self.open.values():
            server.close()

    def release(self) -> None:
        """The last step of a stop, after the drain: remove vmaild's own socket files,
        forget the listeners, close the metrics endpoint."""
        for listen, _ in self.open.values():
            if listen.path is not None:
                self._unlink_own(listen.path)
        self.open.clear()
        if self._metrics_server is not None:
            self._metrics_server.close()

    def _unlink_own(self, path: str) -> None:
        """Remove a socket file vmaild bound itself; systemd's (vmaild.socket keeps it
        across restarts, so that Postfix's connections wait instead of failing) and any
        other process's file that replaced ours stay."""
        identity = self._bound_files.pop(path, None)
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(path)
            if identity == (st.st_dev, st.st_ino):
                os.unlink(path)
