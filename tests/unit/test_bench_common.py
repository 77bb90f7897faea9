"""bench/common.py: every bench/bench_*.py has the same entry points, and a run's outcome is
printed and saved in one format."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
from pathlib import Path

import pytest

from bench import common
from bench.run import BENCH_DIR, discover


@pytest.mark.parametrize("name", discover())
def test_every_benchmark_has_the_same_shape(name: str) -> None:
    module = importlib.import_module(f"bench.bench_{name}")
    assert module.NAME == name
    assert list(inspect.signature(module.add_arguments).parameters) == ["p"]
    assert list(inspect.signature(module.run).parameters) == ["args", "quick"]
    assert list(inspect.signature(module.main).parameters) == ["argv"]
    assert (BENCH_DIR / f"bench_{name}.py").exists()


def test_outcome_is_printed_and_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(common, "RESULTS", tmp_path)

    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--size", type=int, default=3)

    def run(args: argparse.Namespace, quick: bool) -> common.Outcome:
        return common.Outcome(
            {"rps": args.size},
            "the table",
            targets=[
                common.Target("fast", True, "3/s"),
                common.Target("small", None, "not measured"),
            ],
            meta={"extra": 1},
        )

    assert common.main("demo", "doc", add_arguments, run, ["--quick", "--size", "3"]) == 0
    out = capsys.readouterr().out
    assert "the table" in out and "[    met] fast: 3/s" in out and "[    n/a] small" in out
    (path,) = tmp_path.glob("demo-*.json")
    saved = json.loads(path.read_text())
    assert saved["benchmark"] == "demo" and saved["figures"] == {"rps": 3}
    assert saved["meta"]["quick"] is True and saved["meta"]["extra"] == 1
    assert saved["targets"][0] == {"target": "fast", "met": True, "detail": "3/s"}
    assert saved["failures"] == []


def test_a_failure_exits_1_and_is_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "RESULTS", tmp_path)

    def run(args: argparse.Namespace, quick: bool) -> common.Outcome:
        raise RuntimeError("no MariaDB")

    assert common.main("demo", None, lambda p: None, run, []) == 1
    (path,) = tmp_path.glob("demo-*.json")
    assert json.loads(path.read_text())["failures"] == ["RuntimeError: no MariaDB"]
