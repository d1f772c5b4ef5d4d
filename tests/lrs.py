"""A real Learning Record Store for the xAPI tests: ralph, on 127.0.0.1, from its own virtualenv.

``make test`` builds ``.venv-lrs`` from requirements-lrs.txt (ralph's pins do not fit ours). The
LRS keeps statements in files in a temporary folder and accepts one Basic-auth user.

Ralph 5.1.0's file-system LRS backend writes each batch of statements with the "create" operation
into one file (``fs_lrs.jsonl``), so every write after the first fails ("already exists and
overwrite is not allowed") and the LRS answers 500. The launcher below makes that backend append
instead, which is what an LRS kept in one JSON-lines file needs; everything else (validation,
duplicate ids, authentication, queries) is ralph's own.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess  # nosec B404 - starts the LRS the tests talk to
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import ROOT

PYTHON = ROOT / ".venv-lrs" / "bin" / "python"
USERNAME = "countersign"
PASSWORD = "lrs password for the tests"
START_SECONDS = 60
LAUNCHER = """
import sys

import uvicorn
from ralph.backends.data.base import BaseOperationType
from ralph.backends.lrs.fs import FSLRSBackend

FSLRSBackend.default_operation_type = BaseOperationType.APPEND
uvicorn.run("ralph.api:app", host="127.0.0.1", port=int(sys.argv[1]), access_log=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lrs:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/xAPI"

    def _get(self, path: str) -> Any:
        credentials = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            headers={"Authorization": f"Basic {credentials}", "X-Experience-API-Version": "1.0.3"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # nosec B310
            return json.load(response)

    def statements(self, email: str) -> list[dict]:
        """Every statement the LRS holds for this person, through its own xAPI query."""
        agent = json.dumps({"objectType": "Agent", "mbox": f"mailto:{email}"})
        found: list[dict] = []
        path = "/xAPI/statements?" + urllib.parse.urlencode({"agent": agent, "limit": 100})
        while path:
            page = self._get(path)
            found.extend(page["statements"])
            path = page.get("more") or ""
        return found

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start(folder: Path) -> Lrs:
    """Start ralph with the filesystem backend and an auth file in ``folder``; wait until it
    answers (or fail, with its log)."""
    hashed = subprocess.run(  # nosec B603 - fixed arguments
        [str(PYTHON), "-c",
         "import bcrypt, sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())",
         PASSWORD],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    auth_file = folder / "auth.json"
    auth_file.write_text(
        json.dumps([{"username": USERNAME, "hash": hashed, "scopes": ["all"],
                     "agent": {"objectType": "Agent", "mbox": "mailto:lrs@countersign.example"}}])
    )  # fmt: skip
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(folder),
        "RALPH_APP_DIR": str(folder),
        "RALPH_AUTH_FILE": str(auth_file),
        "RALPH_RUNSERVER_BACKEND": "fs",
        "RALPH_BACKENDS__LRS__FS__DEFAULT_DIRECTORY_PATH": str(folder / "statements"),
        "RALPH_BACKENDS__DATA__FS__DEFAULT_DIRECTORY_PATH": str(folder / "statements"),
    }
    port = free_port()
    log_path = folder / "lrs.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # nosec B603 - fixed arguments
            [str(PYTHON), "-c", LAUNCHER, str(port)],
            cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    lrs = Lrs(process, port, log_path)
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            with urllib.request.urlopen(  # nosec B310
                f"http://127.0.0.1:{port}/__heartbeat__", timeout=2
            ) as response:
                if response.status == 200:
                    return lrs
        except (urllib.error.URLError, OSError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            lrs.stop()
            raise RuntimeError(f"the LRS did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
