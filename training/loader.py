"""Read and validate the content folder that school staff edit.

Every problem is reported with the file and line it is on, and all problems are collected before
anything is refused, so one run of ``flask content check`` lists everything to fix.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

import markdown
import nh3

from core.yamldoc import ContentError, Doc, Problem, read_text
from people.roles import ROLES
from quizzes.bank import BANK_SUFFIX, Bank, QuizRules, bank_path, load_bank, load_rules

__all__ = ["ContentError", "Problem"]  # re-exported: the content pipeline's errors

SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
MANIFEST = "policy.yaml"
FEDERATION = "federation.yaml"

ALLOWED_TAGS = {
    "a", "abbr", "blockquote", "br", "code", "em", "h2", "h3", "h4", "h5", "h6", "hr", "li", "ol",
    "p", "pre", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "abbr": {"title"}, "*": {"id"}}


@dataclass(frozen=True)
class School:
    code: str
    name: str


@dataclass(frozen=True)
class Federation:
    name: str
    schools: tuple[School, ...]

    def school_name(self, code: str) -> str:
        return next((s.name for s in self.schools if s.code == code), code)


@dataclass(frozen=True)
class ModuleSource:
    slug: str
    title: str
    summary: str
    body: str
    html: str
    path: Path
    bank: Bank | None = None  # the module's quiz, when it has one

    @property
    def text_hash(self) -> str:
        return text_hash(self.title, self.body)


@dataclass(frozen=True)
class PolicySource:
    slug: str
    title: str
    version: str
    effective: date
    next_review: date | None
    owner: str
    source: str
    refresher_months: int
    modules: tuple[ModuleSource, ...]
    audiences: dict[str, tuple[str, ...]]
    path: Path
    version_line: int | None = field(default=None, compare=False)


def text_hash(title: str, body: str) -> str:
    """Identify a module's text, ignoring line-ending and trailing-space differences."""
    lines = [line.rstrip() for line in body.replace("\r\n", "\n").split("\n")]
    normalised = title.strip() + "\n\n" + "\n".join(lines).strip() + "\n"
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


def render_markdown(body: str) -> str:
    """Markdown to HTML that is safe to show: no scripts, styles, event handlers or unsafe links."""
    raw = markdown.markdown(body, extensions=["sane_lists", "tables", "toc"], output_format="html")
    return nh3.clean(
        raw,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer",
    )


# --- federation ----------------------------------------------------------------------------------


def load_federation(content_dir: Path) -> Federation:
    path = content_dir / FEDERATION
    problems: list[Problem] = []
    if not path.is_file():
        raise ContentError(
            [Problem(path, None, "missing: it names the federation and its schools")]
        )
    text = read_text(path, problems)
    if text is None:
        raise ContentError(problems)
    doc = Doc(path, text, problems)
    name = doc.text("name")
    schools: list[School] = []
    raw = doc.data.get("schools", [])
    if not isinstance(raw, list):
        doc.problem("schools", "'schools' must be a list of {code, name}")
        raw = []
    seen: set[str] = set()
    for entry in raw:
        if not isinstance(entry, dict) or not entry.get("code") or not entry.get("name"):
            doc.problem("schools", f"each school needs a code and a name, not {entry!r}")
            continue
        code = str(entry["code"]).strip()
        if not SLUG_RE.match(code):
            doc.problem("schools", f"school code {code!r} must be lower-case letters, digits, -")
        if code in seen:
            doc.problem("schools", f"school code {code!r} is used twice")
        seen.add(code)
        schools.append(School(code, str(entry["name"]).strip()))
    if problems:
        raise ContentError(problems)
    return Federation(name, tuple(schools))


# --- policies ------------------------------------------------------------------------------------


def policy_folders(content_dir: Path) -> list[Path]:
    """Every folder of ``content_dir`` holding a manifest: each is one policy."""
    return sorted(p.parent for p in content_dir.glob(f"*/{MANIFEST}"))


def load_all(content_dir: Path) -> list[PolicySource]:
    problems: list[Problem] = []
    policies: list[PolicySource] = []
    try:
        load_federation(content_dir)
    except ContentError as exc:
        problems.extend(exc.problems)
    folders = policy_folders(content_dir)
    if not folders:
        problems.append(Problem(content_dir, None, f"no policy folders (none holds a {MANIFEST})"))
    slugs: dict[str, Path] = {}
    for folder in folders:
        try:
            policy = load_policy(folder)
        except ContentError as exc:
            problems.extend(exc.problems)
            continue
        if policy.slug in slugs:
            problems.append(
                Problem(
                    folder / MANIFEST,
                    None,
                    f"slug {policy.slug!r} is also used by {slugs[policy.slug]}",
                )
            )
        slugs[policy.slug] = folder
        policies.append(policy)
    if problems:
        raise ContentError(problems)
    return policies


def load_policy(folder: Path) -> PolicySource:
    path = folder / MANIFEST
    problems: list[Problem] = []
    text = read_text(path, problems)
    if text is None:
        raise ContentError(problems)
    doc = Doc(path, text, problems)
    if problems:
        raise ContentError(problems)

    slug = doc.text("slug", max_length=80)
    if slug and not SLUG_RE.match(slug):
        doc.problem("slug", f"slug {slug!r} must be lower-case letters, digits and hyphens")
    title = doc.text("title")
    version = doc.text("version", max_length=40)
    if "version" in doc.data and not isinstance(doc.data["version"], str):
        # Unquoted, 1.10 would silently become 1.1.
        doc.problem("version", f'write the version label in quotes, e.g. version: "{version}"')
    effective = doc.date("effective")
    next_review = doc.date("next_review", required=False)
    if effective and next_review and next_review <= effective:
        doc.problem("next_review", "'next_review' must be after 'effective'")
    owner = doc.text("owner")
    source = doc.text("source", required=False, max_length=300)
    refresher = doc.data.get("refresher_months")
    if not isinstance(refresher, int) or isinstance(refresher, bool) or not 1 <= refresher <= 120:
        doc.problem(
            "refresher_months" if "refresher_months" in doc.lines else None,
            f"'refresher_months' must be a whole number of months from 1 to 120, not {refresher!r}",
        )
        refresher = 12

    modules: list[ModuleSource] = []
    module_problems = len(problems)
    files = doc.data.get("modules")
    if not isinstance(files, list) or not files:
        doc.problem(
            "modules" if "modules" in doc.lines else None, "'modules' must list the module files"
        )
        files = []
    for name in files:
        module_path = folder / str(name)
        if not isinstance(name, str) or "/" in name or "\\" in name or not module_path.is_file():
            doc.problem("modules", f"module file {name!r} does not exist in {folder}")
            continue
        module = _load_module(module_path, problems)
        if module:
            modules.append(module)
    seen: dict[str, Path] = {}
    for module in modules:
        if module.slug in seen:
            problems.append(
                Problem(
                    module.path, 2, f"slug {module.slug!r} is also used by {seen[module.slug].name}"
                )
            )
        seen[module.slug] = module.path

    modules = _attach_banks(doc, folder, modules, problems)
    modules_ok = len(problems) == module_problems
    audiences: dict[str, tuple[str, ...]] = {}
    raw_audiences = doc.data.get("audiences")
    if not isinstance(raw_audiences, dict) or not raw_audiences:
        doc.problem(
            "audiences" if "audiences" in doc.lines else None,
            "'audiences' must map role codes to the modules each role must complete",
        )
        raw_audiences = {}
    for role, wanted in raw_audiences.items():
        if role not in ROLES:
            doc.problem("audiences", f"unknown role {role!r}; roles are {', '.join(ROLES)}")
            continue
        if wanted == "all":
            audiences[role] = tuple(m.slug for m in modules)
            continue
        if (
            not isinstance(wanted, list)
            or not wanted
            or not all(isinstance(s, str) for s in wanted)
        ):
            doc.problem("audiences", f"role {role!r} needs 'all' or a list of module slugs")
            continue
        unknown = [str(s) for s in wanted if s not in seen]
        if unknown and modules_ok:  # else a broken module is the cause
            doc.problem("audiences", f"role {role!r} names unknown modules: {', '.join(unknown)}")
        audiences[role] = tuple(m.slug for m in modules if m.slug in wanted)

    if problems:
        raise ContentError(problems)
    assert effective is not None
    return PolicySource(
        slug=slug,
        title=title,
        version=version,
        effective=effective,
        next_review=next_review,
        owner=owner,
        source=source,
        refresher_months=refresher,
        modules=tuple(modules),
        audiences=audiences,
        path=folder,
        version_line=doc.lines.get("version"),
    )


def _attach_banks(
    doc: Doc, folder: Path, modules: list[ModuleSource], problems: list[Problem]
) -> list[ModuleSource]:
    """Each module's question bank, run by the manifest's quiz rules (``quiz`` and, per module
    slug, ``quiz_overrides``)."""
    base = load_rules(doc, "quiz", QuizRules())
    overrides = doc.data.get("quiz_overrides") or {}
    override_node = doc.child("quiz_overrides")
    if not isinstance(overrides, dict) or (overrides and override_node is None):
        doc.problem("quiz_overrides", "'quiz_overrides' must map module slugs to quiz rules")
        overrides = {}
    slugs = {m.slug for m in modules}
    for slug in overrides:
        if slug not in slugs:
            doc.problem("quiz_overrides", f"quiz_overrides names unknown module {slug!r}")
    nested = Doc.nested(doc, override_node, overrides) if override_node is not None else None
    result = []
    for module in modules:
        path = bank_path(module.path)
        if not path.is_file():
            result.append(module)
            continue
        rules = (
            load_rules(nested, module.slug, base) if nested and module.slug in overrides else base
        )
        result.append(replace(module, bank=load_bank(path, module.body, rules, problems)))
    listed = {bank_path(m.path).name for m in modules}
    for stray in sorted(folder.glob(f"*{BANK_SUFFIX}")):
        if stray.name not in listed:
            problems.append(
                Problem(stray, None, "no module in the manifest's 'modules' matches this quiz file")
            )
    return result


def _load_module(path: Path, problems: list[Problem]) -> ModuleSource | None:
    text = read_text(path, problems)
    if text is None:
        return None
    lines = text.replace("\r\n", "\n").split("\n")
    if not lines or lines[0].strip() != "---":
        problems.append(Problem(path, 1, "must start with front matter between '---' lines"))
        return None
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        problems.append(Problem(path, 1, "front matter is not closed with a '---' line"))
        return None
    before = len(problems)
    doc = Doc(path, "\n".join(lines[1:end]), problems, first_line=2)
    if len(problems) > before:
        return None
    title = doc.text("title")
    slug = doc.text("slug", max_length=80)
    if slug and not SLUG_RE.match(slug):
        doc.problem("slug", f"slug {slug!r} must be lower-case letters, digits and hyphens")
    summary = doc.text("summary", required=False, max_length=500)
    body = "\n".join(lines[end + 1 :]).strip("\n")
    if not body.strip():
        problems.append(Problem(path, end + 2, "the module has no text after its front matter"))
    for number, line in enumerate(lines[end + 1 :], start=end + 2):
        if re.match(r"^#\s", line):
            problems.append(
                Problem(
                    path, number, "use '##' for headings: the module title is the page's heading"
                )
            )
    if len(problems) > before:
        return None
    return ModuleSource(slug, title, summary, body, render_markdown(body), path)
