"""The system's crypt(3) (libxcrypt) through ctypes: a fast, GIL-free passlib backend.

Why not passlib alone: libpass 1.9 verifies the crypt(3) family (des/md5/sha256/sha512_crypt)
with its pure-Python "builtin" backend, which holds the GIL. Measured on the CI kind of
machine: sha512_crypt at passlib's default 656,000 rounds takes 0.46 s in Python against
0.21 s in libxcrypt, and while Python hashes, the event loop waits for the GIL in 5 ms
slices: a login storm would show in tcp: lookup latency. ctypes releases the GIL around
the foreign call, so these hashes cost the event loop nothing, and verification takes
exactly as long as in Courier's own authmysql, which calls the same library.

``crypt_rn`` (libxcrypt) is used because it takes the size of its work area and returns
NULL on failure instead of a magic "*0" string. Each thread keeps its own work area.
When the library or a hash method is missing, callers fall back to passlib.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

# sizeof(struct crypt_data) in libxcrypt is 32768; glibc's historical struct was larger,
# so ask for more: crypt_rn only needs *at least* that much.
_DATA_SIZE = 1 << 17
_OUTPUT_SIZE = 256  # CRYPT_OUTPUT_SIZE is 384 for hashes; 256 is plenty for settings


class _Lib:
    def __init__(self) -> None:
        self.crypt_rn = None
        self.gensalt_rn = None
        self._local = threading.local()
        for name in ("libcrypt.so.1", ctypes.util.find_library("crypt")):
            if not name:
                continue
            try:
                lib = ctypes.CDLL(name)
                fn = lib.crypt_rn
            except (OSError, AttributeError):
                continue
            fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
            fn.restype = ctypes.c_char_p
            self.crypt_rn = fn
            gen = getattr(lib, "crypt_gensalt_rn", None)
            if gen is not None:
                gen.argtypes = [
                    ctypes.c_char_p,
                    ctypes.c_ulong,
                    ctypes.c_char_p,
                    ctypes.c_int,
                    ctypes.c_char_p,
                    ctypes.c_int,
                ]
                gen.restype = ctypes.c_char_p
                self.gensalt_rn = gen
            break

    def work_area(self) -> ctypes.Array[ctypes.c_char]:
        area = getattr(self._local, "area", None)
        if area is None:
            # Zero-filled, as crypt_r's "initialized" field wants before first use.
            area = self._local.area = ctypes.create_string_buffer(_DATA_SIZE)
        return area


_lib = _Lib()


def available() -> bool:
    return _lib.crypt_rn is not None


def crypt(password: bytes, setting: bytes) -> bytes | None:
    """crypt(3) of ``password`` with ``setting`` (a salt string or a whole hash), or None
    when the library lacks the method or rejects the input."""
    fn = _lib.crypt_rn
    if fn is None or b"\0" in password or b"\0" in setting:
        return None
    out = fn(password, setting, _lib.work_area(), _DATA_SIZE)
    if not out or out.startswith(b"*"):
        return None
    return bytes(out)


def gensalt(prefix: bytes, count: int = 0) -> bytes | None:
    """A fresh setting string such as ``$6$rounds=N$<salt>`` (random bytes from the OS);
    ``count`` 0 means the method's default cost. None when unsupported."""
    fn = _lib.gensalt_rn
    if fn is None:
        return None
    buf = ctypes.create_string_buffer(_OUTPUT_SIZE)
    out = fn(prefix, count, None, 0, buf, _OUTPUT_SIZE)
    if not out or out.startswith(b"*"):
        return None
    return bytes(out)
