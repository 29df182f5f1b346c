"""The JSON log line (issue 15 item 5): one object per line with time, level, logger, message and the
call's structured fields; secrets named as such and PEM private keys never reach it."""
from __future__ import annotations

import io
import json
import logging

import pytest

from cns_spec import logs

KEY_PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"


@pytest.fixture
def logged():
    stream = io.StringIO()
    logger = logging.getLogger("tests.spec.logs")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logs.use("json", logger)
    try:
        yield logger, lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)


def test_one_object_per_line_with_the_fields_of_the_call(logged):
    log, lines = logged
    log.info("request %s issued\nin %d ms", "r-1", 12, extra={"request_id": "r-1", "ms": 12, "lanes": ["a"]})
    log.warning("second")
    first, second = lines()
    assert list(first)[:4] == ["time", "level", "logger", "message"]
    assert first["level"] == "INFO" and first["logger"] == "tests.spec.logs"
    assert first["message"] == "request r-1 issued\nin 12 ms"   # a newline stays inside its line
    assert (first["request_id"], first["ms"], first["lanes"]) == ("r-1", 12, ["a"])
    assert first["time"].endswith("Z") and first["time"][10] == "T"
    assert second["message"] == "second" and "request_id" not in second


def test_exceptions_are_one_field_of_their_line(logged):
    log, lines = logged
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    [line] = lines()
    assert line["level"] == "ERROR" and "RuntimeError: boom" in line["exc"]


def test_secrets_never_reach_the_line(logged):
    log, lines = logged
    log.info("codes", extra={"pin": "12345678", "new_pin": "87654321", "puk": "11223344",
                                                      "passphrase": "s3cret", "issuing_private_key": KEY_PEM,
                                                      "codes": {"pin": "12345678"}, "pin_tries_left": 3})
    log.error("loaded %s", KEY_PEM)
    try:
        raise ValueError(KEY_PEM)
    except ValueError:
        log.exception("bad key")
    raw = json.dumps(lines())
    for secret in ("12345678", "87654321", "11223344", "s3cret", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"):
        assert secret not in raw
    first = lines()[0]
    assert first["pin"] == first["new_pin"] == first["puk"] == first["passphrase"] == logs.REDACTED
    assert first["pin_tries_left"] == 3   # not a secret: kept


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="text, json"):
        logs.use("xml")
