"""Emails compare case-insensitively in ASCII only (README, *Security model*): ``str.lower()``
folded U+212A KELVIN SIGN into ``k``, so ``\u212aate@…`` was ``kate@…`` to us."""

from __future__ import annotations

import httpx
import pytest

from sso_broker.users.models import Role
from sso_broker.users.repository import normalize_email
from tests.conftest import Factory

KELVIN = "\u212a"  # looks like K; str.lower() gives "k"


@pytest.mark.parametrize(
    ("email", "normalized"),
    [
        ("Ada@Example.COM", "ada@example.com"),
        ("  ada@example.com\t", "ada@example.com"),
        (f"{KELVIN}ate@example.com", f"{KELVIN}ate@example.com"),
        ("\u0130nci@example.com", "\u0130nci@example.com"),  # İ: lower() gives "i̇"
        ("Élodie@example.com", "Élodie@example.com"),
    ],
)
def test_only_ascii_letters_are_folded(email: str, normalized: str) -> None:
    assert normalize_email(email) == normalized


async def test_a_look_alike_address_is_another_address(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    company = await factory.company()
    admin = await factory.user(company, Role.ADMINISTRATOR)
    headers = await factory.headers(admin)
    body = {"name": "Kate", "role": "user"}
    real = await client.post(
        "/api/v1/users", json={**body, "email": "kate@example.com"}, headers=headers
    )
    assert real.status_code == 201, real.text
    look_alike = await client.post(
        "/api/v1/users", json={**body, "email": f"{KELVIN}ate@example.com"}, headers=headers
    )
    # Refused (email-validator's NFKC makes it "Kate@…", taken) or kept apart: never a way
    # into kate@'s account.
    if look_alike.status_code == 201:
        assert look_alike.json()["id"] != real.json()["id"]
    else:
        assert look_alike.status_code in (409, 422), look_alike.text
    again = await client.post(
        "/api/v1/users", json={**body, "email": "KATE@example.com"}, headers=headers
    )
    assert again.status_code == 409, again.text
