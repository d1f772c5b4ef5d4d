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


# --- segregation of duties (F7) ---


def test_nobody_decides_an_application_they_made(app, people):
    train_people(app, people["ann"], people["bob"])
    client = sign_in(app, people["sue"])
    made = Auth(app, client).post(
        "/accounts/apply",
        {"name": "Senior news", "platform": "Facebook", "aim": "News.", "audience": "Families.",
         "promotion": "Newsletter.", "visibility": "open",
         "runners": [people["ann"], people["bob"]]},
    )  # fmt: skip
    application_id = int(made.location.rsplit("/", 1)[1])
    page = client.get(made.location).get_data(as_text=True)
    assert "You made this application" in page and "Record the decision" not in page
    refused = decide(app, people["sue"], application_id, "approve")
    assert refused.status_code == 403
    assert "You made this application, so another member of the senior leadership team" in (
        refused.get_data(as_text=True)
    )
    with app.app_context():
        assert count(Decision) == 0
    assert decide(app, people["ada"], application_id, "approve").status_code == 302


def test_a_named_runner_cannot_decide_the_application(app, people):
    train_people(app, people["ann"], people["sue"])
    created = apply(app, people, ["ann", "sue"])
    application_id = int(created.location.rsplit("/", 1)[1])
    page = sign_in(app, people["sue"]).get(created.location).get_data(as_text=True)
    assert "You are named to run this account" in page and "Record the decision" not in page
    refused = decide(app, people["sue"], application_id, "reject", "Not me")
    assert refused.status_code == 403
    assert "You are named to run this account" in refused.get_data(as_text=True)
    with app.app_context():
        assert count(Decision) == 0
        assert db.session.get(AccountApplication, application_id).state == "pending"


# --- what applicants see (F16) ---


def test_applicants_choose_only_people_of_their_own_schools(app, make_person):
    amy = make_person("staff", name="Amy Infant", schools=("infant",))
    make_person("staff", name="Ian Infant Staff", schools=("infant",))
    make_person("parent", name="Pia Infant Parent", schools=("infant",))
    make_person("volunteer", name="Val Infant Volunteer", schools=("infant",))
    make_person("staff", name="Fay Federation Staff")
    junior = make_person("staff", name="Jo Junior Staff", schools=("junior",))
    make_person("parent", name="Jay Junior Parent", schools=("junior",))
    make_person("governor", name="Gil Infant Governor", schools=("infant",))
    make_person("parent", name="Pat Schoolless Parent")
    page = sign_in(app, amy).get("/accounts/apply").get_data(as_text=True)
    for shown in ("Amy Infant", "Ian Infant Staff", "Pia Infant Parent", "Val Infant Volunteer",
                  "Fay Federation Staff"):  # fmt: skip
        assert shown in page
    for hidden in ("Jo Junior Staff", "Jay Junior Parent", "Gil Infant Governor",
                   "Pat Schoolless Parent"):  # fmt: skip
        assert hidden not in page
    refused = Auth(app, sign_in(app, amy)).post(
        "/accounts/apply",
        {"name": "Infant news", "platform": "Facebook", "aim": "News.", "audience": "Families.",
         "promotion": "Newsletter.", "visibility": "open", "runners": [amy, junior]},
    )  # fmt: skip
    assert refused.status_code == 400
    with app.app_context():
        assert count(AccountApplication) == 0


def test_only_reviewers_see_a_runners_module_by_module_status(app, people):
    created = apply(app, people, ["ann", "bob", "vic"])
    applicant_page = sign_in(app, people["applicant"]).get(created.location).get_data(as_text=True)
    assert "Vic Volunteer" in applicant_page and "Not trained" in applicant_page
    assert "Not started" not in applicant_page and "Signature:" not in applicant_page
    for reviewer in ("sue", "gus"):
        page = sign_in(app, people[reviewer]).get(created.location).get_data(as_text=True)
        assert "Not started: all 10 modules" in page


# --- the register's changes are audited (F13) ---


def test_register_account_recorded_handed_over_and_closed_are_audited(app, people):
    from audit.models import AuditEvent

    admin, url = approved_account(app, people)
    train_people(app, people["ada"])
    admin.post(url, {"action": "transfer", "transfer-runners": [people["ann"], people["ada"]]})
    admin.post(url, {"action": "close", "close-reason": "Department merged"})
    with app.app_context():
        account = db.session.scalar(select(SocialAccount))
        rows = db.session.scalars(
            select(AuditEvent).where(AuditEvent.event.like("account.%")).order_by(AuditEvent.seq)
        ).all()
    # Each runner row taken off or added is recorded too, with its digest (the register is evidence).
    assert [r.event for r in rows] == [
        "account.recorded", "account.runner_added", "account.runner_added",
        "account.runner_removed", "account.runner_added", "account.handed_over", "account.closed",
    ]  # fmt: skip
    assert all(r.actor_id == people["ada"] and r.subject_id == str(account.id) for r in rows)
    assert rows[5].detail == (f'{{"added":"{people["ada"]}","removed":"{people["bob"]}"}}')
    assert all("Staff" not in r.detail and "facebook" not in r.detail for r in rows)
