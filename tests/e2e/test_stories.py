"""The seed's story, told in a real browser against a real OpenID Provider and real processes."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import ARTIFACTS, PROFILES, Typed, World, skip_unless_ready

skip_unless_ready()
pytestmark = pytest.mark.usefixtures("e2e_ready")

SIGNED_IN = re.compile(r"^Signed in as (.+) \((.+)\)$")


def initiate_url(world: World, broker_url: str | None = None) -> str:
    """The provider's initiate sign-in URL as the My Apps tile opens it: bare, so the broker
    sends the browser through the frontend's /sso/start for a PKCE challenge first."""
    return f"{broker_url or world.broker.url}/sso/{world.provider['id']}/initiate"


def navigations(page: Any) -> list[str]:
    """Every URL the page's main frame requests from now on, redirects included."""
    seen: list[str] = []

    def record(request: Any) -> None:
        if request.is_navigation_request() and request.frame == page.main_frame:
            seen.append(request.url)

    page.on("request", record)
    return seen


def sign_in_at_op(page: Any, login: str) -> None:
    """What a person does on the identity provider's login page."""
    page.wait_for_selector("input[name=login]")
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "any-password")
    page.click("button[type=submit]")


def wait_for_status(page: Any, world: World) -> str:
    page.wait_for_url(re.compile(re.escape(world.frontend_url) + r"/.*"))
    page.wait_for_function(
        "() => { const s = document.querySelector('#status');"
        " return s && /Signed in as|signed out|Not signed in/i.test(s.textContent); }"
    )
    return str(page.text_content("#status")).strip()


def error_code_on(page: Any, world: World) -> str:
    page.wait_for_url(re.compile(re.escape(world.frontend_url) + r"/sso/error.*"))
    page.wait_for_selector("#error-code:not(:empty)")
    return str(page.text_content("#error-code")).strip()


def access_token(page: Any) -> str:
    """The access token the example frontend keeps in sessionStorage."""
    token = page.evaluate("() => sessionStorage.getItem('sso-broker.access_token')")
    assert token, "the frontend stored no access token"
    return str(token)


class TestSignIn:
    def test_an_associated_user_signs_in_and_out(self, page: Any, world: World) -> None:
        page.goto(initiate_url(world))
        sign_in_at_op(page, "adele")
        status = wait_for_status(page, world)
        account = world.op.ACCOUNTS["adele"]
        assert status == f"Signed in as {account['name']} ({account['email']})"
        token = access_token(page)
        me = httpx.get(
            f"{world.broker.url}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}
        )
        assert me.status_code == 200
        assert me.json()["user"]["id"] == world.users["adele"]["id"]

        page.click("#sign-out")
        # The broker ends the session, then the OP signs the browser out and sends it back
        # through the provider's logout URL to the frontend.
        page.wait_for_url(re.compile(re.escape(world.frontend_url) + r"/sso/logged-out.*"))
        assert "signed out" in str(page.text_content("#status")).lower()
        after = httpx.get(
            f"{world.broker.url}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}
        )
        assert after.status_code == 401

    def test_an_account_without_email_signs_in_by_preferred_username(
        self, page: Any, world: World
    ) -> None:
        page.goto(initiate_url(world))
        sign_in_at_op(page, "noemail")
        account = world.op.ACCOUNTS["noemail"]
        assert account["email"] is None
        status = wait_for_status(page, world)
        assert status == f"Signed in as {account['name']} ({account['preferred_username']})"

    def test_a_sign_in_started_on_one_process_finishes_on_another(
        self, page: Any, world: World
    ) -> None:
        # The second replica answers initiate; the callback URL (PUBLIC_URL) is the first's.
        page.goto(initiate_url(world, world.second_broker.url))
        sign_in_at_op(page, "adele")
        assert wait_for_status(page, world).startswith("Signed in as Adele")

    def test_signing_keys_rotated_between_two_sign_ins(self, page: Any, world: World) -> None:
        page.goto(initiate_url(world))
        sign_in_at_op(page, "adele")
        assert wait_for_status(page, world).startswith("Signed in as")
        world.op.rotate_keys()
        second = page.context.browser.new_context()
        try:
            again = second.new_page()
            again.goto(initiate_url(world))
            sign_in_at_op(again, "adele")
            assert wait_for_status(again, world).startswith("Signed in as")
        finally:
            second.close()


class TestLoginCodeBinding:
    """The login code works only in the browser tab that started the sign-in (README,
    *Security model*): the frontend's PKCE challenge at initiate, its verifier with the code."""

    def test_the_my_apps_tile_path_goes_through_the_frontends_start_page(
        self, page: Any, world: World
    ) -> None:
        seen = navigations(page)
        page.goto(initiate_url(world) + "?return_to=/projects/42")
        sign_in_at_op(page, "adele")
        assert wait_for_status(page, world).startswith("Signed in as Adele")
        start = f"{world.frontend_url}/sso/start?provider_id={world.provider['id']}"
        assert any(url.startswith(start) for url in seen), seen
        assert page.text_content("#return-to") == "/projects/42"
        assert page.evaluate("() => sessionStorage.getItem('sso-broker.code_verifier')") is None

    def test_the_frontends_own_start_page_signs_in(self, page: Any, world: World) -> None:
        seen = navigations(page)
        page.goto(f"{world.frontend_url}/sso/start?provider_id={world.provider['id']}")
        sign_in_at_op(page, "adele")
        assert wait_for_status(page, world).startswith("Signed in as Adele")
        initiate = f"{world.broker.url}/sso/{world.provider['id']}/initiate?code_challenge="
        assert any(url.startswith(initiate) for url in seen), seen

    def test_a_login_code_sent_to_another_browser_signs_nobody_in(
        self, page: Any, world: World
    ) -> None:
        """Login CSRF (RFC 6749, 10.12): the attacker signs in as themselves, stops at the
        last redirect and sends the victim the link. The victim's tab has no verifier."""
        # The attacker's own tab never trades the code (its token request is dropped), so
        # the link still holds an unspent code when the victim opens it.
        page.route(f"{world.broker.url}/api/v1/auth/token", lambda route: route.abort())
        seen = navigations(page)
        page.goto(initiate_url(world))
        sign_in_at_op(page, "adele")
        page.wait_for_url(re.compile(re.escape(world.frontend_url) + r"/.*"))
        page.wait_for_selector("#error-code:not(:empty)")
        links = [url for url in seen if url.startswith(f"{world.frontend_url}/sso/complete?")]
        assert links, seen
        victim = page.context.browser.new_context()
        try:
            tab = victim.new_page()
            tab.goto(links[0])
            tab.wait_for_selector("#error-code:not(:empty)")
            assert str(tab.text_content("#error-code")).strip() == "invalid_grant"
            assert str(tab.text_content("#status")).strip() == "Sign-in failed"
            assert tab.evaluate("() => sessionStorage.getItem('sso-broker.access_token')") is None
        finally:
            victim.close()


class TestRefusals:
    def test_a_user_not_associated_with_the_provider_is_not_provisioned(
        self, page: Any, world: World
    ) -> None:
        page.goto(initiate_url(world))
        sign_in_at_op(page, "outsider")
        assert error_code_on(page, world) == "user_not_provisioned"
        assert page.text_content("#error-message")

    def test_a_disabled_provider_gives_provider_disabled(self, page: Any, world: World) -> None:
        world.patch_provider(enabled=False)
        try:
            page.goto(initiate_url(world))
            assert error_code_on(page, world) == "provider_disabled"
        finally:
            world.patch_provider(enabled=True)

    def test_a_wrong_client_secret_fails_the_exchange_and_says_why(
        self, page: Any, world: World
    ) -> None:
        world.patch_provider(client_secret="not-the-secret-" + "x" * 20)
        try:
            page.goto(initiate_url(world))
            sign_in_at_op(page, "adele")
            assert error_code_on(page, world) == "token_exchange_failed"
            with world.api() as api:
                provider = api.get(f"/api/v1/sso-providers/{world.provider['id']}").json()
            assert provider["last_error"] is not None
            assert provider["last_error"]["code"] == "invalid_client_secret"
            assert "AADSTS7000215" in provider["last_error"]["message"]
        finally:
            world.patch_provider(client_secret=world.client_secret)


class TestTheSettingsPage:
    """The seed's set-up, stage by stage (README, *Setting up Entra ID, stage by stage*), by an
    administrator on the example frontend's SSO settings page, from an empty company to a user
    signed in; each stage leaves a screenshot in artifacts/e2e."""

    def test_an_administrator_sets_up_sso_in_the_browser(self, page: Any, world: World) -> None:
        broker = world.broker
        company = json.loads(broker.cli("create-company", "Fabrikam settings"))["id"]
        broker.cli(
            "create-user", "--company", company, "--email", "it@fabrikam.example",
            "--name", "Ida Admin", "--role", "administrator",
        )  # fmt: skip
        token = broker.cli("issue-token", "--email", "it@fabrikam.example", "--company", company)

        def shot(stage: str) -> None:
            page.screenshot(path=str(ARTIFACTS / f"settings-{stage}.png"), full_page=True)

        # The administrator is signed in to the dashboard (here: its token in the tab).
        page.goto(f"{world.frontend_url}/")
        page.evaluate("t => sessionStorage.setItem('sso-broker.access_token', t)", token)
        page.goto(f"{world.frontend_url}/")
        page.wait_for_selector("#admin-link:not([hidden])")
        page.click("#admin-link")
        page.wait_for_selector("#create-form")

        # 1. Create the provider: choose Entra, paste the tenant ID.
        page.select_option("#new-type", "entra")
        page.fill("#new-base-url", world.op.tenant_id)
        page.click("#create-provider")
        page.wait_for_selector("#url-callback_url")
        callback = str(page.text_content("#url-callback_url"))
        logout = str(page.text_content("#url-logout_url"))
        initiate = str(page.text_content("#url-initiate_sign_in_url"))
        assert callback.endswith("/callback")
        assert initiate.endswith("/initiate")
        shot("1-created")

        # 2. Register the app at the provider with the URLs the page shows.
        client_id, secret = world.op.add_client(callback, logout)

        # 3. Paste the credentials, enable, save.
        page.fill("#client-id", client_id)
        page.fill("#client-secret", secret)
        page.check("#enabled")
        page.click("#save")
        page.wait_for_selector("#saved:has-text('Saved.')")
        assert "enabled" in str(page.text_content("#provider-kind"))
        shot("3-enabled")

        # 4. Test the connection.
        page.click("#test-connection")
        page.wait_for_selector("#test-verdict")
        assert page.text_content("#test-verdict") == "Connection test passed."
        shot("4-tested")

        # 5. Associate a user and let them sign in through the initiate URL.
        provider_id = initiate.split("/sso/")[1].split("/")[0]
        account = world.op.ACCOUNTS["adele"]
        with httpx.Client(
            base_url=broker.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        ) as api:
            made = api.post(
                "/api/v1/users",
                json={"email": account["email"], "name": account["name"], "role": "user",
                      "sso_provider_id": provider_id},
            )  # fmt: skip
            assert made.status_code == 201, made.text
        user = page.context.browser.new_context()
        try:
            tab = user.new_page()
            tab.goto(initiate)
            sign_in_at_op(tab, "adele")
            assert wait_for_status(tab, world).startswith("Signed in as Adele")
            tab.screenshot(path=str(ARTIFACTS / "settings-5-signed-in.png"), full_page=True)
        finally:
            user.close()

    def test_a_wrong_secret_shows_in_words(self, page: Any, world: World) -> None:
        world.patch_provider(client_secret="not-the-secret-" + "z" * 20)
        try:
            page.goto(f"{world.frontend_url}/")
            token = world.admin_headers["Authorization"].removeprefix("Bearer ")
            page.evaluate("t => sessionStorage.setItem('sso-broker.access_token', t)", token)
            page.goto(f"{world.frontend_url}/admin/sso")
            page.click("#test-connection")
            page.wait_for_selector("#test-verdict")
            assert page.text_content("#test-verdict") == "Connection test failed."
            detail = str(page.text_content("[data-check=client_credentials]"))
            assert "AADSTS7000215" in detail
            page.reload()
            page.wait_for_selector("#last-error")
            assert "invalid_client_secret" in str(page.text_content("#last-error"))
        finally:
            world.patch_provider(client_secret=world.client_secret)

    def test_only_administrators_see_it(self, page: Any, world: World) -> None:
        page.goto(initiate_url(world))
        sign_in_at_op(page, "adele")
        wait_for_status(page, world)
        assert page.is_hidden("#admin-link")
        page.goto(f"{world.frontend_url}/admin/sso")
        page.wait_for_function(
            "() => /Only administrators/.test(document.querySelector('#status').textContent)"
        )
        assert page.is_hidden("#admin")


class TestCertificateCredential:
    """A sign-in through a certificate instead of a secret (README, *Keeping SSO healthy*):
    made by the broker, its public key taken to the provider, private_key_jwt from then on."""

    def test_a_user_signs_in_through_the_certificate(self, page: Any, world: World) -> None:
        provider_id = world.provider["id"]
        with world.api() as api:
            made = api.post(f"/api/v1/sso-providers/{provider_id}/certificate")
            assert made.status_code == 201, made.text
            jwks = httpx.get(f"{world.broker.url}/sso/{provider_id}/jwks.json").json()
        assert [key["kid"] for key in jwks["keys"]] == [made.json()["thumbprint_sha256"]]
        world.op.upload_keys(world.client_id, jwks)
        try:
            world.patch_provider(client_auth_method="private_key_jwt")
            # The OP now takes nothing but an assertion signed with that key from this client.
            with world.api() as api:
                test = api.post(f"/api/v1/sso-providers/{provider_id}/test").json()
            assert test["ok"] is True, test
            page.goto(initiate_url(world))
            sign_in_at_op(page, "adele")
            assert wait_for_status(page, world).startswith("Signed in as Adele")
        finally:
            world.patch_provider(client_auth_method="client_secret")
            world.op.upload_keys(world.client_id, None)
            with world.api() as api:
                api.delete(
                    f"/api/v1/sso-providers/{provider_id}/certificates/"
                    f"{made.json()['thumbprint_sha256']}"
                )


class TestConnectionTest:
    """Test before you enable (README, *Keeping SSO healthy*), against oidc-provider."""

    def _test(self, world: World, provider_id: str, typed: Typed | None = None) -> dict[str, Any]:
        headers = world.admin_headers if typed is None else typed.admin_headers
        with httpx.Client(base_url=world.broker.url, headers=headers, timeout=40) as api:
            response = api.post(f"/api/v1/sso-providers/{provider_id}/test")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    @pytest.mark.parametrize(
        ("kind", "credentials"),
        [
            ("entra", "ok"),  # a client_credentials request Entra would answer with a token
            ("okta", "ok"),  # unauthorized_client: it authenticated the client first
            ("pingone", "ok"),
            # oidc-provider says invalid_request, which proves nothing either way.
            ("oidc", "not_verified"),
        ],
    )
    def test_every_type_passes_with_good_credentials(
        self, world: World, kind: str, credentials: str
    ) -> None:
        typed = None if kind == "entra" else world.typed[kind]
        provider = world.provider if typed is None else typed.provider
        body = self._test(world, provider["id"], typed)
        assert [(c["name"], c["code"]) for c in body["checks"]] == [
            ("metadata", "ok"), ("signing_keys", "ok"), ("client_credentials", credentials),
        ], body  # fmt: skip
        assert body["ok"] is True

    def test_a_wrong_secret_fails_and_becomes_last_error(self, world: World) -> None:
        world.patch_provider(client_secret="not-the-secret-" + "y" * 20)
        try:
            body = self._test(world, world.provider["id"])
            credentials = body["checks"][2]
            assert (credentials["ok"], body["ok"]) == (False, False), body
            with world.api() as api:
                provider = api.get(f"/api/v1/sso-providers/{world.provider['id']}").json()
            assert provider["last_error"]["code"] == credentials["code"]
        finally:
            world.patch_provider(client_secret=world.client_secret)
        assert self._test(world, world.provider["id"])["ok"] is True


@pytest.mark.parametrize("kind", PROFILES)
class TestOtherProviderTypes:
    """The same story through an Okta org, a PingOne environment and a plain OpenID Provider
    (the OP in those profiles: ``op/server.mjs``), each set up by pasting what its console
    shows (README, *Setting up Okta*, *Setting up PingOne*, *Any OpenID Provider*)."""

    def test_an_associated_user_signs_in_and_out(self, page: Any, world: World, kind: str) -> None:
        typed = world.typed[kind]
        assert typed.provider["type"] == kind
        assert typed.provider["issuer"] == typed.op.issuer
        page.goto(f"{world.broker.url}/sso/{typed.provider['id']}/initiate")
        sign_in_at_op(page, "adele")
        account = typed.op.ACCOUNTS["adele"]
        assert (
            wait_for_status(page, world) == f"Signed in as {account['name']} ({account['email']})"
        )
        token = access_token(page)
        me = httpx.get(
            f"{world.broker.url}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}
        )
        assert me.status_code == 200
        assert me.json()["user"]["id"] == typed.users["adele"]["id"]

        # Sign-out goes through the OP's end-session endpoint with id_token_hint, then back
        # through the provider's logout URL to the frontend.
        page.click("#sign-out")
        page.wait_for_url(re.compile(re.escape(world.frontend_url) + r"/sso/logged-out.*"))
        assert "signed out" in str(page.text_content("#status")).lower()
        after = httpx.get(
            f"{world.broker.url}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}
        )
        assert after.status_code == 401

    def test_an_account_without_a_verified_email_is_not_provisioned(
        self, page: Any, world: World, kind: str
    ) -> None:
        # noemail's user has its UPN as email here, but only Entra trusts a UPN.
        typed = world.typed[kind]
        page.goto(f"{world.broker.url}/sso/{typed.provider['id']}/initiate")
        sign_in_at_op(page, "noemail")
        assert error_code_on(page, world) == "user_not_provisioned"

    def test_a_user_not_associated_with_the_provider_is_not_provisioned(
        self, page: Any, world: World, kind: str
    ) -> None:
        typed = world.typed[kind]
        page.goto(f"{world.broker.url}/sso/{typed.provider['id']}/initiate")
        sign_in_at_op(page, "outsider")
        assert error_code_on(page, world) == "user_not_provisioned"
