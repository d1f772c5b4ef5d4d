"""Record content as published policy versions."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import date

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from audit.log import record
from core.db import utcnow
from quizzes.models import Question as QuizQuestion
from quizzes.models import QuizBank
from training.loader import ContentError, ModuleSource, PolicySource, Problem
from training.marks import touch_everyone
from training.models import (
    Module,
    ModuleVersion,
    Policy,
    PolicyVersion,
    PolicyVersionModule,
    RequiredModule,
)


@dataclass(frozen=True)
class PublishResult:
    policy: str
    version: str
    created: bool
    changed_modules: tuple[str, ...] = ()  # slugs whose text is new in this version
    updated: tuple[str, ...] = ()  # details corrected in place on the current version
    effective: date | None = None

    def describe(self, today: date) -> str:
        if self.created:
            changed = ", ".join(self.changed_modules) or "none"
            when = (
                f"; takes effect on {self.effective.isoformat()}"
                if self.effective and self.effective > today
                else ""
            )
            return (
                f"{self.policy}: published version {self.version} "
                f"(new or changed modules: {changed}{when})"
            )
        if self.updated:
            return f"{self.policy}: version {self.version} updated: {', '.join(self.updated)}"
        return f"{self.policy}: version {self.version} is current; nothing changed"


def fingerprint(source: PolicySource) -> str:
    """What people must do: module texts in order, audiences, refresher period, title."""
    data = {
        "modules": [[m.slug, m.text_hash] for m in source.modules],
        "audiences": {role: list(slugs) for role, slugs in sorted(source.audiences.items())},
        "refresher_months": source.refresher_months,
        "title": source.title,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _newest_first(query: Select) -> Select:
    return query.order_by(
        PolicyVersion.effective.desc(), PolicyVersion.published_at.desc(), PolicyVersion.id.desc()
    )


def latest_version(session: Session, policy: Policy) -> PolicyVersion | None:
    """The version published last, whether or not it is in effect yet."""
    return session.scalar(
        select(PolicyVersion)
        .where(PolicyVersion.policy_id == policy.id)
        .order_by(PolicyVersion.published_at.desc(), PolicyVersion.id.desc())
        .limit(1)
    )


def current_version(
    session: Session, policy: Policy, today: date | None = None
) -> PolicyVersion | None:
    """The version in effect: the newest whose effective date has come.

    A version published ahead of its effective date leaves the one in force alone until then, so
    nobody stops being trained the moment a revision is published. When no version is in effect yet
    (a first policy published early), the newest one is shown.
    """
    today = today or utcnow().date()
    base = select(PolicyVersion).where(PolicyVersion.policy_id == policy.id)
    in_effect = session.scalar(_newest_first(base.where(PolicyVersion.effective <= today)).limit(1))
    return in_effect or session.scalar(_newest_first(base).limit(1))


def find_module(
    session: Session, slug: str, module_slug: str
) -> tuple[Policy, PolicyVersion, PolicyVersionModule] | None:
    """A module of the version in effect, by the slugs in its address."""
    policy = session.scalar(select(Policy).where(Policy.slug == slug))
    version = current_version(session, policy) if policy else None
    if policy is None or version is None:
        return None
    link = next(
        (lk for lk in version.module_links if lk.module_version.module.slug == module_slug), None
    )
    return (policy, version, link) if link else None


def published_policies(session: Session) -> list[tuple[Policy, PolicyVersion]]:
    """Every policy with a version, paired with the version in effect, by title."""
    result = []
    for policy in session.scalars(select(Policy).order_by(Policy.title)):
        version = current_version(session, policy)
        if version is not None:
            result.append((policy, version))
    return result


def upcoming_version(
    session: Session, policy: Policy, today: date | None = None
) -> PolicyVersion | None:
    """A published version that takes effect after today, if any."""
    today = today or utcnow().date()
    current = current_version(session, policy, today)
    upcoming = session.scalar(
        _newest_first(
            select(PolicyVersion).where(
                PolicyVersion.policy_id == policy.id, PolicyVersion.effective > today
            )
        ).limit(1)
    )
    return upcoming if upcoming is not None and upcoming is not current else None


def next_takeover(session: Session, policy: Policy, today: date | None = None) -> date | None:
    """The next date on which another version may take effect: until then the version in effect
    cannot change except by publishing."""
    today = today or utcnow().date()
    return session.scalar(
        select(func.min(PolicyVersion.effective)).where(
            PolicyVersion.policy_id == policy.id, PolicyVersion.effective > today
        )
    )


def _bank_id(session: Session, module: Module, source: ModuleSource) -> int | None:
    """The published bank for this module's questions and rules, published now if new."""
    if source.bank is None:
        return None
    bank_hash = source.bank.bank_hash
    existing = session.scalar(
        select(QuizBank.id).where(QuizBank.module_id == module.id, QuizBank.bank_hash == bank_hash)
    )
    if existing is not None:
        return existing
    bank = QuizBank(module_id=module.id, bank_hash=bank_hash, rules=asdict(source.bank.rules))
    for position, q in enumerate(source.bank.questions):
        data = q.as_data()
        bank.questions.append(
            QuizQuestion(
                key=q.id,
                position=position,
                type=q.type,
                prompt=q.prompt,
                scenario=q.scenario,
                options=data["options"],
                explanation=q.explanation,
                clause=q.clause,
            )  # fmt: skip
        )
    session.add(bank)
    session.flush()
    return bank.id


def _update_details(session: Session, version: PolicyVersion, source: PolicySource) -> list[str]:
    """Correct details that do not change what people must do, in place on the same version."""
    updated = []
    for attribute, value in (
        ("effective", source.effective),
        ("next_review", source.next_review),
        ("owner", source.owner),
        ("source", source.source),
    ):
        if getattr(version, attribute) != value:
            setattr(version, attribute, value)
            updated.append(attribute.replace("_", " "))
    links = {link.module_version.module.slug: link for link in version.module_links}
    for module in source.modules:
        link = links.get(module.slug)
        if link is None:
            continue
        module_version = link.module_version
        if module_version.summary != module.summary:
            module_version.summary = module.summary
            updated.append(f"summary of {module.slug}")
        # A corrected question bank takes over at once; passes already earned stand.
        bank_id = _bank_id(session, module_version.module, module)
        if link.bank_id != bank_id:
            link.bank_id = bank_id
            updated.append(f"quiz of {module.slug}")
    return updated


def publish(session: Session, source: PolicySource) -> PublishResult:
    """Publish ``source`` as a new version unless it is the latest one already.

    Details that do not change what people must do (dates, owner, summaries) are corrected in place.
    A changed text under an already-published version label is refused: the label is what people
    sign against, so two different texts must not share it.
    """
    policy = session.scalar(select(Policy).where(Policy.slug == source.slug))
    if policy is None:
        policy = Policy(slug=source.slug, title=source.title)
        session.add(policy)
        session.flush()
    latest = latest_version(session, policy)
    print_ = fingerprint(source)
    if latest is not None and latest.fingerprint == print_ and latest.label == source.version:
        updated = _update_details(session, latest, source)
        session.flush()
        if updated:
            touch_everyone(session)
        return PublishResult(source.slug, latest.label, False, updated=tuple(updated))
    clash = session.scalar(
        select(PolicyVersion).where(
            PolicyVersion.policy_id == policy.id, PolicyVersion.label == source.version
        )
    )
    if clash is not None:
        raise ContentError(
            [
                Problem(
                    source.path / "policy.yaml",
                    source.version_line,
                    f"version {source.version!r} is already published with different content; "
                    "give this edition a new version label",
                )
            ]
        )
    policy.title = source.title

    modules = {
        m.slug: m for m in session.scalars(select(Module).where(Module.policy_id == policy.id))
    }
    version = PolicyVersion(
        policy=policy,
        label=source.version,
        title=source.title,
        effective=source.effective,
        next_review=source.next_review,
        owner=source.owner,
        source=source.source,
        refresher_months=source.refresher_months,
        fingerprint=print_,
        manifest={
            "modules": [m.slug for m in source.modules],
            "audiences": {r: list(s) for r, s in source.audiences.items()},
        },
        published_at=utcnow(),
    )
    session.add(version)
    changed: list[str] = []
    for position, module_source in enumerate(source.modules):
        module = modules.get(module_source.slug)
        if module is None:
            module = Module(policy_id=policy.id, slug=module_source.slug)
            session.add(module)
            session.flush()
            modules[module.slug] = module
        module_version = session.scalar(
            select(ModuleVersion).where(
                ModuleVersion.module_id == module.id,
                ModuleVersion.text_hash == module_source.text_hash,
            )
        )
        if module_version is None:
            module_version = ModuleVersion(
                module=module,
                text_hash=module_source.text_hash,
                title=module_source.title,
                summary=module_source.summary,
                body_markdown=module_source.body,
                html=module_source.html,
            )
            session.add(module_version)
            changed.append(module_source.slug)
        version.module_links.append(
            PolicyVersionModule(
                module_version=module_version,
                position=position,
                bank_id=_bank_id(session, module, module_source),
            )
        )
    for role, slugs in source.audiences.items():
        for slug in slugs:
            version.requirements.append(RequiredModule(role=role, module_id=modules[slug].id))
    session.flush()
    record(
        session, "content.published", subject_type="policy_version", subject_id=version.id,
        detail={"policy": policy.slug, "version": source.version, "modules_changed": len(changed)},
    )  # fmt: skip
    touch_everyone(session)
    return PublishResult(
        source.slug, source.version, True, tuple(changed), effective=source.effective
    )
