"""``flask demo``: a made-up federation whose every record is one the app could have written, so
that the real rule finds every standing in it."""

from __future__ import annotations

import re
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from approvals.models import AccountApplication, Decision, SocialAccount
from approvals.rules import register
from core.db import db, utcnow
from core.web import federation
from demo.build import build, standings
from demo.population import demo_people, plan
from people.demo import DEMO_DOMAIN
from people.models import Person
from people.roles import ROLES
from quizzes.attempts import check_answers, grade
from quizzes.models import Question, QuizAttempt, QuizSubmission
from training.models import (
    Acknowledgement,
    ModuleVersion,
    Policy,
    PolicyVersion,
    ReadReceipt,
)
from training.progress import normalise_name
from training.publishing import current_version
from training.status import Evidence, evaluate, load_evidence, statuses_for, version_info

EVERY_STANDING = {"trained", "in_progress", "not_started", "expired", "outdated"}


def run_demo(runner, *args: str):
    result = runner.invoke(args=["demo", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def everyone(session) -> list[Person]:
    return list(session.scalars(select(Person).order_by(Person.id)))


def count(model, *where) -> int:
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def standing_counts(session) -> Counter:
    policy = session.scalar(select(Policy))
    return Counter(s.standing for s in statuses_for(session, everyone(session), policy).values())


def test_demo_has_every_standing_role_and_school_by_the_rule(app, runner):
    result = run_demo(runner, "--people", "200")
    with app.app_context():
        session = db.session
        people = everyone(session)
        assert len(people) == 200 and all(p.email.endswith(f"@{DEMO_DOMAIN}") for p in people)
        assert len({p.email for p in people}) == 200
        found = standing_counts(session)
        assert EVERY_STANDING <= set(found), found
        assert found["trained"] > found["expired"] and found["inactive"] > 0
        assert {r for p in people for r in p.roles} == set(ROLES)
        roles = Counter(r for p in people for r in p.roles)
        assert roles["parent"] > roles["staff"] > roles["volunteer"] > roles["admin"]
        codes = {s.code for s in federation().schools}
        assert {s for p in people for s in p.schools} == codes
        assert any(not p.schools for p in people)  # federation-wide people too
        # A spread over time: the earliest evidence is over a year old.
        oldest = session.scalar(select(func.min(ReadReceipt.at)))
        assert oldest < utcnow() - timedelta(days=400)
        printed = {standing: count for standing, count in _printed_totals(result.output)}
        assert printed["trained"] == found["trained"]
        assert printed["in progress"] == found["in_progress"]
    assert "Sign in at http://countersign.test/sign-in" in result.output


def _printed_totals(output: str) -> list[tuple[str, int]]:
    rows = re.findall(r"^  (trained|in progress|not started|expired|outdated|inactive)\s+([\d,]+)",
                      output, flags=re.M)  # fmt: skip
    return [(name, int(number.replace(",", ""))) for name, number in rows]


def test_demo_publishes_content_and_an_earlier_version_that_is_no_longer_current(app, runner):
    result = run_demo(runner, "--people", "60")
    assert "published version 1.0" in result.output
    with app.app_context():
        session = db.session
        policy = session.scalar(select(Policy))
        versions = session.scalars(select(PolicyVersion).order_by(PolicyVersion.effective)).all()
        assert len(versions) == 2
        earlier, current = versions
        assert current_version(session, policy).id == current.id
        assert earlier.effective < current.effective and earlier.published_at < current.published_at
        differ = {mv.id for mv in earlier.module_versions} ^ {
            mv.id for mv in current.module_versions
        }
        assert len(differ) == 2  # one module, worded differently
        assert "earlier wording" in " ".join(
            mv.body_markdown for mv in earlier.module_versions if mv.id in differ
        )
    # The content in the folder is still the newest version: publishing finds nothing to do.
    again = runner.invoke(args=["content", "publish"])
    assert again.exit_code == 0 and "version 1.0 is current; nothing changed" in again.output


def test_demo_works_when_the_content_is_already_published(app, runner, published):
    run_demo(runner, "--people", "60")
    with app.app_context():
        assert count(PolicyVersion) == 2
        assert EVERY_STANDING <= set(standing_counts(db.session))
    again = runner.invoke(args=["content", "publish"])
    assert "nothing changed" in again.output


def test_every_record_is_one_the_app_could_have_written(app, runner):
    run_demo(runner, "--people", "120")
    with app.app_context():
        session = db.session
        policy = session.scalar(select(Policy))
        people = {p.id: p for p in everyone(session)}
        info = {v.id: version_info(session, v) for v in session.scalars(select(PolicyVersion))}
        versions = {v.id: v for v in session.scalars(select(PolicyVersion))}
        module_of = dict(session.execute(select(ModuleVersion.id, ModuleVersion.module_id)).all())

        def in_force(moment):
            version = current_version(session, policy, moment.date())
            assert version.published_at <= moment
            return version

        def required(person, version_id):
            needed = set()
            for role in person.roles:
                needed |= info[version_id].required.get(role, frozenset())
            return needed

        # Reading: of a module the person had to do, in the version in force at the time.
        for receipt in session.scalars(select(ReadReceipt)):
            version = in_force(receipt.at)
            assert receipt.module_version_id in {mv.id for mv in version.module_versions}
            assert module_of[receipt.module_version_id] in required(
                people[receipt.person_id], version.id
            )

        # Quizzes: the drawn questions are the bank's; answers are graded against them.
        questions = {q.id: q for q in session.scalars(select(Question))}
        failed = 0
        for attempt, submission in session.execute(
            select(QuizAttempt, QuizSubmission).outerjoin(
                QuizSubmission, QuizSubmission.attempt_id == QuizAttempt.id
            )
        ):
            version = in_force(attempt.started_at)
            link = next(
                lk
                for lk in version.module_links
                if lk.module_version_id == attempt.module_version_id
            )
            assert attempt.bank_id == link.bank_id
            assert attempt.expires_at == attempt.started_at + timedelta(minutes=60)
            for drawn in attempt.drawn:
                question = questions[drawn["question_id"]]
                assert question.bank_id == attempt.bank_id and drawn["key"] == question.key
                assert sorted(drawn["options"], key=lambda o: o["id"]) == sorted(
                    question.options, key=lambda o: o["id"]
                )
            if submission is None:
                continue
            assert attempt.started_at < submission.submitted_at < attempt.expires_at
            check_answers(attempt.drawn, submission.answers)
            graded = grade(attempt.drawn, submission.answers, attempt.pass_mark)
            assert (graded.correct, graded.total, graded.score, graded.passed) == (
                submission.correct, submission.total, submission.score, submission.passed,
            )  # fmt: skip
            failed += not submission.passed
        assert failed > 0

        # Signing: only when ready, as the rule saw it then, covering what it required.
        acks = session.scalars(select(Acknowledgement).order_by(Acknowledgement.at)).all()
        assert acks
        evidence = load_evidence(session, list(people), policy)
        for ack in acks:
            person = people[ack.person_id]
            assert ack.policy_version_id == in_force(ack.at).id
            assert normalise_name(ack.typed_name) == normalise_name(person.name)
            assert f"(version {versions[ack.policy_version_id].label})" in ack.declaration
            mine = evidence[person.id]
            before = Evidence(
                receipts=[r for r in mine.receipts if r.at < ack.at],
                acks=[a for a in mine.acks if a.at < ack.at],
                passes=[p for p in mine.passes if p[1] < ack.at],
            )
            status = evaluate(person_id=person.id, active=True, roles=person.roles,
                              version=info[ack.policy_version_id], evidence=before, now=ack.at)  # fmt: skip
            assert status.ready_to_sign, (person.name, status.missing)
            covered = {link.module_version_id for link in ack.module_links}
            assert covered == {m.module_version_id for m in status.modules}

        # People existed before they did anything, and leavers left after it.
        for person in people.values():
            first = min((r.at for r in evidence[person.id].receipts), default=None)
            assert first is None or person.created_at < first
            if not person.active:
                assert person.deactivated_at is not None
                assert person.deactivated_at > max(
                    (r.at for r in evidence[person.id].receipts), default=person.created_at
                )


def test_demo_accounts_are_approved_with_trained_runners_and_some_are_flagged(app, runner):
    result = run_demo(runner, "--people", "100")
    with app.app_context():
        session = db.session
        entries = register(session)
        assert len(entries) == 4
        healthy = [e for e in entries if not e.flagged]
        assert healthy and all(len(e.runners) >= 2 for e in healthy)
        for entry in entries:
            decision = entry.account.application.decision
            assert decision.approved and all(r["trained"] for r in decision.runners_snapshot)
            assert decision.decided_at < entry.account.recorded_at < utcnow()
            staff = [r for r in entry.account.application.runners if r.has_role("staff")]
            assert len(staff) >= 2
        problems = {e.account.application.name: e.problems for e in entries if e.flagged}
        assert any(any("has left" in p for p in found) for found in problems.values())
        assert any(any("no longer trained" in p for p in found) for found in problems.values())
        waiting = session.scalars(
            select(AccountApplication).where(
                ~AccountApplication.id.in_(select(Decision.application_id))
            )
        ).all()
        assert len(waiting) == 1
    assert "2 needing attention" in result.output and "has left" in result.output


def test_demo_refuses_a_database_with_real_people_unless_forced(app, runner, make_person):
    real = make_person("staff", name="Real Person", email="real@ladysmith.example")
    refused = runner.invoke(args=["demo", "--people", "40"])
    assert refused.exit_code == 1
    assert "holds 1 person who is not a demo person" in refused.output
    assert "real@ladysmith.example" in refused.output and "--force" in refused.output
    with app.app_context():
        assert count(Person) == 1 and count(PolicyVersion) == 0  # nothing was touched

    run_demo(runner, "--people", "40", "--force")
    with app.app_context():
        assert count(Person, demo_people()) == 40
        assert count(Person) == 41
        assert count(ReadReceipt, ReadReceipt.person_id == real) == 0
        assert db.session.get(Person, real).name == "Real Person"


def test_a_second_run_adds_only_the_people_missing(app, runner):
    run_demo(runner, "--people", "40")
    with app.app_context():
        first_ids = set(db.session.scalars(select(Person.id)))
        evidence = (count(ReadReceipt), count(QuizAttempt), count(Acknowledgement))
        versions, accounts = count(PolicyVersion), count(SocialAccount)

    again = run_demo(runner, "--people", "40")
    assert "already holds 40 demo people" in again.output and "nothing was added" in again.output
    with app.app_context():
        assert set(db.session.scalars(select(Person.id))) == first_ids
        assert (count(ReadReceipt), count(QuizAttempt), count(Acknowledgement)) == evidence

    more = run_demo(runner, "--people", "70")
    assert "30 added now, 40 there before" in more.output
    with app.app_context():
        assert count(Person) == 70
        old = Person.id.in_(first_ids)
        assert count(ReadReceipt, ReadReceipt.person_id.in_(first_ids)) == evidence[0]
        assert count(Acknowledgement, Acknowledgement.person_id.in_(first_ids)) == evidence[2]
        assert count(Person, old) == 40
        assert (count(PolicyVersion), count(SocialAccount)) == (versions, accounts)
        new = set(db.session.scalars(select(Person.email).where(~old)))
        assert len(new) == 30 and new.isdisjoint(
            db.session.scalars(select(Person.email).where(old))
        )
    # Every evidence row of both runs is in the audit chain with its digest.
    checked = runner.invoke(args=["audit", "verify"])
    assert checked.exit_code == 0, checked.output


def test_the_same_seed_gives_the_same_people(app):
    now = utcnow()

    def people(seed: int) -> list[tuple]:
        drafts = plan(80, 0, seed, ["infant", "junior"], set(), True, [], now)
        return [(d.name, d.email, d.roles, d.schools, d.story) for d in drafts]

    assert people(7) == people(7)
    assert people(7) != people(8)


def test_a_demo_larger_than_a_batch_keeps_each_persons_records_together(
    app, published, monkeypatch
):
    monkeypatch.setattr("demo.build.BATCH", 25)  # 70 people in three batches
    with app.app_context():
        session = db.session
        result = build(session, target=70, seed=3, now=utcnow(), content_dir=Path(
            app.config["CONTENT_DIR"]), federation=federation(), backdate=True)  # fmt: skip
        session.commit()
        assert result.added == 70 and result.acknowledgements > 0
        assert count(QuizAttempt) == result.attempts and count(ReadReceipt) == result.receipts
        tables = standings(session, federation())
        assert EVERY_STANDING <= {s for s, n in tables[0].totals.items() if n}
        assert sum(tables[0].totals.values()) == 70 == count(Person)
        assert tables[0].totals == standing_counts(session)
        # Every submission belongs to an attempt by the same person who signed what it led to.
        for ack in session.scalars(select(Acknowledgement)):
            passed = session.scalars(
                select(QuizAttempt.module_version_id)
                .join(QuizSubmission, QuizSubmission.attempt_id == QuizAttempt.id)
                .where(QuizAttempt.person_id == ack.person_id, QuizSubmission.passed.is_(True))
            ).all()
            assert {link.module_version_id for link in ack.module_links} <= set(passed)
        assert len(register(session)) == 4


@pytest.mark.parametrize("people", ["10", "abc"])
def test_demo_refuses_too_few_people(runner, people):
    result = runner.invoke(args=["demo", "--people", people])
    assert result.exit_code == 2
