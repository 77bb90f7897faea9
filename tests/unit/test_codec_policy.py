"""Tests for vmaild.codec.policy (PROTOCOLS.md section 3, checklist 3.4)."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmaild.codec.policy import (
    DEFAULT_MAX_REQUEST,
    DUNNO,
    MAX_ATTRIBUTES,
    PolicyDecoder,
    PolicyError,
    PolicyRequest,
    reply_action,
)

# What Postfix 3.7 (Debian 12) sends at RCPT time (3.1).
POSTFIX_REQUEST = b"""request=smtpd_access_policy
protocol_state=RCPT
protocol_name=ESMTP
client_address=192.0.2.1
client_name=mail.example.net
client_port=40512
reverse_client_name=mail.example.net
server_address=198.51.100.7
server_port=587
helo_name=mail.example.net
sender=a@example.net
recipient=b@example.com
recipient_count=0
queue_id=
instance=a5f.5f3b5d41.4a2.0
size=12345
etrn_domain=
stress=
sasl_method=plain
sasl_username=joe@example.com
sasl_sender=
ccert_subject=
ccert_issuer=
ccert_fingerprint=
ccert_pubkey_fingerprint=
encryption_protocol=TLSv1.3
encryption_cipher=TLS_AES_256_GCM_SHA384
encryption_keysize=256
policy_context=submission

"""


def run(chunks: list[bytes], **kwargs: int) -> tuple[list[PolicyRequest], bool]:
    """Feed *chunks* to one decoder: (everything decoded, whether PolicyError was raised)."""
    decoder = PolicyDecoder(**kwargs)
    items: list[PolicyRequest] = []
    error = False
    for chunk in chunks:
        try:
            items += decoder.feed(chunk)
        except PolicyError as exc:
            items += exc.decoded
            error = True
            break
    return items, error


def decode(data: bytes, **kwargs: int) -> tuple[list[PolicyRequest], bool]:
    """Decode *data* whole and one byte at a time; both must agree."""
    whole = run([data], **kwargs)
    assert run([data[i : i + 1] for i in range(len(data))], **kwargs) == whole
    return whole


def decode_attrs(data: bytes, **kwargs: int) -> tuple[list[dict[str, str]], bool]:
    """Like decode(), with each request as a plain dict of its attributes."""
    items, error = decode(data, **kwargs)
    return [dict(item.attrs) for item in items], error


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[lo:hi] for lo, hi in pairwise(bounds)]


def test_postfix_request() -> None:
    [request], _ = decode(POSTFIX_REQUEST)
    assert request.request == "smtpd_access_policy"
    assert request.protocol_state == "RCPT"
    assert request.client_address == "192.0.2.1"
    assert (request.sender, request.recipient) == ("a@example.net", "b@example.com")
    assert request.sasl_username == "joe@example.com"
    assert request.instance == "a5f.5f3b5d41.4a2.0"
    assert (request.recipient_count, request.size) == (0, 12345)
    assert request.queue_id == ""
    assert request.policy_context == "submission"
    assert request.get("encryption_keysize") == "256"
    assert request.get("mail_version") == ""  # 3.8+ only: absent is fine
    assert request.get("mail_version", "?") == "?"
    assert len(request.attrs) == 29


REQUESTS = [
    # (wire bytes, expected attrs per request, PolicyError raised)
    (b"request=smtpd_access_policy\n\n", [{"request": "smtpd_access_policy"}], False),
    (b"sender=\nrequest=x\n\n", [{"sender": "", "request": "x"}], False),  # any order, empty
    (b"x_new_attr=1\n\n", [{"x_new_attr": "1"}], False),  # unknown names are kept
    (b"a=1\na=2\n\n", [{"a": "1"}], False),  # duplicates: the first value wins
    (b"ccert_subject=CN=x,O=y\n\n", [{"ccert_subject": "CN=x,O=y"}], False),  # '=' in value
    (b"a==\n\n", [{"a": "="}], False),
    (b"sender=jos\xc3\xa9@x\n\n", [{"sender": "josé@x"}], False),
    (b"a= x \n\n", [{"a": " x "}], False),  # values are not trimmed
    (b"a=1\n\na=2\n\n", [{"a": "1"}, {"a": "2"}], False),
    (b"a=1\n", [], False),  # client EOF mid-request: nothing, no error
    (b"a=1\n\na=", [{"a": "1"}], False),
    # In case of trouble: no reply, close (3.3).
    (b"\n", [], True),  # empty request
    (b"a=1\n\n\n", [{"a": "1"}], True),  # an extra blank line
    (b"novalue\n\n", [], True),
    (b"=x\n\n", [], True),
    (b"a=1\0\n\n", [], True),
    (b"a=\xff\n\n", [], True),
    (b"a=1\r\n\r\n", [], True),  # CRLF: the line "\r" has no '='
    (b"a=1\n\nbad\n\n", [{"a": "1"}], True),  # earlier requests still come out
]


@pytest.mark.parametrize(("wire", "expected", "error"), REQUESTS)
def test_requests(wire: bytes, expected: list, error: bool) -> None:
    assert decode_attrs(wire) == (expected, error)


def test_postfix_request_in_small_chunks_and_twice() -> None:
    new_transaction = POSTFIX_REQUEST.replace(b"a5f.5f3b5d41.4a2.0", b"b60.5f3b5d41.4a2.1")
    attrs, error = decode_attrs(POSTFIX_REQUEST + new_transaction)
    assert not error
    assert [a["instance"] for a in attrs] == ["a5f.5f3b5d41.4a2.0", "b60.5f3b5d41.4a2.1"]


def test_carriage_return_kept_in_value() -> None:
    # Postfix never sends CR; if some client does, it stays part of the value.
    assert decode_attrs(b"a=1\r\nb=2\n\n") == ([{"a": "1\r", "b": "2"}], False)


def test_size_limit_boundary() -> None:
    wire = b"a=" + b"x" * 5 + b"\n\n"  # 9 bytes, both LFs counted
    assert decode_attrs(wire, max_request=9) == ([{"a": "xxxxx"}], False)
    assert decode_attrs(wire, max_request=8) == ([], True)
    assert decode_attrs(b"a=" + b"x" * 20, max_request=8) == ([], True)  # no LF needed to fail
    # The limit is per request, not per connection.
    assert decode_attrs(wire * 3, max_request=9)[1] is False


def test_attribute_limit() -> None:
    lines = b"".join(b"a%d=1\n" % i for i in range(MAX_ATTRIBUTES))
    assert len(decode_attrs(lines + b"\n")[0][0]) == MAX_ATTRIBUTES
    assert decode_attrs(lines + b"one=more\n\n") == ([], True)
    assert decode_attrs(b"a=1\n" * (MAX_ATTRIBUTES + 1) + b"\n") == ([], True)  # duplicates count
    assert decode_attrs(b"a=1\nb=2\n\n", max_attributes=1) == ([], True)


def test_failed_decoder_stays_failed() -> None:
    decoder = PolicyDecoder()
    with pytest.raises(PolicyError):
        decoder.feed(b"\n")
    with pytest.raises(PolicyError):
        decoder.feed(b"a=1\n\n")


def test_request_is_read_only() -> None:
    [request], _ = decode(b"size=abc\nrecipient_count=\xd9\xa1\n\n")
    assert (request.size, request.recipient_count) == (0, 0)  # bad numbers read as 0
    with pytest.raises(TypeError):
        request.attrs["size"] = "1"  # type: ignore[index]


# -- replies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("DUNNO", b"action=DUNNO\n\n"),
        ("defer_if_permit Service temporarily unavailable", None),
        ("550 5.7.1 Sender blocked", None),
        ("REJECT", None),
        ("PREPEND X-Tag:\tvalue", None),  # TAB inside the text is fine
    ],
)
def test_reply_action(action: str, expected: bytes | None) -> None:
    assert reply_action(action) == (expected or b"action=" + action.encode() + b"\n\n")


@pytest.mark.parametrize("action", ["", "550", "12345", " DUNNO", "DUNNO\r", "a\nb", "a\0b"])
def test_reply_action_refuses_what_postfix_misreads(action: str) -> None:
    with pytest.raises(ValueError):
        reply_action(action)


def test_dunno_constant() -> None:
    assert DUNNO == b"action=DUNNO\n\n"


# -- properties ----------------------------------------------------------------------------

names = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="=\n\0"), min_size=1)
values = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\n\0"))


@given(st.dictionaries(names, values, min_size=1, max_size=40))
def test_any_request_round_trips(attrs: dict[str, str]) -> None:
    wire = b"".join(f"{name}={value}\n".encode() for name, value in attrs.items()) + b"\n"
    [request], _ = decode(wire, max_request=len(wire))
    assert request.attrs == attrs


@given(st.text())
def test_encoded_actions_are_one_clean_line(action: str) -> None:
    try:
        reply = reply_action(action)
    except ValueError:
        return
    value = reply.removeprefix(b"action=").removesuffix(b"\n\n")
    assert reply == b"action=" + value + b"\n\n"
    assert b"\n" not in value and b"\r" not in value and b"\0" not in value
    assert value and not value.isdigit()


@given(st.binary(), st.data())
def test_fuzz_any_split_gives_the_same_result(data: bytes, draw: st.DataObject) -> None:
    limit = draw.draw(st.sampled_from([8, 100, DEFAULT_MAX_REQUEST]))
    whole = run([data], max_request=limit)  # raises nothing but PolicyError
    cuts = draw.draw(st.lists(st.integers(0, len(data)), max_size=8))
    assert run(split(data, cuts), max_request=limit) == whole
