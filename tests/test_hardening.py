"""Session lifetimes, security headers, upload limits and the randomness of codes and links."""

from __future__ import annotations

import base64
import pyexpat
import re
import secrets
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app import create_app
from core.db import db
from core.security_headers import CSP
from core.web import TIMED_OUT
from people.models import Person
from tests.conftest import PASSWORD, Auth, csrf_token

COOKIE = "countersign_session"
DOMAIN = "countersign.test"
URLSAFE = re.compile(r"^[A-Za-z0-9_-]+$")


def _cookie(client: FlaskClient) -> str:
    return client.get_cookie(COOKIE, domain=DOMAIN).value


def _session(client: FlaskClient) -> dict[str, Any]:
    with client.session_transaction() as sess:
        return dict(sess)


def _age_session(client: FlaskClient, idle: float = 0, lived: float = 0) -> None:
    """Move the session's clock back, as if its last request (or its sign-in) were long ago."""
    with client.session_transaction() as sess:
        sess["_seen"] -= idle
        sess["_started"] -= lived


# --- sessions --------------------------------------------------------------------------------------


def test_sign_in_starts_a_new_session_id_and_cookie(app, auth, make_person):
    pid = make_person("staff")
    client = auth.client
    client.get("/sign-in")
    with client.session_transaction() as sess:
        sess["_sid"] = "planted-by-someone-else"  # a fixated identifier from before sign-in
    before = _cookie(client)
    auth.as_person(pid)
    after = _cookie(client)
    first = _session(client)["_sid"]
    assert after != before
    assert first != "planted-by-someone-else"
    assert URLSAFE.match(first) and len(first) >= 43  # 256 random bits

    replay = app.test_client()
    replay.set_cookie(COOKIE, before, domain=DOMAIN)
    assert replay.get("/").status_code == 302  # the cookie from before sign-in is not signed in

    client.post("/sign-out", data={"csrf_token": csrf_token(client, "/")})
    auth.as_person(pid)
    assert _session(client)["_sid"] not in (first, "planted-by-someone-else")


def test_an_idle_session_times_out_and_sign_in_returns_to_the_page(auth, make_person):
    client = auth.as_person(make_person("staff", email="idle@ladysmith.example"))
    assert client.get("/history").status_code == 200
    _age_session(client, idle=61 * 60)
    stale = _cookie(client)
    response = client.get("/history?tab=all")
    assert response.status_code == 302
    where = urlsplit(response.location)
    assert where.path == "/sign-in" and parse_qs(where.query) == {"next": ["/history?tab=all"]}
    page = client.get(response.location).get_data(as_text=True)
    assert TIMED_OUT in page
    assert client.get("/").status_code == 302  # signed out, not just redirected once

    replay = auth.app.test_client()
    replay.set_cookie(COOKIE, stale, domain=DOMAIN)  # a copy of the idle cookie
    assert replay.get("/").status_code == 302

    token = csrf_token(client, response.location)
    signed_in = client.post(
        response.location,
        data={"email": "idle@ladysmith.example", "password": PASSWORD, "csrf_token": token},
    )
    assert signed_in.status_code == 302 and signed_in.location == "/history?tab=all"


def test_each_request_keeps_an_active_session_alive(auth, make_person):
    client = auth.as_person(make_person("staff"))
    _age_session(client, idle=59 * 60)
    assert client.get("/").status_code == 200
    assert abs(_session(client)["_seen"] - time.time()) < 60  # the clock moved on
    _age_session(client, idle=59 * 60)
    assert client.get("/").status_code == 200


def test_a_session_ends_after_its_absolute_lifetime_however_active(auth, make_person):
    client = auth.as_person(make_person("staff"))
    _age_session(client, lived=11 * 3600 + 59 * 60)
    assert client.get("/").status_code == 200
    _age_session(client, lived=2 * 60)  # now 12 hours and a minute since signing in
    response = client.get("/")
    assert response.status_code == 302 and response.location.startswith("/sign-in?next=")
    assert TIMED_OUT in client.get(response.location).get_data(as_text=True)


@pytest.mark.parametrize("app_config", [{"SESSION_IDLE_MINUTES": 5, "SESSION_MAX_HOURS": 1}])
def test_session_limits_are_configurable(app, auth, make_person):
    client = auth.as_person(make_person("staff"))
    _age_session(client, idle=4 * 60)
    assert client.get("/").status_code == 200
    _age_session(client, idle=6 * 60)
    assert client.get("/").status_code == 302
    client = Auth(app, app.test_client()).as_person(make_person("staff"))
    _age_session(client, lived=61 * 60)
    assert client.get("/").status_code == 302
    assert app.permanent_session_lifetime.total_seconds() == 3600


def test_a_signed_in_session_without_its_clock_is_signed_out(auth, make_person):
    client = auth.as_person(make_person("staff"))
    with client.session_transaction() as sess:
        del sess["_started"]
    assert client.get("/").status_code == 302


def test_session_settings_come_from_the_environment_and_are_checked(monkeypatch, database_url):
    monkeypatch.setenv("COUNTERSIGN_SESSION_IDLE_MINUTES", "15")
    monkeypatch.setenv("COUNTERSIGN_SESSION_MAX_HOURS", "8")
    config = {"DATABASE_URL": database_url, "SECRET_KEY": "k"}
    app = create_app(config)
    assert app.config["SESSION_IDLE_MINUTES"] == 15 and app.config["SESSION_MAX_HOURS"] == 8
    assert app.permanent_session_lifetime.total_seconds() == 8 * 3600
    for bad in (0, -1, "sixty", True):
        monkeypatch.setenv("COUNTERSIGN_SESSION_IDLE_MINUTES", str(bad).lower())
        with pytest.raises(ValueError, match="COUNTERSIGN_SESSION_IDLE_MINUTES"):
            create_app(config)


# --- headers ---------------------------------------------------------------------------------------


def test_no_hsts_without_https(client):
    assert "Strict-Transport-Security" not in client.get("/sign-in").headers


@pytest.mark.parametrize(
    "app_config, expected",
    [
        ({"SECURE_COOKIES": True}, "max-age=31536000; includeSubDomains"),
        ({"SECURE_COOKIES": True, "HSTS_SECONDS": 600}, "max-age=600; includeSubDomains"),
        ({"HSTS_SECONDS": 86400}, "max-age=86400; includeSubDomains"),
        ({"SECURE_COOKIES": True, "HSTS_SECONDS": 0}, None),
    ],
)
def test_hsts_is_sent_when_configured_for_https(client, expected):
    for url in ("/sign-in", "/api/v1/openapi.json", "/no-such-page"):
        assert client.get(url).headers.get("Strict-Transport-Security") == expected, url


def test_csp_allows_no_inline_script_and_no_framing(client):
    csp = client.get("/sign-in").headers["Content-Security-Policy"]
    assert csp == CSP
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp


def test_templates_have_no_inline_scripts_or_event_handlers():
    root = Path(__file__).resolve().parent.parent
    templates = [p for p in root.glob("*/templates/**/*.html") if ".venv" not in p.parts]
    assert len(templates) > 20
    for path in templates:
        text = path.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert "src=" in tag, f"{path}: inline script {tag}"
        assert not re.search(r"\son[a-z]+\s*=", text), f"{path}: inline event handler"


@pytest.mark.usefixtures("published")
def test_personal_pages_are_never_cached(auth, make_person):
    me = make_person("staff", "admin")
    client = auth.as_person(me)
    for url in ("/", "/history", "/account/password", "/admin/people", f"/admin/people/{me}"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.headers["Cache-Control"] == "no-store", url
    with client.get("/static/countersign.js") as static:
        assert "no-store" not in static.headers.get("Cache-Control", "")


# --- uploads ---------------------------------------------------------------------------------------


@pytest.fixture
def admin(auth: Auth, make_person: Any) -> Auth:
    auth.as_person(make_person("admin", name="Alex Admin"))
    return auth


def _upload(admin: Auth, content: bytes, filename: str) -> Any:
    """POST the file as a browser would. The body is built here, in memory: the test client's
    own multipart encoder spools large bodies to a temporary file it leaves open on a 413."""
    token = csrf_token(admin.client, "/admin/people/import")
    boundary = "----countersign-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{token}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: text/csv\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return admin.client.post(
        "/admin/people/import",
        data=body,
        content_type=f"multipart/form-data; boundary={boundary}",
    )


def _people(app: Flask) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Person))


def _csv(size: int) -> bytes:
    """A valid people CSV of at least ``size`` bytes."""
    rows, total, n = [b"name,email,roles,schools"], 25, 0
    while total < size:
        n += 1
        rows.append(b"Person %d,person.%d@ladysmith.example,staff," % (n, n))
        total += len(rows[-1]) + 1
    return b"\n".join(rows) + b"\n"


def test_a_csv_over_the_upload_limit_is_refused_and_nothing_is_imported(app, admin):
    before = _people(app)
    big = _csv(1024 * 1024 + 10)  # valid rows, but more than the 1 MB limit
    assert len(big) < app.config["MAX_CONTENT_LENGTH"]
    response = _upload(admin, big, "people.csv")
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "The file is larger than 1 MB" in page
    assert 'type="file"' in page  # the form is shown again
    assert _people(app) == before


@pytest.mark.parametrize("app_config", [{"IMPORT_MAX_BYTES": 200}])
def test_the_csv_upload_limit_is_configurable(app, admin):
    response = _upload(admin, _csv(300), "people.csv")
    assert response.status_code == 400
    assert "The file is larger than" in response.get_data(as_text=True)
    assert _people(app) == 1
    assert _upload(admin, _csv(150), "people.csv").status_code == 302  # under it: imported
    assert _people(app) > 1


def test_a_body_over_the_global_limit_is_refused_plainly(app, admin):
    before = _people(app)
    response = _upload(admin, _csv(3 * 1024 * 1024), "people.csv")
    assert response.status_code == 413
    page = response.get_data(as_text=True)
    assert "That file is too large" in page and "at most 2 MB" in page
    assert _people(app) == before


@pytest.mark.parametrize(
    "content, filename, message",
    [
        (b"PK\x03\x04\x14\x00\x06\x00" + b"\x00" * 40, "people.csv", "a spreadsheet workbook"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 40, "people.csv", "old-style Excel"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "people.csv", "a PDF document"),
        (b"name,email,roles,schools\nA\x00B,a@x.example,staff,\n", "people.csv", "not a text"),
        (b"name,email\n\x1b[31m,x\n", "people.txt", "not a text file"),
        (b"name,email,roles\n\xff\xfe,x,staff\n", "people.csv", "not UTF-8 text"),
        (b"  \n", "people.csv", "The file is empty."),
        (b"name,email,roles,schools\n", "people.xlsx", "Upload a .csv file."),
        (b"MZ\x90\x00", "people.exe", "Upload a .csv file."),
    ],
)
def test_files_that_are_not_csv_text_are_refused(app, admin, content, filename, message):
    before = _people(app)
    response = _upload(admin, content, filename)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert message in page
    assert 'type="file"' in page
    assert _people(app) == before


def test_a_csv_with_a_byte_order_mark_and_windows_lines_still_imports(app, admin):
    content = b"\xef\xbb\xbfname,email,roles,schools\r\nBo M,bom@ladysmith.example,staff,\r\n"
    assert _upload(admin, content, "people.CSV").status_code == 302
    with app.app_context():
        assert db.session.scalar(select(Person).where(Person.email == "bom@ladysmith.example"))


# --- Moodle XML ------------------------------------------------------------------------------------

BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE quiz [<!ENTITY l0 "lol">'
    + b"".join(b'<!ENTITY l%d "%s">' % (i, b"&l%d;" % (i - 1) * 10) for i in range(1, 10))
    + b"]><quiz>&l9;</quiz>"
)
SMALL_ENTITY = b'<!DOCTYPE quiz [<!ENTITY x "y">]><quiz>&x;</quiz>'
EXTERNAL_ENTITY = b'<!DOCTYPE quiz [<!ENTITY x SYSTEM "file:///etc/passwd">]><quiz>&x;</quiz>'


@pytest.mark.skipif(pyexpat.version_info < (2, 4, 0), reason="expat before 2.4 has no limit")
def test_the_standard_library_alone_stops_a_billion_laughs():
    # Why the DTD is refused outright as well: the standard library's limit depends on the expat
    # it was built with, and smaller expansions (below expat's threshold) still pass.
    with pytest.raises(ET.ParseError, match="amplification"):
        ET.fromstring(BILLION_LAUGHS)  # nosec B314 # the point of the test
    assert ET.fromstring(SMALL_ENTITY).text == "y"  # nosec B314 # expanded by the stdlib


@pytest.mark.parametrize("data", [BILLION_LAUGHS, SMALL_ENTITY, EXTERNAL_ENTITY])
def test_moodle_import_refuses_dtds_and_entities(data):
    from quizzes.moodle import MoodleXMLError, import_questions

    with pytest.raises(MoodleXMLError, match="DTD"):
        import_questions(data)


POLICY = "social-media-policy"


def _quiz_import(runner: Any, path: Path) -> Any:
    return runner.invoke(args=["quiz", "import", POLICY, "tone", str(path), "--replace"])


@pytest.mark.parametrize("app_config", [{"MOODLE_MAX_BYTES": 50_000}])
def test_moodle_import_command_refuses_large_odd_and_dangerous_files(
    app, runner, editable_content, tmp_path
):
    app.config["CONTENT_DIR"] = str(editable_content)
    bank = editable_content / POLICY / "08-tone.quiz.yaml"
    before = bank.read_bytes()
    exported = tmp_path / "tone.xml"
    assert (
        runner.invoke(args=["quiz", "export", POLICY, "tone", "-o", str(exported)]).exit_code == 0
    )
    text = exported.read_bytes()
    assert len(text) < 50_000

    big = tmp_path / "big.xml"
    big.write_bytes(text.replace(b"</quiz>", b"<!--" + b"x" * 50_000 + b"--></quiz>"))
    result = _quiz_import(runner, big)
    assert result.exit_code != 0 and "larger than" in result.output

    renamed = tmp_path / "tone.yaml"
    renamed.write_bytes(text)
    result = _quiz_import(runner, renamed)
    assert result.exit_code != 0 and "must end .xml" in result.output

    laughs = tmp_path / "laughs.xml"
    laughs.write_bytes(BILLION_LAUGHS)
    result = _quiz_import(runner, laughs)
    assert result.exit_code != 0 and "DTD" in result.output

    html = tmp_path / "page.xml"
    html.write_bytes(b"<html><body>not a quiz</body></html>")
    result = _quiz_import(runner, html)
    assert result.exit_code != 0 and "root element must be <quiz>" in result.output

    assert bank.read_bytes() == before
    assert _quiz_import(runner, exported).exit_code == 0  # the real thing still imports


# --- random codes and links ------------------------------------------------------------------------


@pytest.fixture
def recorded_randomness(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every call to ``secrets.token_bytes`` (behind token_urlsafe and token_hex), with its bytes:
    the values below must be made from these, so from the operating system's secure source."""
    calls: list[bytes] = []
    real = secrets.token_bytes

    def token_bytes(nbytes: int | None = None) -> bytes:
        value = real(nbytes)
        calls.append(value)
        return value

    monkeypatch.setattr(secrets, "token_bytes", token_bytes)
    return calls


def _urlsafe(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_certificate_codes_carry_at_least_128_random_bits(recorded_randomness):
    from certificates.issuing import new_code

    codes = {new_code() for _ in range(200)}
    assert len(codes) == 200
    assert len(recorded_randomness) == 200
    assert all(len(raw) >= 16 for raw in recorded_randomness)
    assert codes == {_urlsafe(raw) for raw in recorded_randomness}
    assert all(URLSAFE.match(c) and len(c) >= 22 for c in codes)


def test_api_tokens_carry_at_least_128_random_bits(app, recorded_randomness):
    from api.tokens import TOKEN_PREFIX, create_token

    with app.app_context():
        made = create_token(db.session, "Test", ["training:read"])
        db.session.rollback()
    assert any(
        len(raw) >= 16 and made.secret == TOKEN_PREFIX + _urlsafe(raw)
        for raw in recorded_randomness
    )
    assert URLSAFE.match(made.secret) and len(made.secret) >= len(TOKEN_PREFIX) + 22


@pytest.mark.usefixtures("published")
def test_quiz_attempt_public_ids_carry_at_least_128_random_bits(
    app, make_person, recorded_randomness
):
    from quizzes.attempts import start_attempt
    from quizzes.models import QuizBank
    from training.models import PolicyVersionModule

    ids = set()
    for _ in range(3):
        pid = make_person("staff")
        with app.app_context():
            person = db.session.get(Person, pid)
            link = db.session.scalar(
                select(PolicyVersionModule).where(PolicyVersionModule.bank_id.is_not(None))
            )
            bank = db.session.get(QuizBank, link.bank_id)
            recorded_randomness.clear()
            attempt = start_attempt(db.session, person, link.module_version_id, bank)
            db.session.commit()
            assert any(
                len(raw) >= 16 and attempt.public_id == _urlsafe(raw) for raw in recorded_randomness
            )
            assert URLSAFE.match(attempt.public_id) and len(attempt.public_id) >= 22
            ids.add(attempt.public_id)
    assert len(ids) == 3


def test_the_secret_key_made_on_first_start_is_256_random_bits(tmp_path, recorded_randomness):
    from core.config import _instance_secret

    key = _instance_secret(tmp_path)
    (raw,) = recorded_randomness
    assert len(raw) == 32 and key == raw.hex()
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    assert _instance_secret(tmp_path) == key  # kept, not made again


@pytest.mark.parametrize("purpose", ["invite", "reset"])
def test_invitation_and_reset_links_cannot_be_guessed_or_altered(app, make_person, purpose):
    from people.auth import LinkError, make_link_token, person_for_token

    pid = make_person("staff")
    key = app.config["SECRET_KEY"]
    with app.app_context():
        person = db.session.get(Person, pid)
        token = make_link_token(key, purpose, person)
        signature = token.rsplit(".", 1)[1]
        # An HMAC under the secret key: at least 160 bits that cannot be made without it.
        assert len(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))) >= 20
        assert person_for_token(db.session, key, purpose, token, 3600).id == pid
        altered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        for bad, secret in ((altered, key), (token, "another key"), (token + "x", key)):
            with pytest.raises(LinkError):
                person_for_token(db.session, secret, purpose, bad, 3600)
        other = "reset" if purpose == "invite" else "invite"
        with pytest.raises(LinkError):
            person_for_token(db.session, key, other, token, 3600)  # one purpose per link
