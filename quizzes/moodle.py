"""Moodle XML: the format Moodle's question bank exports and imports.

Countersign's question types map onto Moodle's ``multichoice`` (single and "select all that apply")
and ``truefalse``. What Moodle has no field for travels in fields Moodle keeps: the question id as
``idnumber`` and ``name``, the policy clause as a ``clause: …`` tag, and a scenario as a first
paragraph of the question text marked ``class="scenario"`` — so a round trip loses nothing.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET  # nosec B405 # builds exports; parsing uses defusedxml

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from quizzes.bank import ID_RE, Question
from quizzes.types import Option

CLAUSE_TAG = "clause: "
_SCENARIO_RE = re.compile(r'^<p class="scenario">(.*?)</p>\s*<p>(.*)</p>$', re.S)
_PARAGRAPH_RE = re.compile(r"^<p>(.*)</p>$", re.S)


class MoodleXMLError(ValueError):
    pass


def _text(parent: ET.Element, tag: str, value: str, fmt: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if fmt:
        element.set("format", fmt)
    ET.SubElement(element, "text").text = value
    return element


def export_questions(questions: list[Question], category: str) -> bytes:
    quiz = ET.Element("quiz")
    cat = ET.SubElement(quiz, "question", type="category")
    _text(cat, "category", f"$course$/top/{category}")
    for q in questions:
        kind = "truefalse" if q.type == "true_false" else "multichoice"
        element = ET.SubElement(quiz, "question", type=kind)
        _text(element, "name", q.id)
        body = f"<p>{html.escape(q.prompt)}</p>"
        if q.scenario:
            body = f'<p class="scenario">{html.escape(q.scenario)}</p>' + body
        _text(element, "questiontext", body, "html")
        _text(element, "generalfeedback", html.escape(q.explanation), "html")
        ET.SubElement(element, "defaultgrade").text = "1.0000000"
        ET.SubElement(element, "penalty").text = "0.3333333"
        ET.SubElement(element, "hidden").text = "0"
        ET.SubElement(element, "idnumber").text = q.id
        if kind == "multichoice":
            ET.SubElement(element, "single").text = "false" if q.type == "multiple" else "true"
            ET.SubElement(element, "shuffleanswers").text = "true"
            ET.SubElement(element, "answernumbering").text = "abc"
        right = sum(o.correct for o in q.options)
        wrong = len(q.options) - right
        for option in q.options:
            if kind == "truefalse":
                fraction = "100" if option.correct else "0"
            elif option.correct:
                fraction = f"{100 / right:.5f}".rstrip("0").rstrip(".")
            else:
                fraction = (
                    "0" if q.type != "multiple" else f"{-100 / wrong:.5f}".rstrip("0").rstrip(".")
                )
            answer = ET.SubElement(element, "answer", fraction=fraction, format="html")
            text = option.id if kind == "truefalse" else html.escape(option.text)
            ET.SubElement(answer, "text").text = text
            _text(answer, "feedback", "", "html")
        tags = ET.SubElement(element, "tags")
        _text(tags, "tag", CLAUSE_TAG + q.clause)
        if q.type == "scenario":
            _text(tags, "tag", "type: scenario")
    ET.indent(quiz)
    return ET.tostring(quiz, encoding="utf-8", xml_declaration=True)


def _child_text(element: ET.Element, path: str) -> str:
    found = element.find(path)
    return (found.text or "").strip() if found is not None else ""


def _plain(fragment: str) -> str:
    """Moodle's HTML question text to plain text (tags dropped, entities decoded)."""
    spaced = re.sub(r"</?(?:p|br|div|li|ul|ol|h[1-6]|tr|td)\b[^>]*>", " ", fragment, flags=re.I)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", spaced)).split())


def import_questions(data: bytes) -> list[Question]:
    """Questions from Moodle XML. Types Countersign cannot grade are refused, naming them."""
    try:
        # Moodle never writes a DTD, and a DTD is how entity-expansion attacks are made: refuse it.
        root = SafeET.fromstring(data, forbid_dtd=True)
    except ET.ParseError as exc:
        raise MoodleXMLError(f"not valid XML: {exc}") from exc
    except DefusedXmlException as exc:
        raise MoodleXMLError(
            "the file declares a DTD or entities, which Moodle XML never has; refused"
        ) from exc
    if root.tag != "quiz":
        raise MoodleXMLError("not a Moodle XML question file (the root element must be <quiz>)")
    questions: list[Question] = []
    problems: list[str] = []
    used: set[str] = set()
    for number, element in enumerate(root.findall("question"), start=1):
        kind = element.get("type", "")
        if kind == "category":
            continue
        name = _child_text(element, "name/text")
        if kind not in ("multichoice", "truefalse"):
            problems.append(
                f"question {number} ({name or 'unnamed'}): type {kind!r} is not supported"
            )
            continue
        qid = _child_text(element, "idnumber") or name
        qid = re.sub(r"[^a-z0-9]+", "-", qid.lower()).strip("-") or f"question-{number}"
        while qid in used:
            qid += "-2"
        used.add(qid)
        raw_text = _child_text(element, "questiontext/text")
        scenario, prompt = "", raw_text
        if match := _SCENARIO_RE.match(raw_text):
            scenario, prompt = _plain(match[1]), match[2]
        elif match := _PARAGRAPH_RE.match(raw_text):
            prompt = match[1]
        prompt = _plain(prompt)
        tags = [_child_text(t, "text") for t in element.findall("tags/tag")]
        clause = next((t[len(CLAUSE_TAG) :] for t in tags if t.startswith(CLAUSE_TAG)), "")
        options: list[Option] = []
        for index, answer in enumerate(element.findall("answer")):
            fraction = float(answer.get("fraction", "0") or 0)
            text = _plain(_child_text(answer, "text"))
            if kind == "truefalse":
                option_id = "true" if text.lower() == "true" else "false"
                options.append(Option(option_id, option_id.capitalize(), fraction > 0))
            else:
                options.append(
                    Option("abcdefgh"[index] if index < 8 else f"o{index}", text, fraction > 0)
                )
        if kind == "truefalse":
            qtype = "true_false"
            options.sort(key=lambda o: o.id != "true")
        elif _child_text(element, "single") in ("false", "0"):
            qtype = "multiple"
        else:
            qtype = "scenario" if scenario or "type: scenario" in tags else "single"
        explanation = _plain(_child_text(element, "generalfeedback/text"))
        if not ID_RE.match(qid):
            problems.append(f"question {number}: cannot make an id from {name!r}")
            continue
        questions.append(
            Question(qid, qtype, prompt, tuple(options), explanation, clause, scenario)
        )
    if problems:
        raise MoodleXMLError("; ".join(problems))
    if not questions:
        raise MoodleXMLError("the file holds no questions")
    return questions


def to_yaml_data(questions: list[Question]) -> dict:
    """The bank file's data for these questions, as an author would write it."""
    out = []
    for q in questions:
        item: dict = {"id": q.id, "type": q.type}
        if q.scenario:
            item["scenario"] = q.scenario
        item["prompt"] = q.prompt
        if q.type == "true_false":
            item["answer"] = next((o.id == "true" for o in q.options if o.correct), False)
        else:
            item["options"] = [
                {"text": o.text, **({"correct": True} if o.correct else {})} for o in q.options
            ]
        item["explanation"] = q.explanation
        item["clause"] = q.clause
        out.append(item)
    return {"questions": out}
