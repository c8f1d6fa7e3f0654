from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
from datetime import UTC, datetime

import httpx
import pytest

from sso_broker.logs import (
    JSONFormatter,
    LoopBatchingHandler,
    TextFormatter,
    configure_logging,
    log_access,
    new_request_id,
    request_id_var,
)
from sso_broker.users.models import Role
from tests.conftest import Factory

SECRET = "Zq8Q~never-log-this-secret-value-0123456789"


def _render(records: list[logging.LogRecord]) -> str:
    formatter = JSONFormatter()
    return "\n".join(formatter.format(record) for record in records)


class TestAccessLog:
    async def test_one_json_line_per_request_without_the_query(
        self, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="sso_broker.access")
        await client.get("/healthz?code=secret-code&state=xyz", headers={"X-Request-ID": "rid-1"})
        lines = [
            json.loads(JSONFormatter().format(r))
            for r in caplog.records
            if r.name == "sso_broker.access"
        ]
        assert len(lines) == 1
        line = lines[0]
        assert line["method"] == "GET"
        assert line["path"] == "/healthz"
        assert line["status"] == 200
        assert line["request_id"] == "rid-1"
        assert isinstance(line["duration_ms"], float)
        assert "secret-code" not in json.dumps(line)


class TestSecretsNeverLogged:
    async def test_admin_calls_log_no_secret_and_no_token(
        self, client: httpx.AsyncClient, factory: Factory, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        admin = await factory.user(await factory.company(), Role.ADMINISTRATOR)
        token = await factory.token(admin)
        headers = {"Authorization": f"Bearer {token}"}
        created = await client.post(
            "/api/v1/sso-providers",
            json={"type": "entra", "base_url": "contoso.onmicrosoft.com"},
            headers=headers,
        )
        url = f"/api/v1/sso-providers/{created.json()['id']}"
        calls = [
            {"client_secret": SECRET},
            {"client_secret": SECRET, "enabled": True},  # provider_incomplete
            {"client_secret": SECRET, "unknown": 1},  # validation_error
            {"client_secret": SECRET * 40},  # too long
            {"client_id": "3f2b8c4e-1a2b-4c3d-9e8f-0a1b2c3d4e5f", "client_secret": SECRET},
        ]
        for body in calls:
            response = await client.patch(url, json=body, headers=headers)
            assert SECRET not in response.text
        await client.get(url, headers=headers)
        logged = _render(caplog.records)
        assert caplog.records, "expected some log output"
        assert SECRET not in logged
        assert token not in logged


class TestJSONFormatter:
    @pytest.mark.parametrize(
        "created",
        [
            1764297255.0,
            1764297255.123456789,
            1764297255.9999999,  # rounds up into the next second, as datetime does
            1000000.0004999,
            1000000.0005,
            1000000.9994999,
            1000000.9995,
            1000000.9999994,
            1000000.9999995,
            0.0,
        ],
    )
    def test_the_time_is_datetimes_iso_format_in_milliseconds(self, created: float) -> None:
        record = logging.makeLogRecord({"msg": "x", "created": created})
        expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        formatter = JSONFormatter()
        assert json.loads(formatter.format(record))["time"] == expected
        assert json.loads(formatter.format(record))["time"] == expected  # the cached second

    def test_extras_follow_the_standard_fields_and_odd_values_become_strings(self) -> None:
        record = logging.getLogger("x").makeRecord(
            "x", logging.INFO, "f", 1, "hi %s", ("é",), None, extra={"n": 1, "odd": {1, 2}}
        )
        time = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        assert JSONFormatter().format(record) == (
            f'{{"time": "{time}", "level": "info", "logger": "x", "message": "hi é", "n": 1, '
            '"odd": "{1, 2}"}'
        )


ODD_PATHS = ["/healthz", '/a"b\\c', "/é/ü/日本", "/\x01\x7f\u2028", "/" + "x" * 300]


class TestTheAccessLinesShortWay:
    """``log_access`` builds its line itself when logging is as ``configure_logging`` leaves
    it; the line must be the one the formatter makes of the record logging would build."""

    @pytest.mark.parametrize("path", ODD_PATHS)
    @pytest.mark.parametrize("duration", [0.0, 0.07, 12.5, 1234.56, 1e-05])
    def test_the_line_is_the_formatters(self, path: str, duration: float) -> None:
        formatter = JSONFormatter()
        record = logging.getLogger("sso_broker.access").makeRecord(
            "sso_broker.access", logging.INFO, "f", 1, "request", (), None,
            extra={"method": "GET", "path": path, "status": 302, "duration_ms": duration,
                   "request_id": 'rid"\\1'},
        )  # fmt: skip
        built = formatter.access_line(record.created, "GET", path, 302, duration, 'rid"\\1')
        assert built == formatter.format(record)

    async def test_a_request_is_logged_the_short_way_only_when_nothing_else_listens(
        self,
    ) -> None:
        stream = io.StringIO()
        handler = _batching(stream)
        root = logging.getLogger()
        saved = root.handlers[:]
        scope = {"method": "POST", "path": '/api/v1/"x"'}
        try:
            root.handlers[:] = [handler]
            log_access(scope, 201, 0.0, "rid-short")  # type: ignore[arg-type]
            handler.flush()
            (short,) = stream.getvalue().splitlines()
            # With another handler on the root, logging itself carries the line.
            other = logging.Handler()
            root.handlers[:] = [handler, other]
            emitted: list[logging.LogRecord] = []
            other.emit = emitted.append  # type: ignore[method-assign]
            log_access(scope, 201, 0.0, "rid-long")  # type: ignore[arg-type]
            handler.flush()
        finally:
            root.handlers[:] = saved
        assert len(emitted) == 1, "the second handler saw the record"
        long = stream.getvalue().splitlines()[1]
        for line, rid in ((short, "rid-short"), (long, "rid-long")):
            entry = json.loads(line)
            assert entry["logger"] == "sso_broker.access"
            assert (entry["method"], entry["path"], entry["status"]) == ("POST", '/api/v1/"x"', 201)
            assert entry["request_id"] == rid
            assert isinstance(entry["duration_ms"], float)
        assert list(json.loads(short)) == list(json.loads(long))


def test_uvicorns_colour_codes_stay_out_of_the_json() -> None:
    record = logging.getLogger("uvicorn.error").makeRecord(
        "uvicorn.error", logging.INFO, "f", 1, "Started server process [%d]", (42,), None,
        extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"},
    )  # fmt: skip
    line = JSONFormatter().format(record)
    assert "color_message" not in line
    assert "\\u001b" not in line
    assert json.loads(line)["message"] == "Started server process [42]"


class TestRequestIds:
    def test_made_ids_are_32_hex_digits_and_unique(self) -> None:
        ids = {new_request_id() for _ in range(10_000)}
        assert len(ids) == 10_000
        assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)


def _batching(stream: io.StringIO) -> LoopBatchingHandler:
    handler = LoopBatchingHandler(stream)
    handler.setFormatter(JSONFormatter())
    return handler


def _messages(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["message"] for line in stream.getvalue().splitlines()]


class TestLoopBatchingHandler:
    async def test_a_turns_request_lines_are_written_together_after_it(self) -> None:
        stream = io.StringIO()
        handler = _batching(stream)
        logger = logging.getLogger("tests.batching")
        token = request_id_var.set("rid")
        try:
            handler.handle(logger.makeRecord(logger.name, logging.INFO, "f", 1, "a", (), None))
            handler.handle(logger.makeRecord(logger.name, logging.INFO, "f", 1, "b", (), None))
            assert stream.getvalue() == ""
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert _messages(stream) == ["a", "b"]
        finally:
            request_id_var.reset(token)

    async def test_warnings_and_lines_outside_a_request_are_written_at_once(self) -> None:
        stream = io.StringIO()
        handler = _batching(stream)
        logger = logging.getLogger("tests.batching")
        token = request_id_var.set("rid")
        try:
            handler.handle(logger.makeRecord(logger.name, logging.INFO, "f", 1, "a", (), None))
            handler.handle(logger.makeRecord(logger.name, logging.WARNING, "f", 1, "b", (), None))
            assert _messages(stream) == ["a", "b"]
            handler.handle(logger.makeRecord(logger.name, logging.INFO, "f", 1, "c", (), None))
        finally:
            request_id_var.reset(token)
        handler.handle(logger.makeRecord(logger.name, logging.INFO, "f", 1, "d", (), None))
        assert _messages(stream) == ["a", "b", "c", "d"]

    async def test_flush_writes_what_waits(self) -> None:
        stream = io.StringIO()
        handler = _batching(stream)
        logger = logging.getLogger("tests.batching")
        token = request_id_var.set("rid")
        try:
            handler.handle(logger.makeRecord(logger.name, logging.INFO, "f", 1, "a", (), None))
        finally:
            request_id_var.reset(token)
        handler.flush()
        assert _messages(stream) == ["a"]

    def test_without_an_event_loop_every_line_is_written_at_once(self) -> None:
        stream = io.StringIO()
        handler = _batching(stream)
        logger = logging.getLogger("tests.batching")
        token = request_id_var.set("rid")
        try:
            handler.handle(logger.makeRecord(logger.name, logging.INFO, "f", 1, "a", (), None))
        finally:
            request_id_var.reset(token)
        assert _messages(stream) == ["a"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class TestLogFormat:
    def test_text_is_one_readable_line_with_the_same_fields(self) -> None:
        record = logging.getLogger("x").makeRecord(
            "x", logging.WARNING, "f", 1, "sign-in failed", (), None,
            extra={"error": "idp_error", "provider_id": None, "n": 1},
        )  # fmt: skip
        line = TextFormatter().format(record)
        time = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        assert line == (f'{time} WARNING  x: sign-in failed error="idp_error" provider_id=null n=1')

    @pytest.mark.parametrize(
        ("terminal", "setting", "text"),
        [
            (True, "auto", True),
            (False, "auto", False),
            (True, "json", False),
            (False, "text", True),
        ],
    )
    def test_auto_is_text_at_a_terminal_and_json_elsewhere(
        self, monkeypatch: pytest.MonkeyPatch, terminal: bool, setting: str, text: bool
    ) -> None:
        stream = _Terminal() if terminal else io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        root = logging.getLogger()
        saved, level = root.handlers[:], root.level
        try:
            configure_logging(logging.INFO, setting)
            logging.getLogger("tests.format").warning("hello", extra={"k": "v"})
            for handler in root.handlers:
                handler.flush()
        finally:
            root.handlers[:], root.level = saved, level
            logging.getLogger("uvicorn.access").disabled = False
        (line,) = stream.getvalue().splitlines()
        if text:
            assert line.endswith('WARNING  tests.format: hello k="v"'), line
        else:
            assert json.loads(line)["k"] == "v"
