"""Circuit breakers: an identity provider that does not answer costs its own users about one
HTTP timeout in all, and the other providers nothing (README, *A provider that does not
answer*).

Without them every browser of a hung provider waited out the whole ``SSO_BROKER_HTTP_TIMEOUT``,
one after another. Now ``SSO_BROKER_IDP_BREAKER_FAILURES`` calls to a provider in a row that
time out, cannot connect or are answered 5xx open its breaker: its calls are then not made
(:class:`CircuitOpen`, at once) and its sign-ins fail with ``idp_error``, its ``last_error``
saying it does not answer. Once ``SSO_BROKER_IDP_BREAKER_OPEN_SECONDS`` have passed one call
goes through as a probe, while the others still fail at once: an answer closes the breaker, a
failure opens it for another open time. Any answer below 500 counts as an answer:
``invalid_grant`` or ``invalid_client`` are a user's or a configuration's problem, never an
outage, and the breaker must not hide them behind ``idp_error``.

The calls guarded are those a sign-in makes: the token request, and fetching the metadata or
the signing keys when the caches must (``discovery.py``). The connection test goes past the
breaker, as it goes past every cache: an administrator asks the provider as it is now.

**One breaker per provider id**, not per token endpoint or host. Every Entra tenant lives on
one host, so a breaker per host would let one tenant's outage fail every Entra sign-in. One
per token endpoint would make two providers of one Okta org share fate, which is right for a
hung org, but a 5xx that only one application's configuration provokes would then fail the
other's sign-ins too. Per provider, nothing one provider's calls do reaches another's; the
price is that each provider of a hung org pays its own few timeouts before its breaker opens.

**In-process**: each process (each replica, each worker) learns on its own that a provider
does not answer, after its own few timeouts, and probes on its own. Shared state would cost a
database round trip on every call and a write on every failure, and the database may be what
fails; a breaker only needs to be right about whether calling is worth it from here.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from sso_broker.http import ResponseTooLarge, TransportError
from sso_broker.metrics import IDP_CIRCUIT_OPENED, IDP_CIRCUITS_OPEN

logger = logging.getLogger(__name__)


class CircuitOpen(Exception):
    """The provider's breaker is open: the call was not made."""


class Breaker:
    """One provider's breaker in this process (see the module docstring). Not thread-safe:
    one event loop uses it, and it never awaits."""

    __slots__ = (
        "_clock",
        "_open_seconds",
        "_threshold",
        "failures",
        "opened_at",
        "probing",
        "provider_id",
        "provider_type",
        "unreported",
    )

    def __init__(
        self,
        provider_id: uuid.UUID,
        provider_type: str,
        *,
        threshold: int,
        open_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self.provider_id = provider_id
        self.provider_type = provider_type
        self._threshold = threshold
        self._open_seconds = open_seconds
        self._clock = clock
        self.failures = 0  # failed calls in a row
        self.opened_at: float | None = None  # None: closed
        self.probing = False  # the probe of an open breaker is under way
        # Opened, and no callback has written the provider's last_error about it yet.
        self.unreported = False

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def admit(self) -> bool:
        """Lets a call through, answering whether it is the open breaker's probe; raises
        :class:`CircuitOpen` when it must not be made."""
        if self.opened_at is None:
            return False
        if self.probing or self._clock() - self.opened_at < self._open_seconds:
            raise CircuitOpen("the provider is not answering (its circuit breaker is open)")
        self.probing = True
        return True

    def succeeded(self, probe: bool) -> None:
        """The provider answered (below 500): the breaker closes."""
        self.failures = 0
        if probe:
            self.probing = False
        if self.opened_at is not None:
            self.opened_at, self.probing, self.unreported = None, False, False
            IDP_CIRCUITS_OPEN.labels(self.provider_type).dec()
            logger.info(
                "identity provider answers again: circuit breaker closed",
                extra={"provider_id": str(self.provider_id), "provider_type": self.provider_type},
            )

    def failed(self, probe: bool) -> None:
        """A call timed out, could not connect or was answered 5xx."""
        if self.opened_at is not None:
            if probe:  # still not answering: another open time
                self.probing, self.opened_at, self.unreported = False, self._clock(), True
            return  # a call made before the breaker opened: it knows already
        self.failures += 1
        if self._threshold and self.failures >= self._threshold:
            self.opened_at, self.unreported = self._clock(), True
            IDP_CIRCUIT_OPENED.labels(self.provider_type).inc()
            IDP_CIRCUITS_OPEN.labels(self.provider_type).inc()
            logger.warning(
                "identity provider not answering: circuit breaker open",
                extra={
                    "provider_id": str(self.provider_id),
                    "provider_type": self.provider_type,
                    "failures": self.failures,
                    "open_seconds": self._open_seconds,
                },
            )

    def abandoned(self, probe: bool) -> None:
        """A call ended without a verdict (cancelled): a probe's turn goes to the next."""
        if probe:
            self.probing = False

    def take_unreported(self) -> bool:
        """Whether the breaker opened since the provider's last_error last said so (once)."""
        unreported, self.unreported = self.unreported, False
        return unreported


class Breakers:
    """Every provider's breaker in this process, made on a provider's first call."""

    def __init__(
        self,
        failures: int,
        open_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.open_seconds = open_seconds
        self._clock = clock
        self._breakers: dict[uuid.UUID, Breaker] = {}

    def of(self, provider_id: uuid.UUID, provider_type: str) -> Breaker:
        breaker = self._breakers.get(provider_id)
        if breaker is None:
            breaker = self._breakers.setdefault(
                provider_id,
                Breaker(
                    provider_id,
                    provider_type,
                    threshold=self.failures,
                    open_seconds=self.open_seconds,
                    clock=self._clock,
                ),
            )
        return breaker

    def peek(self, provider_id: uuid.UUID) -> Breaker | None:
        """The provider's breaker, if it has made a call in this process."""
        return self._breakers.get(provider_id)


async def guarded(
    breaker: Breaker | None, call: Callable[[], Awaitable[tuple[int, bytes]]]
) -> tuple[int, bytes]:
    """Makes ``call`` (an HTTP request: its status and body) through ``breaker``: not at all
    while it is open (:class:`CircuitOpen`); a timeout, a failed connection or a 5xx answer
    counts against the provider, any other answer for it. Without a breaker, just the call."""
    if breaker is None:
        return await call()
    probe = breaker.admit()
    try:
        status, body = await call()
    except (TransportError, TimeoutError):
        breaker.failed(probe)
        raise
    except ResponseTooLarge:
        breaker.succeeded(probe)  # an answer, if an unusable one
        raise
    except BaseException:
        breaker.abandoned(probe)
        raise
    if status >= 500:
        breaker.failed(probe)
    else:
        breaker.succeeded(probe)
    return status, body
