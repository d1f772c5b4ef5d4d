"""The application's and gunicorn's logs carry UTC time stamps with an explicit zone, whatever
the server's local time zone, so they line up with the audit table and with each other."""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from gunicorn.config import Config

from core.access_log import Redacting

ISO_UTC = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z ")


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process runs in a zone eight hours from UTC, so local time cannot pass for UTC."""
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _written(handler: logging.StreamHandler, logger: logging.Logger, message: str) -> str:
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    try:
        logger.warning(message)
    finally:
        handler.setStream(previous)
    return buffer.getvalue()


def _assert_now_utc(stamp: str) -> None:
    logged = datetime.fromisoformat(stamp).replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - logged).total_seconds()) < 60, stamp


def test_application_log_times_are_utc_with_z(app, far_from_utc) -> None:
    logger = logging.getLogger("countersign")
    handler = next(h for h in logger.handlers if isinstance(h, logging.StreamHandler))
    line = _written(handler, logger.getChild("test"), "a message")
    match = ISO_UTC.match(line)
    assert match, line
    _assert_now_utc(match.group(1))
    assert "WARNING countersign.test: a message" in line


def test_gunicorn_error_and_access_log_times_are_utc(far_from_utc) -> None:
    log = Redacting(Config())
    handler = next(h for h in log.error_log.handlers if isinstance(h, logging.StreamHandler))
    line = _written(handler, log.error_log, "worker started")
    match = ISO_UTC.match(line)
    assert match, line
    _assert_now_utc(match.group(1))
    access = log.now()
    assert access.endswith(" +0000]"), access
    logged = datetime.strptime(access, "[%d/%b/%Y:%H:%M:%S +0000]").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - logged).total_seconds()) < 60
