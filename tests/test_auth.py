"""Sign-in, CSRF, throttling, sign-out and password reset."""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta
from urllib.parse import quote, urlsplit

import pytest
from sqlalchemy import func, select

from app import create_app
from audit.models import AuditEvent
from core.db import db, utcnow
from people.auth import RESET_MAILS_PER_HOUR, ThrottlePolicy, reset_mail_allowed, retry_after
from people.models import Person
from tests.conftest import PASSWORD, Auth, csrf_token, join_mail_threads


def test_sign_in_with_right_password_reaches_the_dashboard(auth, make_person):
    make_person("staff", name="Sam Staff", email="sam@ladysmith.example")
    response = auth.sign_in("SAM@ladysmith.example")
    assert response.status_code == 302 and response.location == "/"
    assert "Your training" in auth.client.get("/").get_data(as_text=True)


def test_pages_need_sign_in(client):
    for url in ("/", "/history", "/policies/social-media-policy/sign"):
        response = client.get(url)
        assert response.status_code == 302
        assert response.location.startswith("/sign-in?next=")


def test_wrong_password_and_unknown_email_get_the_same_answer(auth, make_person):
    make_person("staff", email="known@ladysmith.example")
    wrong = auth.sign_in("known@ladysmith.example", "wrong password")
    unknown = auth.sign_in("unknown@ladysmith.example", "wrong password")
    assert wrong.status_code == unknown.status_code == 400
    for response in (wrong, unknown):
        assert "The email address or password is not right." in response.get_data(as_text=True)


def test_form_posted_without_csrf_token_is_refused_and_changes_nothing(auth, make_person, app):
    make_person("staff", email="csrf@ladysmith.example")
    response = auth.client.post(
        "/sign-in", data={"email": "csrf@ladysmith.example", "password": PASSWORD}
    )
    assert response.status_code == 400
    assert "This form has expired" in response.get_data(as_text=True)
    assert auth.client.get("/").status_code == 302  # still signed out


@pytest.mark.usefixtures("published")
def test_state_changing_posts_need_the_csrf_token(auth, make_person):
    auth.as_person(make_person("staff", "admin"))
    for url in (
        "/policies/social-media-policy/modules/scope/read",
        "/policies/social-media-policy/sign",
        "/admin/people/new",
        "/admin/people/1/deactivate",
        "/admin/people/1/invite",
        "/sign-out",
    ):
        assert auth.client.post(url, data={}).status_code == 400, url


def test_repeated_failures_are_throttled_across_workers(app, database_url, make_person):
    make_person("staff", email="target@ladysmith.example")
    # Two app instances on one database stand for two server workers.
    other = create_app({**app.config, "DATABASE_URL": database_url})
    first, second = Auth(app, app.test_client()), Auth(other, other.test_client())
    for n in range(5):
        worker = first if n % 2 else second
        assert worker.sign_in("target@ladysmith.example", "bad guess").status_code == 400
    blocked = first.sign_in("target@ladysmith.example")  # even the right password waits
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) > 0
    assert "Too many attempts" in blocked.get_data(as_text=True)
    assert second.sign_in("target@ladysmith.example").status_code == 429
    with other.app_context():
        db.engine.dispose()


def test_throttle_waits_double_and_end_after_the_wait(app):
    from core.db import utcnow
    from people.auth import record_attempt

    policy = ThrottlePolicy()
    with app.app_context():
        s = db.session
        for _ in range(5):
            record_attempt(s, "x@ladysmith.example", "10.0.0.1", False)
        s.commit()
        assert 29 <= retry_after(s, "x@ladysmith.example", "10.0.0.1", policy, utcnow()) <= 30
        record_attempt(s, "x@ladysmith.example", "10.0.0.1", False)
        s.commit()
        now = utcnow()
        assert 59 <= retry_after(s, "x@ladysmith.example", "10.0.0.1", policy, now) <= 60
        assert (
            retry_after(s, "x@ladysmith.example", "10.0.0.1", policy, now + timedelta(minutes=2))
            == 0
        )
        assert retry_after(s, "other@ladysmith.example", "10.0.0.2", policy, now) == 0


def test_made_up_emails_from_one_address_do_not_lock_out_a_real_user_there(auth, make_person):
    make_person("admin", email="admin@ladysmith.example")
    for n in range(25):  # one address (a school's, or a proxy's), many made-up accounts
        response = auth.sign_in(f"nobody{n}@attacker.example", "guess")
        assert response.status_code == 400, n
    assert auth.sign_in("admin@ladysmith.example").status_code == 302


def test_spraying_real_accounts_from_one_address_is_throttled(app, auth, make_person):
    emails = [f"staff{n}@ladysmith.example" for n in range(21)]
    for email in emails:
        make_person("staff", email=email)
    for email in emails[:20]:  # one guess each: no single account reaches its own limit
        assert auth.sign_in(email, "Summer2026!").status_code == 400
    blocked = auth.sign_in(emails[20], "Summer2026!")
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    # From another address the accounts are not locked: each has only one failure.
    with app.app_context():
        assert retry_after(db.session, emails[0], "10.9.9.9", ThrottlePolicy()) == 0


def test_spraying_real_accounts_does_not_stop_a_person_on_their_own_browser(app, make_person):
    for name in ("alice", "staff", "volunteer", "parent", "slt"):
        make_person("staff", email=f"{name}@ladysmith.example")
    alice = Auth(app, app.test_client())
    assert alice.sign_in("alice@ladysmith.example").status_code == 302  # her usual browser
    alice.client.post(
        "/sign-out", data={"csrf_token": csrf_token(alice.client, "/account/password")}
    )
    attacker = Auth(app, app.test_client())  # same address: the school's network
    for name in ("staff", "volunteer", "parent", "slt"):  # guessable, real addresses
        for _ in range(5):
            assert attacker.sign_in(f"{name}@ladysmith.example", "Winter2026!").status_code == 400
    # Spraying from the address is still slowed, and a new browser there meets the limit ...
    assert attacker.sign_in("alice@ladysmith.example", "Winter2026!").status_code == 429
    assert Auth(app, app.test_client()).sign_in("alice@ladysmith.example").status_code == 429
    # ... but Alice, on the browser she signed in from before, is not locked out.
    assert alice.sign_in("alice@ladysmith.example").status_code == 302


def test_a_trusted_browser_still_meets_the_per_account_limit(app, auth, make_person):
    make_person("staff", email="alice@ladysmith.example")
    make_person("staff", email="bob@ladysmith.example")
    auth.as_person(make_person("staff", email="carol@ladysmith.example"))
    auth.client.post("/sign-out", data={"csrf_token": csrf_token(auth.client, "/account/password")})
    for _ in range(5):
        assert auth.sign_in("alice@ladysmith.example", "Winter2026!").status_code == 400
    assert auth.sign_in("alice@ladysmith.example").status_code == 429  # the mark is Carol's
    for n in range(20):
        assert auth.sign_in("bob@ladysmith.example", f"guess {n}").status_code in (400, 429)
    assert auth.sign_in("carol@ladysmith.example").status_code == 302


@pytest.mark.parametrize("app_config", [{"BASE_URL": "https://countersign.test"}])
def test_under_https_the_device_mark_is_a_secure_host_only_cookie(app, make_person):
    make_person("staff", email="c@ladysmith.example")
    client = app.test_client()
    base = "https://countersign.test"
    token = csrf_token(client, "/sign-in")
    response = client.post("/sign-in", base_url=base, headers={"Referer": f"{base}/sign-in"},
                           data={"email": "c@ladysmith.example", "password": PASSWORD,
                                 "csrf_token": token})  # fmt: skip
    assert response.status_code == 302
    (mark,) = [c for c in response.headers.getlist("Set-Cookie") if "_device=" in c]
    attributes = [a.strip().lower() for a in mark.split(";")[1:]]
    assert mark.startswith("__Host-countersign_device=")
    assert {"secure", "httponly", "path=/", "samesite=lax"} <= set(attributes)
    assert not any(a.startswith("domain=") for a in attributes)


def test_a_device_mark_is_bound_to_its_person_and_signed(app, make_person):
    from people.auth import device_token, device_trusted

    ids = [make_person("staff", email=f"{n}@ladysmith.example") for n in ("alice", "bob")]
    with app.app_context():
        alice, bob = (db.session.get(Person, pid) for pid in ids)
        token = device_token(app.config["SECRET_KEY"], alice)
        assert device_trusted(app.config["SECRET_KEY"], token, alice)
        assert not device_trusted(app.config["SECRET_KEY"], token, bob)
        assert not device_trusted("another key", token, alice)
        assert not device_trusted(app.config["SECRET_KEY"], token[:-2] + "xx", alice)
        assert not device_trusted(app.config["SECRET_KEY"], None, alice)
        alice.email = "alice.new@ladysmith.example"
        assert not device_trusted(app.config["SECRET_KEY"], token, alice)
        db.session.rollback()


def test_guessing_one_account_is_throttled_from_any_address(app, make_person):
    from people.auth import record_attempt

    make_person("staff", email="one@ladysmith.example")
    with app.app_context():
        s = db.session
        for n in range(5):  # each guess from a different address
            record_attempt(s, "one@ladysmith.example", f"10.0.0.{n}", False)
        s.commit()
        assert retry_after(s, "one@ladysmith.example", "10.0.0.99", ThrottlePolicy()) > 0
        assert retry_after(s, "two@ladysmith.example", "10.0.0.1", ThrottlePolicy()) == 0


def test_sign_out_ends_the_session_even_for_a_copied_cookie(app, auth, make_person):
    auth.as_person(make_person("staff"))
    copied = auth.client.get_cookie("countersign_session", domain="countersign.test").value
    token = csrf_token(auth.client, "/")
    response = auth.client.post("/sign-out", data={"csrf_token": token})
    assert response.status_code == 302
    assert auth.client.get("/").status_code == 302
    replay = app.test_client()
    replay.set_cookie("countersign_session", copied, domain="countersign.test")
    assert replay.get("/").status_code == 302


OFFSITE_NEXT = [
    "//evil.example/",
    "///evil.example/",
    "////evil.example/",
    "/%2F/evil.example",
    "/%2F%2Fevil.example",
    "%2F%2Fevil.example",
    "/%5Cevil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "/%09/evil.example",
    "/%0d%0a/evil.example",
    "/%0d%0aSet-Cookie:%20x=1",
    "%0a//evil.example",
    "http://evil.example/",
    "https://evil.example/",
    "HTTPS://evil.example/",
    "https:evil.example",
    "javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "evil.example",
]


def _offsite(location: str) -> bool:
    parts = urlsplit(location)
    return (
        bool(parts.scheme or parts.netloc)
        or not location.startswith("/")
        or (location.startswith("//") or "\\" in location or any(c < " " for c in location))
    )


@pytest.mark.parametrize("target", OFFSITE_NEXT)
def test_next_never_leads_off_the_site_after_signing_in(auth, make_person, target):
    make_person("staff", email="n@ladysmith.example")
    token = csrf_token(auth.client, "/sign-in")
    response = auth.client.post(
        "/sign-in?next=" + target,
        data={"email": "n@ladysmith.example", "password": PASSWORD, "csrf_token": token},
    )
    assert response.status_code == 302
    # The header exactly as Werkzeug sends it: it rewrites some paths on the way out.
    assert response.headers["Location"] == "/", target


@pytest.mark.parametrize("target", OFFSITE_NEXT)
def test_next_never_leads_off_the_site_when_already_signed_in(auth, make_person, target):
    auth.as_person(make_person("staff"))
    response = auth.client.get("/sign-in?next=" + target)
    assert response.status_code == 302
    assert response.headers["Location"] == "/", target


@pytest.mark.parametrize(
    "target", ["/history", "/history?tab=all", "/policies/social-media-policy/sign#top"]
)
def test_next_returns_to_a_page_on_this_site(auth, make_person, target):
    make_person("staff", email="n@ladysmith.example")
    token = csrf_token(auth.client, "/sign-in")
    response = auth.client.post(
        "/sign-in?next=" + quote(target, safe="/"),
        data={"email": "n@ladysmith.example", "password": PASSWORD, "csrf_token": token},
    )
    assert response.headers["Location"] == target
    assert not _offsite(response.headers["Location"])
    assert auth.client.get("/sign-in?next=" + quote(target, safe="/")).headers["Location"] == target


def test_session_cookie_is_httponly_and_samesite(auth, make_person):
    make_person("staff", email="c@ladysmith.example")
    response = auth.sign_in("c@ladysmith.example")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


@pytest.mark.parametrize("app_config", [{"SECURE_COOKIES": True}])
def test_session_cookie_is_secure_when_configured(app, auth, make_person):
    assert app.config["SESSION_COOKIE_SECURE"] is True


def _reset_link(app, email: str) -> str:
    """The path of a reset link as the email would carry it."""
    from people.auth import RESET, make_link_token
    from people.service import find_by_email

    with app.app_context():
        person = find_by_email(db.session, email)
        return "/reset-password/" + make_link_token(app.config["SECRET_KEY"], RESET, person)


def test_password_reset_link_works_once_and_ends_other_sessions(app, auth, make_person):
    make_person("staff", email="r@ladysmith.example")
    elsewhere = Auth(app, app.test_client())
    elsewhere.sign_in("r@ladysmith.example")
    assert elsewhere.client.get("/").status_code == 200
    link = _reset_link(app, "r@ladysmith.example")
    form = csrf_token(auth.client, link)
    done = auth.client.post(
        link, data={"password": "a brand new one", "confirm": "a brand new one", "csrf_token": form}
    )
    assert done.status_code == 302
    assert auth.client.get("/").status_code == 200  # signed in with the new password
    again = Auth(app, app.test_client()).sign_in("r@ladysmith.example", "a brand new one")
    assert again.status_code == 302
    assert elsewhere.client.get("/").status_code == 302  # the old session no longer works
    assert app.test_client().get(link).status_code == 400


def test_without_email_forgot_password_says_to_ask_an_administrator_for_anyone(
    app, auth, make_person
):
    make_person("staff", email="r@ladysmith.example")
    token = csrf_token(auth.client, "/forgot-password")
    sent = auth.client.post(
        "/forgot-password", data={"email": "r@ladysmith.example", "csrf_token": token}
    )
    nobody = auth.client.post(
        "/forgot-password", data={"email": "nobody@ladysmith.example", "csrf_token": token}
    )
    assert sent.status_code == nobody.status_code == 200
    assert sent.get_data(as_text=True).replace("r@", "x@") == nobody.get_data(as_text=True).replace(
        "nobody@", "x@"
    )
    assert "Ask your administrator" in nobody.get_data(as_text=True)  # no SMTP: say who to ask
    assert "/reset-password/" not in sent.get_data(as_text=True)


@pytest.mark.parametrize(
    "email",
    [
        "nul\x00@ladysmith.example",
        "a" * 5000 + "@x.example",
        "<script>alert(1)</script>",
        "\u202e@x",
    ],
)
def test_odd_sign_in_input_gets_a_clear_message_not_an_error(auth, email):
    response = auth.sign_in(email, "pass\x00word")
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "The email address or password is not right." in page
    assert "<script>alert(1)" not in page


def test_odd_query_strings_do_not_break_the_people_list(auth, make_person):
    auth.as_person(make_person("admin"))
    for query in ("page=-5", "page=abc", "page=99999999999", "role=x&role=y", "q=%ff%fe"):
        assert auth.client.get(f"/admin/people?{query}").status_code == 200, query


@pytest.fixture
def smtp():
    from tests.smtp_server import SMTPServer

    with SMTPServer() as server:
        yield server


def _smtp_config(smtp) -> dict:
    return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": smtp.server_address[1], "SMTP_STARTTLS": False,
            "SMTP_FROM": "training@ladysmith.example"}  # fmt: skip


def _wait_for_mail(smtp, count: int = 1) -> list:
    deadline = time.monotonic() + 10
    while len(smtp.received) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return smtp.received


def _all_mail_sent(smtp) -> list:
    """Every email the requests so far will ever send: each is sent by a thread of its own, and
    the server holds a message before it tells that thread it was accepted."""
    join_mail_threads()
    return smtp.received


@pytest.mark.parametrize("app_config", [{"SERVER_NAME": None, "TRUSTED_HOSTS": "alias.example"}])
def test_reset_links_ignore_the_host_the_request_claims(app, smtp, make_person):
    app.config.update(_smtp_config(smtp))
    make_person("staff", email="h@ladysmith.example")
    client = app.test_client()
    evil = {"Host": "alias.example"}  # a host the site answers to, but not its address
    page = client.get("/forgot-password", headers=evil).get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    response = client.post(
        "/forgot-password",
        data={"email": "h@ladysmith.example", "csrf_token": token},
        headers=evil,
    )
    assert response.status_code == 200
    ((_to, message),) = _wait_for_mail(smtp)
    body = message.get_payload(decode=True).decode()
    assert "alias.example" not in body
    assert "http://countersign.test/reset-password/" in body


@pytest.mark.slow  # waits for the emails sent in the background
def test_the_forgot_password_form_emails_one_person_at_most_three_links_an_hour(
    app, auth, smtp, make_person
):
    """The form cannot flood someone's inbox: past the limit the page answers the same, but
    nothing more is sent until an hour has passed since the earlier links."""
    app.config.update(_smtp_config(smtp))
    make_person("staff", email="flooded@ladysmith.example")
    for _ in range(RESET_MAILS_PER_HOUR + 3):
        response = auth.post("/forgot-password", {"email": "flooded@ladysmith.example"})
        assert response.status_code == 200
        assert "flooded@ladysmith.example" in response.get_data(as_text=True)
    assert len(_all_mail_sent(smtp)) == RESET_MAILS_PER_HOUR
    with app.app_context():
        s = db.session
        assert (
            s.scalar(select(func.count()).where(AuditEvent.event == "link.reset_issued"))
            == RESET_MAILS_PER_HOUR
        )
        assert (
            s.scalar(select(func.count()).where(AuditEvent.event == "password.reset_requested"))
            == 3
        )
        # An hour on, a link can be sent again.
        later = utcnow() + timedelta(hours=1, minutes=1)
        person = s.scalar(select(Person).where(Person.email == "flooded@ladysmith.example"))
        assert reset_mail_allowed(s, person, now=later)


def test_requests_at_the_same_moment_cannot_pass_the_forgot_password_limit(app, smtp, make_person):

    app.config.update(_smtp_config(smtp))
    make_person("staff", email="raced@ladysmith.example")
    clients = [app.test_client() for _ in range(8)]
    tokens = [csrf_token(c, "/forgot-password") for c in clients]
    start, answers = threading.Barrier(len(clients)), []

    def ask(client, token, n):
        start.wait()
        email = "RACED@ladysmith.example" if n % 2 else "raced@ladysmith.example"
        answers.append(
            client.post("/forgot-password", data={"email": email, "csrf_token": token}).status_code
        )

    threads = [threading.Thread(target=ask, args=(c, t, n))
               for n, (c, t) in enumerate(zip(clients, tokens, strict=True))]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert answers == [200] * len(clients)
    with app.app_context():
        issued = db.session.scalar(
            select(func.count()).where(AuditEvent.event == "link.reset_issued")
        )
    assert issued == RESET_MAILS_PER_HOUR


def test_nul_in_a_query_string_is_refused_plainly(auth, make_person):
    auth.as_person(make_person("admin"))
    response = auth.client.get("/admin/people?school=%00")
    assert response.status_code == 400
    assert "That did not work" in response.get_data(as_text=True)


@pytest.mark.parametrize("person_id", ["3000000000", "99999999999999999999999", "0"])
def test_out_of_range_ids_are_not_found(auth, make_person, person_id):
    auth.as_person(make_person("admin"))
    assert auth.client.get(f"/admin/people/{person_id}").status_code == 404


def test_parallel_guesses_cannot_overtake_the_throttle(app, make_person):

    from sqlalchemy import func, select

    from people.models import SignInAttempt

    make_person("staff", email="p@ladysmith.example")
    barrier = threading.Barrier(12)
    statuses: list[int] = []

    def guess() -> None:
        client = app.test_client()
        token = csrf_token(client, "/sign-in")
        barrier.wait()
        response = client.post(
            "/sign-in", data={"email": "p@ladysmith.example", "password": "x", "csrf_token": token}
        )
        statuses.append(response.status_code)

    threads = [threading.Thread(target=guess) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(statuses) == [400] * 5 + [429] * 7
    with app.app_context():
        checked = db.session.scalar(select(func.count()).select_from(SignInAttempt))
        assert checked == 5


def test_changing_password_keeps_this_session_and_ends_the_others(app, auth, make_person):
    make_person("staff", email="cp@ladysmith.example")
    elsewhere = Auth(app, app.test_client())
    elsewhere.sign_in("cp@ladysmith.example")
    auth.sign_in("cp@ladysmith.example")
    wrong = auth.post("/account/password", {"current": "not it", "password": "a new password 1",
                                            "confirm": "a new password 1"})  # fmt: skip
    assert wrong.status_code == 400
    assert "Your current password is not right." in wrong.get_data(as_text=True)
    done = auth.post("/account/password", {"current": PASSWORD, "password": "a new password 1",
                                           "confirm": "a new password 1"})  # fmt: skip
    assert done.status_code == 302
    assert auth.client.get("/").status_code == 200
    assert elsewhere.client.get("/").status_code == 302
    assert (
        Auth(app, app.test_client()).sign_in("cp@ladysmith.example", "a new password 1").status_code
        == 302
    )


def test_deactivating_a_leaver_ends_their_sessions_everywhere(app, auth, make_person):
    leaver = make_person("staff", email="leaver@ladysmith.example")
    phone = Auth(app, app.test_client())
    phone.as_person(leaver)
    copied = phone.client.get_cookie("countersign_session", domain="countersign.test").value
    assert phone.client.get("/").status_code == 200
    auth.as_person(make_person("admin"))
    url = f"/admin/people/{leaver}"
    assert auth.post(f"{url}/deactivate", form_url=url).status_code == 302
    assert phone.client.get("/").status_code == 302
    replay = app.test_client()
    replay.set_cookie("countersign_session", copied, domain="countersign.test")
    assert replay.get("/").status_code == 302
    assert auth.post(f"{url}/reactivate", form_url=url).status_code == 302
    assert replay.get("/").status_code == 302  # reactivating does not revive the old session
