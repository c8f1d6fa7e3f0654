"""A by-hand check of the Entra-like OP, with httpx and PyJWT only (no browser, no broker).

    cd tests/e2e/op && npm ci && cd ../../..
    .venv/bin/python -m tests.e2e.op.selfcheck

Starts the OP in a temporary folder, reads discovery, registers a client, signs ``adele`` and
``noemail`` in through the authorization-code flow with PKCE (following the login page like a
browser would), redeems the codes with ``client_secret_post``, verifies the ID tokens against
the key set, checks what Entra-like errors look like, signs out through the end-session
endpoint, rotates the signing key and signs in again with the new one.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import sys
import tempfile
import uuid
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import jwt
from tests.e2e.op_process import OpenIDProvider, node_available

REDIRECT_URI = "http://127.0.0.1:9/sso/callback"
POST_LOGOUT_URI = "http://127.0.0.1:9/sso/logout"
SCOPE = "openid profile email offline_access"


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)
    print(f"ok   {message}")


def form_of(html: str) -> tuple[str, dict[str, str]]:
    """The first form's action and its hidden inputs."""
    action = re.search(r'<form[^>]*action="([^"]+)"', html)
    assert action is not None, html
    hidden = {
        unescape(name): unescape(value)
        for name, value in re.findall(
            r'<input type="hidden" name="([^"]+)" value="([^"]*)"\s*/?>', html
        )
    }
    return unescape(action.group(1)), hidden


def follow(http: httpx.Client, response: httpx.Response, stop_at: str) -> httpx.Response:
    """Follows redirects until one points at ``stop_at`` (never requested) or none is left."""
    while response.is_redirect:
        location = urljoin(str(response.url), response.headers["location"])
        if location.startswith(stop_at):
            return response
        response = http.get(location)
    return response


def sign_in(
    http: httpx.Client,
    metadata: dict[str, Any],
    client_id: str,
    login: str,
) -> tuple[str, str, str]:
    """Runs the front channel as a browser would; returns (code, nonce, code_verifier)."""
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    )
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    query = {
        "client_id": client_id,
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        "scope": SCOPE,
        "state": state,
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "response_mode": "query",
    }
    page = follow(http, http.get(f"{metadata['authorization_endpoint']}?{urlencode(query)}"), "-")
    check(page.status_code == 200 and 'name="login"' in page.text, f"{login}: login page shown")
    check('name="password"' in page.text and 'type="submit"' in page.text, "form fields present")
    action, _ = form_of(page.text)
    answer = http.post(urljoin(str(page.url), action), data={"login": login, "password": "any"})
    final = follow(http, answer, REDIRECT_URI)
    location = final.headers.get("location", "")
    check(location.startswith(REDIRECT_URI), f"{login}: back at the redirect_uri")
    params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    check(params.get("state") == state, "state returned")
    check(params.get("iss") == metadata["issuer"], "RFC 9207 iss returned")
    check("code" in params, "code returned")
    return params["code"], nonce, verifier


def redeem(
    http: httpx.Client,
    metadata: dict[str, Any],
    client_id: str,
    secret: str,
    code: str,
    verifier: str,
) -> httpx.Response:
    return http.post(
        metadata["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": client_id,
            "client_secret": secret,
            "code_verifier": verifier,
        },
    )


def verify(
    http: httpx.Client, metadata: dict[str, Any], client_id: str, id_token: str
) -> tuple[str, dict[str, Any]]:
    keys = jwt.PyJWKSet.from_dict(http.get(metadata["jwks_uri"]).json())
    header = jwt.get_unverified_header(id_token)
    check(header["alg"] == "RS256", "ID token signed RS256")
    key = next(k for k in keys.keys if k.key_id == header["kid"])
    claims: dict[str, Any] = jwt.decode(
        id_token, key, algorithms=["RS256"], audience=client_id, issuer=metadata["issuer"]
    )
    return str(header["kid"]), claims


def main() -> int:
    if not node_available():
        print("skip: needs node on PATH and `npm ci` in tests/e2e/op")
        return 1
    tenant = str(uuid.uuid4())
    with tempfile.TemporaryDirectory() as workdir, httpx.Client(timeout=10) as http:
        op = OpenIDProvider(Path(workdir), tenant)
        op.start()
        try:
            run(op, http, tenant)
        finally:
            op.stop()
        print(f"\nall good; the OP's log was {op.log_file}")
    return 0


def run(op: OpenIDProvider, http: httpx.Client, tenant: str) -> None:
    check(op.authority == f"http://127.0.0.1:{op.port}", f"authority {op.authority}")
    response = http.get(f"{op.authority}/{tenant}/v2.0/.well-known/openid-configuration")
    metadata: dict[str, Any] = response.json()
    check(metadata["issuer"] == op.issuer == f"{op.authority}/{tenant}/v2.0", "issuer")
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri", "end_session_endpoint"):
        check(metadata[name].startswith(f"{op.authority}/"), f"{name} on the authority")
    check(metadata["id_token_signing_alg_values_supported"] == ["RS256"], "RS256 only")
    check(metadata["code_challenge_methods_supported"] == ["S256"], "PKCE S256")
    other = http.get(f"{op.authority}/{uuid.uuid4()}/v2.0/.well-known/openid-configuration")
    check("AADSTS90002" in other.json()["error_description"], "another tenant: AADSTS90002")

    client_id, secret = op.add_client(REDIRECT_URI, POST_LOGOUT_URI)

    # adele: every claim.
    with httpx.Client(timeout=10) as browser:
        code, nonce, verifier = sign_in(browser, metadata, client_id, "adele")
        tokens = redeem(http, metadata, client_id, secret, code, verifier).json()
        kid, claims = verify(http, metadata, client_id, tokens["id_token"])
        adele = OpenIDProvider.ACCOUNTS["adele"]
        check(claims["oid"] == adele["oid"] and claims["sub"] == adele["oid"], "oid (and sub)")
        check(claims["tid"] == tenant, "tid is the tenant")
        check(claims["email"] == adele["email"], "email")
        check(claims["name"] == adele["name"], "name")
        check(claims["preferred_username"] == adele["preferred_username"], "preferred_username")
        check(claims["nonce"] == nonce, "nonce")
        check(bool(claims.get("sid")), "sid")
        print(f"     ID token claims: {sorted(claims)}")
        again = redeem(http, metadata, client_id, secret, code, verifier)
        check(again.json().get("error") == "invalid_grant", "a code works once")

        # Sign-out: the end-session page confirms by itself (a form + script); post it.
        query = {
            "client_id": client_id,
            "post_logout_redirect_uri": POST_LOGOUT_URI,
            "logout_hint": claims["login_hint"],
        }
        page = browser.get(f"{metadata['end_session_endpoint']}?{urlencode(query)}")
        action, fields = form_of(page.text)
        check(fields.get("logout") == "yes" and "xsrf" in fields, "logout page auto-confirms")
        done = browser.post(urljoin(str(page.url), action), data=fields)
        location = done.headers.get("location", "")
        check(location.startswith(POST_LOGOUT_URI), "end session goes to post_logout_redirect_uri")

    # noemail: no email claim, preferred_username instead.
    with httpx.Client(timeout=10) as browser:
        code, _, verifier = sign_in(browser, metadata, client_id, "noemail")
        tokens = redeem(http, metadata, client_id, secret, code, verifier).json()
        _, claims = verify(http, metadata, client_id, tokens["id_token"])
        check("email" not in claims, "noemail: no email claim")
        check(claims["preferred_username"] == "nora.nomail@contoso.example", "its UPN")

    # Errors the way Entra answers them.
    with httpx.Client(timeout=10) as browser:
        code, _, verifier = sign_in(browser, metadata, client_id, "outsider")
        wrong = redeem(http, metadata, client_id, "not-the-secret", code, verifier)
        check(wrong.status_code == 401, "wrong secret: 401")
        check(wrong.json()["error_codes"] == [7000215], "wrong secret: AADSTS7000215")
        ghost = redeem(http, metadata, str(uuid.uuid4()), secret, code, verifier)
        check(ghost.json()["error_codes"] == [700016], "unknown client: AADSTS700016")
    query = {
        "client_id": client_id,
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        "scope": SCOPE,
    }
    no_pkce = http.get(f"{metadata['authorization_endpoint']}?{urlencode(query)}")
    check(
        no_pkce.is_redirect and "error=invalid_request" in no_pkce.headers["location"],
        "no PKCE: invalid_request to the redirect_uri",
    )

    # A client added now is known at once and survives a restart; keys rotate.
    late_id, late_secret = op.add_client(REDIRECT_URI, POST_LOGOUT_URI)
    old_kid = kid
    new_kid = op.rotate_keys()
    check(new_kid != old_kid, f"rotated: {old_kid} -> {new_kid}")
    served = [k["kid"] for k in http.get(metadata["jwks_uri"]).json()["keys"]]
    check(served == [new_kid], "the key set serves only the new kid")
    metadata = http.get(op.discovery_url).json()
    check(metadata["issuer"] == op.issuer, "same issuer and port after the restart")
    with httpx.Client(timeout=10) as browser:
        code, _, verifier = sign_in(browser, metadata, late_id, "adele.vance@contoso.example")
        tokens = redeem(http, metadata, late_id, late_secret, code, verifier).json()
        kid, claims = verify(http, metadata, late_id, tokens["id_token"])
        check(kid == new_kid, "signed with the new key")


if __name__ == "__main__":
    sys.exit(main())
