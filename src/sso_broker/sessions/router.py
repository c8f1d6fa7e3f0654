from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from sso_broker.deps import ContextDep

router = APIRouter(tags=["Sessions"])


@router.get(
    "/.well-known/jwks.json",
    summary="Public keys that verify session JWTs",
    response_description="A JSON Web Key Set (RFC 7517)",
)
async def jwks(context: ContextDep, response: Response) -> dict[str, Any]:
    # Cacheable briefly: a new key is published before it signs anything.
    response.headers["Cache-Control"] = "public, max-age=300"
    return context.keyring.jwks
