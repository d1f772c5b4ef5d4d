"""The learner's journey through the pages: read, sign, see the record."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from core.db import db
from quizzes.models import QuizAttempt
from tests.conftest import csrf_token, right_answers
from training.models import Acknowledgement, AcknowledgementModule, ReadReceipt

BASE = "/policies/social-media-policy"
pytestmark = pytest.mark.usefixtures("published")


def read_modules(client, slugs):
    for slug in slugs:
        url = f"{BASE}/modules/{slug}"
        token = csrf_token(client, url)
        response = client.post(f"{url}/read", data={"csrf_token": token})
        assert response.status_code == 302, slug


def pass_quiz(app, client, slug, answers=right_answers):
    """Start the module's quiz through its pages and answer it; returns the attempt's address."""
    intro = f"{BASE}/modules/{slug}/quiz"
    started = client.post(intro, data={"csrf_token": csrf_token(client, intro)})
    assert started.status_code == 302, started.get_data(as_text=True)
    url = started.location
    page = client.get(url).get_data(as_text=True)
    with app.app_context():
        attempt = db.session.scalar(
            select(QuizAttempt).where(QuizAttempt.public_id == url.rsplit("/", 1)[1])
        )
        chosen = answers(attempt)
    assert 'value="' in page and "correct" not in page.lower()
    data = {f"q-{key}": ids for key, ids in chosen.items()}
    response = client.post(url, data={**data, "csrf_token": csrf_token(client, url)})
    assert response.status_code == 302, response.get_data(as_text=True)
    return url


def complete_modules(app, client, slugs):
    """Read each module and pass its quiz, through the pages as a learner would."""
    for slug in slugs:
        read_modules(client, [slug])
        pass_quiz(app, client, slug)


def count(model, **where) -> int:
    query = select(func.count()).select_from(model)
    for key, value in where.items():
        query = query.where(getattr(model, key) == value)
    return db.session.scalar(query)


VOLUNTEER_MODULES = [
    "scope", "organisational-control", "creating-accounts", "monitoring", "behaviour",
    "legal-considerations", "handling-abuse", "tone", "use-of-images", "federation-accounts",
]  # fmt: skip


def test_dashboard_lists_the_modules_for_the_persons_role_as_a_task_list(auth, make_person):
    client = auth.as_person(make_person("volunteer", name="Val Vol"))
    page = client.get("/").get_data(as_text=True)
    assert "You have completed 0 of 10 modules" in page
    assert page.count('class="task"') == 11  # ten modules and the signature
    assert "Monitoring posts about the school" not in page  # not a volunteer module
    assert "Cannot start yet" in page


def test_dashboard_remembers_where_the_person_left_off(app, auth, make_person):
    client = auth.as_person(make_person("staff"))
    complete_modules(app, client, ["scope", "organisational-control"])
    client.get(f"{BASE}/modules/creating-accounts")
    client.get(f"{BASE}/modules/tone")  # the last page opened, not finished
    page = client.get("/").get_data(as_text=True)
    assert "You have completed 2 of 13 modules" in page
    assert f'href="{BASE}/modules/tone">Continue where you left off' in page
    assert "In progress" in page


def test_module_page_shows_the_policy_text_faithfully(auth, make_person):
    client = auth.as_person(make_person("staff"))
    page = client.get(f"{BASE}/modules/monitoring").get_data(as_text=True)
    assert (
        "must be responded to within 24 hours (or on the next working day if received at a weekend)"
        in page
    )
    assert "Module 4 of 13" in page
    assert "I have read this module" in page


def test_signing_before_finishing_is_refused(app, auth, make_person):
    client = auth.as_person(make_person("staff", name="Sam Staff"))
    read_modules(client, ["scope"])
    response = client.get(f"{BASE}/sign")
    assert response.status_code == 302 and response.location == "/"
    token = csrf_token(client, "/")
    response = client.post(f"{BASE}/sign", data={"csrf_token": token, "confirm": "y",
                                                 "full_name": "Sam Staff"})  # fmt: skip
    assert response.status_code == 302
    with app.app_context():
        assert count(Acknowledgement) == 0


def test_signing_needs_the_box_ticked_and_the_persons_own_name(app, auth, make_person):
    client = auth.as_person(make_person("volunteer", name="Val  Vol"))
    complete_modules(app, client, VOLUNTEER_MODULES)
    token = csrf_token(client, f"{BASE}/sign")
    response = client.post(f"{BASE}/sign", data={"csrf_token": token, "full_name": ""})
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "Tick the box to confirm the declaration." in page
    assert "Type your full name to sign." in page
    response = client.post(f"{BASE}/sign", data={"csrf_token": token, "confirm": "y",
                                                 "full_name": "Someone Else"})  # fmt: skip
    assert response.status_code == 400
    assert "Type your full name exactly as it appears here: Val  Vol" in response.get_data(
        as_text=True
    )
    with app.app_context():
        assert count(Acknowledgement) == 0


def test_signed_acknowledgement_records_everything_and_double_submit_records_one(
    app, auth, make_person
):
    pid = make_person("volunteer", name="Val Vol")
    client = auth.as_person(pid)
    complete_modules(app, client, VOLUNTEER_MODULES)
    token = csrf_token(client, f"{BASE}/sign")
    data = {"csrf_token": token, "confirm": "y", "full_name": "  val vol "}
    headers = {"User-Agent": "Phone browser 1.0"}
    first = client.post(f"{BASE}/sign", data=data, headers=headers)
    second = client.post(f"{BASE}/sign", data=data, headers=headers)
    assert first.status_code == second.status_code == 302
    assert first.location == second.location == f"{BASE}/signed"
    with app.app_context():
        assert count(Acknowledgement) == 1
        ack = db.session.scalar(select(Acknowledgement))
        assert (ack.person_id, ack.typed_name, ack.ip, ack.user_agent) == (
            pid, "val vol", "127.0.0.1", "Phone browser 1.0",
        )  # fmt: skip
        assert ack.policy_version.label == "1.0"
        assert "Social Media Policy (version 1.0)" in ack.declaration
        assert count(AcknowledgementModule, acknowledgement_id=ack.id) == 10
        assert ack.at.tzinfo is not None
    confirmation = client.get(f"{BASE}/signed").get_data(as_text=True)
    assert "You are trained on the Social Media Policy" in confirmation
    assert "You are trained on this policy" in client.get("/").get_data(as_text=True)


def test_marking_a_module_read_twice_records_it_once(app, auth, make_person):
    client = auth.as_person(make_person("staff"))
    read_modules(client, ["tone", "tone"])
    with app.app_context():
        assert count(ReadReceipt) == 1


def test_a_module_outside_the_persons_role_records_nothing(app, auth, make_person):
    client = auth.as_person(make_person("volunteer"))
    page = client.get(f"{BASE}/modules/personal-use").get_data(as_text=True)
    assert "not required for your role" in page
    read_modules(client, ["personal-use"])
    with app.app_context():
        assert count(ReadReceipt) == 0


def test_history_lists_reads_and_acknowledgements_and_prints(app, auth, make_person):
    client = auth.as_person(make_person("volunteer", name="Val Vol"))
    complete_modules(app, client, VOLUNTEER_MODULES)
    token = csrf_token(client, f"{BASE}/sign")
    client.post(f"{BASE}/sign", data={"csrf_token": token, "confirm": "y", "full_name": "Val Vol"})
    page = client.get("/history").get_data(as_text=True)
    assert page.count("<tr>") == 1 + 10  # a header row and ten reads
    assert "Social Media Policy, version 1.0" in page
    assert "I confirm that I have read and understood the Social Media Policy (version 1.0)" in page
    assert "trained, valid until" in page
    assert "Record produced on" in page
    assert "data-print" in page


@pytest.mark.parametrize(
    "url",
    ["/no-such-page", f"{BASE}/modules/no-such-module", "/policies/nope/sign", f"{BASE}/modules/"],
)
def test_unknown_pages_get_a_friendly_404(auth, make_person, url):
    client = auth.as_person(make_person("staff"))
    response = client.get(url)
    assert response.status_code == 404
    page = response.get_data(as_text=True)
    assert "Page not found" in page and "Go to your training page" in page


def test_pages_send_security_headers_and_no_store(auth, make_person):
    client = auth.as_person(make_person("staff"))
    response = client.get("/")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"


def test_the_whole_policy_reads_and_prints_on_one_page(auth, make_person):
    client = auth.as_person(make_person("parent"))
    page = client.get(f"{BASE}/full").get_data(as_text=True)
    assert page.count('<section id="module-') == 13
    # module headings sit one level under the module titles
    assert re.search(r'<h3 id="[a-z-]+">Roles &amp; Responsibilities</h3>', page)
    assert "Staff are not permitted to follow or engage with current or prior pupils" in page


def test_signature_name_ignores_accents_punctuation_and_case():
    from training.progress import normalise_name

    assert normalise_name("Zoë  O'Brien-Smith") == normalise_name("zoe o brien smith")
    assert normalise_name("Zoë Smith") != normalise_name("Zoe Smyth")


def test_times_are_shown_in_the_federations_time_zone(app):
    from datetime import UTC, datetime

    from core.web import format_date, format_datetime

    with app.app_context():
        assert format_datetime(datetime(2026, 7, 1, 20, 30, tzinfo=UTC)) == "1 Jul 2026, 21:30 BST"
        assert format_datetime(datetime(2026, 12, 1, 20, 30, tzinfo=UTC)) == "1 Dec 2026, 20:30 GMT"
        assert format_date(datetime(2026, 6, 30, 23, 30, tzinfo=UTC)) == "1 July 2026"
