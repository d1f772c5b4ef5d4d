"""The training-status rule: what makes a person trained, and why they are not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from core.db import db
from people.models import Person, PersonRole
from people.service import deactivate
from tests.conftest import complete_modules
from training.models import Policy, ReadReceipt
from training.progress import AckRequest, acknowledge, record_visit
from training.status import (
    Ack,
    Evidence,
    ModuleInfo,
    Receipt,
    VersionInfo,
    add_months,
    evaluate,
    training_status,
)

T0 = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)

VERSION = VersionInfo(
    id=1,
    label="1.0",
    refresher_months=12,
    modules=(
        ModuleInfo(1, 11, "scope", "Scope"),
        ModuleInfo(2, 21, "tone", "Tone"),
        ModuleInfo(3, 31, "images", "Images", has_quiz=True),
    ),
    required={"staff": frozenset({1, 2, 3}), "parent": frozenset({1, 3})},
)


def status(evidence: Evidence, roles=("staff",), active=True, now=T0 + timedelta(days=1)):
    return evaluate(
        person_id=7, active=active, roles=roles, version=VERSION, evidence=evidence, now=now
    )


def read_all(at=T0, mvs=((1, 11), (2, 21), (3, 31))) -> list[Receipt]:
    return [Receipt(m, mv, at) for m, mv in mvs]


def signed(at=T0, version_id=1, mvs=(11, 21, 31), months=12) -> Ack:
    return Ack(1, version_id, months, at, frozenset(mvs))


def test_nothing_done_lists_every_module_as_not_started_and_no_acknowledgement():
    result = status(Evidence())
    assert not result.trained
    assert [(m.module, m.reason) for m in result.missing] == [
        ("scope", "not_started"),
        ("tone", "not_started"),
        ("images", "not_started"),
        (None, "not_acknowledged"),
    ]
    assert result.valid_until is None


def test_opened_but_unread_module_is_not_read():
    result = status(Evidence(visited={21: T0}))
    assert ("tone", "not_read") in [(m.module, m.reason) for m in result.missing]
    assert [m.state for m in result.modules] == ["not_started", "in_progress", "not_started"]


def test_a_read_module_with_a_quiz_waits_for_a_pass():
    result = status(Evidence(receipts=read_all()))
    assert [(m.module, m.reason) for m in result.missing] == [
        ("images", "quiz_not_passed"),
        (None, "not_acknowledged"),
    ]
    assert result.modules[2].state == "in_progress" and not result.ready_to_sign


def test_a_pass_before_expiry_does_not_count_after_it():
    later = add_months(T0, 12) + timedelta(days=3)
    evidence = Evidence(
        receipts=read_all(at=T0) + read_all(at=later), passes=[(31, T0)], acks=[signed()]
    )
    result = status(evidence, now=later + timedelta(hours=1))
    assert ("images", "quiz_not_passed") in [(m.module, m.reason) for m in result.missing]


def test_all_read_but_unsigned_is_ready_to_sign_not_trained():
    result = status(Evidence(receipts=read_all(), passes=[(31, T0)]))
    assert not result.trained and result.ready_to_sign
    assert [(m.module, m.reason) for m in result.missing] == [(None, "not_acknowledged")]


def test_read_and_signed_is_trained_until_refresher_period_ends():
    result = status(Evidence(receipts=read_all(), passes=[(31, T0)], acks=[signed()]))
    assert result.trained and not result.missing
    assert result.valid_until == datetime(2027, 1, 10, 9, 0, tzinfo=UTC)


def test_roles_decide_the_modules_required():
    evidence = Evidence(
        receipts=read_all(mvs=((1, 11), (3, 31))), passes=[(31, T0)], acks=[signed(mvs=(11, 31))]
    )
    assert status(evidence, roles=("parent",)).trained
    staff = status(evidence, roles=("staff",))
    assert not staff.trained
    # Signing covered only the parent's modules, so the extra module and a new signature are due.
    assert [(m.module, m.reason) for m in staff.missing] == [
        ("tone", "not_started"),
        (None, "not_acknowledged"),
    ]


def test_person_with_no_required_modules_is_not_trained():
    result = status(Evidence(), roles=("governor",))
    assert not result.required and not result.trained


def test_inactive_person_is_never_trained():
    result = status(Evidence(receipts=read_all(), passes=[(31, T0)], acks=[signed()]), active=False)
    assert not result.trained
    assert result.valid_until is None


def test_changed_module_text_needs_redoing_and_a_fresh_acknowledgement():
    # Version 2 changed "tone" (new module version 22); the others are shared with version 1.
    v2 = VersionInfo(
        id=2, label="2.0", refresher_months=12,
        modules=(ModuleInfo(1, 11, "scope", "Scope"), ModuleInfo(2, 22, "tone", "Tone"),
                 ModuleInfo(3, 31, "images", "Images", has_quiz=True)),
        required=VERSION.required,
    )  # fmt: skip
    evidence = Evidence(receipts=read_all(), passes=[(31, T0)], acks=[signed(version_id=1)])
    result = evaluate(
        person_id=7, active=True, roles=("staff",), version=v2, evidence=evidence,
        now=T0 + timedelta(days=30),
    )  # fmt: skip
    assert [(m.module, m.reason) for m in result.missing] == [
        ("tone", "outdated_version"),
        (None, "not_acknowledged"),
    ]
    assert [m.complete for m in result.modules] == [True, False, True]


def test_expired_training_must_be_done_again():
    evidence = Evidence(receipts=read_all(), passes=[(31, T0)], acks=[signed()])
    later = add_months(T0, 12) + timedelta(seconds=1)
    result = status(evidence, now=later)
    assert not result.trained
    assert result.expired_at == add_months(T0, 12)
    assert {m.reason for m in result.missing} == {"expired"}
    assert len(result.missing) == 4  # three modules and the signature


def test_refresher_done_after_expiry_restores_trained():
    first = signed(at=T0)
    renewal = T0 + timedelta(days=400)
    evidence = Evidence(
        receipts=read_all(at=T0) + read_all(at=renewal),
        passes=[(31, T0), (31, renewal)],
        acks=[first, Ack(2, 1, 12, renewal + timedelta(minutes=5), frozenset({11, 21, 31}))],
    )
    result = status(evidence, now=renewal + timedelta(days=1))
    assert result.trained
    assert result.valid_until == add_months(renewal + timedelta(minutes=5), 12)


def test_reading_again_after_expiry_without_signing_still_needs_signature():
    renewal = T0 + timedelta(days=400)
    evidence = Evidence(
        receipts=read_all(at=T0) + read_all(at=renewal),
        passes=[(31, T0), (31, renewal)],
        acks=[signed(at=T0)],
    )
    result = status(evidence, now=renewal + timedelta(days=1))
    assert [(m.module, m.reason) for m in result.missing] == [(None, "expired")]
    assert result.ready_to_sign


@given(
    start=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2090, 12, 31), timezones=st.just(UTC)
    ),
    months=st.integers(min_value=1, max_value=120),
)
def test_add_months_lands_in_the_right_month_never_earlier_day(start, months):
    end = add_months(start, months)
    assert (end.year - start.year) * 12 + end.month - start.month == months
    assert end.day <= start.day and end.time() == start.time()


# --- on the database: the rule as the app uses it ----------------------------------------------------


def _setup(app, make_person, *roles):
    pid = make_person(*(roles or ("staff",)), name="Ada Lovelace")
    return pid


def _read_everything(person, policy):
    complete_modules(db.session, person, policy)


def _sign(person, policy, now=None):
    return acknowledge(
        db.session, person, policy, AckRequest("Ada Lovelace", "I agree", "127.0.0.1", "test"), now
    )


@pytest.mark.usefixtures("published")
def test_status_on_the_database_follows_reading_and_signing(app, make_person):
    pid = _setup(app, make_person)
    with app.app_context():
        person = db.session.get(Person, pid)
        policy = db.session.scalar(select(Policy))
        first = training_status(db.session, person, policy)
        assert len(first.modules) == 13 and not first.trained
        record_visit(db.session, person, policy.versions[-1].module_versions[0])
        assert training_status(db.session, person, policy).missing[0].reason == "not_read"
        _read_everything(person, policy)
        _sign(person, policy)
        db.session.commit()
        done = training_status(db.session, person, policy)
        assert done.trained and done.valid_until is not None


@pytest.mark.usefixtures("published")
def test_deactivated_leaver_keeps_records_but_is_not_trained(app, make_person):
    pid = _setup(app, make_person)
    with app.app_context():
        person = db.session.get(Person, pid)
        policy = db.session.scalar(select(Policy))
        _read_everything(person, policy)
        _sign(person, policy)
        deactivate(person)
        db.session.commit()
        assert not training_status(db.session, person, policy).trained
        receipts = db.session.scalars(select(ReadReceipt).where(ReadReceipt.person_id == pid))
        assert len(receipts.all()) == 13


@pytest.mark.usefixtures("published")
def test_new_role_requires_more_modules(app, make_person):
    pid = make_person("parent", name="Ada Lovelace")
    with app.app_context():
        person = db.session.get(Person, pid)
        policy = db.session.scalar(select(Policy))
        _read_everything(person, policy)
        _sign(person, policy)
        db.session.commit()
        assert training_status(db.session, person, policy).trained
        person.role_rows.append(PersonRole(role="staff"))
        db.session.commit()
        after = training_status(db.session, person, policy)
        assert not after.trained
        assert len(after.modules) == 13
        assert after.missing[-1].reason == "not_acknowledged"


def test_after_expiry_pages_opened_before_it_no_longer_count_as_in_progress():
    later = add_months(T0, 12) + timedelta(days=3)
    evidence = Evidence(
        receipts=read_all(), acks=[signed()], visited={11: T0, 21: later - timedelta(days=1)}
    )
    result = status(evidence, now=later)
    assert [m.state for m in result.modules] == ["not_started", "in_progress", "not_started"]
