"""vmaild.auth.logins, the login core, with fakes: the order of its steps, what each
failure costs (timing), which spellings log in and whom they count against, the share of
hashing per account and client, and the two doors (waits or not)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from pathlib import Path
from typing import Any

import pytest
from passlib.hash import sha512_crypt

from tests.unit.fakes_auth import FakeDB, aio, make_service, unicode_ci
from vmaild import config
from vmaild.auth.accounts import Account
from vmaild.auth.contract import Client, LoginRequest, Outcome
from vmaild.auth.logins import Cram, LoginService
from vmaild.auth.service import AuthService
from vmaild.codec import authpipe as codec
from vmaild.db import DatabaseError
from vmaild.metrics import Metrics

SHA = sha512_crypt.using(rounds=1000)
ALICE = "alice@example.test"
CLIENT = ipaddress.ip_address("192.0.2.7")


def req(login: str, password: str, **kw: Any) -> LoginRequest:
    return LoginRequest("imap", login, password, **kw)


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class FakeGuard:
    """Records what the core tells it; refuses the keys in ``blocked``."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, str, Client | None]] = []
        self.blocked: set[str] = set()
        self.delay = delay

    async def refusal(
        self, key: str, client: Client | None, *, can_wait: bool = False
    ) -> str | None:
        self.calls.append(("refusal", key, client))
        return "address" if key in self.blocked else None

    async def failed(self, key: str, client: Client | None, **_: object) -> float:
        self.calls.append(("failed", key, client))
        return self.delay

    async def succeeded(self, key: str, client: Client | None) -> None:
        self.calls.append(("succeeded", key, client))

    def of(self, what: str) -> list[str]:
        return [key for call, key, _ in self.calls if call == what]


class FakeApps:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.asked = 0

    async def matches(
        self, account: Account, service: str, client: Client | None, password: str
    ) -> bool:
        self.asked += 1
        return password == self.secret


class FakeHistory:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, Client | None]] = []

    def record(self, address: str, service: str, client: Client | None) -> None:
        self.records.append((address, service, client))


def core(tmp_path: Path, extra: str = "", **kw: Any) -> tuple[LoginService, FakeDB]:
    cfg = config.parse(
        f"[database]\nhosts = h\nuser = u\ndbname = d\n[mailbox]\nbase = {tmp_path}/vmail\n"
        f"[auth]\nlisten = unix:{tmp_path}/a.sock\npassword_rounds = 1000\n"
        f"hash_workers = 4\n{extra}"
    )
    db = FakeDB()
    return LoginService(cfg, db, Metrics(), **kw), db  # type: ignore[arg-type]


def count_verifications(service: LoginService) -> list[str]:
    """The stored hashes the core verifies against, in order."""
    seen: list[str] = []
    real = service.hasher.verify

    async def verify(password: str, stored: str) -> bool:
        seen.append(stored)
        return await real(password, stored)

    service.hasher.verify = verify  # type: ignore[method-assign]
    return seen


# -- (a) every failure costs one verification --------------------------------------------


@aio
async def test_unknown_disabled_off_and_misspelt_cost_one_dummy_verification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, db = core(tmp_path, guard=FakeGuard(), app_passwords=FakeApps("app-secret"))
    db.fold = unicode_ci
    db.add(ALICE, SHA.hash("pw"))
    db.add("off@example.test", SHA.hash("pw"), active=0)
    db.add("nosmtp@example.test", SHA.hash("pw"))
    db.add("apponly@example.test", SHA.hash("pw"))
    access = {"nosmtp@example.test": "off", "apponly@example.test": "app"}
    monkeypatch.setattr(Account, "access_for", lambda self, s: access.get(self.address, "on"))
    hashes: list[str] = []
    real_hash = service.hasher.hash

    async def counting_hash(password: str) -> str:
        hashes.append(password)
        return await real_hash(password)

    service.hasher.hash = counting_hash  # type: ignore[method-assign]
    seen = count_verifications(service)
    for login in (
        "nobody@example.test",
        "off@example.test",
        "nosmtp@example.test",
        "apponly@example.test",  # the main password, where only app passwords may log in
        "alice@example.test ",
        "Älice@example.test",
    ):
        before = len(seen)
        result = await service.login(req(login, "pw"))
        assert result.outcome is Outcome.FAIL, login
        assert len(seen) == before + 1, login
    # All against the one dummy hash, made once in the configured scheme and rounds.
    assert len(hashes) == 1 and len(set(seen)) == 1
    assert seen[0].startswith("$6$rounds=1000$") and seen[0] != db.users[ALICE]["password"]
    # A known account with a wrong password: one verification too, of its own hash.
    assert (await service.login(req(ALICE, "wrong"))).outcome is Outcome.FAIL
    assert seen[-1] == db.users[ALICE]["password"] and len(seen) == 7


@aio
async def test_an_unknown_login_pays_a_verification_through_the_authpipe_door(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hostile-input review: unknown users failed before any hashing (1 ms vs 335 ms).
    from vmaild import passwords

    service, db = make_service(tmp_path, "rehash = no\n")
    db.add(ALICE, SHA.hash("pw"))
    calls: list[str] = []
    real_verify = passwords.verify
    monkeypatch.setattr(passwords, "verify", lambda p, s: calls.append(s) or real_verify(p, s))
    body = b"imap\nlogin\nnobody@example.test\npw\n"
    (decoded,) = codec.AuthpipeDecoder().feed(b"AUTH %d\n" % len(body) + body)
    assert await service.answer(decoded) == codec.FAIL
    assert len(calls) == 1


# -- (b) spellings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("login", "accepted"),
    [
        (ALICE, True),
        ("ALICE@Example.TEST", True),  # ASCII case is no spelling
        ("alice@example.test ", False),  # trailing space (PAD SPACE collations)
        ("älice@example.test", False),  # accent-insensitive collations
        ("\uff41lice@example.test", False),  # full-width a
        ("alice@example.tes\u0074\u0301", False),  # a combining accent
        ("ali\u0441e@example.test", False),  # Cyrillic es, if a collation matched it
    ],
)
@aio
async def test_only_the_returned_address_up_to_ascii_case_logs_in(
    tmp_path: Path, login: str, accepted: bool
) -> None:
    guard = FakeGuard()
    service, db = core(tmp_path, guard=guard)
    db.fold = unicode_ci
    db.add(ALICE, SHA.hash("pw"))
    # A collation that matched the Cyrillic letter too (as a site's own might).
    db.users[unicode_ci("ali\u0441e@example.test")] = db.users[unicode_ci(ALICE)]
    result = await service.login(req(login, "pw"))
    assert (result.outcome is Outcome.OK) is accepted
    # Whatever the spelling, the guard hears of the account the database returned.
    assert guard.of("refusal") == [ALICE]
    assert guard.of("succeeded" if accepted else "failed") == [ALICE]


@aio
async def test_spellings_count_against_the_account_and_the_authpipe_door_refuses(
    tmp_path: Path,
) -> None:
    # The review's bypass: rotating spellings escaped the limit keyed on login.lower().
    now = [0.0]
    service, db = make_service(tmp_path, clock=lambda: now[0])
    db.fold = unicode_ci
    db.add(ALICE, SHA.hash("pw"))
    spellings = ["alice@example.test ", "älice@example.test", "\uff41lice@example.test"]
    for i, login in enumerate(spellings):
        for password in ("pw", f"guess-{i}"):  # her password, even, and a guess
            body = f"imap\nlogin\n{login}\n{password}\n".encode()
            (decoded,) = codec.AuthpipeDecoder().feed(b"AUTH %d\n" % len(body) + body)
            assert await service.answer(decoded) == codec.FAIL, login
    # Failures of alice: her own spelling is now refused until the wait is over.
    body = f"imap\nlogin\n{ALICE}\npw\n".encode()
    (decoded,) = codec.AuthpipeDecoder().feed(b"AUTH %d\n" % len(body) + body)
    assert await service.answer(decoded) == codec.FAIL
    now[0] += 1.0
    assert (await service.answer(decoded)).endswith(b".\n")


# -- (c) nothing shared is held ------------------------------------------------------------


@aio
async def test_over_the_accounts_share_fails_at_once_and_others_go_on(tmp_path: Path) -> None:
    # hash_workers = 2: one verification per account at most (the pool less one).
    service, db = make_service(tmp_path, "rehash = no\n")
    db.add(ALICE, SHA.hash("pw"))
    db.add("ann@example.test", SHA.hash("pw"))
    release = asyncio.Event()
    real_verify = service.hasher.verify

    async def stuck_for_alice(password: str, stored: str) -> bool:
        if stored == db.users[ALICE]["password"]:
            await release.wait()
        return await real_verify(password, stored)

    service.hasher.verify = stuck_for_alice  # type: ignore[method-assign]

    def auth(user: str, password: str) -> codec.Auth:
        return codec.Auth("imap", "login", f"{user}\n{password}\n".encode())

    first = asyncio.create_task(service.answer(auth(ALICE, "guess-1")))
    while not service.core.share:
        await asyncio.sleep(0)
    # Alice's share is taken: a second guess fails at once, nothing hashed, counted busy.
    assert await asyncio.wait_for(service.answer(auth(ALICE, "guess-2")), 5) == codec.FAIL
    assert metric(service.metrics, "vmaild_login_refusals_total", kind="busy") == 1
    # Another account is verified meanwhile.
    reply = await asyncio.wait_for(service.answer(auth("ann@example.test", "pw")), 5)
    assert reply.endswith(b".\n")
    release.set()
    assert await first == codec.FAIL
    assert not service.core.share  # every slot given back


@aio
async def test_only_a_door_that_can_wait_is_given_the_delay(tmp_path: Path) -> None:
    guard = FakeGuard(delay=2.0)
    service, db = core(tmp_path, guard=guard)
    db.add(ALICE, SHA.hash("pw"))
    assert (await service.login(req(ALICE, "bad-1"))).delay == 0.0
    waited = await service.login(req(ALICE, "bad-2", can_wait=True, client=CLIENT, front="sasl"))
    assert waited.outcome is Outcome.FAIL and waited.delay == 2.0
    assert guard.calls[-1] == ("failed", ALICE, CLIENT)
    # A refusal: no verification, no failure recorded, the door that can wait waits.
    guard.blocked.add(ALICE)
    seen = count_verifications(service)
    refused = await service.login(req(ALICE, "pw", can_wait=True, client=CLIENT))
    assert refused.outcome is Outcome.FAIL and refused.delay == service.refusal_delay > 0
    assert not seen and guard.of("failed") == [ALICE, ALICE]
    assert (await service.login(req(ALICE, "pw"))).delay == 0.0
    assert metric(service.metrics, "vmaild_login_refusals_total", kind="address") == 2


# -- the order of the steps ------------------------------------------------------------------


@aio
async def test_app_passwords_history_and_the_verified_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apps, history, guard = FakeApps("app-secret-0123"), FakeHistory(), FakeGuard()
    service, db = core(
        tmp_path,
        "rehash = no\n",
        guard=guard,
        app_passwords=apps,
        history=history,
        app_shape=lambda p: p.startswith("app-"),
    )
    db.add(ALICE, SHA.hash("pw"))
    seen = count_verifications(service)
    assert (await service.login(req(ALICE, "pw"))).outcome is Outcome.OK
    assert (await service.login(req(ALICE, "pw"))).outcome is Outcome.OK  # cached
    assert len(seen) == 1 and apps.asked == 0  # not app-shaped: never asked
    ok = await service.login(req(ALICE, "app-secret-0123", client=CLIENT))
    assert ok.outcome is Outcome.OK and ok.account is not None and len(seen) == 1
    assert history.records == [(ALICE, "imap", None)] * 2 + [(ALICE, "imap", CLIENT)]
    # App passwords only: the (cached) main password no longer logs in.
    monkeypatch.setattr(Account, "access_for", lambda self, s: "app")
    assert (await service.login(req(ALICE, "pw"))).outcome is Outcome.FAIL
    assert (await service.login(req(ALICE, "app-secret-0123"))).outcome is Outcome.OK
    # Off: not even an app password, at the cost of a verification.
    monkeypatch.setattr(Account, "access_for", lambda self, s: "off")
    before = len(seen)
    assert (await service.login(req(ALICE, "app-secret-0123"))).outcome is Outcome.FAIL
    assert len(seen) == before + 1


@aio
async def test_refused_before_the_cache_and_before_hashing(tmp_path: Path) -> None:
    guard = FakeGuard()
    service, db = core(tmp_path, guard=guard)
    db.add(ALICE, SHA.hash("pw"))
    assert (await service.login(req(ALICE, "pw"))).outcome is Outcome.OK
    guard.blocked.add(ALICE)
    # The right password, verified before: still refused while the guard says so (the
    # cache must not become a way around it).
    assert (await service.login(req(ALICE, "pw"))).outcome is Outcome.FAIL
    guard.blocked.clear()
    assert (await service.login(req(ALICE, "pw"))).outcome is Outcome.OK


@aio
async def test_cram_goes_through_the_guard_and_the_spelling_rule(tmp_path: Path) -> None:
    import hmac

    guard = FakeGuard()
    service, db = core(tmp_path, guard=guard)
    db.fold = unicode_ci
    db.add(ALICE, "{PLAIN}tanstaaf")
    challenge = "<1.2@host>"
    answer = hmac.new(b"tanstaaf", challenge.encode(), "md5").hexdigest()
    cram = Cram(challenge, answer, "md5")
    assert (await service.login_cram(req(ALICE, ""), cram)).outcome is Outcome.OK
    assert (await service.login_cram(req("älice@example.test", ""), cram)).outcome is Outcome.FAIL
    guard.blocked.add(ALICE)
    assert (await service.login_cram(req(ALICE, ""), cram)).outcome is Outcome.FAIL
    assert guard.of("failed") == [ALICE]


@aio
async def test_the_core_is_what_authservice_login_answers(tmp_path: Path) -> None:
    service, db = make_service(tmp_path)
    assert isinstance(service, AuthService)
    db.add(ALICE, SHA.hash("pw"))
    ok = await service.login(req(ALICE, "pw", front="sasl", can_wait=True, client=CLIENT))
    assert ok.outcome is Outcome.OK and ok.account is not None and ok.account.address == ALICE
    db.down = True
    assert (await service.login(req("new@example.test", "x"))).outcome is Outcome.TEMPFAIL
    assert (await service.login(req(ALICE, "pw"))).outcome is Outcome.OK  # verified before
    assert (await service.login(req(ALICE, "wrong"))).outcome is Outcome.TEMPFAIL


@aio
async def test_refusals_under_attack_are_logged_once_in_a_while(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    guard = FakeGuard()
    guard.blocked.add(ALICE)
    service, db = core(tmp_path, guard=guard)
    db.add(ALICE, SHA.hash("pw"))
    caplog.set_level(logging.INFO, logger="vmaild.auth")
    for _ in range(50):
        assert (await service.login(req(ALICE, "guess"))).outcome is Outcome.FAIL
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert lines == [f"login {ALICE} (service imap) refused: address blocked"]
    assert metric(service.metrics, "vmaild_login_refusals_total", kind="address") == 50


@aio
async def test_the_same_wrong_password_again_is_not_counted_again(tmp_path: Path) -> None:
    # A client retrying a saved password, or smtplib trying PLAIN and then LOGIN, is one
    # mistake: no new guess. It is still verified (same cost), and still FAIL.
    guard = FakeGuard()
    service, db = core(tmp_path, guard=guard)
    db.add(ALICE, SHA.hash("pw"))
    seen = count_verifications(service)
    for password in ("stale", "stale", "other", "stale"):
        assert (await service.login(req(ALICE, password))).outcome is Outcome.FAIL
    for _ in range(2):
        assert (await service.login(req("nobody@example.test", "x"))).outcome is Outcome.FAIL
    assert len(seen) == 6
    assert guard.of("failed") == [ALICE, ALICE, "nobody@example.test"]


@aio
async def test_database_errors_of_the_plug_ins(tmp_path: Path) -> None:
    class DownGuard(FakeGuard):
        async def refusal(
            self, key: str, client: Client | None, *, can_wait: bool = False
        ) -> str | None:
            raise DatabaseError("(2003) down")

    class DownApps(FakeApps):
        async def matches(
            self, account: Account, service: str, client: Client | None, password: str
        ) -> bool:
            raise DatabaseError("(2003) down")

    # The guard cannot answer: the attempt goes on (no reason to refuse every login).
    service, db = core(tmp_path, guard=DownGuard())
    db.add(ALICE, SHA.hash("pw"))
    assert (await service.login(req(ALICE, "pw"))).outcome is Outcome.OK
    # App passwords cannot be asked: a temporary failure, never "wrong password".
    service, db = core(tmp_path, app_passwords=DownApps("x"))
    db.add(ALICE, SHA.hash("pw"))
    assert (await service.login(req(ALICE, "pw"))).outcome is Outcome.TEMPFAIL


@aio
async def test_several_logins_at_once_with_the_same_password_share_one_verification(
    tmp_path: Path,
) -> None:
    """A mail client opening five connections at once (after a restart or a password
    change: nothing cached) must not find its account's share taken by its own logins."""
    service, db = make_service(tmp_path, "rehash = no\n")
    db.add(ALICE, SHA.hash("pw"))
    release = asyncio.Event()
    real_verify = service.hasher.verify
    hashed: list[str] = []

    async def slow(password: str, stored: str) -> bool:
        hashed.append(password)
        await release.wait()
        return await real_verify(password, stored)

    service.hasher.verify = slow  # type: ignore[method-assign]
    auth = codec.Auth("imap", "login", f"{ALICE}\npw\n".encode())
    logins = [asyncio.create_task(service.answer(auth)) for _ in range(5)]
    while not hashed:
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    release.set()
    replies = await asyncio.wait_for(asyncio.gather(*logins), 5)
    assert all(r.endswith(b".\n") for r in replies)  # all five log in
    assert hashed == ["pw"]  # one verification
    assert metric(service.metrics, "vmaild_login_refusals_total", kind="busy") == 0
