"""A fake ``vmaild serve`` for vmaild-authpipe's tests, and the authdaemond side of the pipes:
write a request, read one reply the way authdaemond does, wait for the relay to exit."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import threading
import time

from vmaild.codec import authpipe as codec

ACCOUNT = (
    b"UID=5000\nGID=5000\nHOME=/home/vmail\nADDRESS=joe@example.test\n"
    b"MAILDIR=example.test/joe/\n.\n"
)


class FakeVmaild:
    """Accepts connections and plays the next scripted answer to each request: bytes (sent
    in ``pieces``), None (close at once), "hang", or (bytes, "close"): answer, then close
    (vmaild restarting between two requests). Like vmaild, it answers ``RELAY 1``
    with ``RELAY 1`` and then serves requests on that connection until one is answered
    with None; otherwise it closes after one request. ``legacy`` plays a vmaild that
    predates RELAY (it answers FAIL and closes)."""

    def __init__(
        self,
        path: str,
        answers: list[bytes | str | tuple[bytes, str] | None],
        pieces: int = 1,
        legacy: bool = False,
    ):
        self.path = path
        self.answers = list(answers)
        self.pieces = pieces
        self.legacy = legacy
        self.requests: list[bytes] = []
        self.connections = 0
        self.closed = threading.Semaphore(0)  # released once per connection closed
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:
                self._serve_connection(conn)
            self.closed.release()

    def _serve_connection(self, conn: socket.socket) -> None:
        decoder, persistent = codec.AuthpipeDecoder(), False
        while True:
            raw, decoded, chunk = b"", [], b""
            while not decoded:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                raw += chunk
                decoded = decoder.feed(chunk)
            if isinstance(decoded[0], codec.RelayHello) and not persistent:
                if self.legacy:
                    conn.sendall(b"FAIL\n")
                    return
                conn.sendall(codec.RELAY_HELLO)
                persistent = True
                continue
            self.requests.append(raw)
            answer = self.answers.pop(0) if self.answers else None
            if answer == "hang":
                self.stop.wait(30)
                return
            close_after = isinstance(answer, tuple)
            if isinstance(answer, tuple):
                answer = answer[0]
            if not isinstance(answer, bytes):
                return
            step = max(1, len(answer) // self.pieces)
            for i in range(0, len(answer), step):
                conn.sendall(answer[i : i + step])
                time.sleep(0.005)
            if not persistent or close_after:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(5)


def send(proc: subprocess.Popen[bytes], data: bytes, piece: int = 0) -> None:
    assert proc.stdin is not None
    fd = proc.stdin.fileno()
    if not piece:
        os.write(fd, data)
        return
    for i in range(0, len(data), piece):
        os.write(fd, data[i : i + piece])
        time.sleep(0.002)


def read_reply(
    proc: subprocess.Popen[bytes], reader: codec.ReplyReader | None = None, timeout: float = 10
) -> bytes | None:
    """Read one reply the way authdaemond does; None when stdout hit EOF first."""
    assert proc.stdout is not None
    reader = reader or codec.ReplyReader()
    fd, deadline = proc.stdout.fileno(), time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, "no reply within the timeout"
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        reply = reader.feed(chunk)
        if reply is not None:
            return reply


def finish(proc: subprocess.Popen[bytes], timeout: float = 5) -> tuple[int, bytes]:
    """Wait for exit; return (status, anything left on stdout)."""
    assert proc.stdout is not None
    rc = proc.wait(timeout)
    rest = proc.stdout.read()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            f.close()
    return rc, rest


def auth_bytes(user: str, password: str, service: str = "imap") -> bytes:
    body = f"{service}\nlogin\n{user}\n{password}\n".encode()
    return b"AUTH %d\n" % len(body) + body
