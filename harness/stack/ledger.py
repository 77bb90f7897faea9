"""What the fault-injection run saw, judged against what was true when it asked.

Every answer a load client got is an :class:`Answer` (which host, what kind of request,
when it was sent and answered, what came back). The :class:`Ledger` records what the
creator did to the dynamic mailboxes (``vmailctl user add``/``remove``: the interval the
command ran, and which host it notified); :func:`judge` then classifies each lookup:

* ``found``/``notfound``: correct for some instant between sending and answering (a
  mailbox being created or removed while vmailctl runs may be either);
* ``stale``: wrong for the whole request but right at an earlier state (a mailbox removed
  shortly before still found, or one created shortly before still "not found");
* ``4xx`` (tcp: 400, socketmap TEMP), ``5xx`` (socketmap PERM, anything unparsable),
  ``err`` (the connection failed: Postfix defers, as for a 4xx).

A mailbox whose vmailctl command failed (the primary was down) is "uncertain" from then
on: its answers are counted as found/notfound but never judged.

:class:`Phase` and :func:`report` turn the judged answers into the per phase, per host
table the test prints and asserts on.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

LOOKUP, LOGIN, POLICY = "lookup", "login", "policy"
EXISTS, ABSENT, DYNAMIC = "exists", "absent", "dynamic"  # what a looked-up key is
RIGHT, WRONG = "right", "wrong"  # the password a login sent
LOOKUP_KINDS = ("found", "stale", "notfound", "4xx", "5xx", "err")
LOGIN_KINDS = ("ok", "fail", "tempfail")
POLICY_KINDS = ("accepted", "over", "4xx", "other")


@dataclass(frozen=True)
class Answer:
    host: str  # "A" or "B"
    kind: str  # LOOKUP, LOGIN, POLICY
    key: str  # the address looked up, the login, the policy login
    expect: str  # LOOKUP: EXISTS/ABSENT/DYNAMIC; LOGIN: RIGHT/WRONG; POLICY: ""
    t0: float  # time.monotonic() when sent
    t1: float  # ... when answered
    outcome: str  # one of the *_KINDS (lookups: before judging, found/notfound/...)
    raw: str = ""  # the reply, for failure messages


@dataclass
class _Op:
    key: str
    exists_after: bool
    t0: float
    t1: float
    ok: bool
    notified: str  # the host whose config vmailctl used (and so told)


class Ledger:
    """The creator's operations on the dynamic mailboxes, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ops: dict[str, list[_Op]] = {}
        self._recent: list[str] = []
        self._pinned: list[str] = []

    def begin(self, key: str, pinned: bool = False) -> None:
        """The key may be looked up from now on (its creation is starting): while it is
        among the 4 newest, or for the rest of the run if ``pinned``."""
        with self._lock:
            if pinned:
                self._pinned.append(key)
            else:
                self._recent = [*self._recent[-3:], key]

    def record(
        self, key: str, exists_after: bool, t0: float, t1: float, ok: bool, notified: str
    ) -> None:
        with self._lock:
            self._ops.setdefault(key, []).append(_Op(key, exists_after, t0, t1, ok, notified))

    def recent(self) -> list[str]:
        with self._lock:
            return [*self._pinned, *self._recent]

    def ops(self, key: str) -> list[_Op]:
        with self._lock:
            return list(self._ops.get(key, ()))

    def operations(self) -> list[_Op]:
        with self._lock:
            return [op for ops in self._ops.values() for op in ops]

    def judge(self, a: Answer) -> tuple[str, str | None, float]:
        """(kind, violation, age): the lookup's kind; for a "not found" of a mailbox that
        the answering host was told had been created, why that breaks the contract; for a
        stale answer, how long before the request the vmailctl that changed it returned."""
        if a.outcome not in ("found", "notfound") or a.expect == EXISTS:
            return a.outcome, None, 0.0  # an existing mailbox's "not found": see figures()
        ops = self.ops(a.key)
        if any(not op.ok for op in ops):
            return a.outcome, None, 0.0  # uncertain: a failed vmailctl may have committed
        want = a.outcome == "found"
        # The states the key had: absent before its first op; during an op either.
        possible: set[bool] = set()
        earlier: set[bool] = {False}
        state = False
        for op in ops:
            if op.t1 <= a.t0:
                state = op.exists_after
                earlier.add(state)
            elif op.t0 < a.t1:  # the command ran while the request did
                possible.update((state, op.exists_after))
        possible.add(state)
        if want in possible:
            return a.outcome, None, 0.0
        if want in earlier:
            last = max((op for op in ops if op.t1 <= a.t0), key=lambda op: op.t1, default=None)
            age = 0.0 if last is None else a.t0 - last.t1
            if not want and last is not None and last.exists_after and last.notified == a.host:
                return (
                    "stale",
                    (
                        f"host {a.host} answered {a.raw!r} for {a.key} {age:.2f}s after "
                        "the vmailctl that created it (and told this host) returned"
                    ),
                    age,
                )
            return "stale", None, age
        return "5xx", f"host {a.host} answered {a.raw!r} for {a.key}, which never existed", 0.0


@dataclass
class Phase:
    name: str
    start: float
    fault_start: float | None = None  # None: no fault (steady)
    fault_end: float | None = None  # the server back (revived, SQL thread running)
    end: float = 0.0
    fault: str = ""  # what was done
    writer_fault: bool = False  # the primary: counting fails by design while it is down
    notes: list[str] = field(default_factory=list)

    def holds(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass
class HostFigures:
    lookups: Counter[str] = field(default_factory=Counter)
    existing_bad: int = 0  # notfound or 5xx for a mailbox that existed throughout
    logins: Counter[str] = field(default_factory=Counter)
    right_fail: int = 0  # FAIL for a correct password
    wrong_ok: int = 0  # OK for a wrong password
    policy: Counter[str] = field(default_factory=Counter)
    stale_found: int = 0  # a removed mailbox still found
    stale_notfound: int = 0  # a created mailbox still "not found" (by the host not told)
    stale_age: float = 0.0  # the oldest: seconds after the vmailctl command returned
    dynamic_4xx: int = 0  # temporary failures for the mailboxes being created/removed
    recovery: float | None = None  # reads: seconds from the fault's start
    counting_recovery: float | None = None  # writer fault: seconds from its end
    first_good: dict[str, float] = field(default_factory=dict)  # kind -> s after fault end
    violations: list[str] = field(default_factory=list)


def _bad_read(a: Answer, kind: str) -> bool:
    """An answer a healthy host would not give: a temporary failure of a lookup of an
    existing mailbox, of a login with the right password, or of a policy read."""
    if a.kind == LOOKUP:
        return a.expect == EXISTS and kind != "found"
    if a.kind == LOGIN:
        return a.expect == RIGHT and a.outcome != "ok"
    return a.outcome in ("4xx", "other")


def _good(a: Answer, kind: str) -> bool:
    """A right answer of a healthy host: an existing mailbox found, a right password
    accepted, a policy request counted (accepted, or over the limit)."""
    if a.kind == LOOKUP:
        return a.expect == EXISTS and kind == "found"
    if a.kind == LOGIN:
        return a.expect == RIGHT and a.outcome == "ok"
    return a.outcome in ("accepted", "over")


def figures(phase: Phase, host: str, answers: Iterable[Answer], ledger: Ledger) -> HostFigures:
    f = HostFigures()
    last_bad: float | None = None
    first_counted: float | None = None
    for a in answers:
        if a.host != host or not phase.holds(a.t0):
            continue
        kind = a.outcome
        if a.kind == LOOKUP:
            kind, violation, age = ledger.judge(a)
            f.lookups[kind] += 1
            if kind == "stale":
                f.stale_age = max(f.stale_age, age)
                if a.outcome == "found":
                    f.stale_found += 1
                else:
                    f.stale_notfound += 1
            if a.expect == DYNAMIC and kind == "4xx":
                f.dynamic_4xx += 1
            if violation:
                f.violations.append(violation)
            if a.expect == EXISTS and kind in ("notfound", "5xx", "stale"):
                f.existing_bad += 1
                f.violations.append(f"host {host}: {a.raw!r} for existing mailbox {a.key}")
        elif a.kind == LOGIN:
            f.logins[a.outcome] += 1
            if a.expect == RIGHT and a.outcome == "fail":
                f.right_fail += 1
                f.violations.append(f"host {host}: FAIL for {a.key} with the right password")
            if a.expect == WRONG and a.outcome == "ok":
                f.wrong_ok += 1
                f.violations.append(f"host {host}: OK for {a.key} with a wrong password")
        else:
            f.policy[a.outcome] += 1
        if phase.fault_start is None or a.t0 < phase.fault_start:
            continue
        if phase.fault_end is not None and a.t0 >= phase.fault_end and _good(a, kind):
            after = a.t1 - phase.fault_end
            f.first_good[a.kind] = min(f.first_good.get(a.kind, after), after)
        counting = a.kind == POLICY and phase.writer_fault
        if counting:
            assert phase.fault_end is not None
            if a.outcome in ("accepted", "over") and a.t0 >= phase.fault_end:
                first_counted = a.t1 if first_counted is None else min(first_counted, a.t1)
        elif _bad_read(a, kind):
            last_bad = a.t1 if last_bad is None else max(last_bad, a.t1)
    if phase.fault_start is not None:
        f.recovery = 0.0 if last_bad is None else last_bad - phase.fault_start
        if phase.writer_fault and first_counted is not None:
            assert phase.fault_end is not None
            f.counting_recovery = first_counted - phase.fault_end
    return f


def _counts(c: Counter[str], kinds: tuple[str, ...]) -> str:
    return " ".join(f"{k}={c[k]}" for k in kinds)


def table(phases: list[Phase], hosts: list[str], by: dict[tuple[str, str], HostFigures]) -> str:
    """The printed figures: one block per phase, one line per host and request kind."""
    lines = []
    for p in phases:
        took = p.end - p.start
        fault = ""
        if p.fault_start is not None and p.fault_end is not None:
            fault = f": {p.fault} for {p.fault_end - p.fault_start:.1f}s"
        lines.append(f"phase {p.name} ({took:.1f}s){fault}")
        for note in p.notes:
            lines.append(f"  {note}")
        for h in hosts:
            f = by[(p.name, h)]
            lines.append(f"  host {h} lookups  {_counts(f.lookups, LOOKUP_KINDS)}")
            lines.append(
                f"         existing mailboxes not found/5xx: {f.existing_bad}; stale: "
                f"{f.stale_found} removed still found, {f.stale_notfound} created still not "
                f"found, oldest {f.stale_age:.2f}s after vmailctl returned; 4xx for "
                f"created/removed mailboxes: {f.dynamic_4xx}"
            )
            lines.append(
                f"         logins   {_counts(f.logins, LOGIN_KINDS)}; "
                f"right password FAIL: {f.right_fail}"
            )
            lines.append(f"         policy   {_counts(f.policy, POLICY_KINDS)}")
            if f.recovery is not None:
                text = f"         recovery: last failed read {f.recovery:.2f}s after fault start"
                if p.writer_fault:
                    counted = (
                        "none"
                        if f.counting_recovery is None
                        else f"{f.counting_recovery:.2f}s after it was back"
                    )
                    text += f"; first counted policy answer {counted}"
                lines.append(text)
                firsts = ", ".join(f"{k} {v:.2f}s" for k, v in sorted(f.first_good.items()))
                lines.append(f"         first good answer after the fault's end: {firsts}")
    return "\n".join(lines)
