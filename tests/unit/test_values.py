"""Setting values: the type-hint driven converter and the one configuration error."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest

from vmaild import config
from vmaild.sections import MapConfig, Section
from vmaild.values import ConfigError, DatabaseHost, Listen, convert


def _raw(value: Any) -> str:
    """How a default value is written in the file."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


@pytest.mark.parametrize("cls", [*config.SECTIONS.values(), MapConfig])
def test_every_field_reads_its_own_default(cls: type[Section]) -> None:
    # The converter knows every type a section declares: a new field of a new type fails here.
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = cls().__getattribute__(f.name)
        if default is None and hints[f.name] == str | None:
            continue  # only an absent key means None: written empty, it is ""
        assert convert(hints[f.name], _raw(default), f.metadata) == default, f.name


@pytest.mark.parametrize(
    ("hint", "raw", "value"),
    [
        (int | None, "", None),
        (float | None, "", None),
        (Listen | None, "", None),
        (str | None, "", ""),  # an empty delimiter switches extension stripping off
        (str | None, "-+", "-+"),
        (typing.Optional[int], "7", 7),  # noqa: UP045 - the older spelling of the same hint
        (tuple[str, ...], "a, b  c,d", ("a", "b", "c", "d")),
        (tuple[str, ...], "", ()),
        (
            tuple[DatabaseHost, ...],
            "h unix:/s",
            (DatabaseHost(host="h"), DatabaseHost(socket="/s")),
        ),
        (Listen | None, "[::1]:25", Listen(host="::1", port=25)),
        (bool, "On", True),
        (float, "2", 2.0),
    ],
)
def test_convert_by_type_hint(hint: Any, raw: str, value: Any) -> None:
    assert convert(hint, raw) == value


@pytest.mark.parametrize(
    ("hint", "raw", "bounds", "problem"),
    [
        (int, "", {}, "not a number: ''"),
        (int, "1.5", {}, "not a number: '1.5'"),
        (int, "0", {"min": 1, "max": 256}, "0 is out of range (1..256)"),
        (float, "-1", {"min": 0, "max": None}, "-1 is out of range (0..any)"),
        (bool, "", {}, "expected yes or no, not ''"),
        (Listen | None, "10021", {}, "expected host:port or unix:/path, not '10021'"),
    ],
)
def test_convert_names_the_problem(
    hint: Any, raw: str, bounds: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as e:
        convert(hint, raw, bounds)
    assert str(e.value) == problem and e.value.key is None


def test_a_type_without_parser_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="no parser"):
        convert(bytes, "x")
    with pytest.raises(TypeError, match="no parser"):
        convert(int | str, "x")


def test_config_error_is_completed_where_it_is_known() -> None:
    e = ConfigError("bad port '99999' (1-65535)")
    assert str(e) == "bad port '99999' (1-65535)" and isinstance(e, ValueError)
    located = e.within("FILE", "map aliases", "tcp")
    assert str(located) == "FILE: [map aliases] tcp: bad port '99999' (1-65535)"
    assert (located.path, located.section, located.key) == ("FILE", "map aliases", "tcp")
    keyed = ConfigError("must be stderr or syslog", key="target")
    assert str(keyed) == "target: must be stderr or syslog"
    assert str(keyed.within("F", "log", "level")) == "F: [log] target: must be stderr or syslog"
    assert str(ConfigError("missing section", path="F", section="database")) == (
        "F: [database]: missing section"
    )
    assert str(ConfigError("cannot read: gone", path="F")) == "F: cannot read: gone"
