"""Talking to a running vmaild: the control socket (``flush``, ``changed``) and a socketmap
client.

Both are deliberately tiny and blocking: vmailctl makes one request and exits.
"""

from __future__ import annotations

import socket

from ..codec.socketmap import encode_netstring
from ..values import Listen

TIMEOUT = 3.0
MAX_REPLY = 100_000 + 16  # socketmap_max_reply_size plus the length prefix and comma


class DaemonUnreachable(Exception):
    """vmaild did not answer; str() says where and why."""


def _connect(listen: Listen, timeout: float) -> socket.socket:
    try:
        if listen.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(listen.path)
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection((listen.host, listen.port), timeout=timeout)
    except OSError as e:
        raise DaemonUnreachable(f"{listen}: {e.strerror or e}") from None


def flush(listen: Listen, timeout: float = TIMEOUT) -> str:
    """Ask vmaild to drop its whole cache now; returns its ``ok ...`` line."""
    return _request(listen, "flush", timeout)


def notify(
    listen: Listen, gtid: str | None, keys: list[str] | None, timeout: float = TIMEOUT
) -> str:
    """Tell vmaild that a commit (``gtid``; None without a binary log) changed ``keys``
    (None: unknown); returns its ``ok ...`` line, ending in ``pending`` when its read host
    had not applied the commit within its ``gtid_wait``. A vmaild that does not know
    ``changed`` (older than the change log) is asked to ``flush`` instead."""
    words = ["changed", gtid or "-", *(keys if keys is not None else ["*"])]
    try:
        return _request(listen, " ".join(words), timeout)
    except DaemonUnreachable as e:
        if "error unknown command" not in str(e):
            raise
    return flush(listen, timeout)


def _request(listen: Listen, line: str, timeout: float) -> str:
    with _connect(listen, timeout) as sock:
        try:
            sock.sendall(line.encode() + b"\n")
            data = b""
            while b"\n" not in data and len(data) < 4096:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            raise DaemonUnreachable(f"{listen}: {e.strerror or e}") from None
    reply = data.partition(b"\n")[0].decode("utf-8", "replace").strip()
    if not reply.startswith("ok"):
        raise DaemonUnreachable(f"{listen}: unexpected answer {reply or '(nothing)'!r}")
    return reply


def socketmap_query(
    listen: Listen, map_name: str, key: str, timeout: float = TIMEOUT
) -> tuple[str, str]:
    """One socketmap request; returns (status, data), e.g. ("OK", "a@b") or ("NOTFOUND", "")."""
    request = encode_netstring(f"{map_name} {key}".encode())
    with _connect(listen, timeout) as sock:
        try:
            sock.sendall(request)
            payload = _read_netstring(sock)
        except OSError as e:
            raise DaemonUnreachable(f"{listen}: {e.strerror or e}") from None
    text = payload.decode("utf-8", "replace")
    status, _, data = text.partition(" ")
    return status, data


def _read_netstring(sock: socket.socket) -> bytes:
    buf = b""
    while b":" not in buf:
        chunk = sock.recv(32)
        if not chunk:
            raise DaemonUnreachable("connection closed before a reply")
        buf += chunk
        if len(buf) > 16 and b":" not in buf:
            raise DaemonUnreachable("malformed reply (no netstring length)")
    digits, _, rest = buf.partition(b":")
    if not digits.isdigit():
        raise DaemonUnreachable(f"malformed reply length {digits[:16]!r}")
    length = int(digits)
    if length > MAX_REPLY:
        raise DaemonUnreachable(f"reply too long ({length} bytes)")
    while len(rest) < length + 1:
        chunk = sock.recv(min(65536, length + 1 - len(rest)))
        if not chunk:
            raise DaemonUnreachable("connection closed in the middle of a reply")
        rest += chunk
    if rest[length : length + 1] != b",":
        raise DaemonUnreachable("malformed reply (netstring without its comma)")
    return rest[:length]
