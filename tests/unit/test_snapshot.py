"""The cache snapshot file (snapshot.py): round trip, what makes it damaged or another
configuration's, its mode and its atomic replacement."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.unit.fakes import CONFIG
from vmaild import config, snapshot
from vmaild.cache import Cache, TTLs

NOW = 1_764_684_000.0


def exported() -> snapshot.Exported:
    cache = Cache(TTLs(60, 10, 3600), 1000, clock=lambda: 500.0)
    cache.store("mailboxes", "a@x", "x/a/")
    cache.store("mailboxes", "nobody@x", None)
    cache.store("aliases", "l'ö\n\t\"@x", "b@x,c@x")  # keys are data, whatever they hold
    return cache.export()


def encoded(changes: object = 7, config_id: str = "cfg") -> bytes:
    # cache clock 500.0 is wall NOW - 20: every entry was fetched 20 s before NOW
    return b"".join(snapshot.encode(config_id, NOW, changes, exported(), NOW - 520.0))


def test_round_trip_keeps_every_entry_with_its_wall_clock_time() -> None:
    snap = snapshot.decode(encoded())
    assert snap.config == "cfg" and snap.written == NOW and snap.changes == 7
    assert snap.maps == {
        "mailboxes": [("a@x", "x/a/", NOW - 20), ("nobody@x", None, NOW - 20)],
        "aliases": [("l'ö\n\t\"@x", "b@x,c@x", NOW - 20)],
    }
    assert len(snap) == 3


def test_many_entries_span_several_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot, "CHUNK", 2)
    cache = Cache(TTLs(60, 10, 3600), 1000, clock=lambda: 0.0)
    for i in range(5):
        cache.store("m", f"k{i}", f"v{i}")
    data = b"".join(snapshot.encode("c", NOW, None, cache.export(), NOW))
    assert data.count(b"\n") == 1 + 3 + 1
    assert [k for k, _, _ in snapshot.decode(data).maps["m"]] == [f"k{i}" for i in range(5)]


def test_a_change_counter_that_is_no_plain_value_is_not_kept() -> None:
    assert snapshot.decode(encoded(changes=object())).changes is None
    assert snapshot.decode(encoded(changes="v9")).changes == "v9"


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[: len(d) // 2],  # cut short
        lambda d: d.replace(b"x/a/", b"x/b/"),  # changed in place
        lambda d: d.rstrip(b"\n").rpartition(b"\n")[0],  # no trailer
        lambda d: b"",
        lambda d: b"\x00\xff" * 10,
        lambda d: d.replace(b'"version":1', b'"version":2'),
    ],
)
def test_damaged_files_are_refused(damage: object) -> None:
    with pytest.raises(snapshot.Ignored, match="damaged"):
        snapshot.decode(damage(encoded()))  # type: ignore[operator]


def test_a_trailer_that_matches_a_forged_body_still_needs_the_right_shape() -> None:
    import hashlib
    import json

    body = b'{"format":"vmaild-cache-snapshot","version":1}\n["m",[[1,2,3]]]\n'
    trailer = json.dumps({"entries": 1, "sha256": hashlib.sha256(body).hexdigest()}).encode()
    with pytest.raises(snapshot.Ignored, match="damaged"):
        snapshot.decode(body + trailer + b"\n")


def test_fingerprint_follows_what_answers_depend_on() -> None:
    base = config.parse(CONFIG)
    same = config.parse(CONFIG + "\n[socketmap]\nlisten = 127.0.0.1:10020\n")
    assert snapshot.fingerprint(base) == snapshot.fingerprint(same)
    for changed in (
        CONFIG.replace("SELECT maildir", "SELECT home"),
        CONFIG.replace("[map domains]", "[map domains2]"),
        CONFIG + "\n[cache]\nttl = 30\n",
        CONFIG + "\n[cache]\nstale_ttl = 60\n",
        CONFIG.replace("dbname = d", "dbname = other"),
        CONFIG.replace("catchall = yes", "catchall = no"),
    ):
        assert snapshot.fingerprint(config.parse(changed)) != snapshot.fingerprint(base)


def test_written_atomically_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "cache.snapshot"
    old_umask = os.umask(0)
    try:
        assert snapshot.write(str(path), [encoded()])
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.stat().st_uid == os.geteuid()
    assert snapshot.read(str(path)).changes == 7
    assert os.listdir(tmp_path) == ["cache.snapshot"]  # no temporary file left


def test_a_write_that_is_no_longer_wanted_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.snapshot"
    snapshot.write(str(path), [encoded(changes=1)])
    assert not snapshot.write(str(path), [encoded(changes=2)], threading.Lock(), lambda: False)
    assert snapshot.read(str(path)).changes == 1
    assert os.listdir(tmp_path) == ["cache.snapshot"]


def test_a_failing_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    def lines() -> object:
        yield b"x"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        snapshot.write(str(tmp_path / "s"), lines())  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_a_file_others_can_write_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cache.snapshot"
    snapshot.write(str(path), [encoded()])
    path.chmod(0o622)
    with pytest.raises(snapshot.Ignored, match="unsafe"):
        snapshot.read(str(path))


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    snapshot.write(str(real), [encoded()])
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(OSError):
        snapshot.read(str(tmp_path / "link"))


def test_a_file_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file away")
    path = tmp_path / "cache.snapshot"
    snapshot.write(str(path), [encoded()])
    os.chown(path, 65534, 65534)
    with pytest.raises(snapshot.Ignored, match="unsafe: owned by uid 65534"):
        snapshot.read(str(path))
