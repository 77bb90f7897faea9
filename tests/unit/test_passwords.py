"""vmaild.passwords: every stored form verifies and rejects, prefixes, rehash decisions."""

from __future__ import annotations

import pytest
from passlib.hash import argon2, bcrypt, des_crypt, md5_crypt, sha256_crypt, sha512_crypt

from vmaild import passwords
from vmaild.auth import cryptlib

PW = "correct horse"
WRONG = "correct horsf"

# Cheap costs: the tests are about formats, not strength.
SAMPLES = {
    # MariaDB's ENCRYPT('...') is crypt(3) with a random 2-character salt: traditional DES.
    "des_crypt": des_crypt.using(salt="ab").hash("password"),
    "md5_crypt": md5_crypt.hash(PW),
    "sha256_crypt": sha256_crypt.using(rounds=1000).hash(PW),
    "sha512_crypt": sha512_crypt.using(rounds=1000).hash(PW),
    "sha512_crypt_implicit_rounds": sha512_crypt.using(rounds=5000).hash(PW),
    "bcrypt_2b": bcrypt.using(rounds=4, ident="2b").hash(PW),
    "argon2id": argon2.using(rounds=1, memory_cost=256, parallelism=1).hash(PW),
}
SAMPLES["bcrypt_2y"] = "$2y$" + SAMPLES["bcrypt_2b"][4:]  # PHP's ident, same algorithm
SAMPLES["bcrypt_2a"] = "$2a$" + SAMPLES["bcrypt_2b"][4:]


def password_for(name: str) -> str:
    return "password" if name == "des_crypt" else PW


@pytest.fixture(params=[True, False], ids=["libcrypt", "passlib"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run a test with libxcrypt and again with passlib's own handlers only."""
    if request.param:
        if not cryptlib.available():
            pytest.skip("no libxcrypt on this machine")
    else:
        monkeypatch.setattr(cryptlib, "crypt", lambda password, setting: None)
        monkeypatch.setattr(cryptlib, "gensalt", lambda prefix, count=0: None)
    return bool(request.param)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_scheme_verifies_and_rejects(name: str, backend: bool) -> None:
    stored = SAMPLES[name]
    assert passwords.verify(password_for(name), stored)
    assert not passwords.verify(WRONG, stored)
    assert not passwords.verify("", stored)


def test_the_seed_des_hash_only_reads_eight_characters() -> None:
    # The seed's weakness, kept exactly (and the reason its hashes are rehashed): DES crypt
    # looks at the first 8 characters, as MariaDB's ENCRYPT() did when it stored them.
    stored = des_crypt.hash("alice-pw1")
    assert passwords.verify("alice-pw1", stored)
    assert passwords.verify("alice-pwX", stored)
    assert passwords.identify(stored) == "des_crypt"


@pytest.mark.parametrize(
    ("name", "scheme"),
    [
        ("des_crypt", "des_crypt"),
        ("md5_crypt", "md5_crypt"),
        ("sha256_crypt", "sha256_crypt"),
        ("sha512_crypt", "sha512_crypt"),
        ("sha512_crypt_implicit_rounds", "sha512_crypt"),
        ("bcrypt_2b", "bcrypt"),
        ("bcrypt_2y", "bcrypt"),
        ("bcrypt_2a", "bcrypt"),
        ("argon2id", "argon2"),
    ],
)
def test_identify(name: str, scheme: str) -> None:
    assert passwords.identify(SAMPLES[name]) == scheme


@pytest.mark.parametrize(
    ("prefix", "name"),
    [
        ("{CRYPT}", "des_crypt"),
        ("{CRYPT}", "sha512_crypt"),
        ("{DES-CRYPT}", "des_crypt"),
        ("{MD5-CRYPT}", "md5_crypt"),
        ("{SHA256-CRYPT}", "sha256_crypt"),
        ("{SHA512-CRYPT}", "sha512_crypt"),
        ("{BLF-CRYPT}", "bcrypt_2y"),
        ("{BLF-CRYPT}", "bcrypt_2b"),
        ("{ARGON2ID}", "argon2id"),
        ("{sha512-crypt}", "sha512_crypt"),
    ],
)
def test_dovecot_prefixes(prefix: str, name: str, backend: bool) -> None:
    stored = prefix + SAMPLES[name]
    assert passwords.verify(password_for(name), stored)
    assert not passwords.verify(WRONG, stored)


def test_a_prefix_must_match_the_hash() -> None:
    # {SHA512-CRYPT} in front of an MD5 hash is a corrupt entry, not an MD5 hash.
    assert not passwords.verify(PW, "{SHA512-CRYPT}" + SAMPLES["md5_crypt"])
    assert not passwords.verify(PW, "{ARGON2ID}" + SAMPLES["bcrypt_2b"])
    assert passwords.parse("{SHA512-CRYPT}" + SAMPLES["md5_crypt"]).scheme is None


def test_unknown_prefix_and_garbage_never_verify() -> None:
    assert not passwords.verify(PW, "{SSHA}" + SAMPLES["sha512_crypt"])
    assert not passwords.verify(PW, "")
    assert not passwords.verify(PW, "*")
    assert not passwords.verify(PW, "!locked")
    assert not passwords.verify(PW, "$6$broken")


@pytest.mark.parametrize("prefix", ["{PLAIN}", "{CLEARTEXT}", "{plain}"])
def test_clear_text_only_with_a_prefix(prefix: str) -> None:
    assert passwords.verify(PW, prefix + PW)
    assert not passwords.verify(WRONG, prefix + PW)
    assert not passwords.verify(PW[:-1], prefix + PW)
    assert passwords.clear_text(prefix + PW) == PW
    # A bare string is never clear text: "abcdefghijklm" is a well-formed DES hash, and a
    # clear-text password must not pass for one.
    assert not passwords.verify("abcdefghijklm", "abcdefghijklm")
    assert passwords.clear_text(SAMPLES["sha512_crypt"]) is None


@pytest.mark.parametrize("password", ["", "a\0b", "x" * (passwords.MAX_PASSWORD + 1)])
def test_refused_passwords_never_match(password: str) -> None:
    assert not passwords.verify(password, "{PLAIN}" + password)


@pytest.mark.parametrize(
    ("name", "default", "expected"),
    [
        ("des_crypt", "sha512_crypt", True),  # deprecated
        ("md5_crypt", "sha512_crypt", True),  # deprecated
        ("sha512_crypt", "sha512_crypt", False),
        ("sha512_crypt_implicit_rounds", "sha512_crypt", False),  # rounds alone do not count
        ("sha256_crypt", "sha512_crypt", True),  # not the default
        ("bcrypt_2y", "sha512_crypt", True),
        ("bcrypt_2y", "bcrypt", False),
        ("argon2id", "argon2", False),
        ("argon2id", "sha512_crypt", True),
        ("sha512_crypt", "argon2", True),
    ],
)
def test_needs_update(name: str, default: str, expected: bool) -> None:
    assert passwords.needs_update(SAMPLES[name], default) is expected


def test_needs_update_prefixed_and_unreadable() -> None:
    assert not passwords.needs_update("{SHA512-CRYPT}" + SAMPLES["sha512_crypt"], "sha512_crypt")
    assert passwords.needs_update("{PLAIN}secret", "sha512_crypt")
    assert passwords.needs_update("{CRYPT}" + SAMPLES["des_crypt"], "sha512_crypt")
    # What cannot be verified is never replaced.
    assert not passwords.needs_update("{SSHA}whatever", "sha512_crypt")
    assert not passwords.needs_update("", "sha512_crypt")


@pytest.mark.parametrize(
    ("scheme", "rounds", "handler"),
    [
        ("sha512_crypt", 1000, sha512_crypt),
        ("sha256_crypt", 1000, sha256_crypt),
        ("bcrypt", 4, bcrypt),
        ("argon2", 1, argon2),
        ("md5_crypt", 0, md5_crypt),
    ],
)
def test_hash_password_round_trips(
    scheme: str, rounds: int, handler: object, backend: bool
) -> None:
    stored = passwords.hash_password(PW, scheme, rounds)
    assert passwords.identify(stored) == scheme
    assert passwords.verify(PW, stored)
    assert not passwords.verify(WRONG, stored)
    # Whatever made it, passlib's own handler reads it: the formats are the standard ones.
    assert handler.verify(PW, stored)  # type: ignore[attr-defined]
    if rounds and scheme.startswith("sha"):
        assert f"rounds={rounds}$" in stored
    assert passwords.needs_update(stored, scheme) is (scheme in passwords.DEPRECATED)


def test_hash_password_keeps_vmailctls_call_working() -> None:
    stored = passwords.hash_password("s3cret!", "sha512_crypt")
    assert stored.startswith("$6$rounds=656000$")  # passlib's default cost
    assert passwords.verify("s3cret!", stored)
    assert passwords.hash_password("s3cret!", "argon2id").startswith("$argon2id$")


def test_hash_password_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown password scheme"):
        passwords.hash_password(PW, "rot13")
    with pytest.raises(ValueError):
        passwords.hash_password("", "sha512_crypt")
    with pytest.raises(ValueError):
        passwords.context("nope")


def test_context_reads_every_scheme() -> None:
    ctx = passwords.context("sha512_crypt")
    for name in ("des_crypt", "md5_crypt", "sha256_crypt", "sha512_crypt", "bcrypt_2b", "argon2id"):
        assert ctx.verify(password_for(name), SAMPLES[name])
    assert ctx.needs_update(SAMPLES["des_crypt"])


def test_libcrypt_agrees_with_passlib_on_the_same_salt() -> None:
    if not cryptlib.available():
        pytest.skip("no libxcrypt on this machine")
    for handler, kw in (
        (sha512_crypt, {"rounds": 1000, "salt": "saltsaltsaltsalt"}),
        (sha256_crypt, {"rounds": 1000, "salt": "saltsalt"}),
        (md5_crypt, {"salt": "saltsalt"}),
        (des_crypt, {"salt": "xy"}),
    ):
        expected = handler.using(**kw).hash(PW)  # type: ignore[attr-defined]
        assert cryptlib.crypt(PW.encode(), expected.encode()) == expected.encode()
    assert cryptlib.crypt(b"a\0b", b"$1$saltsalt") is None
