"""Every Prometheus metric vmaild exports, in one place.

Label values come from the configuration (map names, listener names) or from small fixed
sets, never from request data: a key or a username as a label would let any client grow
the registry without bound.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# The *_created series double the output and tell an admin nothing here.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Lookups are answered in microseconds from the cache and in a millisecond or so from the
# database; the buckets resolve both ends.
LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
AUTH_SERVICES = frozenset({"imap", "pop3", "smtp", "login", "webmail", "esmtp", "submission"})


class LookupStats(Collector):
    """Lookup counts and latencies kept in plain Python numbers.

    A cached lookup costs a few microseconds; prometheus_client's locked counter and
    histogram took about a third of that. Lookups are counted on the event loop thread
    only, so plain numbers are safe; the scrape (another thread) reads a snapshot.
    """

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        # (map, outcome) -> [observations per bucket, the last being +Inf; sum of seconds]
        self.series: dict[tuple[str, str], list[Any]] = {}

    def observe(self, map_name: str, outcome: str, seconds: float) -> None:
        s = self.series.get((map_name, outcome))
        if s is None:
            s = self.series[(map_name, outcome)] = [[0] * (len(self.buckets) + 1), 0.0]
        s[0][bisect.bisect_left(self.buckets, seconds)] += 1  # buckets are "less or equal"
        s[1] += seconds

    def count(self, map_name: str, outcome: str) -> int:
        s = self.series.get((map_name, outcome))
        return sum(s[0]) if s else 0

    def collect(self) -> Iterator[Metric]:
        hist = HistogramMetricFamily(
            "vmaild_lookup_seconds",
            "Lookup latency by map and outcome (hit, miss, stale, notfound, error)",
            labels=["map", "outcome"],
        )
        total = CounterMetricFamily(
            "vmaild_lookups", "Lookups answered, by map and outcome", labels=["map", "outcome"]
        )
        bounds = [floatToGoString(b) for b in self.buckets] + ["+Inf"]  # type: ignore[no-untyped-call]
        for (map_name, outcome), (counts, seconds) in list(self.series.items()):
            cumulative, buckets = 0, []
            for bound, n in zip(bounds, list(counts), strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            hist.add_metric([map_name, outcome], buckets, seconds)
            total.add_metric([map_name, outcome], cumulative)
        yield hist
        yield total


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        # Lookups (tcp:, socketmap:): vmaild_lookup_seconds and vmaild_lookups_total
        self.lookup_stats = LookupStats(LATENCY_BUCKETS)
        r.register(self.lookup_stats)
        self.lookup_confirmations = Counter(
            "vmaild_lookup_confirmations",
            "Not-found answers of a replica asked again on the writer, by result (found: the "
            "replica was behind; notfound; unavailable: the writer did not answer)",
            ["result"],
            registry=r,
        )
        for result in ("found", "notfound", "unavailable"):
            self.lookup_confirmations.labels(result)
        self.lookup_errors = Counter(
            "vmaild_lookup_errors", "Lookups answered with a temporary error", ["map"], registry=r
        )
        self.cache_entries = Gauge(
            "vmaild_cache_entries", "Entries in the lookup cache", registry=r
        )
        self.cache_flushes = Counter(
            "vmaild_cache_flushes", "Whole-cache flushes, by reason", ["reason"], registry=r
        )
        # Targeted invalidation (invalidation.py): one per change log key applied
        self.cache_drops = Counter(
            "vmaild_cache_drops",
            "Change log keys applied as targeted drops, by scope (address, domain)",
            ["scope"],
            registry=r,
        )
        self.cache_dropped_entries = Counter(
            "vmaild_cache_dropped_entries", "Entries removed by targeted drops", registry=r
        )
        self.changes_pending = Gauge(
            "vmaild_changes_pending",
            "Notified changes (GTIDs) the read host has not applied yet",
            registry=r,
        )
        # Database
        self.db_query_seconds = Histogram(
            "vmaild_db_query_seconds", "Database query latency", buckets=LATENCY_BUCKETS, registry=r
        )
        self.db_errors = Counter(
            "vmaild_db_errors", "Failed database queries and connects", ["host"], registry=r
        )
        self.db_up = Gauge(
            "vmaild_db_up", "1 if the last attempt on this host worked", ["host"], registry=r
        )
        self.db_connections = Gauge(
            "vmaild_db_connections", "Open database connections", registry=r
        )
        # Replication (db.py, lagcheck.py): which read host answers, and each one's lag
        self.db_read_host = Gauge(
            "vmaild_db_read_host", "1 for the host reads are answered from", ["host"], registry=r
        )
        self.db_replica_lag = Gauge(
            "vmaild_db_replica_lag_seconds",
            "How far a read host is behind the writer (heartbeat); absent: not measured",
            ["host"],
            registry=r,
        )
        # Listeners
        self.connections = Gauge(
            "vmaild_connections", "Open client connections", ["listener"], registry=r
        )
        self.connections_refused = Counter(
            "vmaild_connections_refused",
            "New connections closed at once: the listener's max_connections was reached",
            ["listener"],
            registry=r,
        )
        self.protocol_errors = Counter(
            "vmaild_protocol_errors",
            "Malformed or oversized requests, by listener",
            ["listener"],
            registry=r,
        )
        self.reloads = Counter(
            "vmaild_config_reloads", "SIGHUP reloads, by result", ["result"], registry=r
        )
        # schema_fit.py: section and key come from the configuration's own names.
        self.schema_errors = Gauge(
            "vmaild_config_schema_errors",
            "1 if the configured query does not fit the database "
            "(unknown column, missing table, syntax, no grant)",
            ["section", "key"],
            registry=r,
        )
        # Logins
        self.logins = Counter(
            "vmaild_logins",
            "Logins by service and result (ok, fail, tempfail)",
            ["service", "result"],
            registry=r,
        )
        self.login_verify_seconds = Histogram(
            "vmaild_login_verify_seconds",
            "Password verification latency",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.login_rehashes = Counter(
            "vmaild_login_rehashes", "Stored hashes upgraded to the default scheme", registry=r
        )
        self.auth_requests = Counter(
            "vmaild_auth_requests",
            "Auth socket requests by kind "
            "(pre, auth, passwd, enumerate, bad) and result "
            "(ok, fail, tempfail)",
            ["kind", "result"],
            registry=r,
        )
        self.auth_request_seconds = Histogram(
            "vmaild_auth_request_seconds",
            "Auth socket request latency by kind",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.login_limited = Counter(
            "vmaild_login_failures_limited", "Replies delayed by the failure limit", registry=r
        )
        # The brute-force guard (auth/guard.py). kind: address, login, pair; refusals
        # also "early" (a door that cannot wait came back within the delay).
        self.guard_failures = Counter(
            "vmaild_login_guard_failures",
            "Failed logins counted by the brute-force guard, by kind (address, login, pair)",
            ["kind"],
            registry=r,
        )
        self.guard_delays = Counter(
            "vmaild_login_guard_delays",
            "Failed logins answered after a delay (front doors that can wait)",
            registry=r,
        )
        self.guard_blocks = Counter(
            "vmaild_login_guard_blocks",
            "Blocks started by this host, by kind (address, login, pair)",
            ["kind"],
            registry=r,
        )
        self.guard_refusals = Counter(
            "vmaild_login_guard_refusals",
            "Login attempts refused before any hashing, by kind (address, login, pair, early)",
            ["kind"],
            registry=r,
        )
        self.guard_local = Gauge(
            "vmaild_login_guard_local",
            "1 while failed logins are counted in this process only "
            "(the database or its login_failures table does not answer)",
            registry=r,
        )
        self.app_password_checks = Counter(
            "vmaild_app_password_checks",
            "App password lookups by result (ok: a valid app password matched, fail)",
            ["result"],
            registry=r,
        )
        self.sasl_requests = Counter(
            "vmaild_sasl_requests",
            "Dovecot SASL (Postfix smtpd) logins by mechanism and result (ok, fail, tempfail)",
            ["mechanism", "result"],
            registry=r,
        )
        self.login_refusals = Counter(
            "vmaild_login_refusals",
            "Login attempts refused without hashing, by kind (login or address: the "
            "brute-force guard; busy: over the account's or client's share of hashing)",
            ["kind"],
            registry=r,
        )
        # The guard's series exist from the start at 0, so that the first block after a
        # start is an increase a rate or an alert sees (monitoring/vmaild.rules.yml).
        for kind in ("address", "login", "pair"):
            self.guard_failures.labels(kind)
            self.guard_blocks.labels(kind)
        for kind in ("address", "login", "pair", "early"):
            self.guard_refusals.labels(kind)
        for kind in ("login", "address", "pair", "early", "busy", "other"):
            self.login_refusals.labels(kind)
        # Policy
        self.policy_decisions = Counter(
            "vmaild_policy_decisions",
            "Policy decisions by check and action",
            ["check", "action"],
            registry=r,
        )
        self.policy_seconds = Histogram(
            "vmaild_policy_request_seconds",
            "Policy request latency",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: prometheus_client validates and looks
        the labels up on every call, which costs more than the increment on a hot path.
        Labels are from bounded sets (see the module docstring), so this stays small."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def watch_cache(self, size: Callable[[], int]) -> None:
        self.cache_entries.set_function(lambda: float(size()))

    @staticmethod
    def service_label(service: str) -> str:
        return service if service in AUTH_SERVICES else "other"

    def render(self) -> bytes:
        """The Prometheus text format of every metric (metrics_http.py serves it)."""
        return generate_latest(self.registry)
