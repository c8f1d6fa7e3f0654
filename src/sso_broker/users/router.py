from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from sso_broker.deps import CurrentPrincipal, CurrentUserManager, ReadSessionDep, SessionDep
from sso_broker.errors import AUTHORIZATION_ERRORS, ErrorCode, error_responses
from sso_broker.users import service
from sso_broker.users.schemas import (
    UserCreate,
    UserList,
    UserRead,
    UserSession,
    UserSessionList,
    UserUpdate,
)

router = APIRouter(prefix="/api/v1/users", tags=["Users"])


@router.get(
    "",
    summary="List the company's users",
    response_model=UserList,
    responses=error_responses(*AUTHORIZATION_ERRORS),
)
async def list_users(principal: CurrentUserManager, session: ReadSessionDep) -> UserList:
    users = await service.list_for_company(session, principal.user.company_id)
    return UserList(items=[UserRead.model_validate(u) for u in users])


@router.post(
    "",
    summary="Create a user (administrators grant up to manager, managers up to user)",
    status_code=status.HTTP_201_CREATED,
    response_model=UserRead,
    responses=error_responses(
        *AUTHORIZATION_ERRORS,
        ErrorCode.EMAIL_TAKEN,
        ErrorCode.VALIDATION_ERROR,
        ErrorCode.SSO_PROVIDER_NOT_FOUND,
    ),
)
async def create_user(
    data: UserCreate, principal: CurrentUserManager, session: SessionDep
) -> UserRead:
    user = await service.create(session, principal.user.company_id, data, actor=principal.user)
    return UserRead.model_validate(user)


@router.get(
    "/{user_id}",
    summary="Read one user",
    response_model=UserRead,
    responses=error_responses(
        *AUTHORIZATION_ERRORS, ErrorCode.NOT_FOUND, ErrorCode.VALIDATION_ERROR
    ),
)
async def get_user(
    user_id: uuid.UUID, principal: CurrentUserManager, session: ReadSessionDep
) -> UserRead:
    user = await service.get(session, principal.user.company_id, user_id)
    return UserRead.model_validate(user)


@router.patch(
    "/{user_id}",
    summary="Change a user: email, name, role, SSO provider",
    response_model=UserRead,
    responses=error_responses(
        *AUTHORIZATION_ERRORS,
        ErrorCode.NOT_FOUND,
        ErrorCode.EMAIL_TAKEN,
        ErrorCode.VALIDATION_ERROR,
        ErrorCode.SSO_PROVIDER_NOT_FOUND,
    ),
)
async def update_user(
    user_id: uuid.UUID, data: UserUpdate, principal: CurrentUserManager, session: SessionDep
) -> UserRead:
    user = await service.update(session, principal.user, user_id, data)
    return UserRead.model_validate(user)


@router.delete(
    "/{user_id}",
    summary="Delete a user (their sessions end at once)",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(
        *AUTHORIZATION_ERRORS, ErrorCode.NOT_FOUND, ErrorCode.VALIDATION_ERROR
    ),
)
async def delete_user(
    user_id: uuid.UUID, principal: CurrentUserManager, session: SessionDep
) -> None:
    await service.delete(session, principal.user, user_id)


@router.get(
    "/{user_id}/sessions",
    summary="A user's live sign-in sessions (yours, or of a role below yours)",
    response_model=UserSessionList,
    responses=error_responses(
        *AUTHORIZATION_ERRORS, ErrorCode.NOT_FOUND, ErrorCode.VALIDATION_ERROR
    ),
)
async def list_user_sessions(
    user_id: uuid.UUID, principal: CurrentPrincipal, session: ReadSessionDep
) -> UserSessionList:
    found = await service.list_sessions(session, principal.user, user_id)
    return UserSessionList(items=[UserSession.model_validate(s) for s in found])


@router.delete(
    "/{user_id}/sessions",
    summary="End all of a user's sessions now (yours, a role below yours, or an administrator's)",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(
        *AUTHORIZATION_ERRORS, ErrorCode.NOT_FOUND, ErrorCode.VALIDATION_ERROR
    ),
)
async def revoke_user_sessions(
    user_id: uuid.UUID, principal: CurrentPrincipal, session: SessionDep
) -> None:
    await service.revoke_sessions(session, principal.user, user_id)
