"""ListenerSet on its own: given a ``wanted`` callable, it keeps a listener whose address
did not change (the same server: Postfix's connections survive a reload), replaces one
whose address did, closes one no longer named, and at stop unlinks its own socket files."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.unit.fakes import CONFIG
from vmaild import config
from vmaild.listeners import ListenerSet, Wanted
from vmaild.metrics import Metrics
from vmaild.servers.base import ListenerContext, SequentialProtocol
from vmaild.servers.inherited import InheritedSockets
from vmaild.values import Listen


def test_a_sync_keeps_replaces_and_closes_and_release_unlinks_own_files(tmp_path: Path) -> None:
    a, b, c = (Listen(path=str(tmp_path / n)) for n in ("a", "b", "c"))
    wanted: dict[str, Listen] = {"one": a, "two": b}

    def wanted_for(cfg: config.Config) -> Wanted:
        return {name: (listen, asyncio.Protocol) for name, listen in wanted.items()}

    async def scenario() -> None:
        metrics = Metrics()
        context = ListenerContext(metrics, set[SequentialProtocol]())
        listeners = ListenerSet(context, InheritedSockets(), wanted_for, metrics.render)
        cfg = config.parse(CONFIG)
        await listeners.sync(cfg)
        first = dict(listeners.open)
        assert set(first) == {"one", "two"} and os.path.exists(b.path or "")
        wanted.update(two=c)
        del wanted["one"]
        await listeners.sync(cfg)
        assert set(listeners.open) == {"two"} and listeners.open["two"][0] == c
        assert not first["one"][1].is_serving() and not first["two"][1].is_serving()
        wanted["one"] = a  # back: a new server, while "two" (unchanged) stays the same one
        kept = listeners.open["two"][1]
        await listeners.sync(cfg)
        assert listeners.open["two"][1] is kept
        listeners.stop_accepting()
        listeners.release()
        assert listeners.open == {}

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert not any(p.exists() for p in (tmp_path / "a", tmp_path / "c"))
