"""Login state: sealed in an HttpOnly cookie at initiate, consumed in the database at callback.

Initiate writes nothing to the database: the state, nonce, PKCE verifier, the frontend's
own PKCE challenge (which the login code is bound to, README *Security model*) and
``return_to`` are encrypted and authenticated (AES-GCM-SIV, ``sealing.py``, with keys
derived from the service's encryption keys, so any replica can open them) into a cookie, one
per attempt. The callback opens the cookie named after the ``state`` it receives, checks it,
and records the state's hash as consumed, so a replayed authorization response finds it used.

One browser holds at most :data:`MAX_ATTEMPTS` of them within :data:`COOKIE_BUDGET` bytes:
each initiate expires the oldest beyond that, so a page that keeps opening ``/initiate``
cannot grow the browser's ``Cookie`` header past what proxies accept (README, *Security
model*). On https the cookies carry the ``__Host-`` prefix (the browser then insists on
``Secure``, ``Path=/`` and no ``Domain``), so no sibling host can plant or shadow one.
"""

from __future__ import annotations

import hmac
import json
import secrets
import uuid
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from sso_broker.crypto import DecryptionError, token_hash
from sso_broker.database import expired_rows, utcnow
from sso_broker.errors import SignInError, SignInErrorCode
from sso_broker.hotpath import HotPath
from sso_broker.sealing import Sealer
from sso_broker.sso.models import ConsumedState

STATE_TTL = timedelta(minutes=10)
COOKIE_PREFIX = "sso_login_"
HOST_PREFIX = "__Host-"
MAX_STATE_LENGTH = 128
MAX_COOKIE_LENGTH = 4096
MAX_ATTEMPTS = 4  # login states one browser holds; the newest win
COOKIE_BUDGET = 3584  # bytes of login-state cookies one browser sends, all attempts together


@dataclass(frozen=True, slots=True)
class LoginState:
    state: str
    nonce: str
    code_verifier: str
    # The frontend's S256 challenge: the login code answers only its verifier.
    client_challenge: str
    provider_id: uuid.UUID
    return_to: str | None
    expires_at: datetime

    @classmethod
    def new(
        cls, provider_id: uuid.UUID, return_to: str | None, client_challenge: str
    ) -> LoginState:
        return cls(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(64),  # 86 characters, within PKCE's 43..128
            client_challenge=client_challenge,
            provider_id=provider_id,
            return_to=return_to,
            expires_at=utcnow() + STATE_TTL,
        )

    def seal(self, box: Sealer) -> str:
        payload = {
            "s": self.state,
            "n": self.nonce,
            "v": self.code_verifier,
            "c": self.client_challenge,
            "p": str(self.provider_id),
            "r": self.return_to,
            # To the microsecond, so the oldest of attempts made within one millisecond is
            # known (a page, or a test, may open several that fast).
            "e": round(self.expires_at.timestamp(), 6),
        }
        return box.encrypt(json.dumps(payload, separators=(",", ":")))


def cookie_name(state: str, *, secure: bool) -> str:
    # One cookie per attempt, so two tabs signing in at once do not overwrite each other.
    return (HOST_PREFIX if secure else "") + COOKIE_PREFIX + token_hash(state)[:16]


def _expiry(box: Sealer, sealed: str) -> float:
    """When a sealed state expires; 0 (oldest of all) for one we cannot open."""
    if len(sealed) > MAX_COOKIE_LENGTH:  # as open_state refuses it: never worth opening
        return 0.0
    try:
        return float(json.loads(box.decrypt(sealed))["e"])
    except (DecryptionError, ValueError, KeyError, TypeError):
        return 0.0


def stale_attempts(
    box: Sealer, cookies: Mapping[str, str], *, secure: bool, new_size: int
) -> list[str]:
    """The login-state cookies to expire so that, with a new one of ``new_size`` bytes, the
    browser keeps at most :data:`MAX_ATTEMPTS` within :data:`COOKIE_BUDGET`: newest first."""
    prefix = (HOST_PREFIX if secure else "") + COOKIE_PREFIX
    held = [(name, value) for name, value in cookies.items() if name.startswith(prefix)]
    # The browser names the cookies: beyond what we could ever have set, they are expired
    # unopened, so a hostile one cannot make an initiate decrypt hundreds of them; one that
    # does not open is expired too.
    stale = [name for name, _ in held[2 * MAX_ATTEMPTS :]]
    dated = [(_expiry(box, value), name, value) for name, value in held[: 2 * MAX_ATTEMPTS]]
    dated.sort(reverse=True)
    kept, used = 1, new_size
    for expiry, name, value in dated:
        size = len(name) + len(value) + 3  # "; " and "="
        if expiry and kept < MAX_ATTEMPTS and used + size <= COOKIE_BUDGET:
            kept, used = kept + 1, used + size
        else:
            stale.append(name)
    return stale


def open_state(
    box: Sealer, sealed: str | None, *, state: str | None, provider_id: uuid.UUID
) -> LoginState:
    """Opens the cookie and checks it belongs to this ``state`` and provider and is unexpired.

    Each failure is ``invalid_state``: no state, no cookie (another browser, or cookies
    blocked), a cookie we did not seal, a state that does not match it, another provider's
    attempt, or an attempt older than ten minutes.
    """
    if not state or len(state) > MAX_STATE_LENGTH:
        raise SignInError(SignInErrorCode.INVALID_STATE, "the callback carries no usable state")
    if not sealed or len(sealed) > MAX_COOKIE_LENGTH:
        raise SignInError(
            SignInErrorCode.INVALID_STATE, "no login-state cookie for this state in this browser"
        )
    try:
        payload = json.loads(box.decrypt(sealed))
        opened = LoginState(
            state=str(payload["s"]),
            nonce=str(payload["n"]),
            code_verifier=str(payload["v"]),
            client_challenge=str(payload["c"]),
            provider_id=uuid.UUID(str(payload["p"])),
            return_to=payload["r"] if isinstance(payload["r"], str) else None,
            expires_at=datetime.fromtimestamp(float(payload["e"]), tz=utcnow().tzinfo),
        )
    except (DecryptionError, ValueError, KeyError, TypeError) as e:
        raise SignInError(
            SignInErrorCode.INVALID_STATE, "the login-state cookie is not one we sealed"
        ) from e
    if not hmac.compare_digest(opened.state.encode(), state.encode()):
        raise SignInError(SignInErrorCode.INVALID_STATE, "the state does not match the cookie")
    if opened.provider_id != provider_id:
        raise SignInError(SignInErrorCode.INVALID_STATE, "the state belongs to another provider")
    if opened.expires_at <= utcnow():
        raise SignInError(SignInErrorCode.INVALID_STATE, "the login state has expired")
    return opened


_OPENED = "sso_broker.opened_login_state"


def remember_opened(
    scope: MutableMapping[str, Any], state: str, sealed: str | None, login: LoginState
) -> None:
    """Keeps a login state opened for this request (the rate limiter opens it to choose a
    bucket), so the callback need not open the same cookie again."""
    scope.setdefault("state", {})[_OPENED] = (state, sealed, login)


def opened_before(
    scope: Mapping[str, Any], state: str | None, sealed: str | None
) -> LoginState | None:
    """The login state :func:`remember_opened` kept, if it was opened from exactly this
    ``state`` and cookie value (and so passed :func:`open_state`'s checks for them)."""
    kept = scope.get("state", {}).get(_OPENED)
    if kept is None or state is None or sealed is None:
        return None
    kept_state, kept_sealed, login = kept
    if kept_state != state or kept_sealed != sealed:
        return None
    return login if isinstance(login, LoginState) else None


async def consume(fast: HotPath, login: LoginState) -> None:
    """Marks the state used; a second callback with it (a replay, or a race) is refused.

    The primary key makes this atomic across replicas: of two concurrent callbacks exactly
    one insert succeeds.
    """
    if not await fast.consume_state(token_hash(login.state), login.expires_at):
        raise SignInError(SignInErrorCode.INVALID_STATE, "the login state was already used")


async def purge_expired(session: AsyncSession) -> int:
    """Housekeeping (``housekeeping.py``): used states past their end, at most
    ``PURGE_BATCH`` at a time; how many went."""
    result = await session.execute(
        expired_rows(ConsumedState.state_hash, ConsumedState.expires_at, utcnow())
    )
    return int(getattr(result, "rowcount", 0))
