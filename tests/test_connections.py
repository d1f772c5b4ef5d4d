"""Connections to other machines are encrypted and check who answers (ASVS V12.3.1, V12.3.4):
PostgreSQL elsewhere needs a verified TLS connection, and the LRS needs https with a trusted
certificate, or the CA the school names. Refused settings stop the app at start with a message
saying what to set."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import create_app
from tests.serving import QUICK_STOP
from tests.smtp_server import make_ca
from xapi.outbox import Lrs, put_statement

BASE = {
    "TESTING": True,
    "SECRET_KEY": "test-secret-key-not-for-production",
    "BASE_URL": "http://countersign.test",
    "MFA_ROLES": "",
}


def _app(tmp_path: Path, **config: object):
    return create_app({**BASE, "DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}", **config})


@pytest.mark.parametrize("key", ["DATABASE_URL", "MIGRATION_DATABASE_URL"])
@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://app:pw@db.school.example/countersign",
        "postgresql+psycopg://app:pw@10.0.0.5:5432/countersign?sslmode=require",
        "postgresql+psycopg://app:pw@db.school.example/countersign?sslmode=prefer",
        "postgresql+psycopg://app:pw@/countersign?host=db.school.example",
        "postgres://app:pw@192.0.2.2:5432/countersign?sslmode=disable",
        "postgresql://app:pw@localhost/countersign?hostaddr=192.0.2.2",
        "postgresql://app:pw@localhost/countersign?service=remote",
        "postgresql://app:pw@db.localhost/countersign",
        "postgresql://app:pw@/countersign?host=localhost&host=db.school.example",
    ],
)
def test_postgresql_on_another_machine_needs_a_verified_tls_connection(tmp_path, key, url) -> None:
    with pytest.raises(ValueError, match=f"COUNTERSIGN_{key} reaches PostgreSQL on"):
        _app(tmp_path, **{key: url})


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://app:pw@db.school.example/cs?sslmode=verify-full&sslrootcert=/ca.pem",
        "postgresql+psycopg://app:pw@db.school.example/cs?sslmode=verify-ca",
        "postgresql+psycopg://app:pw@127.0.0.1:5432/cs",
        "postgresql+psycopg://app:pw@localhost/cs",
        "postgresql+psycopg://app@/cs?host=/var/run/postgresql",
        "postgresql://app:pw@[::1]:5432/cs",
        "postgres://app:pw@127.0.0.1/cs",
        "postgresql://app:pw@localhost/cs?hostaddr=10.0.0.5&sslmode=verify-full",
    ],
)
def test_verified_tls_loopback_and_unix_sockets_are_accepted(tmp_path, url) -> None:
    assert _app(tmp_path, MIGRATION_DATABASE_URL=url)


@pytest.mark.parametrize(
    ("environment", "refused"),
    [
        ({"PGHOST": "192.0.2.2", "PGSSLMODE": "disable"}, True),
        ({"PGHOSTADDR": "192.0.2.2"}, True),
        ({"PGSERVICE": "remote"}, True),
        ({"PGHOST": "192.0.2.2", "PGSSLMODE": "verify-full"}, False),
        ({"PGHOST": "/run/postgresql"}, False),
        ({}, False),
    ],
)
def test_a_url_without_a_host_is_judged_by_where_libpq_would_connect(
    tmp_path, monkeypatch, environment, refused
) -> None:
    for name in ("PGHOST", "PGHOSTADDR", "PGSERVICE", "PGSSLMODE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    url = "postgresql+psycopg://app:pw@/countersign"
    if refused:
        with pytest.raises(ValueError, match="reaches PostgreSQL on"):
            _app(tmp_path, MIGRATION_DATABASE_URL=url)
    else:
        assert _app(tmp_path, MIGRATION_DATABASE_URL=url)


def test_a_trusted_network_can_be_named_explicitly(tmp_path) -> None:
    url = "postgresql+psycopg://app:pw@10.0.0.5/cs"
    assert _app(tmp_path, MIGRATION_DATABASE_URL=url, DATABASE_ALLOW_PLAINTEXT=True)


@pytest.mark.parametrize(
    "endpoint", ["http://lrs.school.example/xapi", "http://10.1.1.1/xapi", "ftp://lrs/xapi"]
)
def test_the_lrs_needs_https_unless_it_is_on_this_machine(tmp_path, endpoint) -> None:
    with pytest.raises(ValueError, match="COUNTERSIGN_XAPI_ENDPOINT must be an https://"):
        _app(tmp_path, XAPI_ENDPOINT=endpoint)
    assert put_statement(Lrs(endpoint), "id", {}).error.startswith(
        "The xAPI endpoint must be https://"
    )
    assert _app(tmp_path, XAPI_ENDPOINT="http://127.0.0.1:9000/xapi")
    assert _app(tmp_path, XAPI_ENDPOINT="https://lrs.school.example/xapi")


class _Lrs(http.server.BaseHTTPRequestHandler):
    def do_PUT(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_lrs(tmp_path) -> Iterator[tuple[str, Path]]:
    made = make_ca(tmp_path / "tls", names=("localhost", "127.0.0.1"))
    server = http.server.HTTPServer(("127.0.0.1", 0), _Lrs)
    server.socket = made.server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(QUICK_STOP,), daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/xapi", made.ca_file
    finally:
        server.shutdown()
        server.server_close()


def test_an_lrs_certificate_no_trusted_ca_signed_is_refused(https_lrs) -> None:
    endpoint, ca_file = https_lrs
    refused = put_statement(Lrs(endpoint, "user", "secret"), "s1", {"id": "s1"})
    assert not refused.stored and "CERTIFICATE_VERIFY_FAILED" in (refused.error or "")
    trusted = put_statement(Lrs(endpoint, "user", "secret", str(ca_file)), "s1", {"id": "s1"})
    assert trusted.stored and trusted.status == 204
