"""Metrics: the lookup collector exports what prometheus-client's own types would."""

from __future__ import annotations

from prometheus_client import generate_latest

from vmaild.metrics import Metrics


def samples(m: Metrics) -> dict[str, float]:
    text = generate_latest(m.registry).decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_lookup_histogram_and_counter() -> None:
    m = Metrics()
    for seconds in (0.00004, 0.00005, 0.0003, 7.0):
        m.lookup_stats.observe("mailboxes", "hit", seconds)
    m.lookup_stats.observe("domains", "error", 0.002)
    s = samples(m)
    # "le" buckets are cumulative and inclusive of their bound.
    assert s['vmaild_lookup_seconds_bucket{le="5e-05",map="mailboxes",outcome="hit"}'] == 2
    assert s['vmaild_lookup_seconds_bucket{le="0.0005",map="mailboxes",outcome="hit"}'] == 3
    assert s['vmaild_lookup_seconds_bucket{le="5.0",map="mailboxes",outcome="hit"}'] == 3
    assert s['vmaild_lookup_seconds_bucket{le="+Inf",map="mailboxes",outcome="hit"}'] == 4
    assert s['vmaild_lookup_seconds_count{map="mailboxes",outcome="hit"}'] == 4
    assert abs(s['vmaild_lookup_seconds_sum{map="mailboxes",outcome="hit"}'] - 7.00039) < 1e-9
    assert s['vmaild_lookups_total{map="mailboxes",outcome="hit"}'] == 4
    assert s['vmaild_lookups_total{map="domains",outcome="error"}'] == 1
    assert m.lookup_stats.count("mailboxes", "hit") == 4
    assert m.lookup_stats.count("nope", "hit") == 0


def test_service_label_is_bounded() -> None:
    assert Metrics.service_label("imap") == "imap"
    assert Metrics.service_label("x" * 50) == "other"


def test_two_instances_do_not_share_a_registry() -> None:
    a, b = Metrics(), Metrics()
    a.lookup_stats.observe("m", "hit", 0.001)
    assert samples(b).get('vmaild_lookups_total{map="m",outcome="hit"}') is None


def test_child_is_remembered_per_metric_and_labels() -> None:
    m = Metrics()
    ok = m.child(m.logins, "imap", "ok")
    assert m.child(m.logins, "imap", "ok") is ok
    assert m.child(m.logins, "imap", "fail") is not ok
    ok.inc()
    assert (
        m.registry.get_sample_value("vmaild_logins_total", {"service": "imap", "result": "ok"})
        == 1.0
    )
