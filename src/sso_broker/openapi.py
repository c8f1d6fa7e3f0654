"""The OpenAPI document, rendered the same way for `make openapi` and the drift test."""

from __future__ import annotations

import json
from pathlib import Path

from sso_broker.config import Settings
from sso_broker.main import create_app

SPEC_PATH = Path("openapi") / "openapi.json"


def render() -> str:
    # The document does not depend on configuration; defaults keep it reproducible.
    app = create_app(Settings.model_construct())
    return json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
