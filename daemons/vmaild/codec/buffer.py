"""What every request decoder shares: one bounded receive buffer, one error family, one loop.

Each codec (tcp_table, socketmap, policy, authpipe) decodes a byte stream the same way, after
h11's sans-I/O pattern: the listener feeds whatever bytes arrived to :meth:`StreamDecoder.feed`
and gets back the requests they completed, in order, however the stream was split. Input the
stream cannot recover from raises the codec's subclass of :class:`DecodeError`, which carries
the requests completed before the error in the same ``feed()`` call, so that no split of the
input loses them; after that every ``feed()`` raises again.

Bounds: a codec never lets the buffer grow past its request limit plus one received chunk:
:meth:`ReceiveBuffer.line` fails as soon as a line, complete or not, is longer than the limit
the codec passes, and counted reads (:meth:`ReceiveBuffer.take`) are checked by the codec
against its limit before it waits for their bytes.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class DecodeError(ValueError, Generic[T]):
    """Broken input: the framing is lost, so the connection cannot go on (each protocol says
    how to end it: close, or one last error reply). ``decoded`` holds the requests completed
    earlier in the same ``feed()`` call; the listener answers them before it hangs up."""

    def __init__(self, message: str, decoded: list[T] | None = None) -> None:
        super().__init__(message)
        self.decoded: list[T] = decoded if decoded is not None else []


class ReceiveBuffer:
    """Bytes received on one connection and not decoded yet.

    Deleting a consumed prefix of a ``bytearray`` is cheap in CPython (it moves a start
    offset), so each read consumes what it returns. :meth:`line` remembers how far it has
    searched for a LF, so a line arriving one byte at a time is scanned once, not once per
    byte.
    """

    __slots__ = ("_data", "_error", "_scanned")

    def __init__(self, error: type[DecodeError[T]]) -> None:
        self._data = bytearray()
        self._scanned = 0  # prefix of _data already searched for LF
        self._error: type[DecodeError[T]] = error  # the codec's error, raised by line()

    def __len__(self) -> int:
        return len(self._data)

    def append(self, data: bytes) -> None:
        self._data += data

    def clear(self) -> None:
        self._data = bytearray()
        self._scanned = 0

    def find(self, sub: bytes) -> int:
        """Offset of the first *sub* in the buffer, -1 if none."""
        return self._data.find(sub)

    def peek(self, end: int) -> bytes:
        """A copy of the first *end* bytes, without consuming them."""
        return bytes(self._data[:end])

    def line(self, limit: int, too_long: str) -> bytes | None:
        """The next line without its LF, consumed with the LF; None until a LF arrives.

        Raises the codec's error with the message *too_long* when the line, complete or
        not, is longer than *limit* bytes (LF not counted): the buffer never waits for more.
        """
        data = self._data
        nl = data.find(b"\n", self._scanned)
        if (nl if nl >= 0 else len(data)) > limit:
            raise self._error(too_long)
        if nl < 0:
            self._scanned = len(data)
            return None
        line = bytes(data[:nl])
        del data[: nl + 1]
        self._scanned = 0
        return line

    def take(self, count: int) -> bytes | None:
        """Exactly the next *count* bytes, consumed; None while fewer are buffered.

        For counted framing (a netstring, an AUTH body): the codec checks *count* against
        its limit before it asks, so the buffer never waits for more than that.
        """
        data = self._data
        if len(data) < count:
            return None
        chunk = bytes(data[:count])
        del data[:count]
        self._scanned = 0
        return chunk


class StreamDecoder(Generic[T]):
    """Incremental request decoder; subclasses implement :meth:`_step` and set ``error``.

    *max_request* bounds what one request may make the buffer hold (each codec says
    exactly what it counts).
    """

    error: type[DecodeError[T]] = DecodeError

    def __init__(self, max_request: int) -> None:
        self.max_request = max_request
        self._buf = ReceiveBuffer(self.error)
        self._failed = False

    @property
    def failed(self) -> bool:
        """True after a DecodeError: every further ``feed()`` raises again."""
        return self._failed

    @property
    def idle(self) -> bool:
        """True between requests: nothing buffered, no request half-decoded, not failed."""
        return not self._buf and not self._failed and not self._in_request()

    def feed(self, data: bytes) -> list[T]:
        """Add *data* and return the requests completed by it, in order."""
        if self._failed:
            raise self.error("decoder already failed")
        self._buf.append(data)
        out: list[T] = []
        try:
            while self._step(out):
                pass
        except DecodeError as exc:
            self._failed = True
            self._buf.clear()
            exc.decoded = out
            raise
        return out

    def _step(self, out: list[T]) -> bool:
        """Consume one unit (a line, a prefix, a body), appending any request it completes
        to *out*; False when more input is needed."""
        raise NotImplementedError

    def _in_request(self) -> bool:
        """True when a request is partly decoded outside the buffer (e.g. a length read)."""
        return False
