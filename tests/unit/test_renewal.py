"""The renewal loop (common/renewal.py): it waits until 50-80 % of the certificate's life, retries a
failed renewal, and swaps the new bundle in; renew_at measures from issue, not the backdate."""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import pytest

from common import pki, renewal


def test_renew_at_is_a_fraction_of_the_life_from_issue() -> None:
    ca = pki.make_ca("c")
    b = pki.issue_bundle(ca, node_id="n1", role="agent", sans=[], lifetime=dt.timedelta(hours=10))
    start = pki.renew_at(b.cert_pem, 0.0)
    assert abs((start - dt.datetime.now(dt.UTC)).total_seconds()) < 5  # not an hour ago (the backdate)
    assert pki.renew_at(b.cert_pem, 0.5) - start == dt.timedelta(hours=5)


def test_a_failed_renewal_is_retried_and_the_new_bundle_swapped_in() -> None:
    ca = pki.make_ca("c")
    old = pki.issue_bundle(ca, node_id="n1", role="agent", sans=[], lifetime=dt.timedelta(hours=1))
    new = pki.issue_bundle(ca, node_id="n1", role="agent", sans=[], lifetime=dt.timedelta(hours=1))
    slot = [old]
    calls: list[str] = []
    late = pki.renew_at(old.cert_pem, 1.0) - dt.timedelta(seconds=5)  # 5 s left: retried after 1 s

    async def renew() -> pki.Bundle:
        calls.append("renew")
        if len(calls) == 1:
            raise ConnectionError("scheduler away")
        return new

    def swap(b: pki.Bundle) -> None:
        slot[0] = b
        raise asyncio.CancelledError  # stop the loop after the first swap

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(asyncio.wait_for(renewal.keep_renewed(lambda: slot[0], renew, swap, what="test",
                                                          rng=random.Random(1), now=lambda: late), 10))
    assert calls == ["renew", "renew"] and slot[0] is new
