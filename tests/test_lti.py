"""LTI 1.3: a test platform with its own keys drives full launches (OIDC login, then a signed
id_token) and receives grades over Assignment and Grade Services on a real HTTP server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.security import generate_password_hash

from audit.models import AuditEvent
from core.db import db, utcnow
from core.web import federation
from lti import grades
from lti.accounts import DEFAULT_ROLE_MAP
from lti.models import (
    LtiGradeLink,
    LtiIdentity,
    LtiLinkRequest,
    LtiPlatform,
    LtiUsedNonce,
)
from lti.registry import PlatformData, register_platform
from people.models import Person
from people.service import deactivate
from tests.conftest import CHEAP_HASH_METHOD, PASSWORD, Auth, csrf_token, run_worker
from tests.lti_platform import (
    AGS,
    LINEITEM_SCOPE,
    LTI,
    ROLE,
    SCORE_SCOPE,
    TestPlatform,
    give_tool_key,
    new_key,
)
from tests.test_journey import BASE, VOLUNTEER_MODULES, complete_modules

pytestmark = pytest.mark.usefixtures("published")


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {}


@pytest.fixture
def platform(app) -> Iterator[TestPlatform]:
    give_tool_key(Path(app.instance_path))
    tool = app.test_client()
    test_platform = TestPlatform(tool_jwks=lambda: tool.get("/lti/jwks.json").get_json()).start()
    yield test_platform
    test_platform.stop()


def register(app, platform: TestPlatform, **changes: Any) -> int:
    reg = platform.registration()
    data = PlatformData(
        reg["name"], reg["issuer"], reg["client_id"], reg["auth_login_url"],
        reg["auth_token_url"], reg["key_set_url"], "", (reg["deployment_ids"],),
        dict(DEFAULT_ROLE_MAP), "",
    )  # fmt: skip
    for key, value in changes.items():
        setattr(data, key, value)
    with app.test_request_context():
        found = register_platform(db.session, data, federation())
        db.session.commit()
        return found.id


@pytest.fixture
def registered(app, platform) -> int:
    return register(app, platform)


def people(app) -> list[tuple[str, list[str]]]:
    """Everyone Countersign knows: (email, roles)."""
    with app.app_context():
        return [(p.email, p.roles) for p in db.session.scalars(select(Person).order_by(Person.id))]


def assert_refused(response, title: str) -> None:
    page = response.get_data(as_text=True)
    assert response.status_code in (400, 403), page
    assert title in page, page
    assert "Nothing was recorded and you are not signed in" in page


def assert_not_signed_in(client) -> None:
    response = client.get("/")
    assert response.status_code == 302 and "/sign-in" in response.location


def assert_confirmation_needed(response) -> None:
    page = response.get_data(as_text=True)
    assert response.status_code == 403, page
    assert "Connect your learning platform account" in page and "You are not signed in" in page


def pairing_code(response) -> str:
    """The connection code the page after a launch shows (only there)."""
    import re

    found = re.search(r'class="pairing-code">([A-Z0-9 ]+)<', response.get_data(as_text=True))
    assert found, response.get_data(as_text=True)
    return found.group(1)


def confirm_signed_in(app, person_id: int, code: str) -> FlaskClient:
    """The person signs in to Countersign on their own and types the code their launch showed."""
    own = Auth(app, app.test_client())
    own.as_person(person_id)
    response = own.post("/lti/connect", {"code": code, "action": "confirm"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "Learning platform account connected" in response.get_data(as_text=True)
    return own.client


# --- launches ---------------------------------------------------------------------------------


def test_a_valid_launch_adds_the_person_signs_them_in_and_lands_on_their_training(
    app, client, platform, registered
):
    response, _, _ = platform.launch(client)
    assert response.status_code == 302 and response.location == "/"
    page = client.get("/").get_data(as_text=True)
    assert "Tessa Assistant" in page and "You have completed 0 of 13 modules" in page
    with app.app_context():
        person = db.session.scalar(
            select(Person).where(Person.email == "tessa.ta@ladysmith.example")
        )
        assert person.roles == ["staff"] and person.active
        identity = db.session.scalar(select(LtiIdentity))
        assert (identity.subject, identity.person_id, identity.platform_id) == (
            "moodle-user-17",
            person.id,
            registered,
        )
        events = [e.event for e in db.session.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
        assert events[-3:] == ["person.created", "lti.identity_linked", "lti.launch"]
        assert identity.how == "new_person" and identity.suspended_at is None
        # The login wrote nothing; the launch recorded its nonce as used.
        assert db.session.scalar(select(func.count()).select_from(LtiUsedNonce)) == 1


def test_a_launch_finds_an_existing_person_by_email_and_never_changes_their_roles(
    app, client, platform, registered, make_person
):
    pid = make_person("staff", "volunteer", name="Sam Staff", email="sam@ladysmith.example")
    system_admin = "http://purl.imsglobal.org/vocab/lis/v2/system/person#Administrator"
    response, _, _ = platform.launch(
        client, email="Sam@Ladysmith.example", sub="moodle-sam",
        **{LTI + "roles": [ROLE + "Instructor", system_admin]},
    )  # fmt: skip
    assert_confirmation_needed(response)
    confirm_signed_in(app, pid, pairing_code(response))
    response, _, _ = platform.launch(
        client, email="Sam@Ladysmith.example", sub="moodle-sam",
        **{LTI + "roles": [ROLE + "Instructor", system_admin]},
    )  # fmt: skip
    assert response.status_code == 302
    assert len(people(app)) == 1
    with app.app_context():
        assert db.session.get(Person, pid).roles == ["staff", "volunteer"]
    # Later launches find them by the platform's user id, even if the email there changes.
    client.post("/sign-out", data={"csrf_token": csrf_token(client, "/")})
    response, _, _ = platform.launch(client, email="sam.new@elsewhere.example", sub="moodle-sam")
    assert response.status_code == 302
    assert "Sam Staff" in client.get("/").get_data(as_text=True)


@pytest.mark.parametrize("role", ["governor", "slt", "admin"])
def test_an_account_that_sees_everyones_records_is_never_opened_on_an_emails_word(
    app, client, platform, registered, make_person, role
):
    make_person(role, "staff", name="Pat Powerful", email="pat@ladysmith.example")
    response, _, _ = platform.launch(client, email="pat@ladysmith.example", sub="anyone")
    assert_confirmation_needed(response)  # as for anyone (re-review R9), but nothing waits
    assert_not_signed_in(client)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiIdentity)) == 0
        assert db.session.scalar(select(func.count()).select_from(LtiLinkRequest)) == 0
    assert lti_events(app)[-1][2]["reason"] == "account never opened by a launch"


def test_one_schools_platform_does_not_open_another_schools_accounts(
    app, client, platform, make_person
):
    register(app, platform, school="infant")
    make_person("staff", email="jo@ladysmith.example", schools=("junior",))
    response, _, _ = platform.launch(client, email="jo@ladysmith.example")
    assert_confirmation_needed(response)  # answered as for anyone (re-review R9); nothing waits
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiLinkRequest)) == 0
    assert lti_events(app)[-1][2]["reason"] == "another school's account"
    make_person("staff", email="ivy@ladysmith.example", schools=("infant",))
    response, _, _ = platform.launch(client, email="ivy@ladysmith.example", sub="ivy")
    assert_confirmation_needed(response)  # her own school's platform: she may confirm it


def test_lms_instructors_and_administrators_become_staff_and_a_privileged_mapping_opens_nothing(
    app, platform
):
    """The default table makes LMS instructors and administrators staff. A table an administrator
    changed to grant governor, SLT or admin never creates such an account from a launch: it could
    not be signed in from the LMS anyway (no second factor, no direct sign-in), so the launch is
    refused and nobody is made (re-review R4)."""
    system_admin = "http://purl.imsglobal.org/vocab/lis/v2/system/person#Administrator"
    instructor = {LTI + "roles": [ROLE + "Instructor", system_admin]}
    register(app, platform)
    response, _, _ = platform.launch(app.test_client(), **instructor)
    assert response.status_code == 302
    assert people(app)[0][1] == ["staff"]

    other = TestPlatform(client_id="second").start()
    try:
        register(app, other, role_map={"Instructor": "governor", "Administrator": "admin"})
        client = app.test_client()
        response, _, _ = other.launch(client, email="head@ladysmith.example",
                                      sub="head", **instructor)  # fmt: skip
        assert_refused(response, "Sign in to Countersign directly")
        assert len(people(app)) == 1
        assert_not_signed_in(client)
    finally:
        other.stop()


def test_a_launch_with_no_role_countersign_trains_is_refused(app, client, platform, registered):
    response, auth, id_token = platform.launch(client, **{LTI + "roles": [ROLE + "Guest"]})
    assert_refused(response, "Your role in the learning platform has no training here")
    assert people(app) == []
    assert_not_signed_in(client)
    # Its state is used up all the same: mapping the role later does not make this launch work.
    with app.app_context():
        db.session.get(LtiPlatform, registered).role_map = {"Guest": "volunteer"}
        db.session.commit()
    response = client.post("/lti/launch", data={"id_token": id_token, "state": auth["state"]})
    assert_refused(response, "This launch has already been used")


def test_a_role_table_may_name_roles_by_their_full_uri():
    from lti.accounts import parse_role_map

    table = parse_role_map(f"{ROLE}Instructor = slt\n# a comment\n\nLearner=staff")
    assert table == {"Instructor": "slt", "Learner": "staff"}
    for bad in ("Instructor", "Instructor = wizard", "= staff", "Two words = staff"):
        with pytest.raises(ValueError):
            parse_role_map(bad)


def test_a_launch_signed_with_another_key_is_refused(app, client, platform, registered):
    forged_pem, _ = new_key()
    response, _, _ = platform.launch(client, sign=lambda c: platform.sign(c, key_pem=forged_pem))
    assert_refused(response, "The launch&#39;s signature is not valid")
    assert people(app) == []
    assert_not_signed_in(client)
    assert lti_events(app) == []  # unsigned launches, which anyone can post, leave no rows


def test_a_launch_for_another_audience_is_refused(app, client, platform, registered):
    response, _, _ = platform.launch(client, aud="some-other-tool")
    assert_refused(response, "This launch was meant for another tool")
    # Listed among several audiences without naming Countersign as the authorised party:
    response, _, _ = platform.launch(client, aud=["some-other-tool", platform.client_id])
    assert_refused(response, "This launch was meant for another tool")
    response, _, _ = platform.launch(client, aud=[platform.client_id, "x"], azp="x")
    assert_refused(response, "This launch was meant for another tool")
    assert people(app) == []


def test_a_replayed_launch_is_refused(app, client, platform, registered):
    response, auth, id_token = platform.launch(client)
    assert response.status_code == 302
    client.post("/sign-out", data={"csrf_token": csrf_token(client, "/")})
    response = client.post("/lti/launch", data={"id_token": id_token, "state": auth["state"]})
    assert_refused(response, "This launch has already been used")
    # The same token with a fresh login's state: its nonce is not that login's.
    fresh = platform.login(client)
    response = client.post("/lti/launch", data={"id_token": id_token, "state": fresh["state"]})
    assert_refused(response, "This launch has already been used")
    assert_not_signed_in(client)


def test_a_launch_posted_from_another_browser_is_refused(app, client, platform, registered):
    """A state and id_token taken from one browser (login CSRF: someone posting their own launch
    from a victim's browser) are refused without the cookie the login left in the first."""
    auth = platform.login(client)
    id_token = platform.sign(platform.claims(auth["nonce"]))
    victim = app.test_client()
    response = victim.post("/lti/launch", data={"id_token": id_token, "state": auth["state"]})
    assert_refused(response, "This launch did not start in this browser")
    assert_not_signed_in(victim)
    cookie = next(c for c in client.post("/lti/login", data={
        "iss": platform.issuer, "login_hint": "1", "client_id": platform.client_id,
    }).headers.getlist("Set-Cookie") if c.startswith("__Secure-lti1p3-"))  # fmt: skip
    assert all(a in cookie for a in ("Secure", "HttpOnly", "SameSite=None", "Partitioned"))


def test_an_expired_launch_is_refused(app, client, platform, registered):
    response, _, _ = platform.launch(client, exp=int(utcnow().timestamp()) - 600)
    assert_refused(response, "This launch has expired")
    response, _, _ = platform.launch(client, exp=None)  # a token must say when it expires
    assert_refused(response, "The launch&#39;s signature is not valid")
    assert people(app) == []


def test_a_launch_from_an_unknown_deployment_is_refused(app, client, platform, registered):
    response, _, _ = platform.launch(client, **{LTI + "deployment_id": "deployment-99"})
    assert_refused(response, "This deployment is not registered")
    assert "deployment-99" in response.get_data(as_text=True)
    assert people(app) == []


def test_a_login_from_an_unregistered_platform_is_refused(app, client, platform):
    response = client.post("/lti/login", data={"iss": platform.issuer, "login_hint": "1",
                                               "client_id": platform.client_id})  # fmt: skip
    assert_refused(response, "This learning platform is not registered")
    response = client.get("/lti/login")
    assert_refused(response, "This link did not come from an LMS")
    response = client.post("/lti/launch", data={"state": "x"})
    assert_refused(response, "This link did not come from an LMS")
    response = client.post("/lti/launch", data={"state": "x", "id_token": "not.a.jwt"})
    assert_refused(response, "The launch could not be read")


def test_a_launch_with_a_stale_or_unknown_state_is_refused(
    app, client, platform, registered, monkeypatch
):
    response, _, _ = platform.launch(client, state="state-made-up")
    assert_refused(response, "This launch did not start in this browser")
    auth = platform.login(client)
    monkeypatch.setattr("lti.launch.LOGIN_LIFETIME", timedelta(seconds=-1))  # it has expired
    response = client.post("/lti/launch", data={
        "id_token": platform.sign(platform.claims(auth["nonce"])), "state": auth["state"]})  # fmt: skip
    assert_refused(response, "This launch has already been used")


def test_a_closed_account_or_a_hidden_email_is_refused(
    app, client, platform, registered, make_person
):
    pid = make_person("staff", email="left@ladysmith.example")
    with app.app_context():
        db.session.get(Person, pid).active = False
        db.session.commit()
    response, _, _ = platform.launch(client, email="left@ladysmith.example")
    assert_confirmation_needed(response)  # answered as for anyone (re-review R9); nothing waits
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiLinkRequest)) == 0
    assert lti_events(app)[-1][2]["reason"] == "closed account"
    response, _, _ = platform.launch(client, email=None, sub="private-user")
    assert_refused(response, "did not share your email address")
    assert_not_signed_in(client)


def test_a_switched_off_platform_is_refused(app, client, platform, registered):
    with app.app_context():
        db.session.get(LtiPlatform, registered).active = False
        db.session.commit()
    response = client.post("/lti/login", data={"iss": platform.issuer, "login_hint": "1",
                                               "client_id": platform.client_id})  # fmt: skip
    assert_refused(response, "This learning platform is not registered")


# --- inside the platform's frame -------------------------------------------------------------


def test_an_embedded_session_may_be_framed_by_its_platform_only_and_its_cookie_is_cross_site(
    app, platform, registered, make_person
):
    client = app.test_client()
    auth = platform.login(client)
    id_token = platform.sign(platform.claims(auth["nonce"]))
    response = client.post("/lti/launch", data={"id_token": id_token, "state": auth["state"]},
                           base_url="https://countersign.test")  # fmt: skip
    cookie = next(
        c for c in response.headers.getlist("Set-Cookie") if c.startswith("countersign_session=")
    )
    assert "SameSite=None" in cookie and "Secure" in cookie and "Partitioned" in cookie
    page = client.get("/", base_url="https://countersign.test")
    assert page.status_code == 200
    assert f"frame-ancestors {platform.url};" in page.headers["Content-Security-Policy"] + ";"
    assert "X-Frame-Options" not in page.headers

    # Someone who signs in the ordinary way is never framed, and keeps a SameSite=Lax cookie.
    plain = app.test_client()
    pid = make_person("staff", email="plain@ladysmith.example")
    with app.app_context():
        email = db.session.get(Person, pid).email
    response = plain.post("/sign-in", data={"email": email, "password": "correct horse battery",
                                            "csrf_token": csrf_token(plain, "/sign-in")})  # fmt: skip
    assert "SameSite=Lax" in response.headers["Set-Cookie"]
    page = plain.get("/")
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"


def test_a_refused_launch_shows_its_reason_inside_the_platforms_frame(
    app, client, platform, registered
):
    response, _, _ = platform.launch(client, **{LTI + "deployment_id": "nope"})
    assert f"frame-ancestors {platform.url}" in response.headers["Content-Security-Policy"]
    response = client.post("/lti/launch", data={"state": "x", "id_token": "not.a.jwt"})
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def test_the_tool_publishes_its_public_key_only(app, client):
    keys = client.get("/lti/jwks.json").get_json()["keys"]
    assert len(keys) == 1 and keys[0]["kty"] == "RSA" and keys[0]["kid"]
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(keys[0])
    assert client.get("/lti/jwks.json").get_json() == {"keys": keys}  # the same key each time


def test_a_new_tool_key_is_3072_bit_rsa_and_an_older_2048_bit_key_is_flagged(
    app, client, tmp_path, caplog
):
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    (key,) = client.get("/lti/jwks.json").get_json()["keys"]
    modulus = base64.urlsafe_b64decode(key["n"] + "=" * (-len(key["n"]) % 4))
    assert len(modulus) * 8 == 3072

    old = tmp_path / "old_key.pem"
    old.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    app.config["LTI_PRIVATE_KEY_FILE"] = str(old)
    app.extensions.pop("countersign.lti_key", None)
    app.extensions.pop("countersign.lti_public_key", None)
    with caplog.at_level("WARNING", logger="countersign.lti"):
        client.get("/lti/jwks.json")
    assert "is 2048-bit RSA, weaker than the 3072 bits" in caplog.text


# --- grade return -----------------------------------------------------------------------------


def test_progress_then_a_score_of_one_reach_the_gradebook_when_the_person_is_trained(
    app, client, platform
):
    register(app, platform, role_map={"Learner": "volunteer"})
    response, _, _ = platform.launch(client)
    assert response.status_code == 302
    run_worker(app)
    first = platform.scores[0]
    assert first.lineitem == platform.lineitem_url
    assert first.body["userId"] == "moodle-user-17"
    assert (first.body["scoreGiven"], first.body["scoreMaximum"]) == (0, 1)
    assert (first.body["activityProgress"], first.body["gradingProgress"]) == (
        "Initialized",
        "Pending",
    )
    assert platform.tokens_issued == 1  # the tool's signed assertion was accepted

    for module in VOLUNTEER_MODULES[:2]:  # the worker running as the learner goes
        complete_modules(app, client, [module])
        run_worker(app)
    assert [s.body["scoreGiven"] for s in platform.scores] == [0, 0.0909, 0.1818]
    complete_modules(app, client, VOLUNTEER_MODULES[2:])
    token = csrf_token(client, f"{BASE}/sign")
    response = client.post(f"{BASE}/sign", data={"csrf_token": token, "confirm": "y",
                                                  "full_name": "Tessa Assistant"})  # fmt: skip
    assert response.status_code == 302
    run_worker(app)
    last = platform.scores[-1].body
    assert (last["scoreGiven"], last["activityProgress"], last["gradingProgress"]) == (
        1,
        "Completed",
        "FullyGraded",
    )
    assert [s.body["scoreGiven"] for s in platform.scores].count(1) == 1
    with app.app_context():
        assert [p for p in grades.recent(db.session) if not (p.sent_at or p.gave_up_at)] == []


def test_a_failed_grade_post_is_retried_and_shown_to_administrators(
    app, client, platform, registered, make_person
):
    platform.fail_scores = 1
    response, _, _ = platform.launch(client)
    run_worker(app)
    assert response.status_code == 302 and platform.scores == []
    with app.app_context():
        (post,) = grades.recent(db.session)
        assert post.last_status == 503 and post.sent_at is None and post.attempts == 1
        assert post.next_attempt_at > utcnow()
    admin = Auth(app, app.test_client()).as_person(make_person("admin"))
    page = admin.get("/admin/lti/").get_data(as_text=True)
    assert "1 score not accepted yet" in page and "HTTP 503" in page
    # Not due yet: the worker leaves it; once due, it goes.
    run_worker(app)
    assert platform.scores == []
    run_worker(app, utcnow() + timedelta(minutes=2))
    assert len(platform.scores) == 1

    # A post that gave up can be sent again from the page.
    platform.fail_scores = 10
    with app.app_context():
        link = db.session.scalar(select(LtiGradeLink))
        grades._queue(db.session, link, (0.5, "InProgress", "Pending"), utcnow())
        db.session.commit()
    for minutes in range(0, 60 * 24, 60):
        run_worker(app, utcnow() + timedelta(minutes=minutes))
    with app.app_context():
        post = grades.recent(db.session)[0]
        assert post.gave_up_at is not None and post.attempts == 6
    assert "Gave up: HTTP 503" in admin.get("/admin/lti/").get_data(as_text=True)
    platform.fail_scores = 0
    token = csrf_token(admin, "/admin/lti/")
    response = admin.post("/admin/lti/grades/retry", data={"csrf_token": token})
    assert response.status_code == 302
    run_worker(app)
    assert platform.scores[-1].body["scoreGiven"] == 0.5
    assert "not accepted yet" not in admin.get("/admin/lti/").get_data(as_text=True)


def test_without_a_line_item_the_tool_finds_or_creates_its_column(
    app, client, platform, registered
):
    ags = {"scope": ["https://purl.imsglobal.org/spec/lti-ags/scope/score",
                     "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem"],
           "lineitems": platform.lineitems_url}  # fmt: skip
    response, _, _ = platform.launch(client, **{AGS: ags})
    assert response.status_code == 302
    run_worker(app)
    assert len(platform.lineitems) == 1
    item = platform.lineitems[0]
    assert item["tag"] == "countersign:social-media-policy" and item["scoreMaximum"] == 1
    assert platform.scores[0].lineitem == item["id"]


def test_without_grade_services_nothing_is_posted(app, client, platform, registered):
    response, _, _ = platform.launch(client, **{AGS: None})
    assert response.status_code == 302
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiGradeLink)) == 0
    assert platform.scores == []


# --- registration -----------------------------------------------------------------------------


def test_an_administrator_registers_a_platform_on_its_page(app, auth, make_person, platform):
    admin = auth.as_person(make_person("admin"))
    page = admin.get("/admin/lti/").get_data(as_text=True)
    assert (
        "http://countersign.test/lti/login" in page
        and "http://countersign.test/lti/jwks.json" in page
    )
    form = {**platform.registration(), "role_map": "Learner = staff\nInstructor = slt", "school": "",
            "active": "y"}  # fmt: skip
    bad = {**form, "auth_login_url": "http://moodle.example/auth", "deployment_ids": ""}
    response = auth.post("/admin/lti/new", bad)
    page = response.get_data(as_text=True)
    assert response.status_code == 400 and "must start https://" in page
    assert 'value="Test Moodle"' in page  # the form comes back as it was typed
    response = auth.post("/admin/lti/new", {**form, "role_map": "Learner = wizard"})
    assert response.status_code == 400 and "not a Countersign role" in response.get_data(
        as_text=True
    )
    response = auth.post("/admin/lti/new", form)
    assert response.status_code == 302
    with app.app_context():
        saved = db.session.scalar(select(LtiPlatform))
        assert saved.role_map == {"Learner": "staff", "Instructor": "slt"}
        assert saved.deployment_ids == [platform.deployment_id]
    page = admin.get(f"/admin/lti/{saved.id}").get_data(as_text=True)
    assert (
        "Instructor = slt" in page and "approve accounts" in page
    )  # the privileged line is pointed out
    response, _, _ = platform.launch(app.test_client())
    assert response.status_code == 302


def test_only_administrators_see_the_platform_pages(app, auth, make_person):
    client = auth.as_person(make_person("governor", "slt"))
    assert client.get("/admin/lti/").status_code == 403
    assert client.get("/admin/lti/new").status_code == 403


def test_a_platform_is_registered_from_the_command_line(app, runner, platform):
    result = runner.invoke(args=[
        "lti", "add-platform", "--name", "Moodle", "--issuer", platform.issuer,
        "--client-id", "cli-client", "--auth-login-url", f"{platform.url}/auth",
        "--auth-token-url", f"{platform.url}/token", "--key-set-url", f"{platform.url}/jwks",
        "--deployment", "1", "--deployment", "2", "--role", "Learner = volunteer",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(args=["lti", "platforms"])
    assert "cli-client\t1,2\tactive" in result.output
    result = runner.invoke(args=["lti", "urls"])
    assert "Initiate login URL: http://countersign.test/lti/login" in result.output
    result = runner.invoke(args=["lti", "add-platform", "--name", "M", "--issuer", "moodle",
                                 "--client-id", "c", "--auth-login-url", "x", "--auth-token-url",
                                 "y", "--deployment", "1"])  # fmt: skip
    assert result.exit_code != 0 and "must be a full web address" in result.output


def test_erasing_a_leaver_forgets_their_lms_identity(app, client, platform, registered):
    from people.privacy import erase_person

    platform.launch(client)
    # Another LMS account waiting for them to confirm is forgotten too.
    platform.launch(app.test_client(), sub="waiting", email="tessa.ta@ladysmith.example")
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiLinkRequest)) == 1
        person = db.session.scalar(select(Person))
        deactivate(person, at=utcnow() - timedelta(days=4000))
        db.session.commit()
        erase_person(db.session, person.id, actor_id=None, retention_days=2190)
        db.session.commit()
        assert db.session.scalar(select(func.count()).select_from(LtiIdentity)) == 0
        assert db.session.scalar(select(func.count()).select_from(LtiLinkRequest)) == 0
        assert db.session.scalar(select(func.count()).select_from(LtiGradeLink)) == 0
        assert grades.recent(db.session) == []
    # The same LMS user launching again is a newcomer, not the erased record.
    response, _, _ = platform.launch(app.test_client())
    assert response.status_code == 302
    assert len(people(app)) == 2


def test_a_persons_data_download_lists_their_learning_platform_accounts(
    app, client, platform, registered
):
    platform.launch(client)
    data = client.get("/account/data.json").get_json()
    (account,) = data["learning_platform_accounts"]
    assert account["platform"] == "Test Moodle" and account["platform_user_id"] == "moodle-user-17"
    assert account["grades_sent_to"] == [
        {"course": "Staff induction", "line_item": platform.lineitem_url}
    ]


def test_grades_go_only_to_the_platforms_own_addresses(app, client, platform, registered):
    for ags in (
        {"scope": [SCORE_SCOPE], "lineitem": "http://169.254.169.254/latest/meta-data"},
        {
            "scope": [SCORE_SCOPE],
            "lineitem": platform.lineitem_url.replace("127.0.0.1", "localhost"),
        },
        {"scope": [SCORE_SCOPE, LINEITEM_SCOPE], "lineitems": "https://elsewhere.example/items"},
        {"scope": [SCORE_SCOPE], "lineitems": platform.lineitems_url},  # no line item scope
    ):
        response, _, _ = platform.launch(app.test_client(), **{AGS: ags})
        assert response.status_code == 302
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiGradeLink)) == 0
    assert platform.scores == [] and platform.tokens_issued == 0


def test_a_platform_that_rotates_its_key_is_followed(app, client, platform, registered):
    from lti import launch as lti_launch

    response, _, _ = platform.launch(client)
    assert response.status_code == 302
    platform.rotate_key()
    # Fetched under a minute ago: a token naming an unknown key does not make it fetch again.
    response, _, _ = platform.launch(app.test_client())
    assert_refused(response, "The launch&#39;s signature is not valid")
    url = f"{platform.url}/jwks"
    fetched_at, keys = lti_launch._key_sets[url]
    lti_launch._key_sets[url] = (fetched_at - 120, keys)
    response, _, _ = platform.launch(app.test_client())
    assert response.status_code == 302


def test_a_platform_clock_a_little_ahead_is_allowed(app, client, platform, registered):
    ahead = int(utcnow().timestamp()) + 30
    response, _, _ = platform.launch(client, iat=ahead, exp=ahead + 300)
    assert response.status_code == 302


def test_an_unexpected_answer_from_a_platform_is_recorded_and_retried(
    app, client, platform, registered
):
    platform.token_answer = ["not", "a", "token"]
    response, _, _ = platform.launch(client)
    assert response.status_code == 302
    run_worker(app)
    with app.app_context():
        (post,) = grades.recent(db.session)
        assert post.sent_at is None and "Unexpected answer" in post.last_error
    platform.token_answer = None
    run_worker(app, utcnow() + timedelta(minutes=2))
    assert len(platform.scores) == 1


def test_a_nul_in_a_login_or_launch_is_refused_plainly(app, client, platform, registered):
    response = client.post("/lti/login", data={"iss": "\x00x", "login_hint": "1"})
    assert_refused(response, "This link did not come from an LMS")
    response = client.get("/lti/login?iss=a%00&login_hint=1")
    assert response.status_code == 400
    response = client.post("/lti/launch", data={"state": "a\x00", "id_token": "a.b.c"})
    assert_refused(response, "This link did not come from an LMS")


def test_two_first_launches_at_once_make_one_person(app, client, platform, registered, monkeypatch):
    """The same new person launching in two tabs: the second launch's look-ups ran before the
    first committed, so its insert meets the first's row. It signs in the person the first one
    made, through the link the first one made for the same LMS user."""
    import lti.accounts
    from people import service as people_service

    first, _, _ = platform.launch(app.test_client())
    assert first.status_code == 302
    real_email, real_identity = people_service.find_by_email, lti.accounts._identity
    calls = {"email": 0, "identity": 0}

    def not_yet_committed(session, email):
        calls["email"] += 1
        return None if calls["email"] <= 2 else real_email(session, email)

    def identity_not_yet_committed(session, platform, subject):
        calls["identity"] += 1
        return None if calls["identity"] == 1 else real_identity(session, platform, subject)

    monkeypatch.setattr(lti.accounts, "find_by_email", not_yet_committed)
    monkeypatch.setattr(people_service, "find_by_email", not_yet_committed)
    monkeypatch.setattr(lti.accounts, "_identity", identity_not_yet_committed)
    response, _, _ = platform.launch(client)
    assert response.status_code == 302, response.get_data(as_text=True)
    assert calls["email"] == 3 and calls["identity"] == 2
    assert len(people(app)) == 1
    assert "Tessa Assistant" in client.get("/").get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiIdentity)) == 1


def test_another_lms_user_claiming_a_new_persons_email_at_the_same_moment_is_not_signed_in(
    app, client, platform, registered, monkeypatch
):
    """Two first launches at once with one email but different LMS users: the second meets the
    person the first made, and must be confirmed like any existing account."""
    import lti.accounts
    from people import service as people_service

    first, _, _ = platform.launch(app.test_client())
    assert first.status_code == 302
    real = people_service.find_by_email
    calls = {"n": 0}

    def not_yet_committed(session, email):
        calls["n"] += 1
        return None if calls["n"] <= 2 else real(session, email)

    monkeypatch.setattr(lti.accounts, "find_by_email", not_yet_committed)
    monkeypatch.setattr(people_service, "find_by_email", not_yet_committed)
    response, _, _ = platform.launch(client, sub="someone-else-with-that-email")
    assert_confirmation_needed(response)
    assert_not_signed_in(client)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiIdentity)) == 1


# --- privileged accounts are never opened from a platform (F1) -------------------------------


def promote(app, person_id: int, *roles: str, by_id: int | None = None) -> None:
    """Change a person's roles as the administrator's page and the import do."""
    from people.service import PersonData, update_person

    with app.app_context():
        person = db.session.get(Person, person_id)
        data = PersonData(person.name, person.email, roles, tuple(person.schools))
        update_person(db.session, person, data, federation(), by_id)
        db.session.commit()


def launched_person(app) -> int:
    with app.app_context():
        return db.session.scalar(select(LtiIdentity.person_id))


def lti_events(app) -> list[tuple[str, str | None, dict]]:
    import json

    with app.app_context():
        return [
            (e.event, e.subject_id, json.loads(e.detail))
            for e in db.session.scalars(
                select(AuditEvent)
                .where(AuditEvent.event.like("lti.%"), AuditEvent.event.not_like("lti.platform_%"))
                .order_by(AuditEvent.seq)
            )
        ]


@pytest.mark.parametrize("role", ["governor", "slt", "admin"])
def test_a_link_made_before_a_promotion_never_opens_the_promoted_account(
    app, client, platform, registered, make_person, role
):
    response, _, _ = platform.launch(client, sub="attacker-1")
    assert response.status_code == 302
    pid = launched_person(app)
    client.post("/sign-out", data={"csrf_token": csrf_token(client, "/")})
    admin = Auth(app, app.test_client())
    admin.as_person(make_person("admin"))
    response = admin.post(f"/admin/people/{pid}", {
        "name": "Tessa Assistant", "email": "tessa.ta@ladysmith.example",
        "roles": ["staff", role]})  # fmt: skip
    assert response.status_code == 302
    with app.app_context():
        identity = db.session.scalar(select(LtiIdentity))
        assert identity.suspended_at is not None  # gaining the role suspended the link
    assert "lti.link_suspended" in [event for event, _, _ in lti_events(app)]
    response, _, _ = platform.launch(client, sub="attacker-1", email="any@elsewhere.example")
    assert_refused(response, "Sign in to Countersign directly")
    assert_not_signed_in(client)
    assert client.get("/admin/people").status_code == 302  # to the sign-in page
    # The refused attempt is on the record, against the account it tried to open.
    event, subject, detail = lti_events(app)[-1]
    assert (event, subject, detail["reason"]) == (
        "lti.launch_refused",
        str(pid),
        "Sign in to Countersign directly",
    )
    assert "attacker-1" not in json_text(detail)


def test_the_reviews_sequence_never_reaches_the_victims_account(
    app, client, platform, registered, make_person
):
    """The security review's F1 reproduction, step by step: an LMS user claims a staff member's
    email, the staff member is later made an administrator, the LMS user launches again."""
    vic = make_person("staff", email="vic@school.example")
    response, _, _ = platform.launch(client, sub="attacker-1", email="vic@school.example")
    assert_confirmation_needed(response)  # (1) no longer a session as the victim
    assert_not_signed_in(client)
    promote(app, vic, "staff", "admin")  # (2)
    response, _, _ = platform.launch(client, sub="attacker-1", email="vic@school.example")  # (3)
    assert_confirmation_needed(response)  # the same page as before, but nothing can be confirmed
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiLinkRequest)) == 0
    assert_not_signed_in(client)
    # With any other email, the LMS user is only ever someone new, never the victim.
    response, _, _ = platform.launch(client, sub="attacker-1", email="any@elsewhere.example")
    assert response.status_code == 302
    assert client.get("/admin/people").status_code == 403
    with app.app_context():
        assert db.session.scalar(select(LtiIdentity.person_id)) != vic
    client.post("/sign-out", data={"csrf_token": csrf_token(client, "/")})
    # Control: a new LMS user claiming the administrator's email is refused too.
    response, _, _ = platform.launch(client, sub="attacker-2", email="vic@school.example")
    assert_confirmation_needed(response)
    with app.app_context():
        linked = db.session.scalars(select(LtiIdentity.person_id)).all()
        assert vic not in linked


def test_a_promotion_by_import_suspends_the_link_too(app, client, platform, registered):
    from people.service import import_people

    response, _, _ = platform.launch(client)
    assert response.status_code == 302
    with app.app_context():
        import_people(
            db.session,
            "name,email,roles,schools\nTessa Assistant,tessa.ta@ladysmith.example,staff;governor,\n",
            federation(),
        )
        db.session.commit()
        assert db.session.scalar(select(LtiIdentity)).suspended_at is not None
    response, _, _ = platform.launch(app.test_client())
    assert_refused(response, "Sign in to Countersign directly")


def test_a_role_gained_without_the_link_being_suspended_is_still_checked_at_every_launch(
    app, client, platform, registered
):
    """However the role was given (a database edit, a path that forgot the hook), the launch
    itself refuses to open the account."""
    from people.models import PersonRole

    response, _, _ = platform.launch(client)
    assert response.status_code == 302
    client.post("/sign-out", data={"csrf_token": csrf_token(client, "/")})
    with app.app_context():
        person = db.session.get(Person, launched_person(app))
        person.role_rows = [*person.role_rows, PersonRole(role="slt")]
        db.session.commit()
        assert db.session.scalar(select(LtiIdentity)).suspended_at is None
    response, _, _ = platform.launch(client)
    assert_refused(response, "Sign in to Countersign directly")
    assert_not_signed_in(client)


def test_an_account_that_must_use_a_second_factor_is_never_opened_by_a_launch(
    app, client, platform, registered
):
    """A launch cannot give a second factor, so roles configured to need one are closed to it
    too, whatever else they may see."""
    response, _, _ = platform.launch(client)
    assert response.status_code == 302
    client.post("/sign-out", data={"csrf_token": csrf_token(client, "/")})
    app.config["MFA_ROLES"] = "admin, staff"
    response, _, _ = platform.launch(client)
    assert_refused(response, "Sign in to Countersign directly")
    assert_not_signed_in(client)
    app.config["MFA_ROLES"] = ""
    response, _, _ = platform.launch(client)
    assert response.status_code == 302


def test_promoted_then_demoted_the_link_stays_suspended_until_its_owner_confirms_again(
    app, client, platform, registered
):
    response, _, _ = platform.launch(client)
    assert response.status_code == 302
    pid = launched_person(app)
    client.post("/sign-out", data={"csrf_token": csrf_token(client, "/")})
    promote(app, pid, "staff", "admin")
    promote(app, pid, "staff")
    response, _, _ = platform.launch(client)
    assert_confirmation_needed(response)
    assert_not_signed_in(client)
    with app.app_context():
        person = db.session.get(Person, pid)
        person.password_hash = generate_password_hash(PASSWORD, CHEAP_HASH_METHOD)
        db.session.commit()
    confirm_signed_in(app, pid, pairing_code(response))
    response, _, _ = platform.launch(client)
    assert response.status_code == 302
    with app.app_context():
        identity = db.session.scalar(select(LtiIdentity))
        assert identity.suspended_at is None and identity.how == "sign_in"


def test_a_new_lms_user_claiming_a_privileged_email_is_refused_and_nothing_waits(
    app, client, platform, registered, make_person
):
    make_person("slt", email="vic@school.example")
    response, _, _ = platform.launch(client, sub="attacker-2", email="vic@school.example")
    assert_confirmation_needed(response)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiLinkRequest)) == 0
        assert db.session.scalar(select(func.count()).select_from(LtiIdentity)) == 0


def test_a_promotion_drops_the_links_waiting_for_confirmation(
    app, client, platform, registered, make_person
):
    pid = make_person("staff", email="sam@ladysmith.example")
    response, _, _ = platform.launch(client, email="sam@ladysmith.example")
    assert_confirmation_needed(response)
    promote(app, pid, "staff", "governor")
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiLinkRequest)) == 0
    own = Auth(app, app.test_client())
    own.as_person(pid)
    assert "No learning platform account is waiting" in own.client.get("/lti/connect").get_data(
        as_text=True
    )


def test_a_privileged_person_cannot_confirm_a_link_made_before_the_role(
    app, client, platform, registered, make_person
):
    from people.models import PersonRole

    pid = make_person("staff", email="sam@ladysmith.example")
    launched, _, _ = platform.launch(client, email="sam@ladysmith.example")
    assert_confirmation_needed(launched)
    own = Auth(app, app.test_client())
    own.as_person(pid)
    with app.app_context():
        person = db.session.get(Person, pid)
        person.role_rows = [*person.role_rows, PersonRole(role="admin")]  # behind the app's back
        db.session.commit()
    response = own.post("/lti/connect", {"code": pairing_code(launched), "action": "confirm"})
    assert response.status_code == 400
    assert "never opened from a learning platform" in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiIdentity)) == 0


# --- an existing account is linked only when its owner confirms (F2) --------------------------


@pytest.fixture
def smtp(app):
    from tests.smtp_server import SMTPServer

    with SMTPServer() as server:
        app.config.update(SMTP_HOST="127.0.0.1", SMTP_PORT=server.server_address[1],
                          SMTP_STARTTLS=False, SMTP_FROM="training@ladysmith.example")  # fmt: skip
        yield server


def wait_for_mail(smtp, count: int) -> list:
    import time

    deadline = time.monotonic() + 10  # sent in the background
    while len(smtp.received) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # and no more than that
    return smtp.received


def test_an_lms_user_claiming_an_existing_email_is_not_signed_in_until_confirmed(
    app, client, platform, registered, make_person
):
    pid = make_person("staff", name="Vic Victim", email="vic@ladysmith.example")
    response, _, _ = platform.launch(client, sub="attacker-1", email="vic@ladysmith.example")
    assert_confirmation_needed(response)
    page = response.get_data(as_text=True)
    assert "Vic Victim" not in page  # the launcher learns nothing about the account
    assert 'href="/sign-in?next=/lti/connect"' in page
    assert f"frame-ancestors {platform.url}" in response.headers["Content-Security-Policy"]
    assert_not_signed_in(client)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiIdentity)) == 0
        request = db.session.scalar(select(LtiLinkRequest))
        assert request.person_id == pid and request.token_hash is None  # no email settings
    (event, subject, detail), *_ = lti_events(app)
    assert event == "lti.link_requested" and subject == str(pid)
    assert detail["lms_user"] != "attacker-1" and "attacker-1" not in json_text(detail)
    # Launching again waits on the same request.
    response, _, _ = platform.launch(client, sub="attacker-1", email="vic@ladysmith.example")
    assert_confirmation_needed(response)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiLinkRequest)) == 1


def json_text(detail: dict) -> str:
    import json

    return json.dumps(detail)


def test_the_owner_confirms_after_signing_in_with_next_and_is_told_by_email(
    app, client, platform, registered, make_person, smtp
):
    pid = make_person("staff", email="sam@ladysmith.example")
    response, _, _ = platform.launch(client, sub="moodle-sam", email="sam@ladysmith.example")
    assert_confirmation_needed(response)
    assert "follow the link Countersign emails to that address" in response.get_data(as_text=True)
    code = pairing_code(response)
    wait_for_mail(smtp, 1)
    # Signing in through the normal page with next= brings the person to the request.
    own = app.test_client()
    token = csrf_token(own, "/sign-in?next=/lti/connect")
    response = own.post("/sign-in?next=/lti/connect", data={
        "email": "sam@ladysmith.example", "password": PASSWORD, "csrf_token": token})  # fmt: skip
    assert response.status_code == 302 and response.location.endswith("/lti/connect")
    page = own.get("/lti/connect").get_data(as_text=True)
    assert "Test Moodle" in page and "Connection code" in page and code not in page
    token = csrf_token(own, "/lti/connect")
    response = own.post("/lti/connect", data={"code": code.lower(), "action": "confirm",
                                              "csrf_token": token})  # fmt: skip
    assert response.status_code == 200
    (_, request_mail), (to, notice) = wait_for_mail(smtp, 2)
    assert to == ["sam@ladysmith.example"]
    assert "A learning platform account was connected" in notice["Subject"]
    assert (
        "If this wasn't you, tell a Countersign administrator"
        in notice.get_payload(decode=True).decode()
    )
    response, _, _ = platform.launch(client, sub="moodle-sam", email="sam@ladysmith.example")
    assert response.status_code == 302
    confirmed = [e for e in lti_events(app) if e[0] == "lti.link_confirmed"]
    assert confirmed[0][1] == str(pid) and confirmed[0][2]["how"] == "sign_in"


def test_an_emailed_link_connects_the_account_once(
    app, client, platform, registered, make_person, smtp
):
    import re

    pid = make_person("staff", email="sam@ladysmith.example")
    response, _, _ = platform.launch(client, sub="moodle-sam", email="sam@ladysmith.example")
    assert_confirmation_needed(response)
    response, _, _ = platform.launch(
        app.test_client(), sub="moodle-sam", email="sam@ladysmith.example"
    )
    code = pairing_code(response)  # a launch again shows a new code: the newest works
    ((to, message),) = wait_for_mail(smtp, 1)  # the second launch sends no second email
    assert to == ["sam@ladysmith.example"]
    body = message.get_payload(decode=True).decode()
    link = re.search(r"http://countersign\.test(/lti/connect/\S+)", body).group(1)
    with app.app_context():
        request = db.session.scalar(select(LtiLinkRequest))
        assert link.rsplit("/", 1)[1] not in (request.token_hash or "")  # kept only as a hash
    stranger = app.test_client()  # following the link needs no session
    page = stranger.get(link).get_data(as_text=True)
    assert "Connection code" in page and "Test Moodle" in page
    response = stranger.post(link, data={"code": code, "action": "confirm",
                                         "csrf_token": csrf_token(stranger, link)})  # fmt: skip
    assert response.status_code == 200
    assert "Learning platform account connected" in response.get_data(as_text=True)
    assert_not_signed_in(stranger)  # it connects; it does not sign in
    assert stranger.get(link).status_code == 400  # used up
    wait_for_mail(smtp, 2)
    response, _, _ = platform.launch(client, sub="moodle-sam", email="sam@ladysmith.example")
    assert response.status_code == 302
    with app.app_context():
        identity = db.session.scalar(select(LtiIdentity))
        assert (identity.person_id, identity.how) == (pid, "email")


def test_launches_cannot_flood_a_persons_inbox_or_crowd_out_the_owners_own_launch(
    app, client, platform, registered, make_person, smtp
):
    """Re-review R2: other LMS users launching first neither use up the owner's emails nor stop
    the owner's own launch from being confirmed; one email, which says how many wait."""
    import re

    pid = make_person("staff", email="sam@ladysmith.example")
    for n in range(8):
        response, _, _ = platform.launch(app.test_client(), sub=f"lms-{n}",
                                         email="sam@ladysmith.example")  # fmt: skip
        assert_confirmation_needed(response)
    own, _, _ = platform.launch(app.test_client(), sub="sam-real", email="sam@ladysmith.example")
    ((_, message),) = wait_for_mail(smtp, 1)  # one email however many launch
    link = re.search(r"(/lti/connect/\S+)", message.get_payload(decode=True).decode()).group(1)
    with app.app_context():
        waiting = db.session.scalars(select(LtiLinkRequest.subject)).all()
    assert len(waiting) == 5 and "sam-real" in waiting and "lms-0" in waiting  # the emailed one
    page = app.test_client().get(link).get_data(as_text=True)
    assert "5 learning platform accounts are waiting" in page
    confirm_signed_in(app, pid, pairing_code(own))
    with app.app_context():
        assert db.session.scalar(select(LtiIdentity.subject)) == "sam-real"


def test_an_emailed_link_expires_and_a_made_up_one_does_nothing(
    app, client, platform, registered, make_person, smtp
):
    import re

    make_person("staff", email="sam@ladysmith.example")
    platform.launch(client, sub="moodle-sam", email="sam@ladysmith.example")
    ((_, message),) = wait_for_mail(smtp, 1)
    link = re.search(r"(/lti/connect/\S+)", message.get_payload(decode=True).decode()).group(1)
    with app.app_context():
        db.session.scalar(select(LtiLinkRequest)).expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    assert app.test_client().get(link).status_code == 400
    assert app.test_client().get("/lti/connect/made-up").status_code == 400
    assert app.test_client().get("/lti/connect/" + "x" * 300).status_code == 400


def test_without_email_settings_no_link_is_made_or_logged(
    app, client, platform, registered, make_person, caplog
):
    caplog.set_level("DEBUG")
    make_person("staff", email="sam@ladysmith.example")
    response, _, _ = platform.launch(client, email="sam@ladysmith.example")
    page = response.get_data(as_text=True)
    assert "Sign in to Countersign directly</a>, in a new window." in page
    assert "email" not in page.split("<h1>", 1)[1].replace("email address", "")
    assert "/lti/connect/" not in caplog.text
    with app.app_context():
        assert db.session.scalar(select(LtiLinkRequest)).token_hash is None


def test_the_owner_may_decline_and_nothing_is_linked(
    app, client, platform, registered, make_person
):
    pid = make_person("staff", email="sam@ladysmith.example")
    platform.launch(client, sub="attacker-1", email="sam@ladysmith.example")
    platform.launch(client, sub="attacker-2", email="sam@ladysmith.example")
    own = Auth(app, app.test_client())
    own.as_person(pid)
    response = own.post("/lti/connect", {"code": "", "action": "decline_all"})
    assert response.status_code == 302
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiLinkRequest)) == 0
        assert db.session.scalar(select(func.count()).select_from(LtiIdentity)) == 0
    assert "lti.link_declined" in [e for e, _, _ in lti_events(app)]


def test_only_the_owner_signed_in_directly_can_confirm(
    app, client, platform, registered, make_person
):
    make_person("staff", email="sam@ladysmith.example")
    other = make_person("staff", email="olly@ladysmith.example")
    response, _, _ = platform.launch(client, sub="attacker-1", email="sam@ladysmith.example")
    code = pairing_code(response)
    # Someone else, signed in as themselves, cannot answer it.
    someone = Auth(app, app.test_client())
    someone.as_person(other)
    response = someone.post("/lti/connect", {"code": code, "action": "confirm"})
    assert response.status_code == 400 and "No waiting request has this code" in response.get_data(
        as_text=True
    )
    # Nor can a session opened from a platform, even the person's own.
    launched = app.test_client()
    response, _, _ = platform.launch(launched, sub="new-one", email="new@ladysmith.example")
    assert response.status_code == 302
    page = launched.get("/lti/connect").get_data(as_text=True)
    assert "sign in to Countersign directly" in page and "Connect my account" not in page
    token = csrf_token(launched, "/")
    response = launched.post("/lti/connect", data={"code": code, "action": "confirm",
                                                   "csrf_token": token})  # fmt: skip
    assert "Learning platform account connected" not in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiIdentity)) == 1  # new-one's


def test_a_new_person_made_by_a_launch_is_told_by_email(app, client, platform, registered, smtp):
    response, _, _ = platform.launch(client)
    assert response.status_code == 302
    ((to, message),) = wait_for_mail(smtp, 1)
    assert to == ["tessa.ta@ladysmith.example"]
    assert "A learning platform account was connected" in message["Subject"]


# --- logins write nothing (F17) ---------------------------------------------------------------


def row_counts(app) -> dict[str, int]:
    from core.db import Base

    with app.app_context():
        return {
            name: db.session.scalar(select(func.count()).select_from(table))
            for name, table in Base.metadata.tables.items()
        }


def test_five_hundred_logins_from_one_address_write_no_rows(app, platform, registered):
    before = row_counts(app)
    client = app.test_client()
    for n in range(500):
        response = client.post("/lti/login", data={
            "iss": platform.issuer, "login_hint": str(n), "client_id": platform.client_id})  # fmt: skip
        assert response.status_code == 302
    assert row_counts(app) == before


def test_two_tabs_launch_at_once_and_a_forged_state_cookie_is_refused(
    app, client, platform, registered
):
    first, second = platform.login(client), platform.login(client)
    for auth in (second, first):
        token = platform.sign(platform.claims(auth["nonce"]))
        response = client.post("/lti/launch", data={"id_token": token, "state": auth["state"]})
        assert response.status_code == 302, response.get_data(as_text=True)
    # A state cookie changed by hand (not as Countersign signed it) starts nothing.
    forged = app.test_client()
    auth = platform.login(forged)
    name = f"__Secure-lti1p3-{auth['state']}"
    ((domain, path, _),) = [k for k in forged._cookies if k[2] == name]
    assert forged.get_cookie(name, domain, path).value != auth["state"]  # signed, not bare
    forged.set_cookie(name, auth["state"], domain=domain, path=path)
    token = platform.sign(platform.claims(auth["nonce"]))
    response = forged.post("/lti/launch", data={"id_token": token, "state": auth["state"]})
    assert_refused(response, "This launch has already been used")
    assert_not_signed_in(forged)


# --- administrators see and remove links (F13) -----------------------------------------------


def test_an_administrator_removes_a_link_and_it_is_audited(
    app, client, platform, registered, make_person
):
    response, _, _ = platform.launch(client, sub="moodle-user-17")
    assert response.status_code == 302
    pid = launched_person(app)
    client.post("/sign-out", data={"csrf_token": csrf_token(client, "/")})
    admin = Auth(app, app.test_client())
    admin.as_person(make_person("admin"))
    page = admin.client.get(f"/admin/people/{pid}").get_data(as_text=True)
    assert "Learning platform accounts" in page and "Test Moodle" in page
    with app.app_context():
        identity_id = db.session.scalar(select(LtiIdentity.id))
    url = f"/admin/people/{pid}/lti/{identity_id}/remove"
    assert admin.client.post(url).status_code == 400  # no CSRF token
    assert admin.post(f"/admin/people/{pid + 1000}/lti/{identity_id}/remove", {},
                      form_url=f"/admin/people/{pid}").status_code == 404  # fmt: skip
    response = admin.post(url, {}, form_url=f"/admin/people/{pid}")
    assert response.status_code == 302
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiIdentity)) == 0
    events = lti_events(app)
    assert [e for e, _, _ in events] == ["lti.identity_linked", "lti.launch", "lti.link_removed"]
    for _, _, detail in events:
        assert "moodle-user-17" not in json_text(detail) and "@" not in json_text(detail)
    assert events[0][2]["lms_user"] == events[2][2]["lms_user"]
    # The LMS user's next launch is treated afresh: the account now exists, so it waits.
    response, _, _ = platform.launch(client, sub="moodle-user-17")
    assert_confirmation_needed(response)


def test_a_session_opened_from_the_lms_cannot_change_the_second_factor(
    app, client, platform, registered
):
    """Setting up or removing a second factor needs a sign-in to Countersign itself; a session the
    platform opened is sent to sign in first (re-review R7)."""
    response, _, _ = platform.launch(client)
    assert response.status_code == 302
    for url in ("/account/second-factor/authenticator", "/account/second-factor/passkey"):
        answer = client.get(url)
        assert answer.status_code == 302 and "/sign-in" in answer.headers["Location"], url


# --- the re-review: confirmation bound to the launch (R2), claimed accounts (R3), one answer
# for every kind of existing account (R9), a person's own second factor (R12) -----------------


def test_the_owner_connects_only_the_launch_whose_code_they_saw(
    app, platform, registered, make_person
):
    """Re-review R2: other LMS users launch with the owner's email first; the owner signs in and
    can connect only the request whose code their own launch showed them."""
    vic = make_person("staff", name="Vic Tim", email="vic@ladysmith.example")
    attacker = app.test_client()
    for n in range(3):
        response, _, _ = platform.launch(attacker, sub=f"attacker-{n}",
                                         email="vic@ladysmith.example", name="Vic Tim")  # fmt: skip
        assert_confirmation_needed(response)
    attackers_code = pairing_code(response)
    own, _, _ = platform.launch(app.test_client(), sub="vic-real", email="vic@ladysmith.example",
                                name="Victoria Tim")  # fmt: skip
    code = pairing_code(own)
    assert code != attackers_code
    signed_in = Auth(app, app.test_client())
    signed_in.as_person(vic)
    page = signed_in.client.get("/lti/connect").get_data(as_text=True)
    # Each request is told apart (platform, LMS name, time), and no code is shown there.
    assert "4 learning platform accounts are waiting" in page and "Victoria Tim" in page
    assert code not in page and attackers_code not in page
    with app.app_context():
        stored = " ".join(f"{r.pairing_hash} {r.token_hash}" for r in db.session.scalars(
            select(LtiLinkRequest)))  # fmt: skip
    assert code.replace(" ", "") not in stored  # kept only as a hash
    # A mistyped code connects nothing, and says so at the field.
    response = signed_in.post("/lti/connect", {"code": "ZZZ 999", "action": "confirm"})
    assert response.status_code == 400
    assert 'id="code-error"' in response.get_data(as_text=True)
    response = signed_in.post("/lti/connect", {"code": "", "action": "confirm"})
    assert response.status_code == 400 and "Enter the code" in response.get_data(as_text=True)
    response = signed_in.post("/lti/connect", {"code": code, "action": "confirm"})
    assert "Learning platform account connected" in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalars(select(LtiIdentity.subject)).all() == ["vic-real"]
    # The attacker's LMS account still opens nothing of Vic's, whatever email it gives.
    other = app.test_client()
    response, _, _ = platform.launch(other, sub="attacker-0", email="vic@ladysmith.example")
    assert_confirmation_needed(response)
    assert_not_signed_in(other)
    response, _, _ = platform.launch(other, sub="vic-real", email="vic@ladysmith.example")
    assert response.status_code == 302 and "Vic Tim" in other.get("/").get_data(as_text=True)


def test_an_emailed_link_needs_the_launchs_code_and_can_decline_everything(
    app, client, platform, registered, make_person, smtp
):
    """Re-review R2: the emailed link alone connects nothing; it asks for the code, works once,
    and offers to decline every waiting request."""
    import re

    make_person("staff", email="sam@ladysmith.example")
    platform.launch(client, sub="attacker-1", email="sam@ladysmith.example")
    ((_, message),) = wait_for_mail(smtp, 1)
    body = message.get_payload(decode=True).decode()
    assert "type the code that the page in your course showed" in body
    link = re.search(r"(/lti/connect/\S+)", body).group(1)
    stranger = app.test_client()
    for data in ({"code": "", "action": "confirm"}, {"code": "ABC234", "action": "confirm"}):
        response = stranger.post(link, data={**data, "csrf_token": csrf_token(stranger, link)})
        assert response.status_code == 400
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiIdentity)) == 0
    response = stranger.post(link, data={"action": "decline_all", "code": "",
                                         "csrf_token": csrf_token(stranger, link)})  # fmt: skip
    assert response.status_code == 302
    assert stranger.get(link).status_code == 400  # used up
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiLinkRequest)) == 0
    assert [e for e, _, _ in lti_events(app)][-1] == "lti.link_declined"


def claim_by_import(app, name: str, email: str) -> None:
    from people.service import import_people

    with app.app_context():
        result = import_people(db.session, f"name,email,roles,schools\n{name},{email},staff,\n",
                               federation())  # fmt: skip
        db.session.commit()
        assert result.updated == [email]


def claim_by_invitation(app, email: str) -> None:
    from people.auth import INVITE, make_link_token

    with app.app_context():
        person = db.session.scalar(select(Person).where(Person.email == email))
        token = make_link_token(app.config["SECRET_KEY"], INVITE, person)
    real = app.test_client()
    response = real.post(f"/invite/{token}", data={
        "password": "a quite long new passphrase 42", "confirm": "a quite long new passphrase 42",
        "csrf_token": csrf_token(real, f"/invite/{token}")})  # fmt: skip
    assert response.status_code == 302 and response.location == "/"


def claim_by_edit(app, email: str) -> None:
    """An administrator corrects the email of the account a launch made."""
    from people.service import PersonData, update_person

    with app.app_context():
        person = db.session.scalar(select(Person).where(Person.email == email))
        data = PersonData(person.name, "nina@ladysmith.example", tuple(person.roles), ())
        update_person(db.session, person, data, federation(), None)
        db.session.commit()


@pytest.mark.parametrize("claims", ["import_then_invitation", "invitation", "import", "edit"])
def test_an_account_a_launch_made_and_a_real_person_claimed_is_not_opened_by_that_launch(
    app, platform, registered, claims
):
    """Re-review R3: an LMS user launches with a future colleague's address before the school
    adds them; the school's import and invitation then hand the account to the real person. The
    launch's link is suspended at the claim (audited) and opens nothing until confirmed."""
    email = "nina.new@ladysmith.example"
    response, _, _ = platform.launch(app.test_client(), sub="attacker-pre", email=email,
                                     name="Nina New")  # fmt: skip
    assert response.status_code == 302  # made, linked and signed in: nobody had that email
    if "import" in claims:
        claim_by_import(app, "Nina Newstarter", email)
    if "invitation" in claims:
        claim_by_invitation(app, email)
    if claims == "edit":
        claim_by_edit(app, email)
    with app.app_context():
        identity = db.session.scalar(select(LtiIdentity))
        assert identity.how == "new_person" and identity.suspended_at is not None
    suspended = [d for e, _, d in lti_events(app) if e == "lti.link_suspended"]
    assert len(suspended) == 1 and suspended[0]["reason"] == "account_claimed"
    attacker = app.test_client()
    response, _, _ = platform.launch(attacker, sub="attacker-pre", email="whatever@evil.example")
    assert_confirmation_needed(response)
    assert_not_signed_in(attacker)


def test_a_person_a_launch_made_confirms_their_own_link_after_claiming_it(
    app, platform, registered
):
    """The claim costs the real person one confirmation, with the code from their launch."""
    email = "tessa.ta@ladysmith.example"
    response, _, _ = platform.launch(app.test_client())
    assert response.status_code == 302
    claim_by_invitation(app, email)
    client = app.test_client()
    response, _, _ = platform.launch(client)
    assert_confirmation_needed(response)
    own = app.test_client()
    token = csrf_token(own, "/sign-in")
    own.post("/sign-in", data={"email": email, "password": "a quite long new passphrase 42",
                               "csrf_token": token})  # fmt: skip
    response = own.post("/lti/connect", data={"code": pairing_code(response), "action": "confirm",
                                              "csrf_token": csrf_token(own, "/lti/connect")})  # fmt: skip
    assert "Learning platform account connected" in response.get_data(as_text=True)
    response, _, _ = platform.launch(client)
    assert response.status_code == 302


def enrol_authenticator(app, person_id: int) -> None:
    import pyotp

    from mfa.rules import enrol_totp

    with app.app_context():
        secret = pyotp.random_base32()
        enrol_totp(db.session, db.session.get(Person, person_id), secret, pyotp.TOTP(secret).now())
        db.session.commit()


def test_every_kind_of_existing_account_gets_the_same_answer_and_the_reason_is_audited(
    app, platform, make_person
):
    """Re-review R9: a launch with an existing address shows the same page whether the account
    is ordinary, privileged, has a second factor, is closed or is another school's: no oracle.
    The precise reason is in the audit row."""
    import re

    register(app, platform, school="infant")
    make_person("staff", email="teacher@ladysmith.example", schools=("infant",))
    make_person("admin", email="head@ladysmith.example", schools=("infant",))
    make_person("governor", email="gov@ladysmith.example")
    make_person("staff", email="leaver@ladysmith.example", active=False)
    make_person("staff", email="jo@ladysmith.example", schools=("junior",))
    enrol_authenticator(app, make_person("staff", email="careful@ladysmith.example"))
    pages = {}
    for n, who in enumerate(["teacher", "head", "gov", "leaver", "jo", "careful"]):
        response, _, _ = platform.launch(app.test_client(), sub=f"probe-{n}",
                                         email=f"{who}@ladysmith.example")  # fmt: skip
        assert_confirmation_needed(response)
        pages[who] = re.sub(r'pairing-code">[A-Z0-9 ]+<', "", response.get_data(as_text=True))
        pages[who] = re.sub(r'nonce-[^"\']+|name="csrf_token"[^>]*', "", pages[who])
    assert len(set(pages.values())) == 1, "a launch tells one kind of account from another"
    reasons = [d["reason"] for e, _, d in lti_events(app) if e == "lti.launch_refused"]
    assert reasons == ["account never opened by a launch", "account never opened by a launch",
                       "closed account", "another school's account",
                       "account never opened by a launch"]  # fmt: skip
    with app.app_context():
        assert db.session.scalars(select(LtiLinkRequest.subject)).all() == ["probe-0"]


def test_a_person_with_their_own_second_factor_is_never_signed_in_by_a_launch(
    app, client, platform, registered, make_person
):
    """Re-review R12: someone who set up a second factor though their role does not need one is
    asked for it at every sign-in, so a launch, which cannot ask, never opens their account:
    refused with the same words as the closed roles."""
    pid = make_person("staff", email="sam@ladysmith.example")
    response, _, _ = platform.launch(client, sub="moodle-sam", email="sam@ladysmith.example")
    confirm_signed_in(app, pid, pairing_code(response))
    response, _, _ = platform.launch(client, sub="moodle-sam", email="sam@ladysmith.example")
    assert response.status_code == 302
    client.post("/sign-out", data={"csrf_token": csrf_token(client, "/")})
    enrol_authenticator(app, pid)
    response, _, _ = platform.launch(client, sub="moodle-sam", email="sam@ladysmith.example")
    assert_refused(response, "Sign in to Countersign directly")
    assert_not_signed_in(client)
    # Nor can a waiting request be confirmed once they have one.
    response, _, _ = platform.launch(app.test_client(), sub="moodle-sam-2",
                                     email="sam@ladysmith.example")  # fmt: skip
    assert_confirmation_needed(response)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LtiLinkRequest)) == 0
