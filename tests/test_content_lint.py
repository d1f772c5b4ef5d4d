"""`flask content check` warns about giveaways: patterns that let a learner pass without reading."""

from __future__ import annotations

from pathlib import Path

from quizzes.bank import Bank, Question, QuizRules
from quizzes.lint import giveaways
from quizzes.types import Option

BANK = Path("content/policy/01-module.quiz.yaml")
POLICY = "social-media-policy"
CLAUSE = "Staff must report abuse to the SLT"


def single(
    qid: str, key: str = "Report it to the SLT", others: tuple[str, ...] = ("Ignore it",),
    explanation: str = "Staff must report abuse to the SLT.", clause: str = CLAUSE,
    kind: str = "single",
) -> Question:  # fmt: skip
    options = (Option("a", key, True), *(Option(f"o{i}", t, False) for i, t in enumerate(others)))
    return Question(qid, kind, "What do you do?", options, explanation, clause, line=7)


def true_false(qid: str, answer: bool) -> Question:
    options = (Option("true", "True", answer), Option("false", "False", not answer))
    return Question(qid, "true_false", "Is it so?", options, "Because.", "So it is", line=3)


def select_all(qid: str, right: int, wrong: int = 2) -> Question:
    options = tuple(Option(f"r{i}", f"Right {i}", True) for i in range(right)) + tuple(
        Option(f"w{i}", f"Wrong {i}", False) for i in range(wrong)
    )
    return Question(qid, "multiple", "Which?", options, "Because.", "So it is", line=5)


def warnings(*questions: Question, path: Path = BANK) -> list[str]:
    return [str(w) for w in giveaways([Bank(path, tuple(questions), QuizRules())])]


def test_a_clean_question_has_no_warning():
    assert warnings(single("clean")) == []


def test_a_wrong_option_built_on_an_absolute_word_is_warned_at_the_question_line():
    found = warnings(single("absolute", others=("Only tell a friend", "Never mind it")))
    assert len(found) == 2
    assert found[0].startswith(f"{BANK}:7: question 'absolute': the wrong option 'Only tell a")
    assert "'Never'" in found[1]
    # Where a right option is just as absolute, the word gives nothing away.
    assert warnings(single("fair", key="Always report it", others=("Never report it",))) == []


def test_an_explanation_that_names_an_option_by_position_is_warned():
    for said in ("Option B is right.", "The first answer is right.", "The answer is (c).",
                 "All of the above apply.", "See answer 2."):  # fmt: skip
        found = warnings(single("position", explanation=said))
        assert len(found) == 1 and "by its position" in found[0], said
    # Words that merely contain such letters are not positions.
    for plain in ("Staff must report abuse; answers vary.", "The answer is a disclaimer."):
        assert warnings(single("words", explanation=plain)) == [], plain


def test_an_explanation_whose_modal_verb_differs_from_its_clause_is_warned():
    found = warnings(single("modal", explanation="Staff should report abuse to the SLT."))
    assert found == [
        f"{BANK}:7: question 'modal': the explanation says 'should' where its clause says "
        "'must': use the policy's own word"
    ]
    assert warnings(single("none", explanation="Tell the SLT.")) == []  # no modal: nothing to say


def test_true_false_keys_outside_35_to_65_percent_true_are_warned():
    skewed = [true_false(f"tf{i}", answer=i == 0) for i in range(5)]  # 1 of 5 True: 20%
    found = warnings(*skewed)
    assert found == [
        f"{BANK}: 1 of 5 true/false questions in this bank are keyed True (20%); keep between "
        "35% and 65% so that always answering one way does not pay"
    ]
    assert warnings(*[true_false(f"tf{i}", answer=i % 2 == 0) for i in range(5)]) == []
    assert warnings(*skewed[:3]) == []  # three questions say nothing about a pattern


def test_select_all_questions_with_the_same_number_of_right_options_are_warned():
    found = warnings(*[select_all(f"m{i}", right=3) for i in range(4)], select_all("odd", 2))
    assert found == [
        f"{BANK}: 4 of 5 select-all questions in this bank have exactly 3 right options; "
        "vary how many are right"
    ]
    varied = [select_all("a", 2), select_all("b", 3), select_all("c", 4), select_all("d", 2)]
    assert warnings(*varied) == []


def test_the_key_being_the_longest_option_too_often_is_warned():
    long_key = "Report it to the SLT straight away and keep a copy of what was posted"
    giveaway = [single(f"s{i}", key=long_key, others=("Ignore it", "Reply")) for i in range(3)]
    fair = [single(f"f{i}", key="Report it", others=("Reply to it in public",)) for i in range(2)]
    found = warnings(*giveaway, *fair)
    assert found == [
        f"{BANK}: in 3 of 5 single-answer questions in this bank the right option is the longest "
        "(60%, more than 40%); make some wrong options as full as the right one"
    ]
    assert (
        warnings(*giveaway[:2], *fair, single("f3", key="Report it", others=("Reply now",))) == []
    )


def test_patterns_across_a_policy_are_warned_once_at_the_policy_folder():
    banks = [
        Bank(Path(f"content/policy/0{n}-m.quiz.yaml"), (true_false(f"t{n}", False),), QuizRules())
        for n in range(1, 5)
    ]
    found = [str(w) for w in giveaways(banks)]
    assert found == [
        "content/policy: 0 of 4 true/false questions across the policy are keyed True (0%); keep "
        "between 35% and 65% so that always answering one way does not pay"
    ]


def test_content_check_lists_the_warnings_and_still_passes(runner, app, editable_content):
    """The real bank, with an explanation changed to point at an option's position: the check
    names the file and line, and the content is still valid (a warning does not stop publishing)."""
    app.config["CONTENT_DIR"] = str(editable_content)
    bank = editable_content / POLICY / "01-scope.quiz.yaml"
    text = bank.read_text()
    old = "explanation: The policy applies to online communications"
    assert old in text
    bank.write_text(text.replace(old, "explanation: Option A is wrong. " + old[13:]))
    rows = bank.read_text().splitlines()
    line = next(n for n, row in enumerate(rows, 1) if "id: any-time-anywhere" in row)
    result = runner.invoke(args=["content", "check"])
    assert result.exit_code == 0, result.output
    assert (
        f"warning: {bank}:{line}: question 'any-time-anywhere': the explanation points at an "
        "option by its position ('Option A')"
    ) in result.output
    assert "Content is valid; " in result.output and "warning(s)" in result.output
