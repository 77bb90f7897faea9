"""Sockets passed by systemd (servers/inherited.py): the LISTEN_* variables, matching a
configured address with getsockname(), what is refused, and fd 3 onwards in a real
process started the way systemd starts one (harness/vmaild/activation.py)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.vmaild.activation import ListeningSockets
from vmaild.servers.inherited import InheritedSockets, Passed, passed_fds
from vmaild.values import Listen

PID = 4242


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, []),
        ({"LISTEN_FDS": "1"}, []),  # no LISTEN_PID: not meant for anybody
        ({"LISTEN_PID": str(PID + 1), "LISTEN_FDS": "1"}, []),  # our parent's
        ({"LISTEN_PID": "x", "LISTEN_FDS": "1"}, []),
        ({"LISTEN_PID": str(PID), "LISTEN_FDS": "two"}, []),
        ({"LISTEN_PID": str(PID), "LISTEN_FDS": "0"}, []),
        ({"LISTEN_PID": str(PID), "LISTEN_FDS": "1"}, [Passed(3, "unknown")]),
        (
            {"LISTEN_PID": str(PID), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "sasl:socketmap"},
            [Passed(3, "sasl"), Passed(4, "socketmap")],
        ),
        # A name count that does not fit: the names are not trusted, the sockets are.
        (
            {"LISTEN_PID": str(PID), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "sasl"},
            [Passed(3, "unknown"), Passed(4, "unknown")],
        ),
    ],
)
def test_listen_variables_are_read_then_unset(
    environ: dict[str, str], expected: list[Passed]
) -> None:
    env = {**environ, "PATH": "/bin"}
    assert passed_fds(env, PID) == expected
    assert env == {"PATH": "/bin"}  # sd_listen_fds(unset_environment=1)


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[ListeningSockets]:
    sockets = ListeningSockets()
    yield sockets
    sockets.close()


def dups(sockets: ListeningSockets) -> list[tuple[socket.socket, str]]:
    """What InheritedSockets gets from systemd: its own descriptors, one per socket."""
    return [(sock.dup(), name) for name, sock in sockets.sockets]


def test_a_listener_takes_the_socket_bound_to_its_address(
    listening: ListeningSockets, tmp_path: Path
) -> None:
    path = str(tmp_path / "auth")
    listening.unix("sasl", path)
    port = listening.tcp("map")
    pool = InheritedSockets(dups(listening))
    assert len(pool) == 2
    # The same path spelt differently is the same socket.
    for listen in (Listen(path=path), Listen(path=str(tmp_path / "." / "auth"))):
        sock = pool.take(listen)
        assert sock is not None and sock.getsockname() == path
        sock.close()  # a listener closed by a reload...
    again = pool.take(Listen(path=path))  # ...and reopened by the next one: the same socket
    assert again is not None and again.getsockname() == path
    again.close()
    for host in ("127.0.0.1", "localhost"):
        tcp = pool.take(Listen(host=host, port=port))
        assert tcp is not None and tcp.getsockname() == ("127.0.0.1", port)
        tcp.close()
    assert pool.take(Listen(path=str(tmp_path / "policy"))) is None
    assert pool.take(Listen(host="127.0.0.1", port=port + 1 if port < 65535 else 1)) is None
    pool.close()


def test_unclaimed_sockets_are_closed_with_one_warning_each(
    listening: ListeningSockets, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    listening.unix("sasl", str(tmp_path / "auth"))
    listening.unix("old", str(tmp_path / "old"))
    passed = dups(listening)
    pool = InheritedSockets(passed)
    taken = pool.take(Listen(path=str(tmp_path / "auth")))
    assert taken is not None
    with caplog.at_level(logging.WARNING, "vmaild.server"):
        pool.close_unclaimed()
    assert [r.getMessage() for r in caplog.records] == [
        f"systemd passed old (unix:{tmp_path}/old), which no listener in the configuration"
        " names; closed"
    ]
    assert passed[1][0].fileno() == -1 and passed[0][0].fileno() != -1
    assert len(pool) == 1
    taken.close()
    pool.close()
    assert passed[0][0].fileno() == -1


def test_sockets_no_listener_could_serve_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unnamed, peer = socket.socketpair()
    not_listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    not_listening.bind(str(tmp_path / "quiet"))
    datagram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    datagram.bind(("127.0.0.1", 0))
    given = [(unnamed, "pair"), (not_listening, "quiet"), (datagram, "udp")]
    with caplog.at_level(logging.WARNING, "vmaild.server"):
        pool = InheritedSockets(given)
    assert len(pool) == 0
    assert all(sock.fileno() == -1 for sock, _ in given)
    assert len(caplog.records) == 3
    assert "not a listening stream socket" in caplog.records[0].getMessage()
    peer.close()


CHILD = """
import json, os, sys
from vmaild.servers.inherited import InheritedSockets
from vmaild.values import Listen
pool = InheritedSockets.from_environment()
sock = pool.take(Listen(path=sys.argv[1]))
print(json.dumps({
    "count": len(pool),
    "variables": sorted(k for k in os.environ if k.startswith("LISTEN_")),
    "fd": sock.fileno() >= 0 and sock.getsockname(),
    "inheritable": os.get_inheritable(3),
}))
"""


def test_fds_from_3_in_a_process_started_like_systemd_starts_one(
    listening: ListeningSockets, tmp_path: Path
) -> None:
    path = str(tmp_path / "socketmap")
    listening.unix("socketmap", path)
    listening.tcp("metrics")
    read_end, write_end = os.pipe()  # passed too: not a socket, refused
    try:
        argv = listening.command([sys.executable, "-c", CHILD, path])
        argv.insert(argv.index("--"), f"pipe={read_end}")
        done = subprocess.run(
            argv,
            pass_fds=(*listening.pass_fds(), read_end),
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    finally:
        os.close(read_end)
        os.close(write_end)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "count": 2,  # socketmap and metrics; the pipe at fd 5 was closed
        "variables": [],
        "fd": path,
        "inheritable": False,
    }
    assert "systemd passed fd 5 (pipe), not a socket" in done.stderr
