from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from sso_broker.deps import ContextDep, CurrentAdmin, ReadSessionDep, SessionDep, SettingsDep
from sso_broker.errors import AUTHORIZATION_ERRORS, ErrorCode, error_responses
from sso_broker.idp import adapters_for
from sso_broker.providers import connection, service
from sso_broker.providers.schemas import (
    CheckRead,
    ConnectionTest,
    ProviderCreate,
    ProviderList,
    ProviderRead,
    ProviderUpdate,
)

router = APIRouter(prefix="/api/v1/sso-providers", tags=["SSO providers"])


@router.get(
    "",
    summary="List the company's SSO providers",
    response_model=ProviderList,
    responses=error_responses(*AUTHORIZATION_ERRORS),
)
async def list_providers(
    principal: CurrentAdmin, session: ReadSessionDep, settings: SettingsDep
) -> ProviderList:
    providers = await service.list_for_company(session, principal.user.company_id)
    return ProviderList(items=[ProviderRead.build(p, settings) for p in providers])


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
    return ProviderRead.build(provider, settings)


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
    return ProviderRead.build(provider, context.settings)


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
    await connection.check_rate(context, provider.id)
    checks = await connection.test(context, provider)
    await connection.record(context, provider.id, checks)
    return ConnectionTest(
        ok=all(check.ok for check in checks),
        checks=[CheckRead(name=c.name, ok=c.ok, code=c.code, detail=c.detail) for c in checks],
    )
