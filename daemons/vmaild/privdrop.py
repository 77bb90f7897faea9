"""vmaild-authpipe gives up root before it serves anyone.

authdaemond runs authProg as root and never drops privileges itself (PROTOCOLS.md 4.1). The
relay needs none of root's rights: once it has read its configuration, all it does is connect
to vmaild's ``[auth] listen`` socket and use the pipes and stderr it was started with. So,
started as root, it switches to the account vmaild runs as before it connects or reads a
request:

* **Whom**: the owner of the ``[auth] listen`` socket. vmaild creates that socket, so its owner
  is whoever vmaild runs as (``vmail`` under the shipped unit), the one account sure to be
  able to connect to it; nothing has to be kept in step with vmaild's ``User=``. The group is
  that account's primary group (the socket's group for a uid without a passwd entry), with no
  supplementary groups. While the socket is missing (vmaild starting or restarting), the owner
  of its directory (systemd creates ``RuntimeDirectory=`` for the unit's ``User=``); that
  request fails anyway, and the next relay looks again. A TCP ``listen`` needs no rights at
  all: ``nobody``.
* **Nothing changes** when the relay does not run as root (it keeps its user), or when the
  owner is root (vmaild itself runs as root: the relay cannot be narrower than what it talks
  to, and a root-owned 0660 socket admits nobody else).
* **How**: ``PR_SET_NO_NEW_PRIVS`` (no exec can gain privileges), then setgroups([]), setgid,
  setuid, which as root set the real, effective and saved ids, so root cannot come back
  (checked). Nothing is imported or opened afterwards: the interpreter's own files may be
  out of the new account's reach (a Python under /root), so ctypes comes first.
* **Where**: the socket's directory, and every one above it, must be writable only by root
  or that owner (or sticky): anyone else who can write there could have replaced the
  socket with their own and would be sent every password (safedirs.py).
* **When anything fails** (no socket and no directory, an unsafe directory, a step
  refused): :class:`DropError`. The relay then exits without writing and authdaemond
  reports a *temporary* failure, exactly as when vmaild is down; it never goes on serving
  as root, and never answers "wrong password".
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass

from .safedirs import check_directory

PR_SET_NO_NEW_PRIVS = 38  # linux/prctl.h
NOBODY = 65534  # the overflow uid/gid, when there is no passwd entry "nobody"


class DropError(Exception):
    """Root could not be given up as planned: the relay must not serve."""


@dataclass(frozen=True)
class Target:
    """The account the relay runs as after the drop."""

    uid: int
    gid: int
    why: str  # for messages: "owner of /run/vmaild/auth.sock"


def target_for(address: str | tuple[str, int]) -> Target:
    """Whom the relay for ``address`` (an ``[auth] listen`` path, or host and port) runs as."""
    if not isinstance(address, str):
        try:
            entry = pwd.getpwnam("nobody")
            return Target(entry.pw_uid, entry.pw_gid, "nobody, for a TCP [auth] listen")
        except KeyError:
            return Target(NOBODY, NOBODY, "uid 65534, for a TCP [auth] listen")
    directory = os.path.dirname(address)
    target: Target | None = None
    try:
        st = os.stat(address)
        if stat.S_ISSOCK(st.st_mode):
            target = _account(st, f"owner of {address}")
    except FileNotFoundError:
        pass
    except OSError as e:
        raise DropError(f"cannot tell whom to run as: {address}: {e.strerror}") from None
    if target is None:
        try:
            st = os.stat(directory)
        except OSError as e:
            raise DropError(
                f"cannot tell whom to run as: no socket {address}, and {directory}: "
                f"{e.strerror} (vmaild not running?)"
            ) from None
        target = _account(st, f"owner of {directory} ({address} is not there yet)")
    # Whoever can write to the directory could have put their socket there (and would get
    # the passwords): only root and the account vmaild runs as may.
    try:
        check_directory(directory, owner=target.uid)
    except OSError as e:
        raise DropError(f"refusing to relay to {address}: {e}") from None
    return target


def _account(st: os.stat_result, why: str) -> Target:
    try:
        gid = pwd.getpwuid(st.st_uid).pw_gid
    except KeyError:
        gid = st.st_gid
    return Target(st.st_uid, gid, why)


def drop_to(target: Target) -> None:
    """Become ``target`` for good (the process must be root); DropError if any step fails."""
    uid, gid = target.uid, target.gid
    no_new_privs()
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    except OSError as e:
        raise DropError(
            f"cannot switch to uid {uid} gid {gid} ({target.why}): {e.strerror}"
        ) from None
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise DropError(
            f"switching to uid {uid} gid {gid} did not take: uids "
            f"{os.getresuid()}, gids {os.getresgid()}, groups {os.getgroups()}"
        )
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise DropError(f"root came back after switching to uid {uid}")


def no_new_privs() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS, 1): nothing this process executes can gain privileges."""
    try:
        import ctypes  # only here: a relay that does not drop anything does not pay for it

        libc = ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError) as e:
        raise DropError(f"prctl(PR_SET_NO_NEW_PRIVS): {e}") from None
    zero = ctypes.c_ulong(0)
    if libc.prctl(ctypes.c_int(PR_SET_NO_NEW_PRIVS), ctypes.c_ulong(1), zero, zero, zero):
        raise DropError(f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")


def drop_privileges(address: str | tuple[str, int]) -> Target | None:
    """Run as the account that owns ``address`` from now on, if we are root and it is not.

    Returns the new account, or None when nothing changed (not root, or the owner is root).
    Raises DropError when the relay must not serve (see the module's docstring)."""
    if os.geteuid() != 0:
        return None
    target = target_for(address)
    if target.uid == 0:
        return None
    drop_to(target)
    return target
