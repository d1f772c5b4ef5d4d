"""The training modules present the whole Social Media Policy in its own words.

The policy text is the federation's document, so the modules must neither lose nor
reword any of it. These tests compare the modules with the plain-text source,
ignoring only whitespace and Markdown markup.
"""

import os
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
POLICY_DIR = ROOT / "content" / "social-media-policy"
DEFAULT_SOURCE = ROOT.parent / "shared" / "policy" / "social-media-policy.txt"

# The original PDF printed the federation's name as a header on every page, and
# the text extraction left those headers in the middle of lists. They are not
# policy text, so the modules leave them out and the comparison skips them.
PAGE_HEADERS = {"Ladysmith Federation"}

# A leading list marker or heading marker on a line.
LEADING_MARKER = re.compile(r"^(?:[-*+]\s+|\d+[.)]\s+|#+\s*)")
# A sentence end: ". ", "? " or "! ", but not the "e.g. " inside a sentence.
SENTENCE_END = re.compile(r"(?<=[.?!])(?<!e\.g\.)\s+")


def normalise(line: str) -> str:
    """Drop Markdown markup and collapse whitespace, so only the words are compared."""
    line = LEADING_MARKER.sub("", line.strip())
    line = line.replace("*", "").replace("#", "")
    return " ".join(line.split())


def source_path() -> Path:
    return Path(os.environ.get("COUNTERSIGN_POLICY_SOURCE", DEFAULT_SOURCE))


def source_pieces(text: str) -> list[str]:
    """Every sentence and bullet of the source, normalised, in document order."""
    pieces = []
    for line in text.splitlines():
        if not line.strip() or line.strip() in PAGE_HEADERS:
            continue
        pieces.extend(p for p in SENTENCE_END.split(normalise(line)) if p)
    return pieces


def load_manifest() -> dict:
    with (POLICY_DIR / "policy.yaml").open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def read_module(path: Path) -> tuple[dict, str]:
    """Split a module file into its front matter (a dict) and its Markdown body."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].strip() != "---":
        pytest.fail(f"{path.name}: does not start with a '---' front matter line")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        pytest.fail(f"{path.name}: front matter has no closing '---' line")
    meta = yaml.safe_load("\n".join(lines[1:end])) or {}
    return meta, "\n".join(lines[end + 1 :])


def body_units(body: str) -> list[str]:
    """Paragraphs, list items and headings of a Markdown body, each normalised.

    Keeping the units apart stops a source sentence from "matching" across the
    end of one bullet and the start of the next; lines wrapped inside a
    paragraph or list item are joined back together.
    """
    units: list[str] = []
    current: list[str] = []
    for raw in body.splitlines():
        if not raw.strip() or LEADING_MARKER.match(raw.strip()):
            if current:
                units.append(" ".join(current))
            current = []
        if raw.strip():
            current.append(normalise(raw))
    if current:
        units.append(" ".join(current))
    return units


def test_every_sentence_of_the_policy_appears_in_the_modules():
    path = source_path()
    if not path.is_file():
        pytest.skip(
            f"policy source not found at {path} "
            "(set COUNTERSIGN_POLICY_SOURCE to its location to run this check)"
        )
    pieces = source_pieces(path.read_text(encoding="utf-8"))
    assert pieces, f"no sentences found in {path}"

    manifest = load_manifest()
    # The document's title line and its "Based on ..." line are presented from
    # the manifest (title, source) rather than inside a module.
    units = [normalise(manifest["title"]), normalise(manifest["source"])]
    for name in manifest["modules"]:
        meta, body = read_module(POLICY_DIR / name)
        # The source's section headings are the module titles.
        units.append(normalise(str(meta["title"])))
        units.extend(body_units(body))
    presented = "\n".join(units)

    missing = [piece for piece in pieces if piece not in presented]
    assert not missing, (
        f"{len(missing)} of {len(pieces)} sentences/bullets of {path.name} "
        "are missing or reworded in content/social-media-policy/:\n"
        + "\n".join(f"  - {piece}" for piece in missing)
    )


def test_manifest_lists_real_modules_and_audiences_name_real_slugs():
    manifest = load_manifest()
    names = manifest["modules"]
    assert names, "policy.yaml lists no modules"

    absent = [name for name in names if not (POLICY_DIR / name).is_file()]
    assert not absent, f"policy.yaml lists modules with no file: {absent}"

    slugs = []
    for name in names:
        meta, body = read_module(POLICY_DIR / name)
        for key in ("title", "slug", "summary"):
            assert meta.get(key), f"{name}: front matter has no {key!r}"
        headings = [line for line in body.splitlines() if line.startswith("# ")]
        assert not headings, f"{name}: the title is the page's h1; use '##': {headings}"
        slugs.append(meta["slug"])

    duplicates = sorted({slug for slug in slugs if slugs.count(slug) > 1})
    assert not duplicates, f"module slugs used more than once: {duplicates}"

    unknown = {}
    for role, required in manifest["audiences"].items():
        if required == "all":
            continue
        assert isinstance(required, list), (
            f"audience {role!r}: expected 'all' or a list of slugs, got {required!r}"
        )
        bad = [slug for slug in required if slug not in slugs]
        if bad:
            unknown[role] = bad
    assert not unknown, f"audiences name slugs that are not modules: {unknown}"
