"""A served process's life after start-up: draining on SIGTERM, and the pool gauge of a
worker among several (README, *Operating sso-broker*).

uvicorn itself does the draining's work: on SIGTERM it stops accepting connections, lets the
requests in flight finish for up to ``timeout_graceful_shutdown`` (``SSO_BROKER_SHUTDOWN_GRACE``)
and exits as soon as they are done. What it cannot know is that the process is no longer
ready: ``watch_for_shutdown`` marks the context draining the moment the signal arrives, so
``/readyz`` answers 503 on any connection still served and a load balancer stops sending
new work here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from types import FrameType
from typing import Any

from sso_broker import metrics
from sso_broker.deps import AppContext
from sso_broker.health import connections_in_use

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# How often each of several workers tells the others its pools' use (the scraping worker
# sums what they last told: multiprocess mode).
POOL_SAMPLE_SECONDS = 1.0


def watch_for_shutdown(context: AppContext) -> None:
    """Chains a handler in front of the server's own for SIGTERM and SIGINT: it marks the
    context draining, then lets the server shut down as it would have.

    Called from the lifespan, once uvicorn has put its handlers in place (it restores the
    originals itself when it is done). Only in a served process's main thread; a test's app
    has no server's handler to chain.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in _SIGNALS:
        previous = signal.getsignal(signum)
        if not callable(previous):
            continue

        def drain(received: int, frame: FrameType | None, previous: Any = previous) -> None:
            context.draining = True
            previous(received, frame)

        signal.signal(signum, drain)


@contextlib.asynccontextmanager
async def pool_sampler(context: AppContext) -> AsyncIterator[None]:
    """In multiprocess mode, keeps this worker's share of the pool gauge current; with one
    process the scrape reads the pools itself."""
    if not metrics.is_multiprocess():
        yield
        return

    async def sample() -> None:
        while True:
            try:
                metrics.DB_CONNECTIONS_IN_USE.set(connections_in_use(context))
            except Exception:  # a gauge must never stop the sampling, nor the shutdown
                logger.exception("could not sample the database pools for the metrics")
            await asyncio.sleep(POOL_SAMPLE_SECONDS)

    async with in_background(sample):
        yield


@contextlib.asynccontextmanager
async def in_background(work: Callable[[], Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
    """Runs ``work()`` as a task of its own while the block runs, and cancels it after."""
    task = asyncio.create_task(work())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
