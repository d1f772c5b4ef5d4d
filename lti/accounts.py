"""Who a launch signs in: the person an LMS user is linked to, or a new one made from the launch.

A person is found by the platform's stable user id (``sub``) once linked. An LMS user the tool
does not know yet becomes a new person when no one has their email; when someone does, nobody is
signed in until that person confirms the link (see ``lti.links``). Accounts that see everyone's
records are never opened by a launch, whenever the role was gained. Someone new is created with
the roles the platform's role table gives their LMS roles. The default table grants only staff,
volunteer and parent/carer roles: an LMS Instructor or Administrator becomes a Countersign
governor, SLT member or administrator only if an administrator writes that into the platform's
table. A launch never changes the roles of someone who already exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from audit.log import record
from core.db import utcnow
from lti.launch import LaunchInfo, LaunchRefused, insert_new, service_url_ok, short_role
from lti.links import (
    PRIVILEGED,
    LinkRequested,
    closed_roles,
    launch_closed,
    record_new_person_link,
    request_link,
    subject_hash,
)
from lti.models import LtiGradeLink, LtiIdentity, LtiPlatform
from people.models import Person
from people.roles import ROLES
from people.service import PeopleError, PersonData, create_person, find_by_email, normalise_email
from training.loader import Federation
from training.models import Policy

DEFAULT_ROLE_MAP: dict[str, str] = {
    "Learner": "staff",
    "Instructor": "staff",
    "TeachingAssistant": "staff",
    "ContentDeveloper": "staff",
    "Administrator": "staff",
    "Member": "staff",
    "Mentor": "parent",
}
AGS_SCORE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
AGS_LINEITEM = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem"


def parse_role_map(text: str) -> dict[str, str]:
    """``Instructor = staff`` lines into a table; raises ValueError naming a line it can't read."""
    table: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        lms, sep, ours = (part.strip() for part in line.partition("="))
        if not sep or not lms or not ours:
            raise ValueError(f"Line {number}: write it as 'LMS role = Countersign role'.")
        if ours not in ROLES:
            raise ValueError(
                f"Line {number}: {ours!r} is not a Countersign role ({', '.join(ROLES)})."
            )
        if len(lms) > 200 or any(c.isspace() for c in lms):
            raise ValueError(f"Line {number}: {lms!r} is not an LMS role name.")
        table[short_role(lms)] = ours  # a full role URI means its name, as launches are read
    return table


def format_role_map(table: dict[str, str]) -> str:
    return "\n".join(f"{lms} = {ours}" for lms, ours in table.items())


def mapped_roles(table: dict[str, str], lms_roles: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({table[r] for r in lms_roles if r in table}))


class AskOwner(LaunchRefused):
    """An email that names an account a launch may never link (one that sees everyone's records
    or has a second factor, a closed one, another school's). The launcher is answered exactly as
    for an ordinary account waiting for its owner, so a launch never tells what kind of account
    an address belongs to; the precise reason (``title``) goes only to the audit log."""

    def __init__(self, reason: str, person: Person) -> None:
        super().__init__(reason, reason)
        self.person_id = person.id


@dataclass(frozen=True)
class Arrival:
    """Who a launch signs in; or, with ``pending``, nobody yet: the link waits for the person's
    confirmation."""

    person: Person
    created: bool
    pending: LinkRequested | None = None


def person_for_launch(
    session: Session,
    platform: LtiPlatform,
    info: LaunchInfo,
    federation: Federation,
    *,
    can_email: bool = False,
) -> Arrival:
    """The person this launch signs in, linked to the LMS user; refused with a reason if none.

    Only a live link, or an account the launch itself creates, signs anyone in; an existing
    account is linked once its owner confirms (``can_email``: a confirmation link can be sent).
    """
    identity = _identity(session, platform, info.subject)
    if identity is None:
        if not info.email:
            raise LaunchRefused(
                "Your learning platform did not share your email address",
                "Countersign matches people by email. Ask your LMS administrator to share "
                "users' email addresses with this tool (in Moodle: the tool's privacy setting "
                "'Share launcher's email with tool' set to Always).",
            )
        try:
            email = normalise_email(info.email)
        except PeopleError as exc:
            raise LaunchRefused(
                "Your email address could not be used", str(exc), status=400
            ) from exc
        person = find_by_email(session, email)
        if person is None:
            person = _create(session, platform, info, email, federation)
            if person is not None:
                _link_new_person(session, platform, info.subject, person)
                return Arrival(person, True)
            # Added this moment by another launch: the same LMS user's, in another tab, made
            # the link too; anyone else's must be confirmed like any existing account's.
            identity = _identity(session, platform, info.subject)
            person = find_by_email(session, email)
        if identity is None:
            assert person is not None
            _may_link_by_email(session, platform, person)
            pending = request_link(
                session, platform, info.subject, person, email=can_email, lms_name=info.name
            )
            return Arrival(person, False, pending)
    person = session.get(Person, identity.person_id)
    assert person is not None
    _check_open(person)
    # Checked at every launch, whenever the role or the second factor was gained.
    if launch_closed(session, person):
        raise _sign_in_directly(person)
    if identity.suspended_at is not None:
        pending = request_link(
            session, platform, info.subject, person, email=can_email, lms_name=info.name
        )
        return Arrival(person, False, pending)
    identity.last_launch_at = utcnow()
    return Arrival(person, False)


def _identity(session: Session, platform: LtiPlatform, subject: str) -> LtiIdentity | None:
    return session.scalar(
        select(LtiIdentity).where(
            LtiIdentity.platform_id == platform.id, LtiIdentity.subject == subject
        )
    )


def _link_new_person(session: Session, platform: LtiPlatform, subject: str, person: Person) -> None:
    now = utcnow()
    insert_new(
        session, LtiIdentity.__table__,
        {"platform_id": platform.id, "subject": subject, "person_id": person.id,
         "created_at": now, "last_launch_at": now, "how": "new_person"},
    )  # fmt: skip
    identity = _identity(session, platform, subject)
    assert identity is not None
    record_new_person_link(session, identity.id, platform.id, subject, person.id)


def _check_open(person: Person) -> None:
    if not person.active:
        raise LaunchRefused(
            "Your Countersign account is closed",
            "Your account has been closed, so the training can't be opened. If you still work "
            "or volunteer here, ask a Countersign administrator to reopen it.",
        )


def _sign_in_directly(person: Person) -> LaunchRefused:
    refused = LaunchRefused(
        "Sign in to Countersign directly",
        "Your Countersign account can see everyone's records or needs a second factor to sign "
        "in, so it is never opened from a learning platform. Sign in to Countersign directly, "
        "in a new window.",
    )
    refused.person_id = person.id
    return refused


def _may_link_by_email(session: Session, platform: LtiPlatform, person: Person) -> None:
    """Whether an existing person may be asked to confirm a link to an LMS account claiming
    their email. Not if their account can see everyone's records, needs or has a second factor
    (a platform's administrator, or anyone who can set their own email there, could otherwise
    try to reach it), is closed, or the platform is one school's and they belong only to others.
    Each is answered as an ordinary account would be (``AskOwner``)."""
    if not person.active:
        raise AskOwner("closed account", person)
    if launch_closed(session, person):
        raise AskOwner("account never opened by a launch", person)
    if platform.school and person.schools and platform.school not in person.schools:
        raise AskOwner("another school's account", person)


def _create(
    session: Session, platform: LtiPlatform, info: LaunchInfo, email: str, federation: Federation
) -> Person | None:
    """Someone new, with the roles the platform's table gives; None if a person with this email
    was added meanwhile (two first launches at once: the second finds the first's)."""
    roles = mapped_roles(platform.role_map or {}, info.roles)
    if not roles:
        raise LaunchRefused(
            "Your role in the learning platform has no training here",
            f"Your role there ({', '.join(info.roles) or 'none given'}) is not one that "
            "Countersign trains. Ask a Countersign administrator to add you, or to map that role.",
        )
    if closed_roles() & set(roles):
        # An account that sees everyone's records or must use a second factor is never opened
        # from a platform, so one is never made from one either: its owner is added directly.
        raise LaunchRefused(
            "Sign in to Countersign directly",
            "Your role in the learning platform would make you a governor, SLT member or "
            "administrator here, and those accounts are never opened from a learning platform. "
            "Ask a Countersign administrator to add you; you then sign in to Countersign directly.",
        )
    schools = (platform.school,) if platform.school else ()
    name = info.name or email.split("@", 1)[0]
    try:
        with session.begin_nested():
            return create_person(session, PersonData(name[:200], email, roles, schools), federation)
    except IntegrityError:
        return None
    except PeopleError as exc:
        if find_by_email(session, email) is not None:
            return None
        raise LaunchRefused("Your account could not be created", str(exc), status=400) from exc


def policy_for_launch(session: Session, info: LaunchInfo) -> Policy | None:
    """The policy the activity is about: its ``policy`` custom parameter, else the first one."""
    slug = info.custom.get("policy")
    if isinstance(slug, str) and slug.strip():
        return session.scalar(select(Policy).where(Policy.slug == slug.strip()))
    return session.scalar(select(Policy).order_by(Policy.id).limit(1))


def remember_grade_link(
    session: Session, platform: LtiPlatform, person: Person, policy: Policy, info: LaunchInfo
) -> LtiGradeLink | None:
    """Where this person's grade goes, when the platform offers Assignment and Grade Services
    with the score scope for this activity."""
    ags = info.ags or {}
    scopes = [s for s in ags.get("scope") or [] if isinstance(s, str)]
    lineitem = ags.get("lineitem") if service_url_ok(ags.get("lineitem"), platform) else None
    lineitems = ags.get("lineitems") if service_url_ok(ags.get("lineitems"), platform) else None
    # Scores go to the activity's line item, or to one found or made in the course's list,
    # which needs the line item scope; only ever to the platform's own addresses.
    if AGS_SCORE not in scopes or not (lineitem or (lineitems and AGS_LINEITEM in scopes)):
        return None
    identity_id = session.scalar(
        select(LtiIdentity.id).where(
            LtiIdentity.platform_id == platform.id, LtiIdentity.subject == info.subject
        )
    )
    link = session.scalar(
        select(LtiGradeLink).where(
            LtiGradeLink.identity_id == identity_id,
            LtiGradeLink.resource_link_id == info.resource_link_id,
        )
    )
    if link is None:
        link = LtiGradeLink(
            identity_id=identity_id, person_id=person.id, resource_link_id=info.resource_link_id,
            policy_id=policy.id, scopes=scopes,
        )  # fmt: skip
        session.add(link)
    link.policy_id, link.scopes = policy.id, scopes
    link.lineitem_url = lineitem or link.lineitem_url
    link.lineitems_url = lineitems
    link.context_title = (info.context_title or "")[:255] or None
    session.flush()
    return link


def record_refusal(
    session: Session, platform: LtiPlatform, subject: str, refused: LaunchRefused
) -> None:
    """A launch the platform signed that was refused all the same (an account a launch never
    opens, a closed account, an unmapped role...): worth an investigator's eye."""
    record(
        session, "lti.launch_refused", subject_type="person" if refused.person_id else None,
        subject_id=refused.person_id,
        detail={"platform": platform.id, "lms_user": subject_hash(platform.id, subject),
                "reason": refused.title[:80]},
    )  # fmt: skip


def record_launch(session: Session, platform: LtiPlatform, arrival: Arrival) -> None:
    record(
        session, "lti.launch", actor_id=arrival.person.id, subject_type="lti_platform",
        subject_id=platform.id, detail={"created": arrival.created},
    )  # fmt: skip


def privileged_grants(table: dict[str, str]) -> list[str]:
    """Lines of a table that grant roles the default never does, for the page to point out."""
    return [f"{lms} = {ours}" for lms, ours in table.items() if ours in PRIVILEGED]
