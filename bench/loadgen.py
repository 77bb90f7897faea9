"""Drive a Postfix table server with many persistent, strictly sequential connections.

The real generator is ``bench/loadgen.c`` (one thread, epoll), compiled here with ``cc -O2``
into a temporary directory at run time. When no C compiler is installed, a Python stand-in
with one process per core does the same job much less efficiently; its results say so
(``generator``), because it may then be the bottleneck and not the server.

Both print or return the same figures: requests, seconds, rps, p50_us, p90_us, p99_us,
max_us, found, notfound, errors, cpu_seconds.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("loadgen.c")


class LoadGenerator:
    def __init__(self, workdir: str | os.PathLike[str]):
        self.binary: Path | None = None
        self.note = ""
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            self.kind = f"Python fallback ({os.cpu_count() or 1} processes; no cc on this machine)"
            return
        out = Path(workdir) / "loadgen"
        result = subprocess.run(
            [cc, "-O2", "-Wall", "-o", str(out), str(SOURCE)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            self.kind = "Python fallback (cc failed to build loadgen.c)"
            self.note = result.stderr.strip()
            return
        self.binary = out
        self.kind = "C (bench/loadgen.c, epoll, one thread)"

    def run(
        self,
        *,
        mode: str,
        port: int,
        conns: int,
        duration: float,
        keyfile: Path,
        mapname: str = "mailboxes",
        total: int = 0,
    ) -> dict[str, Any]:
        """One closed-loop run; ``total`` > 0 stops after that many requests."""
        if self.binary is None:
            result = python_loadgen(mode, port, conns, duration, keyfile, mapname, total)
        else:
            cmd = [
                str(self.binary),
                "-m",
                mode,
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
                "-c",
                str(conns),
                "-d",
                str(duration),
                "-k",
                str(keyfile),
                "-M",
                mapname,
            ]
            if total:
                cmd += ["-n", str(total)]
            proc = subprocess.run(
                cmd, capture_output=True, text=True, check=False, timeout=duration + 120
            )
            if proc.returncode != 0:
                raise RuntimeError(f"loadgen failed ({proc.returncode}): {proc.stderr.strip()}")
            result = json.loads(proc.stdout)
        result["generator"] = self.kind
        return result


# -- Python fallback ---------------------------------------------------------------------------


def _request(mode: str, mapname: str, key: str) -> bytes:
    if mode == "socketmap":
        payload = f"{mapname} {key}".encode()
        return b"%d:%s," % (len(payload), payload)
    return b"get " + key.encode() + b"\n"


async def _one_conn(
    port: int, mode: str, requests: list[bytes], limit: int, deadline: float, out: dict[str, Any]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < deadline and (not limit or out["sent"] < limit):
            # One cursor for all connections, as in loadgen.c: with limit == len(requests)
            # every key is asked exactly once.
            i, out["sent"] = out["sent"], out["sent"] + 1
            t0 = time.perf_counter()
            writer.write(requests[i % len(requests)])
            if mode == "socketmap":
                length = int((await reader.readuntil(b":"))[:-1])
                reply = (await reader.readexactly(length + 1))[:-1]
                ok, nf = reply.startswith(b"OK "), reply.startswith(b"NOTFOUND")
            else:
                reply = await reader.readuntil(b"\n")
                ok, nf = reply.startswith(b"2"), reply.startswith(b"5")
            out["lat"].append((time.perf_counter() - t0) * 1e6)
            out["found" if ok else "notfound" if nf else "errors"] += 1
    except (OSError, asyncio.IncompleteReadError, ValueError):
        out["errors"] += 1
    finally:
        writer.close()


def _worker(args: tuple[Any, ...]) -> dict[str, Any]:
    port, mode, mapname, keys, conns, duration, limit = args
    requests = [_request(mode, mapname, k) for k in keys]
    out: dict[str, Any] = {"sent": 0, "lat": [], "found": 0, "notfound": 0, "errors": 0}

    async def main() -> None:
        deadline = time.monotonic() + duration
        await asyncio.gather(
            *(_one_conn(port, mode, requests, limit, deadline, out) for _ in range(conns))
        )

    started = time.monotonic()
    asyncio.run(main())
    out["seconds"] = time.monotonic() - started
    out["cpu"] = sum(os.times()[:2])
    return out


def python_loadgen(
    mode: str, port: int, conns: int, duration: float, keyfile: Path, mapname: str, total: int
) -> dict[str, Any]:
    keys = [k for k in Path(keyfile).read_text().split("\n") if k]
    procs = max(1, min(conns, os.cpu_count() or 1))
    shares = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
    jobs = [
        (
            port,
            mode,
            mapname,
            keys[i::procs],
            shares[i],
            duration,
            (total // procs + (1 if i < total % procs else 0)) if total else 0,
        )
        for i in range(procs)
    ]
    with multiprocessing.Pool(procs) as pool:
        parts = pool.map(_worker, jobs)
    lat = sorted(x for p in parts for x in p["lat"])
    seconds = max(p["seconds"] for p in parts)

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else 0.0

    return {
        "mode": mode,
        "connections": conns,
        "requests": len(lat),
        "seconds": seconds,
        "rps": len(lat) / seconds if seconds else 0.0,
        "p50_us": pct(0.5),
        "p90_us": pct(0.9),
        "p99_us": pct(0.99),
        "max_us": round(lat[-1]) if lat else 0,
        "found": sum(p["found"] for p in parts),
        "notfound": sum(p["notfound"] for p in parts),
        "errors": sum(p["errors"] for p in parts),
        "over_1s": 0,
        "cpu_seconds": sum(p["cpu"] for p in parts),
    }
