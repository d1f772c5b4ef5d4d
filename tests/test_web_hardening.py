"""Web hardening: evidence-pack rendering, host checks, cookies and file permissions."""

from __future__ import annotations

import http.server
import logging
import os
import re
import stat
import threading
from collections.abc import Iterator

import pytest

from tests.conftest import PASSWORD, csrf_token
from tests.serving import QUICK_STOP


class _Sink(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sink() -> Iterator[http.server.HTTPServer]:
    """A listener on 127.0.0.1 that counts every request it gets: nothing should reach it."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Sink)
    server.hits = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(QUICK_STOP,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


# --- F14: the evidence pack fetches nothing ---------------------------------------------------------


@pytest.mark.parametrize(
    "markup",
    [
        '<link rel="stylesheet" href="{base}/style.css">',
        '<img src="{base}/img.png">',
        '<style>@import url("{base}/import.css");</style>',
        '<p style="background: url({base}/bg.png)">x</p>',
        '<link rel="stylesheet" href="file://{secret}">',
        '<img src="file:///etc/passwd">',
        '<img src="/relative.png">',
    ],
)
def test_evidence_pack_renderer_fetches_no_url_and_no_file(app, sink, tmp_path, markup):
    from weasyprint.urls import FatalURLFetchingError

    from reports.views import pack_pdf

    secret = tmp_path / "secret.css"
    secret.write_text("body { color: red }")
    html = markup.format(base=f"http://127.0.0.1:{sink.server_port}", secret=secret)
    with app.app_context(), pytest.raises(FatalURLFetchingError) as refused:
        pack_pdf(html + "<p>Evidence</p>", app.config["BASE_URL"])
    # Refused by the renderer's own fetcher before anything was opened or requested.
    assert "fetch nothing" in str(refused.value.__cause__)
    assert sink.hits == []


@pytest.mark.usefixtures("published")
def test_evidence_pack_prints_payloads_as_text_and_fetches_nothing(app, auth, make_person, sink):
    base = f"http://127.0.0.1:{sink.server_port}"
    payload = f'<img src="{base}/name.png"><link rel=stylesheet href="{base}/x.css">'
    make_person("staff", name=payload, schools=("infant",))
    client = auth.as_person(make_person("governor", password=PASSWORD))
    response = client.get("/reports/schools/infant/evidence.pdf")
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    assert sink.hits == []


# --- F11: host names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "countersign.test.evil.example",
                                  "localhost", "127.0.0.1:5000", "countersign.test@evil.example",
                                  "evil.example/countersign.test"])  # fmt: skip
def test_requests_for_another_host_are_refused(client, host):
    page = client.get("/sign-in", headers={"Host": host})
    assert page.status_code == 400
    assert "does not answer to that host name" in page.get_data(as_text=True)
    api = client.get("/api/v1/openapi.json", headers={"Host": host})
    assert api.status_code == 400 and api.get_json()["error"]["code"] == "invalid_host"


def test_a_post_to_another_host_changes_nothing(app, auth, make_person):
    from sqlalchemy import func, select

    from core.db import db
    from people.models import SignInAttempt

    make_person("staff", email="h@ladysmith.example")
    token = csrf_token(auth.client, "/sign-in")
    response = auth.client.post(
        "/sign-in", data={"email": "h@ladysmith.example", "password": PASSWORD,
                          "csrf_token": token}, headers={"Host": "evil.example"},
    )  # fmt: skip
    assert response.status_code == 400
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(SignInAttempt)) == 0


@pytest.mark.parametrize(
    "host", ["countersign.test", "COUNTERSIGN.TEST:8443", "countersign.test:80"]
)
def test_the_configured_host_on_any_port_is_served(client, host):
    assert client.get("/sign-in", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    "app_config", [{"TRUSTED_HOSTS": " alias.example , .school.example,[2001:db8::1]:443"}]
)
@pytest.mark.parametrize(
    "host, status",
    [("alias.example", 200), ("alias.example:8080", 200), ("school.example", 200),
     ("www.school.example", 200), ("[2001:db8::1]", 200), ("countersign.test", 200),
     ("evilschool.example", 400), ("school.example.evil", 400), ("other.alias.example", 400)],
)  # fmt: skip
def test_trusted_hosts_are_served_too(client, host, status):
    assert client.get("/sign-in", headers={"Host": host}).status_code == status


@pytest.mark.parametrize("base", ["http://127.0.0.1:5000", "http://localhost:5000"])
@pytest.mark.parametrize(
    "host, status",
    [("127.0.0.1:5000", 200), ("localhost:5000", 200), ("127.0.0.1:8123", 200),
     ("localhost", 200), ("[::1]:5000", 200), ("evil.example", 400),
     ("localhost.evil.example", 400)],
)  # fmt: skip
def test_on_loopback_localhost_and_127_0_0_1_both_work(app, base, host, status):
    app.config["BASE_URL"] = base
    response = app.test_client().get("/sign-in", headers={"Host": host})
    assert response.status_code == status


def test_trusted_hosts_come_from_the_environment(monkeypatch, database_url):
    from app import create_app

    monkeypatch.setenv("COUNTERSIGN_TRUSTED_HOSTS", "a.example,b.example")
    app = create_app({"DATABASE_URL": database_url, "SECRET_KEY": "k", "TESTING": True,
                      "BASE_URL": "https://countersign.test"})  # fmt: skip
    assert app.config["TRUSTED_HOSTS"] is None  # Flask's own check stays off: ours follows BASE_URL
    for host, status in (("a.example", 200), ("b.example", 200), ("c.example", 400)):
        assert app.test_client().get("/sign-in", headers={"Host": host}).status_code == status


# --- F11: cookies and HSTS under https -----------------------------------------------------------


def _sign_in_cookie(app, make_person, base: str = "https://countersign.test") -> str:
    make_person("staff", email="c@ladysmith.example")
    client = app.test_client()
    page = client.get("/sign-in", base_url=base).get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    response = client.post("/sign-in", base_url=base, headers={"Referer": f"{base}/sign-in"}, data={
        "email": "c@ladysmith.example", "password": PASSWORD, "csrf_token": token})  # fmt: skip
    assert response.status_code == 302, response.get_data(as_text=True)
    assert client.get("/", base_url=base).status_code == 200  # the browser sends it back
    cookies = response.headers.getlist("Set-Cookie")
    return next(c for c in cookies if "_session=" in c.split(";")[0])


@pytest.mark.parametrize("app_config", [{"BASE_URL": "https://countersign.test"}])
def test_https_address_makes_the_session_cookie_secure_with_the_host_prefix(app, make_person):
    cookie = _sign_in_cookie(app, make_person)
    assert cookie.startswith("__Host-countersign_session=")
    attributes = [a.strip().lower() for a in cookie.split(";")[1:]]
    assert "secure" in attributes and "httponly" in attributes and "path=/" in attributes
    assert not any(a.startswith("domain=") for a in attributes)  # __Host-: this host only
    hsts = app.test_client().get("/sign-in", base_url="https://countersign.test").headers
    assert hsts["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


@pytest.mark.parametrize(
    "app_config", [{"BASE_URL": "https://countersign.test", "HSTS_SECONDS": 0}]
)
def test_hsts_can_be_turned_off_by_a_setting(client):
    assert "Strict-Transport-Security" not in client.get("/sign-in").headers


def test_plain_http_address_keeps_plain_cookies_and_no_hsts(app, make_person):
    cookie = _sign_in_cookie(app, make_person, "http://countersign.test")
    assert cookie.startswith("countersign_session=") and "Secure" not in cookie


def test_https_address_with_secure_cookies_off_warns_at_start(monkeypatch, database_url, caplog):
    from app import create_app

    monkeypatch.setenv("COUNTERSIGN_BASE_URL", "https://training.school.example")
    monkeypatch.setenv("COUNTERSIGN_SECURE_COOKIES", "false")
    caplog.set_level(logging.WARNING, logger="countersign")
    app = create_app({"DATABASE_URL": database_url, "SECRET_KEY": "k"})
    assert app.config["SECURE_COOKIES"] is False
    assert app.config["SESSION_COOKIE_NAME"] == "countersign_session"
    assert any(
        r.levelno == logging.WARNING and "SECURE_COOKIES is off" in r.getMessage()
        for r in caplog.records
    )
    caplog.clear()
    monkeypatch.delenv("COUNTERSIGN_SECURE_COOKIES")
    secure = create_app({"DATABASE_URL": database_url, "SECRET_KEY": "k"})
    assert secure.config["SECURE_COOKIES"] is True and secure.config["HSTS_SECONDS"] > 0
    assert not [r for r in caplog.records if "SECURE_COOKIES" in r.getMessage()]
    monkeypatch.setenv("COUNTERSIGN_SECURE_COOKIES", "perhaps")
    with pytest.raises(ValueError, match="COUNTERSIGN_SECURE_COOKIES"):
        create_app({"DATABASE_URL": database_url, "SECRET_KEY": "k"})


# --- F11: file permissions ---------------------------------------------------------------------------


def test_instance_folder_database_and_keys_are_private(tmp_path, monkeypatch):
    from app import create_app
    from core import config
    from core.db import db
    from core.migrate import upgrade

    old = os.umask(0o022)  # a shell's usual umask: files would be world-readable
    try:
        instance = tmp_path / "instance"
        instance.mkdir(mode=0o755)
        instance.chmod(0o755)
        old_db = instance / "old.db"
        old_db.write_bytes(b"")
        old_db.chmod(0o644)
        for name in ("secret_key", "audit_key", "lti_private_key.pem"):
            (instance / name).write_text("x")
            (instance / name).chmod(0o644)
        app = create_app({"DATABASE_URL": f"sqlite:///{old_db}", "SECRET_KEY": "k"})
        app.instance_path = str(instance)
        config.protect_files(app)
        assert stat.S_IMODE(instance.stat().st_mode) == 0o700
        for path in (old_db, instance / "secret_key", instance / "audit_key",
                     instance / "lti_private_key.pem"):  # fmt: skip
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        with app.app_context():
            db.engine.dispose()

        fresh = tmp_path / "fresh" / "countersign.db"
        fresh.parent.mkdir()
        os.umask(0o022)  # set again: the app sets its own at start, whatever it was before
        new = create_app({"DATABASE_URL": f"sqlite:///{fresh}", "SECRET_KEY": "k"})
        with new.app_context():
            upgrade()
            db.engine.dispose()
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
        made = tmp_path / "made-instance"
        new.instance_path = str(made)
        config.protect_files(new)
        assert stat.S_IMODE(made.stat().st_mode) == 0o700
    finally:
        os.umask(old)
