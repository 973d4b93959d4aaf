"""Certificates renew themselves before they expire, and the process swaps them in without a
restart (Swarm's renewer): at a random 50-80 % of its life (so a cluster's nodes, all joined at
once, do not all renew at once) a new key and certificate are made, written to the bundle's
directory (key 0600, each file renamed into place) and handed to ``swap``, which sets the servers'
``transport.CertSlot`` and re-dials the channels. A failed renewal is retried; a certificate that
expires anyway is refused by every peer, and the node must join again with a token (said in the log).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable

from common import pki

log = logging.getLogger("dockyard.renewal")

RETRY = 30.0  # seconds between failed renewals, at most (sooner near the end of the certificate's life)


async def keep_renewed(current: Callable[[], pki.Bundle], renew: Callable[[], Awaitable[pki.Bundle]],
                       swap: Callable[[pki.Bundle], None], *, what: str, rng: random.Random | None = None,
                       now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
                       wake: asyncio.Event | None = None) -> None:
    """``wake``: set to renew at once (the scheduler says the cluster CA was rotated)."""
    rng = rng or random.Random()
    wake = wake or asyncio.Event()
    while True:
        cert = current().cert_pem
        at = pki.renew_at(cert, rng.uniform(0.5, 0.8))
        try:
            await asyncio.wait_for(wake.wait(), max(0.0, (at - now()).total_seconds()))
        except TimeoutError:
            pass
        wake.clear()
        while True:
            try:
                new = await renew()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # every failure is retried: a transient one must not end renewal
                left = (pki.renew_at(cert, 1.0) - now()).total_seconds()
                if left <= 0:
                    log.error("%s: the certificate expired before it could be renewed (%s); join again "
                              "with a token", what, e)
                else:
                    log.warning("%s: certificate renewal failed (%s); retrying (%.0f s of it left)", what, e, left)
                await asyncio.sleep(max(1.0, min(RETRY, left / 10)))
                continue
            swap(new)
            exp = pki.renew_at(new.cert_pem, 1.0)
            log.info("%s: certificate renewed, valid until %s", what, f"{exp:%Y-%m-%d %H:%M:%S} UTC")
            break
