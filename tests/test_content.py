"""The content pipeline: validation with file-and-line messages, safe rendering, versioned publishing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.db import db
from tests.conftest import complete_modules, train_people
from training.loader import ContentError, load_all, render_markdown
from training.models import ModuleVersion, Policy, PolicyVersion, ReadReceipt
from training.progress import AckRequest, acknowledge
from training.status import training_status

POLICY = "social-media-policy"


def problems_for(content: Path) -> list[str]:
    with pytest.raises(ContentError) as caught:
        load_all(content)
    return [str(p) for p in caught.value.problems]


def replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_real_content_is_valid():
    (policy,) = load_all(Path(__file__).resolve().parents[1] / "content")
    assert policy.slug == POLICY
    assert len(policy.modules) == 13
    assert policy.audiences["staff"] == tuple(m.slug for m in policy.modules)


def test_manifest_errors_name_file_and_line(editable_content):
    manifest = editable_content / POLICY / "policy.yaml"
    replace(manifest, "refresher_months: 12", "refresher_months: twelve")
    replace(manifest, "effective: 2026-09-01", "effective: 2026-13-01")
    replace(manifest, "  parent: [scope,", "  pupil: [scope]\n  parent: [scope, no-such-module,")
    lines = manifest.read_text().splitlines()
    found = problems_for(editable_content)

    def line_of(prefix: str) -> int:
        return next(i for i, line in enumerate(lines, 1) if line.startswith(prefix))

    assert (
        f"{manifest}:{line_of('refresher_months')}: 'refresher_months' must be a whole"
        in "\n".join(found)
    )
    assert any(f"{manifest}:{line_of('effective')}: 'effective' must be a date" in p for p in found)
    assert any("unknown role 'pupil'" in p for p in found)
    assert any("names unknown modules: no-such-module" in p for p in found)


def test_module_errors_name_file_and_line(editable_content):
    folder = editable_content / POLICY
    replace(folder / "08-tone.md", "slug: tone", "slug: scope")
    replace(folder / "04-monitoring.md", "title: Monitoring", "title: [unclosed")
    text = (folder / "05-behaviour.md").read_text()
    (folder / "05-behaviour.md").write_text(text + "\n# A top-level heading\n")
    broken_line = len(text.splitlines()) + 2
    (folder / "06-legal-considerations.md").write_text("No front matter here.\n")
    found = "\n".join(problems_for(editable_content))
    assert f"{folder / '08-tone.md'}:2: slug 'scope' is also used by 01-scope.md" in found
    assert f"{folder / '04-monitoring.md'}:2: not valid YAML" in found
    assert f"{folder / '05-behaviour.md'}:{broken_line}: use '##' for headings" in found
    assert f"{folder / '06-legal-considerations.md'}:1: must start with front matter" in found


def test_missing_module_file_is_reported(editable_content):
    (editable_content / POLICY / "08-tone.md").unlink()
    found = "\n".join(problems_for(editable_content))
    assert "module file '08-tone.md' does not exist" in found


def test_content_check_command_exits_non_zero_with_messages(runner, app, editable_content):
    app.config["CONTENT_DIR"] = str(editable_content)
    replace(editable_content / POLICY / "policy.yaml", "title: Social Media Policy\n", "")
    result = runner.invoke(args=["content", "check"])
    assert result.exit_code != 0
    assert "policy.yaml:1: 'title' is required" in result.output
    assert "nothing was changed" in result.output


def test_content_check_command_accepts_good_content(runner):
    result = runner.invoke(args=["content", "check"])
    assert result.exit_code == 0, result.output
    assert "Content is valid" in result.output


@pytest.mark.parametrize(
    "dangerous",
    [
        "<script>alert(1)</script>",
        '<img src=x onerror="alert(1)">',
        "[click](javascript:alert(1))",
        "[click](JaVaScRiPt:alert(1))",
        '<a href="&#106;avascript:alert(1)">x</a>',
        "<style>body{display:none}</style>",
        '<p onclick="alert(1)">hi</p>',
        '<svg onload="alert(1)"></svg>',
        "[data](data:text/html;base64,PHNjcmlwdD4=)",
        '<iframe src="https://example.org"></iframe>',
    ],
)
def test_rendering_removes_scripts_styles_handlers_and_unsafe_links(dangerous):
    html = render_markdown(f"Some text.\n\n{dangerous}\n").lower()
    for bad in (
        "<script",
        "onerror",
        "onclick",
        "onload",
        "javascript:",
        "<style",
        "data:",
        "<iframe",
    ):
        assert bad not in html


def test_rendering_keeps_policy_formatting():
    html = render_markdown(
        "## Heading\n\n- **bold** and *italic*\n    - nested\n\n[ok](https://a.b)"
    )
    assert '<h2 id="heading">Heading</h2>' in html
    assert "<strong>bold</strong>" in html and "<em>italic</em>" in html
    assert html.count("<ul>") == 2
    assert 'href="https://a.b"' in html and 'rel="noopener noreferrer"' in html


# --- publishing ----------------------------------------------------------------------------------------


def count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def test_publishing_unchanged_content_records_nothing(app, runner):
    first = runner.invoke(args=["content", "publish"])
    assert "published version 1.0" in first.output
    second = runner.invoke(args=["content", "publish"])
    assert second.exit_code == 0
    assert "version 1.0 is current; nothing changed" in second.output
    with app.app_context():
        assert count(PolicyVersion) == 1
        assert count(ModuleVersion) == 13


def test_changed_module_makes_a_new_version_sharing_unchanged_modules(
    app, runner, editable_content
):
    app.config["CONTENT_DIR"] = str(editable_content)
    runner.invoke(args=["content", "publish"])
    folder = editable_content / POLICY
    replace(folder / "08-tone.md", "- Engaging", "- Engaging and clear")
    replace(folder / "policy.yaml", 'version: "1.0"', 'version: "1.1"')
    result = runner.invoke(args=["content", "publish"])
    assert result.exit_code == 0, result.output
    assert "published version 1.1 (new or changed modules: tone)" in result.output
    with app.app_context():
        assert count(PolicyVersion) == 2
        assert count(ModuleVersion) == 14
        v1, v2 = db.session.scalars(select(PolicyVersion).order_by(PolicyVersion.id)).all()
        shared = {mv.id for mv in v1.module_versions} & {mv.id for mv in v2.module_versions}
        assert len(shared) == 12


def test_changed_text_under_the_same_version_label_is_refused(app, runner, editable_content):
    app.config["CONTENT_DIR"] = str(editable_content)
    runner.invoke(args=["content", "publish"])
    replace(editable_content / POLICY / "08-tone.md", "- Engaging", "- Engaging and clear")
    result = runner.invoke(args=["content", "publish"])
    assert result.exit_code != 0
    assert "version '1.0' is already published with different content" in result.output
    with app.app_context():
        assert count(PolicyVersion) == 1


def test_only_changed_modules_must_be_redone_after_a_new_version(
    app, runner, editable_content, make_person
):
    app.config["CONTENT_DIR"] = str(editable_content)
    runner.invoke(args=["content", "publish"])
    pid = make_person("staff", name="Grace Hopper")
    train_people(app, pid)
    with app.app_context():
        from people.models import Person

        person = db.session.get(Person, pid)
        policy = db.session.scalar(select(Policy))
        assert training_status(db.session, person, policy).trained

    folder = editable_content / POLICY
    replace(folder / "09-use-of-images.md", "delete it immediately.", "delete it immediately!")
    replace(folder / "policy.yaml", 'version: "1.0"', 'version: "1.1"')
    assert runner.invoke(args=["content", "publish"]).exit_code == 0
    with app.app_context():
        person = db.session.get(Person, pid)
        policy = db.session.scalar(select(Policy))
        status = training_status(db.session, person, policy)
        assert status.version == "1.1" and not status.trained
        assert [(m.module, m.reason) for m in status.missing] == [
            ("use-of-images", "outdated_version"),
            (None, "not_acknowledged"),
        ]
        complete_modules(db.session, person, policy, only={"use-of-images"})
        acknowledge(db.session, person, policy, AckRequest("Grace Hopper", "d", "ip", "ua"))
        db.session.commit()
        assert training_status(db.session, person, policy).trained
        assert count(ReadReceipt) == 14


def test_a_second_policy_folder_works_without_code_changes(app, runner, editable_content):
    second = editable_content / "data-protection"
    second.mkdir()
    shutil.copy(editable_content / POLICY / "08-tone.md", second / "01-basics.md")
    (second / "policy.yaml").write_text(
        'slug: data-protection\ntitle: Data Protection Policy\nversion: "2026"\n'
        "effective: 2026-10-01\nowner: Data Protection Officer\nrefresher_months: 24\n"
        "modules:\n  - 01-basics.md\naudiences:\n  staff: all\n"
    )
    app.config["CONTENT_DIR"] = str(editable_content)
    result = runner.invoke(args=["content", "publish"])
    assert result.exit_code == 0, result.output
    assert "data-protection: published version 2026" in result.output
    with app.app_context():
        assert sorted(db.session.scalars(select(Policy.slug))) == ["data-protection", POLICY]


def test_details_corrected_under_the_same_label_update_in_place(app, runner, editable_content):
    app.config["CONTENT_DIR"] = str(editable_content)
    runner.invoke(args=["content", "publish"])
    folder = editable_content / POLICY
    replace(folder / "policy.yaml", "owner: Senior Leadership Team", "owner: Head of School")
    replace(folder / "08-tone.md", "summary: ", "summary: Revised. ")
    result = runner.invoke(args=["content", "publish"])
    assert result.exit_code == 0, result.output
    assert "version 1.0 updated: owner, summary of tone" in result.output
    with app.app_context():
        assert count(PolicyVersion) == 1
        assert db.session.scalar(select(PolicyVersion.owner)) == "Head of School"


def test_a_new_label_on_unchanged_text_asks_only_for_a_fresh_signature(
    app, runner, editable_content, make_person
):
    from people.models import Person

    app.config["CONTENT_DIR"] = str(editable_content)
    runner.invoke(args=["content", "publish"])
    pid = make_person("volunteer", name="Val Vol")
    train_people(app, pid)
    replace(editable_content / POLICY / "policy.yaml", 'version: "1.0"', 'version: "2026"')
    assert (
        "published version 2026 (new or changed modules: none)"
        in runner.invoke(args=["content", "publish"]).output
    )
    with app.app_context():
        person, policy = db.session.get(Person, pid), db.session.scalar(select(Policy))
        status = training_status(db.session, person, policy)
        assert [(m.module, m.reason) for m in status.missing] == [(None, "not_acknowledged")]
        assert status.ready_to_sign


def test_a_version_takes_over_only_from_its_effective_date(
    app, runner, editable_content, make_person
):
    from datetime import UTC, datetime, timedelta

    from people.models import Person

    effective = (datetime.now(UTC) + timedelta(days=30)).date()

    app.config["CONTENT_DIR"] = str(editable_content)
    runner.invoke(args=["content", "publish"])
    pid = make_person("volunteer", name="Val Vol")
    train_people(app, pid)
    folder = editable_content / POLICY
    replace(folder / "policy.yaml", 'version: "1.0"', 'version: "2.0"')
    replace(folder / "policy.yaml", "effective: 2026-09-01", f"effective: {effective}")
    replace(
        folder / "policy.yaml",
        "next_review: 2027-09-01",
        f"next_review: {effective.year + 1}-12-31",
    )
    replace(folder / "08-tone.md", "- Engaging", "- Engaging and clear")
    result = runner.invoke(args=["content", "publish"])
    assert f"(new or changed modules: tone; takes effect on {effective})" in result.output
    with app.app_context():
        person, policy = db.session.get(Person, pid), db.session.scalar(select(Policy))
        now = training_status(db.session, person, policy)
        assert now.trained and now.version == "1.0"
        later = training_status(
            db.session, person, policy, datetime.combine(effective, datetime.min.time(), UTC)
        )
        assert later.version == "2.0" and not later.trained
        assert [(m.module, m.reason) for m in later.missing][0] == ("tone", "outdated_version")


def test_unusable_manifest_values_are_reported_not_crashed_on(editable_content):
    folder = editable_content / POLICY
    manifest = folder / "policy.yaml"
    replace(manifest, 'version: "1.0"', "version: 1.10")
    replace(manifest, "owner: Senior Leadership Team", "owner: " + "x" * 250)
    replace(manifest, "  parent: [scope,", "  parent: [{scope: yes},")
    replace(manifest, "  - 01-scope.md", "  - ../federation.yaml\n  - 01-scope.md")
    (folder / "08-tone.md").write_bytes((folder / "08-tone.md").read_bytes() + b"\n\xff\xfe bad\n")
    found = "\n".join(problems_for(editable_content))
    assert 'write the version label in quotes, e.g. version: "1.1"' in found
    assert "'owner' is 250 characters long; at most 200" in found
    assert "role 'parent' needs 'all' or a list of module slugs" in found
    assert "module file '../federation.yaml' does not exist" in found
    assert f"{folder / '08-tone.md'}:" in found and "is not UTF-8 text" in found
