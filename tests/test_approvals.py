"""The account approval workflow: business case, SLT's gated decision, the register and hand-over."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from approvals.models import AccountApplication, Decision, SocialAccount
from approvals.rules import register
from core.db import db, utcnow
from people.models import Person
from people.service import deactivate
from tests.conftest import Auth, train_people
from training.status import add_months

pytestmark = pytest.mark.usefixtures("published")


@pytest.fixture
def people(make_person):
    return {
        "applicant": make_person("staff", name="Amy Applicant"),
        "ann": make_person("staff", name="Ann Staff"),
        "bob": make_person("staff", name="Bob Staff"),
        "vic": make_person("volunteer", name="Vic Volunteer"),
        "sue": make_person("slt", "staff", name="Sue Senior"),
        "ada": make_person("admin", "staff", name="Ada Admin"),
        "gus": make_person("governor", name="Gus Governor"),
    }


def sign_in(app, pid):
    return Auth(app, app.test_client()).as_person(pid)


def apply(app, people, runners):
    client = sign_in(app, people["applicant"])
    auth = Auth(app, client)
    return auth.post(
        "/accounts/apply",
        {
            "name": "Junior history",
            "platform": "Facebook",
            "aim": "Share pupils' history work with families.",
            "audience": "Parents and carers of Years 3 to 6.",
            "promotion": "Newsletter and the school website.",
            "visibility": "private",
            "runners": [people[r] for r in runners],
        },
    )


def count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def test_a_business_case_needs_two_staff_runners(app, people):
    response = apply(app, people, ["ann", "vic"])
    assert response.status_code == 400
    assert "Name at least 2 staff members to run the account (1 of those chosen is staff)" in (
        response.get_data(as_text=True)
    )
    with app.app_context():
        assert count(AccountApplication) == 0


def decide(app, pid, application_id, decision, reason=""):
    auth = Auth(app, sign_in(app, pid))
    url = f"/accounts/applications/{application_id}"
    return auth.post(url, {"decision": decision, "reason": reason})


def test_approval_is_refused_while_a_runner_is_untrained_and_says_who(app, people):
    train_people(app, people["ann"], people["bob"])
    created = apply(app, people, ["ann", "bob", "vic"])
    application_id = int(created.location.rsplit("/", 1)[1])
    page = sign_in(app, people["sue"]).get(created.location).get_data(as_text=True)
    assert "This account cannot be approved yet" in page
    assert "Vic Volunteer" in page and "Not started: all 10 modules" in page
    assert "Signature: policy not yet signed" in page
    response = decide(app, people["sue"], application_id, "approve")
    assert response.status_code == 409
    assert "cannot be approved while these runners are not trained: Vic Volunteer" in (
        response.get_data(as_text=True)
    )
    with app.app_context():
        assert count(Decision) == 0


def test_approval_when_everyone_is_trained_records_the_decision_and_a_snapshot(app, people):
    train_people(app, people["ann"], people["bob"], people["vic"])
    created = apply(app, people, ["ann", "bob", "vic"])
    application_id = int(created.location.rsplit("/", 1)[1])
    response = decide(app, people["sue"], application_id, "approve", "Good plan.")
    assert response.status_code == 302
    with app.app_context():
        decision = db.session.scalar(select(Decision))
        assert decision.approved and decision.decided_by_id == people["sue"]
        assert decision.reason == "Good plan." and decision.decided_at is not None
        assert {r["name"]: r["trained"] for r in decision.runners_snapshot} == {
            "Ann Staff": True, "Bob Staff": True, "Vic Volunteer": True,
        }  # fmt: skip
    again = decide(app, people["sue"], application_id, "reject", "Changed my mind")
    assert again.status_code in (200, 400)
    with app.app_context():
        assert count(Decision) == 1


def test_rejection_needs_a_reason(app, people):
    created = apply(app, people, ["ann", "bob"])
    application_id = int(created.location.rsplit("/", 1)[1])
    response = decide(app, people["sue"], application_id, "reject")
    assert response.status_code == 400
    assert "Give a reason for rejecting" in response.get_data(as_text=True)
    assert decide(app, people["sue"], application_id, "reject", "No audience").status_code == 302


def test_only_slt_decide_governors_read_and_others_cannot_see(app, people, make_person):
    created = apply(app, people, ["ann", "bob"])
    application_id = int(created.location.rsplit("/", 1)[1])
    assert decide(app, people["gus"], application_id, "reject", "x").status_code == 403
    assert sign_in(app, people["gus"]).get(created.location).status_code == 200
    assert sign_in(app, people["bob"]).get(created.location).status_code == 404
    assert sign_in(app, people["vic"]).get("/accounts/apply").status_code == 403


def approved_account(app, people, runners=("ann", "bob")):
    train_people(app, *[people[r] for r in runners])
    created = apply(app, people, list(runners))
    application_id = int(created.location.rsplit("/", 1)[1])
    decide(app, people["sue"], application_id, "approve")
    admin = Auth(app, sign_in(app, people["ada"]))
    url = f"/accounts/applications/{application_id}/account"
    refused = admin.post(url, {"platform": "Facebook", "handle": "password: hunter2"},
                         form_url=f"/accounts/applications/{application_id}")  # fmt: skip
    assert "password manager" in admin.client.get(refused.location).get_data(as_text=True)
    done = admin.post(url, {"platform": "Facebook", "handle": "https://facebook.com/ljhistory"},
                      form_url=f"/accounts/applications/{application_id}")  # fmt: skip
    assert done.status_code == 302 and "/accounts/register/" in done.location
    return admin, done.location


def test_the_register_lists_approved_accounts_with_their_runners(app, people):
    admin, url = approved_account(app, people)
    page = admin.client.get("/accounts/register").get_data(as_text=True)
    assert "Junior history" in page and "facebook.com/ljhistory" in page
    assert "All trained" in page and "Ann Staff" in page and "Bob Staff" in page


def test_a_leaver_flags_the_account_for_hand_over(app, people):
    admin, url = approved_account(app, people)
    with app.app_context():
        deactivate(db.session.get(Person, people["bob"]))
        db.session.commit()
    page = admin.client.get("/accounts/register").get_data(as_text=True)
    assert "Needs hand-over" in page and "Bob Staff has left" in page


def test_expiry_flags_the_account(app, people):
    approved_account(app, people)
    with app.app_context():
        later = add_months(utcnow(), 12) + timedelta(days=1)
        (entry,) = register(db.session, now=later)
        assert entry.flagged
        assert "Ann Staff is no longer trained" in entry.problems


def test_hand_over_to_trained_runners_or_close(app, people):
    admin, url = approved_account(app, people)
    refused = admin.post(
        url, {"action": "transfer", "transfer-runners": [people["ann"], people["ada"]]}
    )
    assert refused.status_code == 409
    assert "not trained: Ada Admin" in refused.get_data(as_text=True)
    train_people(app, people["ada"])
    moved = admin.post(
        url, {"action": "transfer", "transfer-runners": [people["ann"], people["ada"]]}
    )
    assert moved.status_code == 302
    with app.app_context():
        account = db.session.scalar(select(SocialAccount))
        assert sorted(p.name for p in account.current_runners) == ["Ada Admin", "Ann Staff"]
        assert len(account.runner_rows) == 3  # Bob's row is kept, ended
    no_reason = admin.post(url, {"action": "close", "close-reason": ""})
    assert no_reason.status_code == 400
    closed = admin.post(url, {"action": "close", "close-reason": "Department merged"})
    assert closed.status_code == 302
    page = admin.client.get("/accounts/register").get_data(as_text=True)
    assert "Junior history" not in page
    assert "Department merged" in admin.client.get(url).get_data(as_text=True)
