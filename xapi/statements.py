"""xAPI statements: what Countersign tells a Learning Record Store, built from the evidence.

Each piece of evidence becomes one statement (xAPI 1.0.3), with the person as an Agent identified by
``mbox`` and the module (or the policy, for signing and completion) as the Activity:

- **read** a module → ``http://adlnet.gov/expapi/verbs/experienced``. ADL's vocabulary has no
  "read"; *experienced* is its verb for taking in content where the content itself sets no
  achievement, which is what confirming a module as read is. (*completed* is kept for the policy,
  so an LRS never mistakes one module read for the training done.)
- **quiz** on a module → ``…/verbs/passed`` or ``…/verbs/failed``, with ``result.score`` (scaled,
  raw, min, max: questions right of questions asked) and ``result.success``.
- **signed** the acknowledgement → ``http://activitystrea.ms/schema/1.0/accept``. ADL's vocabulary
  has no verb for signing or acknowledging; Activity Streams' *accept* ("the actor has accepted the
  object", listed in the xAPI registry) says that the person accepted the policy's declaration. The
  declaration they signed travels in ``result.response``.
- **trained** on the policy → ``http://adlnet.gov/expapi/verbs/completed``, once per signed
  acknowledgement that made the person trained.

Module and policy Activities are identified by their addresses under ``BASE_URL``, so the ids are
the pages a person would open. The policy is the module's parent in ``context.contextActivities``;
``context.revision`` is the policy version label.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

VERSION = "1.0.3"
LANGUAGE = "en-GB"

READ = "http://adlnet.gov/expapi/verbs/experienced"
PASSED = "http://adlnet.gov/expapi/verbs/passed"
FAILED = "http://adlnet.gov/expapi/verbs/failed"
ACCEPTED = "http://activitystrea.ms/schema/1.0/accept"
COMPLETED = "http://adlnet.gov/expapi/verbs/completed"
VERB_DISPLAY = {
    READ: "experienced",
    PASSED: "passed",
    FAILED: "failed",
    ACCEPTED: "accepted",
    COMPLETED: "completed",
}
# Short names for people reading the admin page.
VERB_NAMES = {
    READ: "read",
    PASSED: "quiz passed",
    FAILED: "quiz failed",
    ACCEPTED: "signed",
    COMPLETED: "trained",
}

MODULE_TYPE = "http://adlnet.gov/expapi/activities/module"
POLICY_TYPE = "http://adlnet.gov/expapi/activities/course"


@dataclass(frozen=True)
class Actor:
    name: str
    email: str


@dataclass(frozen=True)
class PolicyRef:
    slug: str
    title: str
    version: str  # the version label, e.g. "2026.1"


@dataclass(frozen=True)
class ModuleRef:
    slug: str
    title: str


def timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a ``Z``, as LRSs store it."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def agent(actor: Actor) -> dict[str, Any]:
    return {"objectType": "Agent", "name": actor.name, "mbox": f"mailto:{actor.email.lower()}"}


def policy_activity(base_url: str, policy: PolicyRef) -> dict[str, Any]:
    return {
        "objectType": "Activity",
        "id": f"{base_url.rstrip('/')}/policies/{policy.slug}",
        "definition": {"name": {LANGUAGE: policy.title}, "type": POLICY_TYPE},
    }


def module_activity(base_url: str, policy: PolicyRef, module: ModuleRef) -> dict[str, Any]:
    return {
        "objectType": "Activity",
        "id": f"{base_url.rstrip('/')}/policies/{policy.slug}/modules/{module.slug}",
        "definition": {"name": {LANGUAGE: module.title}, "type": MODULE_TYPE},
    }


def _statement(
    statement_id: str,
    at: datetime,
    actor: Actor,
    verb: str,
    obj: dict[str, Any],
    policy: PolicyRef,
    parent: dict[str, Any] | None,
    result: dict[str, Any] | None = None,
) -> dict[str, Any]:
    context: dict[str, Any] = {
        "platform": "Countersign",
        "language": LANGUAGE,
        "revision": policy.version,
    }
    if parent is not None:
        context["contextActivities"] = {"parent": [parent]}
    statement = {
        "id": statement_id,
        "timestamp": timestamp(at),
        "actor": agent(actor),
        "verb": {"id": verb, "display": {LANGUAGE: VERB_DISPLAY[verb]}},
        "object": obj,
        "context": context,
    }
    if result is not None:
        statement["result"] = result
    return statement


def read_statement(
    statement_id: str,
    at: datetime,
    actor: Actor,
    base_url: str,
    policy: PolicyRef,
    module: ModuleRef,
) -> dict[str, Any]:
    """The person confirmed they have read the module."""
    return _statement(
        statement_id, at, actor, READ, module_activity(base_url, policy, module), policy,
        policy_activity(base_url, policy),
    )  # fmt: skip


def quiz_statement(
    statement_id: str,
    at: datetime,
    actor: Actor,
    base_url: str,
    policy: PolicyRef,
    module: ModuleRef,
    *,
    correct: int,
    total: int,
    passed: bool,
) -> dict[str, Any]:
    """A graded quiz attempt on the module: passed or failed, with the score."""
    result = {
        "score": {
            "scaled": round(correct / total, 4) if total else 0,
            "raw": correct,
            "min": 0,
            "max": total,
        },
        "success": passed,
        "completion": True,
    }
    return _statement(
        statement_id, at, actor, PASSED if passed else FAILED,
        module_activity(base_url, policy, module), policy, policy_activity(base_url, policy),
        result,
    )  # fmt: skip


def acknowledgement_statement(
    statement_id: str,
    at: datetime,
    actor: Actor,
    base_url: str,
    policy: PolicyRef,
    declaration: str,
) -> dict[str, Any]:
    """The person signed the policy version's declaration."""
    return _statement(
        statement_id, at, actor, ACCEPTED, policy_activity(base_url, policy), policy, None,
        {"response": declaration[:1000]},
    )  # fmt: skip


def completion_statement(
    statement_id: str,
    at: datetime,
    actor: Actor,
    base_url: str,
    policy: PolicyRef,
) -> dict[str, Any]:
    """The person became trained on the policy."""
    return _statement(
        statement_id, at, actor, COMPLETED, policy_activity(base_url, policy), policy, None,
        {"completion": True, "success": True},
    )  # fmt: skip
