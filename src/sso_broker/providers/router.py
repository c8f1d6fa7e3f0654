from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Response, status
from sqlalchemy.ext.asyncio import AsyncSession

from sso_broker import paging
from sso_broker.config import Settings
from sso_broker.deps import ContextDep, CurrentAdmin, ReadSessionDep, SessionDep, SettingsDep
from sso_broker.errors import AUTHORIZATION_ERRORS, ErrorCode, NotFound, error_responses
from sso_broker.idp import adapters_for
from sso_broker.paging import Keyset
from sso_broker.providers import certificates, connection, service
from sso_broker.providers.models import ProviderCertificate, SSOProvider
from sso_broker.providers.schemas import (
    CertificateList,
    CertificateRead,
    CheckRead,
    ConnectionTest,
    ProviderCreate,
    ProviderList,
    ProviderRead,
    ProviderUpdate,
)
from sso_broker.providers.warnings import latest_certificates

router = APIRouter(prefix="/api/v1/sso-providers", tags=["SSO providers"])

# Oldest first: the key is (created_at, id) (``repository.page``).
PROVIDERS = Keyset[tuple[datetime, uuid.UUID]](
    "sso-providers", paging.time_and_id, paging.read_time_and_id
)


def _signing_with_keys(providers: Iterable[SSOProvider]) -> list[uuid.UUID]:
    """The providers whose warnings depend on their certificates: only those that sign in
    with one, so a list of secret-based providers costs no second query."""
    return [p.id for p in providers if p.client_auth_method == certificates.PRIVATE_KEY_JWT]


async def _read(session: AsyncSession, provider: SSOProvider, settings: Settings) -> ProviderRead:
    until = await latest_certificates(session, _signing_with_keys([provider]))
    return ProviderRead.build(provider, settings, until.get(provider.id))


@router.get(
    "",
    summary="List the company's SSO providers, oldest first, a page at a time",
    response_model=ProviderList,
    responses=error_responses(*AUTHORIZATION_ERRORS, ErrorCode.VALIDATION_ERROR),
)
async def list_providers(
    principal: CurrentAdmin,
    session: ReadSessionDep,
    settings: SettingsDep,
    limit: paging.Limit = paging.LIMIT_DEFAULT,
    cursor: paging.Cursor = None,
) -> ProviderList:
    providers = await service.page(
        session, principal.user.company_id, after=PROVIDERS.after(cursor), limit=limit + 1
    )
    page, next_cursor = PROVIDERS.page(providers, limit, lambda p: (p.created_at, p.id))
    until = await latest_certificates(session, _signing_with_keys(page))
    return ProviderList(
        items=[ProviderRead.build(p, settings, until.get(p.id)) for p in page],
        next_cursor=next_cursor,
    )


@router.post(
    "",
    summary="Create an SSO provider (disabled until credentials are set)",
    status_code=status.HTTP_201_CREATED,
    response_model=ProviderRead,
    responses=error_responses(
        *AUTHORIZATION_ERRORS,
        ErrorCode.VALIDATION_ERROR,
        ErrorCode.UNSUPPORTED_TENANT,
        ErrorCode.INVALID_BASE_URL,
    ),
)
async def create_provider(
    data: ProviderCreate, principal: CurrentAdmin, session: SessionDep, settings: SettingsDep
) -> ProviderRead:
    provider = await service.create(
        session,
        adapters_for(settings.adapter_config),
        principal.user.company_id,
        data,
        actor_id=principal.user.id,
    )
    return ProviderRead.build(provider, settings)


@router.get(
    "/{provider_id}",
    summary="Read one SSO provider with its three URLs",
    response_model=ProviderRead,
    responses=error_responses(
        *AUTHORIZATION_ERRORS, ErrorCode.NOT_FOUND, ErrorCode.VALIDATION_ERROR
    ),
)
async def get_provider(
    provider_id: uuid.UUID, principal: CurrentAdmin, session: ReadSessionDep, settings: SettingsDep
) -> ProviderRead:
    provider = await service.get(session, principal.user.company_id, provider_id)
    return await _read(session, provider, settings)


@router.patch(
    "/{provider_id}",
    summary="Change an SSO provider: name, tenant, credentials, enabled",
    response_model=ProviderRead,
    responses=error_responses(
        *AUTHORIZATION_ERRORS,
        ErrorCode.NOT_FOUND,
        ErrorCode.VALIDATION_ERROR,
        ErrorCode.UNSUPPORTED_TENANT,
        ErrorCode.INVALID_BASE_URL,
        ErrorCode.INVALID_CLIENT_ID,
        ErrorCode.INVALID_CLIENT_SECRET,
        ErrorCode.PROVIDER_INCOMPLETE,
    ),
)
async def update_provider(
    provider_id: uuid.UUID,
    data: ProviderUpdate,
    principal: CurrentAdmin,
    session: SessionDep,
    context: ContextDep,
) -> ProviderRead:
    provider = await service.update(
        session, context.box, context.adapters, principal.user.company_id, provider_id, data,
        actor_id=principal.user.id,
    )  # fmt: skip
    return await _read(session, provider, context.settings)


@router.delete(
    "/{provider_id}",
    summary="Delete an SSO provider (its users stay, unlinked)",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(
        *AUTHORIZATION_ERRORS, ErrorCode.NOT_FOUND, ErrorCode.VALIDATION_ERROR
    ),
)
async def delete_provider(
    provider_id: uuid.UUID, principal: CurrentAdmin, session: SessionDep
) -> None:
    await service.delete(
        session, principal.user.company_id, provider_id, actor_id=principal.user.id
    )


@router.post(
    "/{provider_id}/test",
    summary="Test the provider: metadata, signing keys and client credentials, live",
    response_model=ConnectionTest,
    responses=error_responses(
        *AUTHORIZATION_ERRORS,
        ErrorCode.NOT_FOUND,
        ErrorCode.VALIDATION_ERROR,
        ErrorCode.RATE_LIMITED,
    ),
)
async def test_provider(
    provider_id: uuid.UUID, principal: CurrentAdmin, context: ContextDep
) -> ConnectionTest:
    """Asks the identity provider now, disabled providers included (test before you
    enable): a failure becomes the provider's `last_error`, a full pass clears it. At most
    six tests of one provider a minute (`429 rate_limited`)."""
    # The provider is read in a transaction of its own: no database connection is held
    # while the identity provider is asked.
    async with context.sessionmaker() as session:
        provider = await service.get(session, principal.user.company_id, provider_id)
    await connection.check_rate(context, provider)
    checks = await connection.test(context, provider)
    await connection.record(context, provider.id, checks)
    return ConnectionTest(
        ok=all(check.ok for check in checks),
        checks=[CheckRead(name=c.name, ok=c.ok, code=c.code, detail=c.detail) for c in checks],
    )


def _certificate(stored: ProviderCertificate) -> CertificateRead:
    return CertificateRead(
        certificate_pem=stored.certificate_pem,
        thumbprint_sha256=stored.thumbprint_sha256,
        expires_at=stored.not_after,
        created_at=stored.created_at,
    )


@router.post(
    "/{provider_id}/certificate",
    summary="Make a key pair and a self-signed certificate for private_key_jwt",
    status_code=status.HTTP_201_CREATED,
    response_model=CertificateRead,
    responses=error_responses(
        *AUTHORIZATION_ERRORS, ErrorCode.NOT_FOUND, ErrorCode.VALIDATION_ERROR
    ),
)
async def create_certificate(
    provider_id: uuid.UUID, principal: CurrentAdmin, session: SessionDep, context: ContextDep
) -> CertificateRead:
    """Upload the certificate to the identity provider (Entra: *Certificates & secrets →
    Certificates*; Okta and PingOne may fetch the public key from `/sso/{id}/jwks.json`),
    then `PATCH {"client_auth_method": "private_key_jwt"}`. The private key is encrypted at
    rest and never shown. A second certificate can be made before the first expires: both
    stay valid until the old one is deleted, and the newest signs."""
    provider = await service.get(session, principal.user.company_id, provider_id)
    stored = await certificates.create(
        session, context.box, provider, days=context.settings.certificate_validity_days
    )
    certificates.audit_change(session, provider, principal.user.id, "created", stored)
    return _certificate(stored)


@router.get(
    "/{provider_id}/certificates",
    summary="List the provider's certificates, newest first",
    response_model=CertificateList,
    responses=error_responses(
        *AUTHORIZATION_ERRORS, ErrorCode.NOT_FOUND, ErrorCode.VALIDATION_ERROR
    ),
)
async def list_certificates(
    provider_id: uuid.UUID, principal: CurrentAdmin, session: ReadSessionDep
) -> CertificateList:
    provider = await service.get(session, principal.user.company_id, provider_id)
    held = await certificates.listed(session, provider.id)
    return CertificateList(items=[_certificate(stored) for stored in held])


@router.delete(
    "/{provider_id}/certificates/{thumbprint}",
    summary="Delete a certificate (not the last one sign-ins use)",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(
        *AUTHORIZATION_ERRORS,
        ErrorCode.NOT_FOUND,
        ErrorCode.VALIDATION_ERROR,
        ErrorCode.PROVIDER_INCOMPLETE,
    ),
)
async def delete_certificate(
    provider_id: uuid.UUID, thumbprint: str, principal: CurrentAdmin, session: SessionDep
) -> None:
    provider = await service.get(session, principal.user.company_id, provider_id)
    removed = await certificates.remove(session, provider, thumbprint)
    certificates.audit_change(session, provider, principal.user.id, "deleted", removed)


public_router = APIRouter(tags=["SSO providers"])


@public_router.get(
    "/sso/{provider_id}/jwks.json",
    summary="The public keys of the provider's certificates, for the identity provider",
    response_description="A JSON Web Key Set (RFC 7517)",
    responses=error_responses(ErrorCode.NOT_FOUND, ErrorCode.VALIDATION_ERROR),
)
async def provider_jwks(
    provider_id: uuid.UUID, session: ReadSessionDep, response: Response
) -> dict[str, Any]:
    """What Okta and PingOne can fetch instead of an uploaded key: every certificate the
    provider holds, so a new one works before the old one is deleted."""
    provider = await session.get(SSOProvider, provider_id)
    if provider is None:
        raise NotFound("No SSO provider with this id.")
    response.headers["Cache-Control"] = "public, max-age=300"
    return {
        "keys": [
            certificates.jwk(stored) for stored in await certificates.listed(session, provider_id)
        ]
    }
