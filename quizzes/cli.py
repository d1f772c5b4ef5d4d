"""``flask quiz export|import``: question banks to and from Moodle XML."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import yaml
from flask import current_app
from flask.cli import with_appcontext

from quizzes.bank import bank_path
from quizzes.moodle import MoodleXMLError, export_questions, import_questions, to_yaml_data
from training.loader import ContentError, ModuleSource, load_policy, policy_folders


@click.group("quiz", help="Question banks: export to and import from Moodle XML.")
def quiz_cli() -> None:
    pass


def _module(policy_slug: str, module_slug: str) -> tuple[Path, ModuleSource]:
    content = Path(current_app.config["CONTENT_DIR"])
    for folder in policy_folders(content):
        try:
            policy = load_policy(folder)
        except ContentError as exc:
            raise click.ClickException(f"the content has problems:\n{exc}")
        if policy.slug == policy_slug:
            for module in policy.modules:
                if module.slug == module_slug:
                    return folder, module
            slugs = ", ".join(m.slug for m in policy.modules)
            raise click.ClickException(f"no module {module_slug!r}; modules are {slugs}")
    raise click.ClickException(f"no policy {policy_slug!r} in {content}")


@quiz_cli.command("export", help="Write a module's questions as Moodle XML.")
@click.argument("policy")
@click.argument("module")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="default: stdout"
)
@with_appcontext
def export_command(policy: str, module: str, output: Path | None) -> None:
    _folder, source = _module(policy, module)
    if source.bank is None:
        raise click.ClickException(f"module {module!r} has no quiz yet")
    data = export_questions(list(source.bank.questions), f"{policy}/{module}")
    if output is None:
        sys.stdout.buffer.write(data)
    else:
        output.write_bytes(data)
        click.echo(f"Wrote {len(source.bank.questions)} questions to {output}", err=True)


@quiz_cli.command("import", help="Make a module's question bank from a Moodle XML file.")
@click.argument("policy")
@click.argument("module")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Replace the module's existing questions.")
@click.option(
    "--draft",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the bank here unchecked, to complete (e.g. add clauses) before moving it in place.",
)
@with_appcontext
def import_command(policy: str, module: str, file: Path, replace: bool, draft: Path | None) -> None:
    folder, source = _module(policy, module)
    target = bank_path(source.path)
    if file.suffix.lower() != ".xml":
        raise click.ClickException(f"{file}: not a Moodle XML file (the name must end .xml)")
    limit = current_app.config["MOODLE_MAX_BYTES"]
    if file.stat().st_size > limit:
        raise click.ClickException(
            f"{file}: larger than {limit / (1024 * 1024):g} MB (COUNTERSIGN_MOODLE_MAX_BYTES); "
            "nothing was imported"
        )
    try:
        questions = import_questions(file.read_bytes())
    except MoodleXMLError as exc:
        raise click.ClickException(f"{file}: {exc}")
    header = f"# Quiz for the module {source.title!r}, imported from {file.name}.\n"
    text = header + yaml.safe_dump(
        to_yaml_data(questions), sort_keys=False, allow_unicode=True, width=100
    )
    if draft is not None:
        draft.write_text(text)
        click.echo(
            f"Wrote {len(questions)} questions to {draft}; complete it, then save it as {target}"
        )
        return
    if target.exists() and not replace:
        raise click.ClickException(f"{target} exists; add --replace to overwrite it")
    previous = target.read_bytes() if target.exists() else None
    target.write_text(text)
    try:
        load_policy(folder)  # the imported bank must pass the same checks as a hand-written one
    except ContentError as exc:
        if previous is None:
            target.unlink()
        else:
            target.write_bytes(previous)
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        raise click.ClickException(
            "The imported questions have problems; nothing was changed. "
            "Use --draft FILE to write them out and complete them (every question needs a clause)."
        )
    click.echo(f"Imported {len(questions)} questions into {target}. Run 'flask content publish'.")
