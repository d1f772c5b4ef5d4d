"""Record content as published policy versions."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import utcnow
from training.loader import ContentError, PolicySource, Problem
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
    changed_modules: tuple[str, ...]  # slugs whose text is new in this version


def fingerprint(source: PolicySource) -> str:
    """What people must do: module texts in order, audiences, refresher period."""
    data = {
        "modules": [[m.slug, m.text_hash] for m in source.modules],
        "audiences": {role: list(slugs) for role, slugs in sorted(source.audiences.items())},
        "refresher_months": source.refresher_months,
        "title": source.title,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def current_version(session: Session, policy: Policy) -> PolicyVersion | None:
    return session.scalar(
        select(PolicyVersion)
        .where(PolicyVersion.policy_id == policy.id)
        .order_by(PolicyVersion.published_at.desc(), PolicyVersion.id.desc())
        .limit(1)
    )


def publish(session: Session, source: PolicySource) -> PublishResult:
    """Publish ``source`` as a new version unless it is identical to the current one.

    A changed text under an already-published version label is refused: the label is what people
    sign against, so two different texts must not share it.
    """
    policy = session.scalar(select(Policy).where(Policy.slug == source.slug))
    if policy is None:
        policy = Policy(slug=source.slug, title=source.title)
        session.add(policy)
        session.flush()
    latest = current_version(session, policy)
    print_ = fingerprint(source)
    if latest is not None and latest.fingerprint == print_:
        return PublishResult(source.slug, latest.label, False, ())
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
            PolicyVersionModule(module_version=module_version, position=position)
        )
    for role, slugs in source.audiences.items():
        for slug in slugs:
            version.requirements.append(RequiredModule(role=role, module_id=modules[slug].id))
    session.flush()
    return PublishResult(source.slug, source.version, True, tuple(changed))
