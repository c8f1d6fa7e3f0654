"""Who a callback signs in: identity links, first sign-in by a vouched-for email, tenants and
companies kept apart (README, *Identities and first sign-in*; the nOAuth lesson, README,
*Security model*)."""

from __future__ import annotations

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sso_broker.database import session_scope
from sso_broker.models import (
    IdentityLink,
    SignInSession,
    User,
)
from sso_broker.users.models import Role
from tests.conftest import Factory
from tests.fixtures.entra import (
    TENANT_ID,
    EntraUser,
    FakeEntra,
)
from tests.sso.helpers import (
    OTHER_TENANT,
    assert_error,
    assert_nothing_created,
    count,
    login_code,
    make_provider,
    setup,
    sign_in,
    signed_in_user,
    start,
)

# --- user resolution ---------------------------------------------------------------------------


class TestUserResolution:
    async def test_first_sign_in_links_the_associated_user_by_email_case_insensitively(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        company = await factory.company()
        provider = await make_provider(factory, company)
        person = EntraUser.make(email="adele.vance@contoso.com")
        user = await factory.user(company, email="Adele.Vance@Contoso.COM", provider=provider)

        response = await sign_in(client, entra, provider, person)

        assert await signed_in_user(client, response) == str(user.id)
        async with session_scope(sessionmaker) as session:
            links = (await session.scalars(select(IdentityLink))).all()
        assert [(lk.provider_id, lk.namespace, lk.subject, lk.user_id) for lk in links] == [
            (provider.id, TENANT_ID, person.oid, user.id)
        ]

    async def test_a_user_of_another_company_with_that_email_is_not_provisioned(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        company = await factory.company("Contoso")
        provider = await make_provider(factory, company)
        elsewhere = await factory.company("Fabrikam")
        # Even associated with a provider of its own company (same tenant, say).
        theirs = await make_provider(factory, elsewhere)
        person = EntraUser.make()
        await factory.user(elsewhere, email=person.email, provider=theirs)

        assert_error(await sign_in(client, entra, provider, person), "user_not_provisioned")
        await assert_nothing_created(sessionmaker, provider)

    async def test_a_user_of_the_company_not_associated_with_the_provider_is_not_provisioned(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        company = await factory.company()
        provider = await make_provider(factory, company)
        person = EntraUser.make()
        await factory.user(company, email=person.email, provider=None)

        assert_error(await sign_in(client, entra, provider, person), "user_not_provisioned")
        await assert_nothing_created(sessionmaker, provider)

    async def test_a_user_associated_with_another_provider_of_the_company_is_not_provisioned(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        company = await factory.company()
        provider = await make_provider(factory, company)
        sibling = await make_provider(factory, company)
        person = EntraUser.make()
        await factory.user(company, email=person.email, provider=sibling)

        assert_error(await sign_in(client, entra, provider, person), "user_not_provisioned")
        await assert_nothing_created(sessionmaker, provider)

    async def test_preferred_username_stands_in_for_a_missing_email(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
    ) -> None:
        company = await factory.company()
        provider = await make_provider(factory, company)
        person = EntraUser.make(
            email=None, preferred_username="Megan.Bowen@contoso.onmicrosoft.com"
        )
        user = await factory.user(
            company, email="megan.bowen@contoso.onmicrosoft.com", provider=provider
        )
        assert await signed_in_user(client, await sign_in(client, entra, provider, person)) == (
            str(user.id)
        )

    async def test_an_unverified_email_never_links_the_upn_does(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
    ) -> None:
        """Entra's ``email`` is the mail attribute anyone with user-admin rights (or a guest)
        can set: without ``xms_edov`` a first sign-in matches the UPN only (README, *Setting
        up Entra ID*)."""
        company = await factory.company()
        provider = await make_provider(factory, company)
        person = EntraUser.make(
            email="adele@contoso.com", preferred_username="megan@contoso.onmicrosoft.com"
        )
        adele = await factory.user(company, email="adele@contoso.com", provider=provider)
        megan = await factory.user(
            company, email="megan@contoso.onmicrosoft.com", provider=provider
        )
        response = await sign_in(client, entra, provider, person)
        assert await signed_in_user(client, response) == str(megan.id)
        assert adele.id != megan.id

    async def test_a_verified_email_wins_over_the_upn(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
    ) -> None:
        company = await factory.company()
        provider = await make_provider(factory, company)
        person = EntraUser.make(
            email="adele@contoso.com", preferred_username="megan@contoso.onmicrosoft.com"
        )
        adele = await factory.user(company, email="adele@contoso.com", provider=provider)
        await factory.user(company, email="megan@contoso.onmicrosoft.com", provider=provider)
        started = await start(client, provider)
        response = await client.get(entra.authorize(started.location, user=person, xms_edov=True))
        assert await signed_in_user(client, response) == str(adele.id)

    async def test_later_sign_ins_use_the_link_even_after_an_email_change(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
    ) -> None:
        s = await setup(factory)
        assert await signed_in_user(client, await sign_in(client, entra, s.provider, s.person)) == (
            str(s.user.id)
        )
        renamed = EntraUser.make(email="adele.married-name@contoso.com", oid=s.person.oid)

        response = await sign_in(client, entra, s.provider, renamed)

        assert await signed_in_user(client, response) == str(s.user.id)
        # Even with no email at all, the link alone counts.
        anonymous = EntraUser.make(
            email=None, preferred_username="x@contoso.onmicrosoft.com", oid=s.person.oid
        )
        assert await signed_in_user(
            client, await sign_in(client, entra, s.provider, anonymous)
        ) == (str(s.user.id))

    async def test_another_identity_presenting_a_linked_users_email_cannot_take_over(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        login_code(await sign_in(client, entra, s.provider, s.person))
        impostor = EntraUser.make(email=s.person.email)
        assert impostor.oid != s.person.oid

        assert_error(await sign_in(client, entra, s.provider, impostor), "user_not_provisioned")

        assert await count(sessionmaker, IdentityLink) == 1
        assert (
            await count(sessionmaker, SignInSession, SignInSession.provider_id == s.provider.id)
            == 1
        )
        # Nor with the email differently cased.
        shouting = EntraUser.make(email=(s.person.email or "").upper())
        assert_error(await sign_in(client, entra, s.provider, shouting), "user_not_provisioned")

    async def test_a_token_of_another_tenant_cannot_use_the_link(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
    ) -> None:
        """Identities are keyed by (provider, tid, oid): the same oid from another tenant is
        not the linked identity (it is refused before user resolution)."""
        s = await setup(factory)
        login_code(await sign_in(client, entra, s.provider, s.person))
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person, tid=OTHER_TENANT)
        assert_error(await client.get(back), "invalid_id_token")

    async def test_removing_the_association_locks_out_and_reassociating_links_anew(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        admin = await factory.user(s.company, Role.ADMINISTRATOR)
        headers = await factory.headers(admin)
        login_code(await sign_in(client, entra, s.provider, s.person))

        cleared = await client.patch(
            f"/api/v1/users/{s.user.id}", json={"sso_provider_id": None}, headers=headers
        )
        assert cleared.status_code == 200, cleared.text
        assert cleared.json()["sso_provider_id"] is None

        assert_error(await sign_in(client, entra, s.provider, s.person), "user_not_provisioned")
        assert await count(sessionmaker, IdentityLink) == 0

        restored = await client.patch(
            f"/api/v1/users/{s.user.id}",
            json={"sso_provider_id": str(s.provider.id)},
            headers=headers,
        )
        assert restored.status_code == 200, restored.text
        # The Entra account was recreated: a new oid, the same email, links afresh.
        recreated = EntraUser.make(email=s.person.email)
        response = await sign_in(client, entra, s.provider, recreated)
        assert await signed_in_user(client, response) == str(s.user.id)
        async with session_scope(sessionmaker) as session:
            subjects = (await session.scalars(select(IdentityLink.subject))).all()
        assert subjects == [recreated.oid]
        # And the old identity no longer gets in.
        assert_error(await sign_in(client, entra, s.provider, s.person), "user_not_provisioned")

    async def test_a_linked_user_moved_off_the_provider_is_locked_out_at_once(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """Even if the link row survived (a change made straight in the database)."""
        s = await setup(factory)
        login_code(await sign_in(client, entra, s.provider, s.person))
        async with session_scope(sessionmaker) as session:
            await session.execute(
                update(User).where(User.id == s.user.id).values(sso_provider_id=None)
            )
        assert await count(sessionmaker, IdentityLink) == 1
        assert_error(await sign_in(client, entra, s.provider, s.person), "user_not_provisioned")
