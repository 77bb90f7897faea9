"""Unix listening sockets that are never reachable with a mode other than their final one.

A socket file gets ``0777 & ~umask`` at ``bind()``; restricting it with ``chmod`` after
the bind leaves a window in which, under a permissive umask, anybody can connect (the
control socket's flush, the auth socket's ENUMERATE). And a directory anybody can write
to lets anybody replace the socket (the root vmaild-authpipe would relay passwords to
them). So:

* the socket's directory, and every directory above it, must be writable by nobody but
  its owner (or sticky, like /tmp) and owned by root or by us; else start-up stops with
  one line naming it;
* a missing socket directory is created with an explicit mode (0750), never the umask's;
* the socket is bound inside a fresh private directory (0700, only we can enter it),
  given its final mode there, and renamed into place: the path appears with its final
  mode and owner, already bound, in one step. A setgid directory (the shipped
  /var/spool/postfix/vmaild, 2750 vmail:postfix) hands its group to what is made in it,
  so the socket arrives with group postfix without any privilege to chown.

No process-wide umask is changed: worker threads create Maildirs meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import tempfile

from ..safedirs import check_directory, ensure_directory


def bind_unix(path: str, mode: int) -> socket.socket:
    """A unix stream socket bound at ``path`` with ``mode``, not yet listening.

    Raises OSError with one line: an unsafe directory, a path that is not a socket, or a
    socket another process answers on."""
    directory = os.path.dirname(path) or "/"
    ensure_directory(directory)
    check_directory(directory)
    _check_stale_socket(path)
    # 0700; a short name: the temporary path must fit sun_path (108 bytes) too.
    private = tempfile.mkdtemp(prefix=".vmaild-", dir=directory)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        temporary = os.path.join(private, "s")
        sock.bind(temporary)
        os.chmod(temporary, mode)
        # rename(2) is atomic and replaces a stale socket left by a crash.
        os.rename(temporary, path)
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(private, "s"))
        os.rmdir(private)
    return sock


def _check_stale_socket(path: str) -> None:
    """A socket file left by a crash is replaced; anything else at ``path`` is refused."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return
    finally:
        probe.close()
    raise OSError(f"{path} is in use by another process")
