from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from pydantic import AfterValidator

from sso_broker import paging
from sso_broker.deps import CurrentPrincipal, CurrentUserManager, ReadSessionDep, SessionDep
from sso_broker.errors import AUTHORIZATION_ERRORS, ErrorCode, error_responses
from sso_broker.paging import Keyset
from sso_broker.schemas import refuse_control_characters
from sso_broker.users import service
from sso_broker.users.models import EMAIL_MAX
from sso_broker.users.schemas import (
    UserCreate,
    UserList,
    UserRead,
    UserSession,
    UserSessionList,
    UserUpdate,
)

router = APIRouter(prefix="/api/v1/users", tags=["Users"])

# By normalized email, unique in a company (``repository.page``).
USERS = Keyset[str]("users", paging.text, paging.read_text)


@router.get(
    "",
    summary="List the company's users by email, a page at a time",
    response_model=UserList,
    responses=error_responses(
        *AUTHORIZATION_ERRORS, ErrorCode.VALIDATION_ERROR, ErrorCode.SSO_PROVIDER_NOT_FOUND
    ),
)
async def list_users(
    principal: CurrentUserManager,
    session: ReadSessionDep,
    email: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=EMAIL_MAX,
            description="Only the user with this email (compared as emails are: ASCII letters "
            "in any case).",
        ),
        # No email holds one, and PostgreSQL cannot even compare with NUL (a 500, not a 422).
        AfterValidator(refuse_control_characters),
    ] = None,
    sso_provider_id: Annotated[
        uuid.UUID | None, Query(description="Only the users who sign in with this provider.")
    ] = None,
    limit: paging.Limit = paging.LIMIT_DEFAULT,
    cursor: paging.Cursor = None,
) -> UserList:
    users = await service.page(
        session,
        principal.user.company_id,
        email=email,
        sso_provider_id=sso_provider_id,
        after=USERS.after(cursor),
        limit=limit + 1,
    )
    page, next_cursor = USERS.page(users, limit, lambda u: u.email_normalized)
    return UserList(items=[UserRead.model_validate(u) for u in page], next_cursor=next_cursor)


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
