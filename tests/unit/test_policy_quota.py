"""maildir++ usage: maildirsize parsing, counting when it is missing, the reader's cache."""

from __future__ import annotations

import asyncio
import os

import pytest

from vmaild.policy.quota import (
    MAX_MAILDIRSIZE,
    Usage,
    UsageReader,
    count_maildir,
    parse_maildirsize,
    read_usage,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10000000S,1000C\n", Usage(0, 0)),
        ("10000000S,1000C\n  1234 1\n", Usage(1234, 1)),
        # Courier pads lines to 14 bytes; expunges are negative deltas.
        (
            "10000000S,1000C\n      1234      1\n       500      2\n     -1234     -1\n",
            Usage(500, 2),
        ),
        ("1000S\n\n300 3\n\n", Usage(300, 3)),  # blank lines are skipped
        ("1000S\n300 3\n400 4", Usage(300, 3)),  # last line still being written
        ("\n300 3\n", Usage(300, 3)),  # empty quota line: no quota there
        ("1000S\n-900 -9\n", Usage(0, 0)),  # never below zero
        ("", None),  # empty file: recount
        ("1000S", None),  # not even a full quota line
        ("1000S\n12 x\n", None),  # garbage: recount
        ("1000S\n1 2 3\n", None),
        ("1000S\n12\n", None),
    ],
)
def test_parse_maildirsize(text: str, expected: Usage | None) -> None:
    assert parse_maildirsize(text) == expected


def make_maildir(root, files: dict[str, bytes]) -> str:  # type: ignore[no-untyped-def]
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return str(root)


def test_count_uses_size_in_name_or_stat(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = make_maildir(
        tmp_path / "m",
        {
            "cur/1.M1.host,S=1000:2,S": b"short",  # ,S= wins over the real size
            "new/2.M2.host": b"x" * 70,  # no ,S=: stat
            "tmp/3.M3.host,S=5": b"12345",  # tmp/ is not counted
            ".Sent/cur/4.M4.host,S=200:2,S": b"",  # Maildir++ folders are
            ".Sent/tmp/5.M5.host,S=9": b"",
            "cur/.hidden": b"zzz",  # dot files are not messages
        },
    )
    assert count_maildir(path, 1000) == Usage(1270, 3, counted=True)


def test_count_is_bounded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = make_maildir(tmp_path / "m", {f"cur/{i}.M.host,S=10": b"" for i in range(20)})
    usage = count_maildir(path, 5)
    assert (usage.messages, usage.bytes, usage.complete) == (5, 50, False)


def test_missing_maildir_is_empty(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert count_maildir(str(tmp_path / "nope"), 10) == Usage(0, 0, counted=True)
    assert read_usage(str(tmp_path / "nope"), 10) == Usage(0, 0, counted=True)


def test_read_usage_prefers_maildirsize(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = make_maildir(tmp_path / "m", {"cur/1.M.host,S=10": b"", "maildirsize": b"100S\n77 7\n"})
    assert read_usage(path, 10) == Usage(77, 7)
    (tmp_path / "m" / "maildirsize").write_bytes(b"100S\nbroken\n")
    assert read_usage(path, 10) == Usage(10, 1, counted=True)
    (tmp_path / "m" / "maildirsize").write_bytes(b"100S\n" + b"1 1\n" * (MAX_MAILDIRSIZE // 4))
    assert read_usage(path, 10) == Usage(10, 1, counted=True)  # absurdly long: recount
    os.unlink(tmp_path / "m" / "maildirsize")
    assert read_usage(path, 10) == Usage(10, 1, counted=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_unreadable_maildirsize_raises(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = make_maildir(tmp_path / "m", {"maildirsize": b"100S\n1 1\n"})
    os.chmod(tmp_path / "m" / "maildirsize", 0)
    with pytest.raises(PermissionError):
        read_usage(path, 10)


def test_reader_caches_counts_not_maildirsize(tmp_path) -> None:  # type: ignore[no-untyped-def]
    now = [100.0]
    reader = UsageReader(max_files=100, count_ttl=30, clock=lambda: now[0])
    counted = make_maildir(tmp_path / "c", {"cur/1.M.host,S=10": b""})
    sized = make_maildir(tmp_path / "s", {"maildirsize": b"100S\n5 1\n"})

    async def run() -> None:
        assert await reader.usage(counted) == Usage(10, 1, counted=True)
        (tmp_path / "c" / "cur" / "2.M.host,S=10").write_bytes(b"")
        assert (await reader.usage(counted)).messages == 1  # cached
        now[0] += 31
        assert (await reader.usage(counted)).messages == 2  # expired
        assert await reader.usage(sized) == Usage(5, 1)
        (tmp_path / "s" / "maildirsize").write_bytes(b"100S\n5 1\n6 1\n")
        assert await reader.usage(sized) == Usage(11, 2)  # read every time

    try:
        asyncio.run(run())
    finally:
        reader.close()
