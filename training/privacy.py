"""The training records in a person's data: module visits, read receipts, acknowledgements."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from people.personal_data import Erasure, Export, iso
from training.models import (
    Acknowledgement,
    Module,
    ModuleVersion,
    ModuleVisit,
    Policy,
    ReadReceipt,
    StoredStatus,
)


def module_titles(request: Export) -> dict[int, dict[str, str]]:
    """Each module version's title, text digest and policy title, by module version id: how
    every section of the download names a module."""
    if "module_titles" in request.shared:
        return request.shared["module_titles"]
    query = (
        select(ModuleVersion.id, ModuleVersion.title, ModuleVersion.text_hash, Policy.title)
        .join(Module, Module.id == ModuleVersion.module_id)
        .join(Policy, Policy.id == Module.policy_id)
    )
    titles = {
        mv_id: {"module": title, "text_hash": text_hash, "policy": policy}
        for mv_id, title, text_hash, policy in request.session.execute(query)
    }
    request.shared["module_titles"] = titles
    return titles


def module_of(titles: dict[int, dict[str, str]], mv_id: int) -> dict[str, str]:
    return titles.get(mv_id, {"module": "", "text_hash": "", "policy": ""})


def module_visits(request: Export) -> list[dict[str, Any]]:
    titles = module_titles(request)
    return [
        {
            **module_of(titles, v.module_version_id),
            "first_at": iso(v.first_at),
            "last_at": iso(v.last_at),
        }
        for v in request.session.scalars(
            select(ModuleVisit)
            .where(ModuleVisit.person_id == request.person.id)
            .order_by(ModuleVisit.first_at)
        )
    ]


def read_receipts(request: Export) -> list[dict[str, Any]]:
    titles = module_titles(request)
    return [
        {**module_of(titles, r.module_version_id), "at": iso(r.at), "sequence": r.seq}
        for r in request.session.scalars(
            select(ReadReceipt)
            .where(ReadReceipt.person_id == request.person.id)
            .order_by(ReadReceipt.at)
        )
    ]


def acknowledgements(request: Export) -> list[dict[str, Any]]:
    titles = module_titles(request)
    return [
        {
            "policy": a.policy_version.title,
            "version": a.policy_version.label,
            "sequence": a.seq,
            "signed_at": iso(a.at),
            "typed_name": a.typed_name,
            "declaration": a.declaration,
            "ip_address": a.ip,
            "browser": a.user_agent,
            "modules": [module_of(titles, link.module_version_id) for link in a.module_links],
        }
        for a in request.session.scalars(
            select(Acknowledgement)
            .where(Acknowledgement.person_id == request.person.id)
            .order_by(Acknowledgement.at, Acknowledgement.id)
        )
    ]


def acknowledgements_to_pseudonymise(
    session: Session, person_id: int, _name: str, _email: str
) -> dict[str, list[int]]:
    return {
        "acknowledgement": list(
            session.scalars(
                select(Acknowledgement.id).where(Acknowledgement.person_id == person_id)
            )
        )
    }


def erase_acknowledgements(erasure: Erasure) -> None:
    for ack in erasure.session.scalars(
        select(Acknowledgement).where(Acknowledgement.person_id == erasure.person_id)
    ):
        # The row itself (version, time, the modules covered) is the evidence the policy needs.
        ack.typed_name = ""
        ack.ip = ""
        ack.user_agent = ""
        erasure.pseudonymised("acknowledgement", ack.id)


def erase_stored_answers(erasure: Erasure) -> None:
    """Stored answers are derived: they go, and are worked out again when asked for."""
    erasure.session.execute(delete(StoredStatus).where(StoredStatus.person_id == erasure.person_id))
