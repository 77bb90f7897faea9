"""vmaild.auth.share: the share of hashing per account and per client address."""

from __future__ import annotations

import asyncio
import ipaddress

from vmaild.auth.share import HashShare, effective_share


def test_shares_are_bounded_by_the_pool() -> None:
    assert effective_share(2, 2) == 1  # never the whole pool
    assert effective_share(2, 8) == 2
    assert effective_share(4, 1) == 1
    assert effective_share(0, 8) == 0  # off
    share = HashShare(1, 2, 8)
    a, b = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2")
    assert share.admit("x", a) and not share.admit("x", b)  # the account's share
    assert share.admit("y", a) and not share.admit("z", a)  # the client's share
    assert share.admit("z", b) and share.admit("w", None)
    for key, client in (("x", a), ("y", a), ("z", b), ("w", None)):
        share.release(key, client)
    assert not share


def test_an_ipv6_client_counts_by_its_64() -> None:
    share = HashShare(0, 1, 8)
    one, same_64 = ipaddress.ip_address("2001:db8::1"), ipaddress.ip_address("2001:db8::ffff:2")
    other_64 = ipaddress.ip_address("2001:db8:0:1::1")
    assert share.admit("a", one) and not share.admit("b", same_64)
    assert share.admit("c", other_64)
    share.release("a", one)
    assert share.admit("b", same_64)


def test_a_door_that_can_wait_gets_the_slot_when_it_is_released() -> None:
    """Many users' first logins from one address (a NAT, webmail) queue for the client's
    share instead of failing."""
    share = HashShare(per_account=2, per_client=1, workers=4)
    client = ipaddress.ip_address("198.51.100.7")

    async def run() -> list[bool]:
        assert share.admit("ann@x", client)
        waiter = asyncio.ensure_future(share.acquire("bob@x", client, wait=5.0))
        await asyncio.sleep(0)
        assert not waiter.done()  # over the client's share: waiting, not refused
        share.release("ann@x", client)
        got = await waiter
        late = await share.acquire("cid@x", client, wait=0.05)  # bob holds it: times out
        now = await share.acquire("dan@x", client, wait=0.0)  # authpipe: never waits
        return [got, late, now]

    assert asyncio.run(run()) == [True, False, False]


def test_trusted_networks_have_no_client_share() -> None:
    trusted = (ipaddress.ip_network("127.0.0.0/8"),)
    share = HashShare(per_account=2, per_client=1, workers=4, trusted=trusted)
    local = ipaddress.ip_address("127.0.0.1")
    outside = ipaddress.ip_address("192.0.2.9")
    assert share.counted_client(local) is None
    assert share.counted_client(outside) == outside
    assert share.counted_client(None) is None
