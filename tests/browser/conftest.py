"""Real headless Chromium against the app served on 127.0.0.1: shared set-up for browser tests."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from tests.serving import QUICK_STOP

CHROMIUM = os.environ.get("COUNTERSIGN_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("COUNTERSIGN_TEST_ARTIFACTS", "test-artifacts"))


@pytest.fixture
def app_config() -> dict:
    return {"SERVER_NAME": None}


class _OneRequestPerConnection(WSGIRequestHandler):
    """No keep-alive: a connection the browser leaves open would hold a thread past the test."""

    protocol_version = "HTTP/1.0"


@contextmanager
def served(app: Flask) -> Iterator[BaseWSGIServer]:
    """The app on 127.0.0.1 (a free port), a thread per request, until the block ends.

    On the way out it waits for the requests still being answered (a late favicon, a navigation
    the test did not wait for): a request that finished after the app's engine was disposed would
    hand its connection back to a pool nothing refers to, left for the garbage collector to find
    open, in whichever later test it runs.
    """
    server = make_server(
        "127.0.0.1", 0, app, threaded=True, request_handler=_OneRequestPerConnection
    )
    thread = threading.Thread(target=server.serve_forever, args=(QUICK_STOP,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()  # joins the threads of requests in flight


@pytest.fixture
def base_url(app) -> Iterator[str]:
    with served(app) as server:
        url = f"http://127.0.0.1:{server.server_port}"
        app.config["BASE_URL"] = url  # the site's own address: requests to other hosts are refused
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():  # `make test` installs it; say so rather than fail obscurely
        pytest.skip(f"Chromium not found at {CHROMIUM} (make test installs it)")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


def watch_console(page) -> list[str]:
    """Collect script errors and Content-Security-Policy refusals (HTTP statuses are checked by
    the tests themselves)."""
    problems: list[str] = []
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.on("pageerror", lambda e: problems.append(str(e)))
    return problems


def check_accessibility(page, name: str) -> None:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    serious = [
        v for v in results.response["violations"] if v.get("impact") in ("serious", "critical")
    ]
    assert not serious, f"{name}: " + results.generate_report()
