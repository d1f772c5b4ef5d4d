"""YAML documents with line numbers, and the problems found in them.

Content that school staff edit is reported back to them as ``file:line: message``, so every reader
of content files shares these helpers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return f"{where}: {self.message}"


class ContentError(Exception):
    """Content that cannot be used; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# libyaml's parser when PyYAML has it (its wheels do): the same safe loading, ten times faster.
_SafeBase: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeBase):
    """Safe YAML that leaves dates as text, so a bad date gets our message rather than a crash."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class Doc:
    """A YAML mapping with the line of each key, so messages can point at the right line."""

    def __init__(self, path: Path, text: str, problems: list[Problem], first_line: int = 1):
        self.path = path
        self.problems = problems
        self.offset = first_line - 1
        self.data: dict[str, Any] = {}
        self.lines: dict[str, int] = {}
        self.node: yaml.Node | None = None
        try:
            node = yaml.compose(text, Loader=_Loader)
            data = yaml.load(text, Loader=_Loader)  # nosec B506 # a SafeLoader
        except yaml.YAMLError as exc:
            # Where the broken construct began says more than where the parser gave up.
            mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
            line = mark.line + 1 + self.offset if mark else None
            problems.append(Problem(path, line, f"not valid YAML: {getattr(exc, 'problem', exc)}"))
            return
        if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
            problems.append(Problem(path, first_line, "expected a mapping of keys to values"))
            return
        self.data = data
        self.node = node
        for key_node, _value in node.value:
            self.lines[str(key_node.value)] = key_node.start_mark.line + 1 + self.offset

    @classmethod
    def nested(cls, parent: Doc, node: yaml.Node, data: Any) -> Doc:
        """A mapping inside this document (e.g. one question of a list), with its own key lines."""
        doc = cls.__new__(cls)
        doc.path, doc.problems = parent.path, parent.problems
        doc.offset = node.start_mark.line + parent.offset
        doc.node = node
        doc.data = data if isinstance(data, dict) else {}
        doc.lines = {}
        if isinstance(node, yaml.MappingNode):
            for key_node, _value in node.value:
                doc.lines[str(key_node.value)] = key_node.start_mark.line + 1 + parent.offset
        return doc

    def child(self, key: str) -> yaml.Node | None:
        """The YAML node under ``key``, for its position."""
        if isinstance(self.node, yaml.MappingNode):
            for key_node, value in self.node.value:
                if key_node.value == key:
                    return value
        return None

    def line(self, key: str) -> int | None:
        return self.lines.get(key, self.offset + 1)

    def problem(self, key: str | None, message: str) -> None:
        line = self.line(key) if key else self.offset + 1
        self.problems.append(Problem(self.path, line, message))

    def text(self, key: str, required: bool = True, max_length: int = 200) -> str:
        value = self.data.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                self.problem(key if key in self.lines else None, f"'{key}' is required")
            return ""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.problem(key, f"'{key}' must be text")
            return ""
        text = str(value).strip()
        if len(text) > max_length:
            self.problem(key, f"'{key}' is {len(text)} characters long; at most {max_length}")
            return text[:max_length]
        return text

    def date(self, key: str, required: bool = True) -> date | None:
        value = self.data.get(key)
        if value is None:
            if required:
                self.problem(None, f"'{key}' is required (a date like 2026-09-01)")
            return None
        if isinstance(value, date):
            return value
        try:
            return date.fromisoformat(str(value))
        except ValueError:
            self.problem(key, f"'{key}' must be a date like 2026-09-01, not {value!r}")
            return None


def read_text(path: Path, problems: list[Problem]) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        problems.append(Problem(path, line, "is not UTF-8 text; save it as UTF-8"))
    except OSError as exc:
        problems.append(Problem(path, None, f"cannot be read ({exc.strerror})"))
    return None
