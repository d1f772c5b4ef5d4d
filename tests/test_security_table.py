"""The README's OWASP ASVS 5.0 level 2 table stays true: every test it cites exists, and every
level 1 and 2 requirement has exactly one row."""

from __future__ import annotations

import re

from core.config import ROOT

HEADING = "### OWASP ASVS 5.0 level 2"
LEVEL_2_REQUIREMENTS = 253  # levels 1 and 2 of ASVS 5.0.0
CITED = re.compile(r"`(tests/[\w/]+\.py)::([\w:]+)(?:\[[^\]]*\])?`")


def _rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert HEADING in text, f"the README has no '{HEADING}' section"
    section = text.split(HEADING, 1)[1]
    section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| V"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_every_level_2_requirement_has_one_row() -> None:
    ids = [row[0] for row in _rows()]
    assert len(ids) == len(set(ids)), "a requirement is listed twice"
    assert len(ids) == LEVEL_2_REQUIREMENTS
    assert all(re.fullmatch(r"V\d+\.\d+\.\d+", i) for i in ids)


def test_every_row_has_a_known_status() -> None:
    for row in _rows():
        assert row[2] in {"met", "not met", "n/a", "partly"}, row


def test_every_cited_test_exists() -> None:
    missing = []
    cited = 0
    for row in _rows():
        for path, name in CITED.findall(" ".join(row)):
            cited += 1
            source = ROOT / path
            function = name.split("::")[-1]
            if not source.is_file() or not re.search(
                rf"^\s*def {re.escape(function)}\(", source.read_text(encoding="utf-8"), re.M
            ):
                missing.append(f"{path}::{name}")
    assert cited > 100
    assert not missing, f"the ASVS table cites tests that do not exist: {missing}"


def test_met_rows_are_shown_by_a_test_or_say_why_not() -> None:
    for row in _rows():
        if row[2] == "met":
            assert CITED.search(row[4]) or row[3], row
