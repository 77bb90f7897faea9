"""The relay under Courier's real authdaemond gives up root for the owner of vmaild's socket.

The rest of the integration tests run vmaild as root, so its socket is root's and the relay
stays root. Here the socket (and its directory) are handed to an unprivileged uid, as if vmaild
ran as that account (``vmail`` under systemd); vmaild, still root, keeps serving on it. Logins
must keep working, and every relay authdaemond started must run as that uid.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from harness.courier import procs as courier_procs
from harness.courier.procs import identity
from tests.integration.conftest import CourierSession
from tests.integration.test_auth import Stack, auth_stack, imap_login

OWNER = 65534


@pytest.fixture(scope="module")
def stack(courier: CourierSession) -> Iterator[Stack]:
    with auth_stack(courier) as s:
        for path, mode in ((s.auth_socket.parent, 0o750), (s.auth_socket, 0o660)):
            os.chown(path, OWNER, OWNER)
            os.chmod(path, mode)
        s.courier.restart_authdaemond()  # no relay started before the hand-over
        yield s


def relay_pids(stack: Stack) -> list[int]:
    return courier_procs.relay_pids(stack.vmaild.config_path)


def test_logins_go_through_relays_running_as_the_socket_owner(stack: Stack) -> None:
    user = stack.add_user("drop-pw-1")
    for _ in range(stack.courier.daemons * 2):  # reach every worker's relay, most likely
        rc, out, err = stack.courier.authtest(user, "drop-pw-1")
        assert rc == 0, out + err
    assert stack.courier.authtest(user, "not-it")[0] != 0
    m = imap_login(stack, user, "drop-pw-1")
    m.logout()
    pids = relay_pids(stack)
    assert pids
    for pid in pids:
        assert identity(pid) == {
            "Uid": [str(OWNER)] * 4,
            "Gid": [str(OWNER)] * 4,
            "Groups": [],
            "NoNewPrivs": ["1"],
            "CapEff": ["0000000000000000"],
        }, pid


def test_the_relays_reconnect_as_the_socket_owner_after_a_vmaild_restart(stack: Stack) -> None:
    """vmaild restarts (its socket recreated; handed to OWNER again, as if vmaild ran as
    OWNER): the same relays, still OWNER, connect again and not one login fails."""
    user = stack.add_user("drop-pw-2")
    for _ in range(stack.courier.daemons * 2):
        assert stack.courier.authtest(user, "drop-pw-2")[0] == 0
    before = sorted(relay_pids(stack))
    stack.vmaild.stop()
    # vmaild (root here) refuses a socket directory owned by another user: root's while it
    # starts, with OWNER's group so that the relays (OWNER) still get in.
    os.chown(stack.auth_socket.parent, 0, OWNER)
    stack.vmaild.start()
    os.chown(stack.auth_socket, OWNER, OWNER)
    for _ in range(stack.courier.daemons * 2):
        rc, out, err = stack.courier.authtest(user, "drop-pw-2")
        assert rc == 0, out + err
    assert sorted(relay_pids(stack)) == before  # none failed and was replaced
    assert all(identity(pid)["Uid"] == [str(OWNER)] * 4 for pid in before)
