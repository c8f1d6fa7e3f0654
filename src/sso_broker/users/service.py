"""Users of a company, and who may create, change or delete whom."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from sso_broker.audit import service as audit
from sso_broker.audit.service import EventType
from sso_broker.errors import Conflict, ErrorCode, Forbidden, InvalidInput, NotFound
from sso_broker.providers import repository as providers_repository
from sso_broker.sessions import service as sessions_service
from sso_broker.sessions.models import SignInSession
from sso_broker.sso.links import remove_links
from sso_broker.sso.models import IdentityLink
from sso_broker.users import repository
from sso_broker.users.models import Role, User
from sso_broker.users.schemas import UserCreate, UserUpdate


class Actor(Protocol):
    """Who acts: a ``User``, or the caller of a request (``sessions.service.PrincipalUser``)."""

    @property
    def id(self) -> uuid.UUID: ...

    @property
    def company_id(self) -> uuid.UUID: ...

    @property
    def role(self) -> Role: ...


# The roles each role may hand out (and so manage). Administrators are made with the CLI.
GRANTABLE: dict[Role, frozenset[Role]] = {
    Role.ADMINISTRATOR: frozenset({Role.MANAGER, Role.USER, Role.READ_ONLY}),
    Role.MANAGER: frozenset({Role.USER, Role.READ_ONLY}),
    Role.USER: frozenset(),
    Role.READ_ONLY: frozenset(),
}


def _ceiling(actor: Role) -> str:
    return "manager" if actor is Role.ADMINISTRATOR else "user"


def check_can_grant(actor: Actor, role: Role) -> None:
    """Refuses a role above the actor's ceiling, so nobody raises anyone above themselves."""
    if role not in GRANTABLE[actor.role]:
        raise Forbidden(
            f"As {actor.role.value} you may grant roles up to {_ceiling(actor.role)}, not "
            f"{role.value}; administrators are created with the sso-broker CLI."
        )


def check_can_manage(actor: Actor, target: User) -> None:
    """Refuses changes to yourself and to anyone at or above your level.

    Without it a manager could rename, re-link or delete an administrator, and anyone could
    re-point their own SSO link or email.
    """
    if actor.id == target.id:
        raise Forbidden("You cannot change or delete your own account; ask another administrator.")
    if target.role not in GRANTABLE[actor.role]:
        raise Forbidden(
            f"As {actor.role.value} you may manage users up to {_ceiling(actor.role)}; this "
            f"user is {target.role.value}."
        )


async def _check_provider(
    session: AsyncSession, company_id: uuid.UUID, provider_id: uuid.UUID | None
) -> None:
    if provider_id is None:
        return
    if await providers_repository.get(session, company_id, provider_id) is None:
        raise _provider_not_found()


def _email_taken() -> Conflict:
    return Conflict(
        "A user with this email already exists in your company; change that user instead.",
        code=ErrorCode.EMAIL_TAKEN,
    )


def _provider_not_found() -> InvalidInput:
    return InvalidInput(
        "sso_provider_id names no SSO provider of your company; list them with "
        "GET /api/v1/sso-providers.",
        code=ErrorCode.SSO_PROVIDER_NOT_FOUND,
    )


async def _flush_checked(session: AsyncSession) -> None:
    """Flushes, turning a lost race into the same answer the up-front checks give."""
    try:
        await session.flush()
    except IntegrityError as e:
        message = str(e.orig).lower()
        if "email_normalized" in message:
            raise _email_taken() from e  # another request took the email meanwhile
        if "sso_provider" in message or "foreign key" in message:
            raise _provider_not_found() from e  # the provider was deleted meanwhile
        raise


async def get(session: AsyncSession, company_id: uuid.UUID, user_id: uuid.UUID) -> User:
    user = await repository.get(session, company_id, user_id)
    if user is None:
        raise NotFound("No user with this id in your company; list them with GET /api/v1/users.")
    return user


async def page(
    session: AsyncSession,
    company_id: uuid.UUID,
    *,
    email: str | None,
    sso_provider_id: uuid.UUID | None,
    after: str | None,
    limit: int,
) -> Sequence[User]:
    """A page of the company's users by email; a provider that is not the company's answers
    as one that does not exist (``422 sso_provider_not_found``, as a body naming it does)."""
    await _check_provider(session, company_id, sso_provider_id)
    return await repository.page(
        session, company_id, email=email, sso_provider_id=sso_provider_id, after=after,
        limit=limit,
    )  # fmt: skip


async def create(
    session: AsyncSession, company_id: uuid.UUID, data: UserCreate, *, actor: Actor | None
) -> User:
    """Creates a user; ``actor`` is None only for the operator's CLI, which may make anyone."""
    if actor is not None:
        check_can_grant(actor, data.role)
    await _check_provider(session, company_id, data.sso_provider_id)
    if await repository.get_by_email(session, company_id, data.email) is not None:
        raise _email_taken()
    user = User(
        id=uuid.uuid4(),
        company_id=company_id,
        email=data.email,
        email_normalized=repository.normalize_email(data.email),
        name=data.name,
        role=data.role,
        sso_provider_id=data.sso_provider_id,
    )
    session.add(user)
    await _flush_checked(session)
    audit.record(
        session, company_id, EventType.USER_CREATED,
        actor_user_id=actor.id if actor else None, user_id=user.id,
        details={"role": user.role.value},
    )  # fmt: skip
    return user


async def update(session: AsyncSession, actor: Actor, user_id: uuid.UUID, data: UserUpdate) -> User:
    user = await get(session, actor.company_id, user_id)
    check_can_manage(actor, user)
    changed = data.model_fields_set
    if "role" in changed and data.role is not None:
        check_can_grant(actor, data.role)
        user.role = data.role
    if "sso_provider_id" in changed and data.sso_provider_id != user.sso_provider_id:
        await _check_provider(session, actor.company_id, data.sso_provider_id)
        old = user.sso_provider_id
        user.sso_provider_id = data.sso_provider_id
        if old is not None:
            # What the old provider signed in ends with the association.
            await sessions_service.revoke_where(
                session,
                SignInSession.user_id == user.id,
                SignInSession.provider_id == old,
                reason="provider_changed",
                actor_id=actor.id,
            )
        # A new association starts afresh: the next sign-in links by email again. This is
        # also how an administrator re-links someone whose Entra account was recreated.
        await remove_links(
            session,
            IdentityLink.user_id == user.id,
            company_id=actor.company_id,
            reason="user_provider_changed",
            actor_id=actor.id,
        )
    if "name" in changed and data.name is not None:
        user.name = data.name
    if "email" in changed and data.email is not None:
        normalized = repository.normalize_email(data.email)
        if normalized != user.email_normalized:
            if await repository.get_by_email(session, actor.company_id, normalized) is not None:
                raise _email_taken()
            user.email_normalized = normalized
            # The link was made by the old email: the new one must earn its own.
            await remove_links(
                session,
                IdentityLink.user_id == user.id,
                company_id=actor.company_id,
                reason="user_email_changed",
                actor_id=actor.id,
            )
        user.email = data.email
    await _flush_checked(session)
    audit.record(
        session, actor.company_id, EventType.USER_UPDATED, actor_user_id=actor.id,
        user_id=user.id, details={"fields": sorted(changed), "role": user.role.value},
    )  # fmt: skip
    return user


def check_can_see_sessions(actor: Actor, target: User, *, revoking: bool) -> None:
    """Sessions may be listed and ended by their owner, and by anyone whose role is above the
    owner's; an administrator may also end (not list) another administrator's."""
    if actor.id == target.id or target.role in GRANTABLE[actor.role]:
        return
    if revoking and actor.role is Role.ADMINISTRATOR:
        return
    raise Forbidden(
        f"As {actor.role.value} you may see and end your own sessions and those of roles "
        f"below yours; this user is {target.role.value}."
    )


async def list_sessions(
    session: AsyncSession, actor: Actor, user_id: uuid.UUID
) -> Sequence[SignInSession]:
    user = await get(session, actor.company_id, user_id)
    check_can_see_sessions(actor, user, revoking=False)
    return await sessions_service.live_sessions(session, user.id)


async def revoke_sessions(session: AsyncSession, actor: Actor, user_id: uuid.UUID) -> int:
    """Ends all of the user's sessions now: the kill switch for one account."""
    user = await get(session, actor.company_id, user_id)
    check_can_see_sessions(actor, user, revoking=True)
    return await sessions_service.revoke_where(
        session, SignInSession.user_id == user.id, reason="revoked_by_user", actor_id=actor.id
    )


async def delete(session: AsyncSession, actor: Actor, user_id: uuid.UUID) -> None:
    """Deletes a user; their sign-in sessions go with them, so their tokens stop working."""
    user = await get(session, actor.company_id, user_id)
    check_can_manage(actor, user)
    await session.delete(user)
    await session.flush()
    audit.record(
        session, actor.company_id, EventType.USER_DELETED, actor_user_id=actor.id,
        user_id=user_id,
    )  # fmt: skip
