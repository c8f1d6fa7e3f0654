"""Assertions on the API's ``application/problem+json`` answers, shared by every test file
(README, *Security model*: every error has a stable ``code`` and a ``detail``)."""

from __future__ import annotations

from typing import Any

import httpx

from sso_broker.errors import PROBLEM_JSON


def assert_problem(
    response: httpx.Response, status: int, code: str, context: Any = None
) -> dict[str, Any]:
    """The answer is a problem with ``status`` and ``code``, in full; answers its body.
    ``context`` is shown when the status is not the one expected."""
    assert response.status_code == status, (context, response.text)
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys(), body
    assert body["code"] == code, body
    assert body["status"] == status
    assert body["type"] == f"https://sso-broker.dev/problems/{code}"
    assert body["detail"]
    return body
