"""Work that is slow by design (password hashing) done on a few threads of lower CPU priority.

Checking a password costs about 50–110 ms of a processor and 32 MiB (scrypt, OWASP's minimum).
When a whole staff room signs in at once, or someone tries passwords by the thousand, that work
would otherwise take its turn on the processors equally with the pages of people already signed
in, and every page would wait behind it. Done here, it runs at the lowest priority (nice 19) on at
most ``THREADS`` threads a process: it still uses every processor nothing else needs, so sign-ins
are as quick as before on a quiet server, but under load the pages come first and the queue forms
at signing in. The few threads also bound the memory a burst of sign-ins can take. It needs a
server whose workers have threads (`make run` and deploy/ serve 16 a process): a worker that
serves one request at a time would sit idle while the password check waits its turn.

hashlib's scrypt and PBKDF2 release Python's global lock while they compute, so the request's own
thread simply waits for the answer. Linux gives each thread its own priority; elsewhere the work
runs on its thread at normal priority (lowering one would lower the whole process).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

THREADS = 2
NICENESS = 19
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _lower_this_thread() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        # On Linux PRIO_PROCESS with a thread's id sets that thread's priority only.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)
    except OSError as exc:  # a system call filter that forbids it: normal priority, still bounded
        log.warning("password checks run at normal priority: %s", exc)


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=THREADS,
                thread_name_prefix="countersign-low-priority",
                initializer=_lower_this_thread,
            )
        return _pool


def _forget_after_fork() -> None:
    # A process forked from one that had the pool (gunicorn --preload) has none of its threads.
    global _pool, _lock
    _pool = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def run(function: Callable[..., T], *args: object) -> T:
    """``function(*args)`` on a low-priority thread; its answer, or its exception, here."""
    return _executor().submit(function, *args).result()
