"""``vmaild-authpipe``: the program Courier's authdaemond runs as ``/etc/courier/authProg``.

A thin relay (PROTOCOLS.md 4.1-4.4). authdaemond starts one per worker, as root, with no
arguments, and writes one request at a time to its stdin. For each request we read it
completely with the codec (exactly <len> bytes for AUTH, never up to a newline), forward
it over one persistent connection to vmaild's ``[auth] listen`` socket (opened with
``RELAY 1``, see servers/auth.py), read the reply until the codec's ReplyReader finds it
complete, and write it to stdout in one write. Keeping the connection saves a connect,
an accept and a close per login; a connection vmaild closed while we were idle (a restart)
is noticed before it is used and replaced. Under the shipped units the socket is
vmaild-local.socket's, so during a restart that new connection is accepted into its
backlog and answered by the next vmaild (within ``relay_timeout``) instead of refused. An
older vmaild that does not know ``RELAY`` gets one connection per request instead.

Rules that keep authdaemond healthy:
- nothing is ever written except a complete reply to the request just read (4.2: stray
  output gets the child killed; 4.4: the reader stops only at ``FAIL\\n`` or ``\\n.\\n``);
- when no complete reply arrives (vmaild down, connection refused, EOF, timeout, a bad
  reply), exit at once without writing: authdaemond then reports a *temporary* failure,
  not a wrong password, and starts a fresh relay for the next request (4.4);
- exit 0 at once on stdin EOF and on SIGTERM (4.2: a child that lingers costs every
  restart 2-12 s).

The configuration (``$VMAILD_CONFIG`` or /etc/vmaild/vmaild.conf) is read at start; since
a failed request ends the process, a changed ``[auth] listen`` is picked up by the next
relay. Start-up stays cheap: no passlib, pymysql or prometheus in this process.

Then, started as root (as authdaemond does), the relay becomes the account that owns that
socket, the one vmaild runs as, before it connects or reads a request (privdrop.py); if that
fails it exits without writing, like any other failure here.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time
from dataclasses import fields

from . import privdrop
from .codec import authpipe as codec

EX_TEMPFAIL = 75  # sysexits.h: "try again later"
READ_SIZE = 65536
# An ENUMERATE listing has no 8 KiB limit (authenumerate reads it line by line, 4.4).
MAX_ENUMERATE_REPLY = 256 << 20


class RelayFailure(Exception):
    """No complete reply: exit without writing."""


class ConnectionLost(RelayFailure):
    """vmaild closed (or reset) the connection before sending any byte of the reply."""


def encode_request(request: codec.Decoded) -> bytes:
    """The request as authpipe.c writes it (4.3); decoding this gives ``request`` back."""
    if isinstance(request, codec.Auth):
        body = f"{request.service}\n{request.authtype}\n".encode() + request.authdata
        return b"AUTH %d\n" % len(body) + body
    if isinstance(request, codec.Pre):
        return f"PRE {request.module} {request.service} {request.username}\n".encode()
    if isinstance(request, codec.Passwd):
        parts = (request.service, request.username, request.old, request.new)
        return ("PASSWD " + "\t".join(parts) + "\n").encode()
    if isinstance(request, codec.Enumerate):
        return b"ENUMERATE\n"
    raise TypeError(f"cannot relay {type(request).__name__}")


def reply_reader(request: codec.Decoded) -> codec.ReplyReader:
    """How the reply to ``request`` ends (4.4): PASSWD at its first LF, ENUMERATE at the
    '.' line with no 8 KiB limit, PRE and AUTH at FAIL or the '.' line within 8191."""
    if isinstance(request, codec.Passwd):
        return codec.ReplyReader(single_line=True)
    if isinstance(request, codec.Enumerate):
        return codec.ReplyReader(MAX_ENUMERATE_REPLY)
    return codec.ReplyReader()


def _connect(address: str | tuple[str, int], timeout: float) -> socket.socket:
    if not isinstance(address, str):
        return socket.create_connection(address, timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _read_reply(sock: socket.socket, reader: codec.ReplyReader, deadline: float) -> bytes:
    started = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RelayFailure("timed out waiting for vmaild")
        sock.settimeout(left)
        try:
            chunk = sock.recv(READ_SIZE)
        except ConnectionError as e:
            if started:
                raise
            raise ConnectionLost(f"vmaild reset the connection: {e}") from e
        if not chunk:
            if not started:
                raise ConnectionLost("vmaild closed the connection before replying")
            raise RelayFailure("vmaild closed the connection without a complete reply")
        started = True
        reply = reader.feed(chunk)
        if reply is not None:
            return reply


def _still_open(sock: socket.socket) -> bool:
    """An idle connection has nothing to read. Readable means vmaild closed it (EOF) or
    sent bytes nobody asked for: either way it is not safe to send a request on."""
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


class Upstream:
    """The connection to vmaild, kept open across requests when vmaild agrees."""

    def __init__(self, address: str | tuple[str, int], timeout: float):
        self.address = address
        self.timeout = timeout
        self.persistent = True  # False once vmaild turned RELAY 1 down (an older vmaild)
        self._sock: socket.socket | None = None

    def exchange(self, request: codec.Decoded) -> bytes:
        """Send one request and return its complete reply, or raise RelayFailure.

        A kept connection that vmaild closes just as the request goes out (it is stopping:
        it closes its connections once the requests in progress are answered) is no
        failure: the request is sent once more on a new connection, which under the
        shipped units waits in vmaild-local.socket's backlog for the next vmaild. Postfix's
        socketmap client does the same for the same reason. Only once, only when no byte
        of a reply came, and never for PASSWD, which must not run twice."""
        deadline = time.monotonic() + self.timeout
        for attempt in (1, 2):
            reused = False
            try:
                sock, reused = self._socket(deadline)
                try:
                    sock.sendall(encode_request(request))
                except ConnectionError as e:
                    raise ConnectionLost(f"vmaild closed the connection: {e}") from e
                reply = _read_reply(sock, reply_reader(request), deadline)
            except ConnectionLost as e:
                self.close()
                if attempt == 1 and reused and not isinstance(request, codec.Passwd):
                    continue
                raise RelayFailure(f"vmaild at {self.address}: {e}") from e
            except RelayFailure:
                self.close()
                raise
            except (OSError, codec.AuthpipeError) as e:
                self.close()
                raise RelayFailure(f"vmaild at {self.address}: {e}") from e
            if not self.persistent:
                self.close()
            return reply
        raise AssertionError("unreachable")

    def _socket(self, deadline: float) -> tuple[socket.socket, bool]:
        """The connection to send on, and whether it served a request before."""
        if self._sock is not None and _still_open(self._sock):
            return self._sock, True
        self.close()
        self._sock = _connect(self.address, self.timeout)
        if self.persistent:
            self._sock.sendall(codec.RELAY_HELLO)
            answer = _read_reply(self._sock, codec.ReplyReader(single_line=True), deadline)
            if answer != codec.RELAY_HELLO:
                # An older vmaild answered FAIL and closes: one connection per request.
                self.persistent = False
                self.close()
                self._sock = _connect(self.address, self.timeout)
        return self._sock, False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def relay(address: str | tuple[str, int], timeout: float, stdin: int = 0, stdout: int = 1) -> int:
    """Serve requests from ``stdin`` until EOF (0) or a failure (EX_TEMPFAIL)."""
    decoder = codec.AuthpipeDecoder()
    upstream = Upstream(address, timeout)
    while True:
        data = os.read(stdin, READ_SIZE)
        if not data:
            upstream.close()
            return 0
        try:
            requests = decoder.feed(data)
        except codec.AuthpipeError as e:
            # Framing lost (bad AUTH length, oversized line): nothing can be answered
            # reliably any more. Exiting is what authdaemond can recover from.
            _complain(f"bad request from authdaemond: {e}")
            return EX_TEMPFAIL
        for request in requests:
            if isinstance(request, (codec.BadRequest, codec.RelayHello)):
                reply = codec.FAIL  # a complete request that makes no sense (4.4)
            else:
                try:
                    reply = upstream.exchange(request)
                except RelayFailure as e:
                    _complain(str(e))
                    return EX_TEMPFAIL
            _write_all(stdout, reply)


def _complain(message: str) -> None:
    # stderr goes to authdaemond's log (courierlogger); never a password here.
    try:
        os.write(2, f"vmaild-authpipe: {message}\n".encode(errors="replace"))
    except OSError:
        pass


def read_settings(path: str | None = None) -> tuple[str | tuple[str, int], float]:
    """``[auth] listen`` and ``relay_timeout`` from the configuration file.

    Only these two keys are read, with the same INI rules as vmaild's parser: the other
    sections' validation (queries, policy actions) is vmaild's business, costs start-up
    time here, and must not be able to stop logins. Raises ValueError with the file,
    section and key named.
    """
    import configparser

    from .config import default_path
    from .sections_logins import AuthConfig
    from .values import parse_listen

    path = path or default_path()
    cp = configparser.ConfigParser(
        interpolation=None,
        inline_comment_prefixes=(";", "#"),
        strict=True,
        empty_lines_in_values=False,
    )
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        with open(path, encoding="utf-8") as f:
            cp.read_file(f, source=path)
    except (OSError, UnicodeDecodeError, configparser.Error) as e:
        raise ValueError(f"{path}: cannot read: {e}") from None
    raw = cp.get("auth", "listen", fallback="").strip()
    if not raw:
        raise ValueError(f"{path}: [auth] listen: not set")
    try:
        listen = parse_listen(raw)
    except ValueError as e:
        raise ValueError(f"{path}: [auth] listen: {e}") from None
    default = next(f.default for f in fields(AuthConfig) if f.name == "relay_timeout")
    try:
        timeout = float(cp.get("auth", "relay_timeout", fallback=str(default)))
    except ValueError:
        raise ValueError(f"{path}: [auth] relay_timeout: not a number") from None
    timeout = min(max(timeout, 1.0), 29.0)  # authdaemond itself gives up after 30 s (4.2)
    if listen.path is not None:
        return listen.path, timeout
    assert listen.host is not None and listen.port is not None
    return (listen.host, listen.port), timeout


def _exit_now(signum: int, frame: object) -> None:
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (authdaemond's closePipe, 4.2) ends us at once, with status 0. SIGINT too.
    signal.signal(signal.SIGTERM, _exit_now)
    signal.signal(signal.SIGINT, _exit_now)
    args = sys.argv[1:] if argv is None else argv
    path = None
    if len(args) == 2 and args[0] in ("-c", "--config"):
        path = args[1]
    elif args:
        _complain(
            "usage: vmaild-authpipe [-c CONFIG] (run by authdaemond as authProg; "
            "the default config is $VMAILD_CONFIG or /etc/vmaild/vmaild.conf)"
        )
        return 2
    try:
        address, timeout = read_settings(path)
    except ValueError as e:
        _complain(str(e))
        return EX_TEMPFAIL
    try:
        privdrop.drop_privileges(address)  # everything it needs later is open or imported
    except privdrop.DropError as e:
        _complain(f"not serving as root: {e}")
        return EX_TEMPFAIL
    try:
        return relay(address, timeout)
    except OSError as e:  # stdin or stdout gone: authdaemond closed the pipes
        _complain(str(e))
        return EX_TEMPFAIL


if __name__ == "__main__":
    sys.exit(main())
