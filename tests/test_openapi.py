from __future__ import annotations

import json
from pathlib import Path

from sso_broker.openapi import render

SPEC = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"


def test_committed_spec_matches_the_app() -> None:
    assert SPEC.read_text(encoding="utf-8") == render(), (
        "openapi/openapi.json is out of date: run `make openapi` and commit it"
    )


def test_every_route_has_a_summary_and_documents_its_errors() -> None:
    spec = json.loads(render())
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"
            errors = {s for s in operation["responses"] if s.startswith(("4", "5"))}
            if path.startswith(("/api/v1/users", "/api/v1/sso-providers")):
                assert {"401", "403"} <= errors, f"{method.upper()} {path} lacks 401/403"
            elif path.startswith("/api/v1/auth/") and path != "/api/v1/auth/token":
                assert "401" in errors, f"{method.upper()} {path} lacks 401"
            if path.startswith("/api/"):
                for status in errors:
                    description = operation["responses"][status]["description"]
                    assert "`" in description, f"{method.upper()} {path} {status} names no code"


def test_the_client_secret_is_write_only_in_the_schema() -> None:
    schemas = json.loads(render())["components"]["schemas"]
    assert "client_secret" not in schemas["ProviderRead"]["properties"]
    assert schemas["ProviderUpdate"]["properties"]["client_secret"]["writeOnly"] is True
