"""The App: which listeners a configuration asks for, and the sockets systemd passed
(used as they are, never unlinked). The change watching is tested in test_watch.py."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from typing import Any

from tests.unit.fakes import CONFIG
from vmaild import config
from vmaild.daemon import App
from vmaild.values import Listen


def test_sasl_listener_and_the_login_service_it_needs(tmp_path: Any) -> None:
    """[sasl] listen alone builds the login service and the listener, fed by the getter
    (a reload swaps the service under open connections)."""
    from vmaild.servers.sasl import SaslProtocol

    sock = tmp_path / "auth"
    text = CONFIG + f"\n[sasl]\nlisten = unix:{sock}\nmechanisms = PLAIN\n"
    app = App(config.parse(text))
    try:
        assert app.runtime.auth is not None and app.current_auth() is app.runtime.auth
        listen, factory = app.wanted_listeners(app.config)["sasl"]
        assert listen == Listen(path=str(sock))
        protocol = factory()
        assert isinstance(protocol, SaslProtocol)
        assert protocol.server.mechanisms == ("PLAIN",)
        assert "auth" not in app.wanted_listeners(app.config)
    finally:
        app.runtime.close()
    # Neither [auth] nor [sasl] listen: no login service at all.
    app = App(config.parse(CONFIG))
    try:
        assert app.runtime.auth is None and "sasl" not in app.wanted_listeners(app.config)
    finally:
        app.runtime.close()


def test_a_socket_systemd_passed_is_served_and_its_file_outlives_vmaild(tmp_path: Any) -> None:
    """vmaild.socket's socket is used as it is (no new bind, no chmod) and left in place at
    stop; a socket vmaild bound itself is removed at stop, unless another file took its
    path meanwhile (then that file is someone else's)."""
    from vmaild.servers.inherited import InheritedSockets

    passed_path, own_path = str(tmp_path / "control"), str(tmp_path / "auth")
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    systemd.bind(passed_path)
    os.chmod(passed_path, 0o600)  # SocketMode=: vmaild's own would be 0660
    systemd.listen(8)
    identity = os.stat(passed_path).st_ino
    text = CONFIG + f"\n[control]\nlisten = unix:{passed_path}\n[sasl]\nlisten = unix:{own_path}\n"

    async def scenario() -> None:
        app = App(config.parse(text), inherited=InheritedSockets([(systemd.dup(), "control")]))
        try:
            await app.sync_listeners(app.config)
            app.inherited.close_unclaimed()
            reader, writer = await asyncio.open_unix_connection(passed_path)
            writer.write(b"ping\n")
            assert await reader.readline() == b"ok\n"
            writer.close()
            st = os.stat(passed_path)
            assert (st.st_ino, stat.S_IMODE(st.st_mode)) == (identity, 0o600)
            assert stat.S_IMODE(os.stat(own_path).st_mode) == 0o660
        finally:
            await app.stop()

    asyncio.run(scenario())
    assert os.stat(passed_path).st_ino == identity
    assert not os.path.exists(own_path)

    async def replaced() -> None:
        app = App(config.parse(CONFIG + f"\n[control]\nlisten = unix:{own_path}\n"))
        await app.sync_listeners(app.config)
        os.rename(passed_path, own_path)  # another socket took the path (systemd's, say)
        await app.stop()

    asyncio.run(replaced())
    assert os.stat(own_path).st_ino == identity
    systemd.close()


def test_a_tcp_socket_systemd_passed_serves_the_metrics_endpoint() -> None:
    """host:port listeners match too (here [metrics]): the passed socket is used, so the
    port systemd holds is not bound a second time (which would fail: EADDRINUSE)."""
    from vmaild.servers.inherited import InheritedSockets

    systemd = socket.create_server(("127.0.0.1", 0))
    port = systemd.getsockname()[1]
    text = CONFIG + f"\n[metrics]\nlisten = 127.0.0.1:{port}\n"

    async def scenario() -> None:
        app = App(config.parse(text), inherited=InheritedSockets([(systemd.dup(), "metrics")]))
        try:
            await app.sync_listeners(app.config)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.")
            assert b"vmaild_" in await reader.read()
            writer.close()
        finally:
            await app.stop()

    asyncio.run(scenario())
    systemd.close()
