"""What an administrator should do before a provider stops signing people in: its client
secret expiring soon, or expired (README, *Keeping SSO healthy*).

The most common way a working set-up breaks is an expired client secret (Entra's live at most
24 months); the provider's ``warnings`` say so ahead of time, and ``sso-broker
expiring-secrets`` lists the same for cron and alerting.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from sso_broker.providers.certificates import PRIVATE_KEY_JWT
from sso_broker.providers.models import ProviderCertificate, SSOProvider

SECRET_EXPIRING = "client_secret_expiring"  # noqa: S105 - a warning code
SECRET_EXPIRED = "client_secret_expired"  # noqa: S105 - a warning code
CERTIFICATE_EXPIRING = "certificate_expiring"
CERTIFICATE_EXPIRED = "certificate_expired"


@dataclass(frozen=True, slots=True)
class Warning:
    code: str
    message: str


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def secret_warnings(provider: SSOProvider, *, now: datetime, days: int) -> list[Warning]:
    """``client_secret_expired`` once the secret's expiry has passed, ``client_secret_expiring``
    within ``days`` of it; nothing for a provider without a secret or without a known expiry."""
    expires = provider.client_secret_expires_at
    if expires is None or provider.client_secret_encrypted is None:
        return []
    if expires <= now:
        return [
            Warning(
                SECRET_EXPIRED,
                f"The client secret expired on {_day(expires)}: the identity provider refuses "
                "it, so sign-ins fail with token_exchange_failed. Make a new secret there and "
                "paste it as client_secret, with its client_secret_expires_at.",
            )
        ]
    if expires - now <= timedelta(days=days):
        left = expires - now
        when = f"in {left.days} days" if left.days >= 1 else "within a day"
        return [
            Warning(
                SECRET_EXPIRING,
                f"The client secret expires on {_day(expires)} ({when}): make a new secret at "
                "the identity provider and paste it as client_secret, with its "
                "client_secret_expires_at, before then; sign-ins fail once it has expired.",
            )
        ]
    return []


def certificate_warnings(
    provider: SSOProvider, latest: datetime | None, *, now: datetime, days: int
) -> list[Warning]:
    """For a provider that signs in with a certificate: ``certificate_expired`` once its
    last certificate has expired, ``certificate_expiring`` within ``days`` of it (a newer
    certificate made and uploaded in time ends the warning)."""
    if provider.client_auth_method != PRIVATE_KEY_JWT or latest is None:
        return []
    if latest <= now:
        return [
            Warning(
                CERTIFICATE_EXPIRED,
                f"The provider's certificates expired on {_day(latest)}: sign-ins fail with "
                "token_exchange_failed. Make a new certificate (POST …/certificate) and upload "
                "it to the identity provider.",
            )
        ]
    if latest - now <= timedelta(days=days):
        return [
            Warning(
                CERTIFICATE_EXPIRING,
                f"The provider's last certificate expires on {_day(latest)}: make a new one "
                "(POST …/certificate), upload it to the identity provider, then delete the "
                "old one; sign-ins fail once it has expired.",
            )
        ]
    return []


async def latest_certificates(
    session: AsyncSession, provider_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, datetime]:
    """When each provider's longest-lived certificate expires (one query for all)."""
    if not provider_ids:
        return {}
    rows = await session.execute(
        select(ProviderCertificate.provider_id, func.max(ProviderCertificate.not_after))
        .where(ProviderCertificate.provider_id.in_(provider_ids))
        .group_by(ProviderCertificate.provider_id)
    )
    return dict(rows.all())


async def expiring_secrets(session: AsyncSession, *, before: datetime) -> Sequence[SSOProvider]:
    """Every provider whose client secret expires before ``before`` (expired ones and
    disabled providers included), soonest first."""
    rows = await session.scalars(
        select(SSOProvider)
        .where(
            SSOProvider.client_secret_encrypted.is_not(None),
            SSOProvider.client_secret_expires_at.is_not(None),
            SSOProvider.client_secret_expires_at <= before,
        )
        .order_by(SSOProvider.client_secret_expires_at, SSOProvider.id)
    )
    return rows.all()


async def soonest_expiries(
    session: AsyncSession,
) -> tuple[dict[str, datetime], dict[str, datetime]]:
    """By provider type, when the first enabled provider's client secret expires (of those
    that sign in with one and told us its expiry), and when the first enabled
    ``private_key_jwt`` provider's longest-lived certificate expires: the metrics' expiry
    gauges (README, *Operating sso-broker*). Two aggregate queries, whatever the number of
    providers."""
    secrets = await session.execute(
        select(SSOProvider.type, func.min(SSOProvider.client_secret_expires_at))
        .where(
            SSOProvider.enabled.is_(True),
            SSOProvider.client_auth_method != PRIVATE_KEY_JWT,
            SSOProvider.client_secret_encrypted.is_not(None),
            SSOProvider.client_secret_expires_at.is_not(None),
        )
        .group_by(SSOProvider.type)
    )
    latest = (
        select(
            ProviderCertificate.provider_id,
            func.max(ProviderCertificate.not_after).label("not_after"),
        )
        .group_by(ProviderCertificate.provider_id)
        .subquery()
    )
    certificates = await session.execute(
        select(SSOProvider.type, func.min(latest.c.not_after))
        .join(latest, latest.c.provider_id == SSOProvider.id)
        .where(SSOProvider.enabled.is_(True), SSOProvider.client_auth_method == PRIVATE_KEY_JWT)
        .group_by(SSOProvider.type)
    )
    return _aware(secrets.all()), _aware(certificates.all())


def _aware(rows: Sequence[Any]) -> dict[str, datetime]:
    # An aggregate's result carries no column type: SQLite answers its stored text.
    found: dict[str, datetime] = {}
    for provider_type, moment in rows:
        if isinstance(moment, str):
            moment = datetime.fromisoformat(moment)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        found[provider_type] = moment
    return found
