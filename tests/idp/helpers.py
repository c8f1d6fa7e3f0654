"""Shared assertions of the adapter tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sso_broker.errors import ErrorCode, InvalidInput


def refused(call: Callable[[str], object], value: str, code: ErrorCode) -> InvalidInput:
    """``call(value)`` raises a 422 :class:`InvalidInput` with ``code``; answers it."""
    with pytest.raises(InvalidInput) as raised:
        call(value)
    assert raised.value.code == code
    assert raised.value.status == 422
    return raised.value
