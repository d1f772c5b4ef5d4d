"""A real gunicorn serving Countersign on 127.0.0.1, and learners who talk to it over HTTP.

Used by the crash tests: the server runs exactly as in production (sync workers, no ``--preload``),
its workers can be killed mid-request, and every request a learner makes is bounded in time and
recorded, so a test can compare what the server answered with what the database holds.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from core.config import ROOT

GUNICORN = Path(sys.executable).with_name("gunicorn")
LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")
CSRF = re.compile(
    r'name="csrf_token" type="hidden" value="([^"]+)"|name="csrf_token" value="([^"]+)"'
)
REQUEST_TIMEOUT = 30  # seconds; a worker that hangs fails the test instead of stalling it
DROPPED = (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)


class Server:
    """gunicorn with sync workers on a port the kernel picks, in its own process group."""

    def __init__(
        self, env: dict[str, str], log: Path, workers: int = 4, app: str = "wsgi:app"
    ) -> None:
        self.env, self.log, self.workers, self.app = env, log, workers, app
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.access_log = log.with_name(log.stem + "-access.log")

    def start(self, timeout: float = 30) -> None:
        """Start the master and wait until it listens; the workers boot meanwhile."""
        command = [
            str(GUNICORN), "--workers", str(self.workers), "--worker-class", "sync",
            "--bind", "127.0.0.1:0", "--timeout", "30", "--graceful-timeout", "3",
            "--log-level", "info", "--error-logfile", str(self.log),
            "--access-logfile", str(self.access_log), "--access-logformat", "%(p)s %(r)s %(s)s %(M)sms",
            self.app,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so stop() reaches every worker
        )
        deadline = time.monotonic() + timeout
        while not self.url:
            self._check_alive()
            match = LISTENING.search(self.log_text())
            if match:
                self.url = f"http://127.0.0.1:{match.group(1)}"
            elif time.monotonic() > deadline:
                raise AssertionError(f"gunicorn did not listen:\n{self.log_text()}")
            time.sleep(0.05)

    def wait_for_workers(self, timeout: float) -> None:
        """Wait until every worker is running and the app answers."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            if len(self.worker_pids()) == self.workers:
                # A static file: the answer needs the app loaded, and no database.
                with contextlib.suppress(*DROPPED, requests.exceptions.Timeout):
                    probe = requests.get(f"{self.url}/static/favicon.svg", timeout=10)
                    if probe.status_code == 200:
                        return
            if time.monotonic() > deadline:
                raise AssertionError(f"gunicorn workers did not start:\n{self.log_text()}")
            time.sleep(0.1)

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"gunicorn exited ({self.process.returncode}):\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """The master's children, oldest first (the kernel lists them in the order forked)."""
        pids: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                pids += [int(p) for p in (task / "children").read_text().split()]
        return pids

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the whole process group if it has not gone within 10 s."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # stragglers: its own group, by its id
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

    def serving_pids(self) -> set[int]:
        """Workers that have answered a request since they started (gunicorn's access log names
        the worker), so a kill lands on a worker that is serving, not on one still booting."""
        try:
            lines = self.access_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return set()
        answered = {int(line[1 : line.index(">")]) for line in lines if line.startswith("<")}
        return answered & set(self.worker_pids())


class Killer(threading.Thread):
    """SIGKILLs a serving worker each time the load has made ``every`` more requests, until it
    has killed ``kills``; at most ``booting`` workers are left starting up at once."""

    def __init__(self, server: Server, tally: Tally, kills: int, every: int, booting: int) -> None:
        super().__init__(daemon=True)
        self.server, self.tally = server, tally
        self.kills, self.every, self.booting = kills, every, booting
        self.killed: list[int] = []
        self.stop_event = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self._kill()
        finally:
            self.done.set()

    def _kill(self) -> None:
        due = self.every
        while len(self.killed) < self.kills and not self.stop_event.wait(0.05):
            if self.tally.requests < due:
                continue
            serving = sorted(self.server.serving_pids() - set(self.killed))
            if len(serving) <= self.server.workers - self.booting - 1:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(serving[0], signal.SIGKILL)
                self.killed.append(serving[0])
            due = self.tally.requests + self.every


@dataclass
class Tally:
    """Every answer the learners got, by kind, and every request that was dropped."""

    statuses: Counter[int] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)  # set when the test has failed

    def answered(self, method: str, url: str, status: int) -> None:
        with self.lock:
            self.statuses[status] += 1
            if status >= 500:
                self.server_errors.append(f"{method} {url} -> {status}")

    def drop(self, method: str) -> None:
        with self.lock:
            self.dropped[method] += 1

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + sum(self.dropped.values())


class Browser:
    """One person's browser: a cookie jar, and requests retried when the connection drops.

    A dropped connection (a worker killed mid-request) is retried as a person would, by sending the
    same request again; ``retries`` counts how often that happened for POSTs.
    """

    def __init__(self, base: str, tally: Tally, cookies: Any = None, tries: int = 8) -> None:
        self.base, self.tally, self.tries = base, tally, tries
        self.http = requests.Session()
        if cookies is not None:
            self.http.cookies.update(cookies)
        self.retries = 0

    def tab(self) -> Browser:
        """A second tab of the same browser: same cookies, its own connection."""
        return Browser(self.base, self.tally, self.http.cookies, self.tries)

    def request(self, method: str, path: str, data: Any = None) -> requests.Response:
        url = self.base + path
        for attempt in range(self.tries):
            if self.tally.stop.is_set():
                raise RuntimeError("stopped: another learner failed")
            try:
                response = self.http.request(
                    method, url, data=data, timeout=REQUEST_TIMEOUT, allow_redirects=False
                )
            except DROPPED:
                self.tally.drop(method)
                if method == "POST":
                    self.retries += 1
                time.sleep(0.05 * (attempt + 1))
                continue
            self.tally.answered(method, path, response.status_code)
            return response
        raise AssertionError(f"{method} {path}: the connection dropped {self.tries} times")

    def csrf(self, path: str) -> str:
        page = self.request("GET", path)
        assert page.status_code == 200, f"GET {path} -> {page.status_code}"
        match = CSRF.search(page.text)
        assert match, f"no CSRF token on {path}"
        return match.group(1) or match.group(2)

    def post(self, path: str, data: dict[str, Any]) -> requests.Response:
        return self.request("POST", path, data=data)

    def close(self) -> None:
        self.http.close()
