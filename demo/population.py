"""Who is in the demo federation, and what each of them has done.

Most people are drawn at random, in a federation's proportions: mostly staff and parents, some
volunteers, a few governors, senior leaders and administrators. A small named cast is added on the
first run, because the account register needs particular people: leaders who decide applications,
an administrator who records accounts, staff who run them (one of whom has since left, one whose
training has lapsed), and a governor and an administrator to sign in as.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement

from demo.history import Timeline
from demo.learning import (
    LIVES,
    STORIES,
    Draft,
    Learner,
    expired,
    moment,
    trained,
)
from demo.names import FIRST_NAMES, LAST_NAMES
from people.demo import DEMO_DOMAIN
from people.models import Person
from training.status import add_months


def demo_people() -> ColumnElement[bool]:
    """Demo people are those with an address at the reserved demo domain (``make run``'s one
    person per role included)."""
    return Person.email.endswith("@" + DEMO_DOMAIN, autoescape=True)


@dataclass(frozen=True)
class Profile:
    roles: tuple[str, ...]
    share: float
    keenness: str  # whose habits they follow: "staff", "governor" or "family"
    schools: str  # how they belong to schools: see _schools


PROFILES = (
    Profile(("staff",), 0.28, "staff", "one"),
    Profile(("staff", "parent"), 0.03, "staff", "one"),  # staff whose children attend
    Profile(("parent",), 0.53, "family", "family"),
    Profile(("volunteer",), 0.05, "family", "one"),
    Profile(("volunteer", "parent"), 0.04, "family", "family"),
    Profile(("governor",), 0.025, "governor", "governor"),
    Profile(("governor", "parent"), 0.01, "governor", "family"),  # parent governors
    Profile(("slt", "staff"), 0.02, "staff", "leader"),
    Profile(("admin", "staff"), 0.015, "staff", "office"),
)

# Where people end up, by keenness ("leaver": any of the others, then deactivated).
STORY_WEIGHTS = {
    "staff": {"trained": 55, "in_progress": 12, "not_started": 5, "expired": 10, "outdated": 12,
              "leaver": 6},
    "governor": {"trained": 50, "in_progress": 15, "not_started": 10, "expired": 10,
                 "outdated": 10, "leaver": 5},
    "family": {"trained": 30, "in_progress": 20, "not_started": 24, "expired": 8, "outdated": 10,
               "leaver": 8},
}  # fmt: skip
BEFORE_LEAVING = {"trained": 4, "in_progress": 2, "not_started": 2, "expired": 2, "outdated": 1}


@dataclass(frozen=True)
class Character:
    key: str
    name: str
    roles: tuple[str, ...]
    school: int | None  # index into the federation's schools; None: federation-wide
    story: str  # "trained", "lapsed", "renewed" or "in_progress"


CAST = (
    Character("head", "Helen Marsh", ("slt", "staff"), None, "trained"),  # executive head
    Character("head_junior", "Daniel Osei", ("slt", "staff"), 1, "trained"),
    Character("admin", "Priya Shah", ("admin", "staff"), None, "trained"),  # business manager
    Character("chair", "Margaret Okafor", ("governor",), None, "trained"),  # chair of governors
    Character("a1", "Tom Bradley", ("staff",), 1, "trained"),
    Character("a2", "Aisha Rahman", ("staff",), 1, "trained"),
    Character("a3", "Sophie Turner", ("volunteer", "parent"), 1, "trained"),
    Character("b1", "Grace Whitfield", ("staff",), 0, "trained"),
    Character("b2", "Mohammed Iqbal", ("staff",), 0, "trained"),
    Character("c1", "Liam Doyle", ("staff",), 1, "trained"),  # has since left
    Character("c2", "Chloe Evans", ("staff",), 1, "trained"),
    Character("d1", "Emma Hughes", ("staff",), 0, "lapsed"),
    Character("d2", "Oliver Grant", ("staff",), 0, "renewed"),
    Character("e1", "Nadia Ali", ("staff",), 1, "in_progress"),
)
# The people to sign in as, printed with fresh passwords after each run.
SIGN_IN = (("Governor", "chair"), ("Administrator", "admin"))
# Enough ordinary people for every standing to appear besides the cast.
MIN_ORDINARY = 16


def email_part(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9-]", "", folded.replace(" ", "-"))


def email_for(name: str, taken: set[str]) -> str:
    first, _, last = name.partition(" ")
    local = f"{email_part(first)}.{email_part(last)}"
    email, n = f"{local}@{DEMO_DOMAIN}", 1
    while email in taken:
        n += 1
        email = f"{local}{n}@{DEMO_DOMAIN}"
    taken.add(email)
    return email


def cast_email(key: str) -> str:
    character = next(c for c in CAST if c.key == key)
    return email_for(character.name, set())


def plan(
    count: int,
    offset: int,
    seed: int,
    schools: list[str],
    taken: set[str],
    with_cast: bool,
    timelines: list[Timeline],
    now: datetime,
) -> list[Draft]:
    """``count`` new people (the cast first, when wanted), with names, roles, schools and a story.

    ``offset`` is how many demo people exist already, so a second run draws new people rather than
    the same ones again.
    """
    rng = random.Random(f"countersign-demo:{seed}:{offset}")
    start = min((t.start for t in timelines), default=add_months(now, -18))
    # Everyone on the register when Countersign arrived was imported before anything happened.
    earliest = min([start, *(t.first_start for t in timelines),
                    *(t.previous_since for t in timelines if t.previous_since)])  # fmt: skip
    imported = earliest - timedelta(days=7)
    drafts = []
    for character in CAST if with_cast else ():
        at = (
            schools[character.school % len(schools)]
            if schools and character.school is not None
            else None
        )
        drafts.append(
            Draft(
                name=character.name,
                email=email_for(character.name, taken),
                roles=character.roles,
                schools=(at,) if at else (),
                story=character.story,
                created_at=imported - timedelta(minutes=rng.uniform(0, 600)),
                seed=f"{seed}:cast:{character.key}",
                key=character.key,
                school_network=schools.index(at) if at else 0,
            )
        )
    ordinary = count - len(drafts)
    profiles = _quota(ordinary, rng)
    stories = [_story(p, rng) for p in profiles]
    if ordinary >= MIN_ORDINARY:  # every standing at least once, however few people
        for missing in [s for s in STORIES if s not in stories]:
            common, _ = Counter(stories).most_common(1)[0]
            stories[stories.index(common)] = missing
    for index, (profile, story) in enumerate(zip(profiles, stories, strict=True)):
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        mine = _schools(profile.schools, schools, rng)
        leaves = story == "leaver"
        if leaves:
            story = rng.choices(list(BEFORE_LEAVING), list(BEFORE_LEAVING.values()))[0]
        if story in ("trained", "in_progress", "not_started") and rng.random() < 0.25:
            created = moment(rng, start, now - timedelta(days=14)) or imported  # joined since
        else:
            created = imported - timedelta(minutes=rng.uniform(0, 600))
        draft = Draft(
            name=name,
            email=email_for(name, taken),
            roles=profile.roles,
            schools=mine,
            story=story,
            created_at=created,
            seed=f"{seed}:{offset + index}",
            school_network=schools.index(mine[0]) if mine else 0,
        )
        draft.active = not leaves
        drafts.append(draft)
    return drafts


def live(draft: Draft, timelines: list[Timeline], federation: str, now: datetime) -> None:
    """Play out the draft's story on every policy, then, for a leaver, deactivate them."""
    rng = random.Random(draft.seed)
    for timeline in timelines:
        learner = Learner(draft, timeline, random.Random(f"{draft.seed}:{timeline.slug}"),
                          federation)  # fmt: skip
        refresher = timeline.current.refresher_months if timeline.current else 12
        if draft.story == "trained" and draft.key:  # the cast: trained in time to run accounts
            trained(learner, "fresh", latest=now - timedelta(days=10))
        elif draft.story == "lapsed":
            expired(learner, latest=add_months(now, -refresher) - timedelta(days=45))
        elif draft.story == "renewed":
            trained(learner, "renewed")
        else:
            LIVES[draft.story](learner)
    last = draft.last_activity
    draft.has_password = last is not None or rng.random() < 0.35
    if not draft.active:  # a leaver: deactivated some time after they last did anything
        low = (last or draft.created_at) + timedelta(days=1)
        draft.deactivated_at = moment(rng, low, now - timedelta(hours=1)) or min(low, now)


def _quota(count: int, rng: random.Random) -> list[Profile]:
    """``count`` profiles in the federation's proportions (each at least once when there is room),
    in random order."""
    raw = [p.share * count for p in PROFILES]
    counts = [int(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)
    for i in by_remainder[: count - sum(counts)]:
        counts[i] += 1
    if count >= len(PROFILES):
        for i in range(len(counts)):
            if counts[i] == 0:
                counts[counts.index(max(counts))] -= 1
                counts[i] = 1
    profiles = [p for p, n in zip(PROFILES, counts, strict=True) for _ in range(n)]
    rng.shuffle(profiles)
    return profiles


def _story(profile: Profile, rng: random.Random) -> str:
    weights = STORY_WEIGHTS[profile.keenness]
    return rng.choices(list(weights), list(weights.values()))[0]


def _schools(how: str, schools: list[str], rng: random.Random) -> tuple[str, ...]:
    """Staff and volunteers work at one school (a few at both, or federation-wide); families may
    have children at two; governors and the office often serve the whole federation."""
    if not schools:
        return ()
    one = (rng.choice(schools),)
    both = tuple(sorted(rng.sample(schools, min(2, len(schools)))))
    roll = rng.random()
    if how == "one":
        return both if roll < 0.04 else () if roll < 0.08 else one
    if how == "family":
        return both if roll < 0.12 else one
    if how == "governor":
        return () if roll < 0.6 else one
    if how == "leader":
        return () if roll < 0.3 else one
    return () if roll < 0.5 else one  # office
