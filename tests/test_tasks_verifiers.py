"""Named verifiers, including the numeric fast path and math-verify's behaviour on integers."""

import json
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from loramix.errors import LoramixError
from loramix.tasks import get_task, get_verifier, list_verifiers
from loramix.tasks.base import Example
from loramix.tasks.benchmarks.gsm8k import split_solution
from loramix.tasks.synthetic.strings import shift_letter
from loramix.tasks.verifiers import UNITS, normalize_letter, normalize_number

GSM8K_TEST = Path("/work/shared/data/gsm8k/test.jsonl")


@pytest.mark.parametrize("pred, gold, ok", [
    ("18", "18", True), ("18.0", "18", True), ("18.", "18", True), ("19", "18", False),
    ("$1,450,000", "1450000", True), ("1,450,000", "1450000", True), ("18 dollars", "18", True),
    ("#### 18", "18", True), ("-3", "-3", True), ("3", "-3", False), ("\u221210", "-10", True),
    ("0.5", "1/2", True),  # math-verify path
    ("\\frac{36}{2}", "18", True), ("\\boxed{18}", "18", True), ("\\frac{37}{2}", "18", False),
    ("1,2", "12", False),  # not a thousands separator: math-verify reads 1.2, not 12
    ("", "18", False), (None, "18", False), ("eighteen", "18", False),
    ("70001", "70000", False), ("1000001", "1000000", False),  # big integers: exact, no tolerance
    # words after a number: a known unit is dropped, anything else makes the answer wrong
    ("1221 is not the answer", "1221", False), ("1234 is wrong", "1234", False),
    ("12 apples", "12", False), ("18 or 19", "18", False), ("The answer is 18", "18", False),
    ("18 hours 30 minutes", "30", False),  # math-verify would read the last number, 30
    ("$18", "18", True), ("18.00", "18", True), ("1,234", "1234", True), ("18 Dollars.", "18", True),
    ("$18.00", "18", True), ("50%", "50", True), ("50 percent", "50", True), ("3 hours", "3", True),
    ("$9 an hour", "9", True), ("$9/hour", "9", True), ("60 miles per hour", "60", True),
    ("5 km/h", "5", True), ("7 years old", "7", True), ("5 square feet", "5", True), ("2.5 kg", "2.5", True),
    ("18\\text{ dollars}", "18", True), ("\\$18", "18", True), ("19 dollars", "18", False),
])
def test_math(pred, gold, ok):
    assert get_verifier("math")(pred, gold) is ok


def test_math_verify_integer_behaviour():
    """What we rely on (or guard against) in math-verify itself."""
    from math_verify import parse, verify

    assert verify(parse("18"), parse("18"))
    assert not verify(parse("70000"), parse("70001"))
    assert verify(parse("1000"), parse("1,000"))  # it reads thousands commas itself...
    assert not verify(parse("23"), parse("2,3"))  # ...but "2,3" is 2.3, so we only strip x,ddd
    assert verify(parse("0.3"), parse("0.30000001"))  # rounds to 6 places: hence the exact fast path
    assert parse("eighteen") == []


def test_integer_verifier_never_calls_math_verify():
    check = get_verifier("integer")
    assert check("1221", "1221") and check(" 1,221 ", "1221")
    assert not check("1222", "1221") and not check("\\frac{2442}{2}", "1221") and not check(None, "1")


@pytest.mark.parametrize("s, letter", [
    ("B", "B"), ("b", "B"), ("(B)", "B"), ("B.", "B"), ("B) Paris", "B"), ("[C]", "C"),
    ("option D", "D"), ("The answer is C", "C"), ("AB", None), ("", None), (None, None),
])
def test_normalize_letter(s, letter):
    assert normalize_letter(s) == letter


@pytest.mark.parametrize("name, pred, gold, ok", [
    ("letter", "(B)", "B", True), ("letter", "C", "B", False),
    ("bool", "True", "true", True), ("bool", "FALSE", "false", True), ("bool", "yes", "true", True),
    ("bool", "T", "true", True), ("bool", "true", "false", False), ("bool", "maybe", "true", False),
    ("binary", "1", "1", True), ("binary", "acceptable", "1", True), ("binary", "0", "1", False),
    ("binary", "unacceptable", "0", True), ("binary", "2", "1", False),
    ("exact", " abc ", "abc", True), ("exact", "ABC", "abc", False),
    ("text", "Hello  World", "hello world", True),
    ("list", "1, 2,3", "1 2 3", True), ("list", "[1 2 3]", "1 2 3", True), ("list", "1 3 2", "1 2 3", False),
])
def test_named_verifiers(name, pred, gold, ok):
    assert get_verifier(name)(pred, gold) is ok


def test_normalize_number():
    assert normalize_number("#### $1,234.50") == "1234.50"
    assert normalize_number("12 kg") == "12" and normalize_number("12 KG.") == "12"
    assert normalize_number("12 apples") == "12 apples"  # not a unit: kept, so no longer a plain number
    assert normalize_number("1221 is not the answer") == "1221 is not the answer"
    assert {"dollars", "cents", "hours", "minutes", "km", "miles", "kg", "%"} <= UNITS


@pytest.mark.parametrize("task_name, gold", [("add", "1221"), ("mod", "7"), ("gsm8k", "1234")])
@pytest.mark.parametrize("pred, ok", [
    ("{gold}", True), ("{gold} is not the answer", False), ("{gold} is wrong", False), ("{gold} apples", False),
])
def test_trailing_words_are_wrong_through_tasks(task_name, gold, pred, ok):
    """The audit's completions, scored by the tasks themselves (`add`/`mod`: `integer`, `gsm8k`: `math`)."""
    task = get_task(task_name)
    ex = Example(prompt="q", answer=gold, task=task_name)
    completion = '<think>x</think>\n{"answer": "%s"}' % pred.format(gold=gold)
    assert task.is_correct(completion, ex) is ok


@pytest.mark.parametrize("answer, ok", [
    ('"3 7 31 52"', True), ('"3 7 31 52."', True), ('"3, 7, 31, 52."', True), ('"[3, 7, 31, 52]"', True),
    ('["3", "7", "31", "52"]', True), ("[3, 7, 31, 52]", True), ('["3","7","31","52"]', True),
    ('"3 7 52 31."', False), ('["3", "7", "31"]', False), ('"3 7 31 52 52"', False), ('"3 7 3.1 52"', False),
    ("[]", False), ('""', False),
])
def test_sort_accepts_period_and_json_lists(answer, ok):
    task = get_task("sort")
    ex = Example(prompt="sort: 52 7 31 3\n", answer="3 7 31 52", task="sort")
    assert task.is_correct('<think>x</think>\n{"answer": %s}' % answer, ex) is ok


def test_strings_case_insensitive_by_default_strict_on_request():
    """The authors compare `pred.strip().lower() == gold.strip().lower()`; `case_sensitive=True` is exact."""
    default, strict = get_task("strings"), get_task("strings", case_sensitive=True)
    assert (default.verifier, strict.verifier) == ("text", "exact")
    for ex in default.examples("test", 50, difficulty="hard"):
        for pred, loose, exact in [(ex.answer, True, True), (ex.answer.upper(), True, False),
                                   (ex.answer.capitalize(), True, ex.answer == ex.answer.capitalize()),
                                   (f" {ex.answer} ", True, True), (ex.answer + "a", False, False)]:
            completion = '<think>x</think>{"answer": "%s"}' % pred
            assert default.is_correct(completion, ex) is loose, pred
            assert strict.is_correct(completion, ex) is exact, pred


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=3, max_size=9), st.integers(1, 13),
       st.integers(1, 25))
def test_strings_case_insensitivity_cannot_make_a_wrong_shift_right(word, k, other):
    """Gold answers are lower-case only: any other shift, in any case, stays wrong under the default."""
    task = get_task("strings")
    ex = Example(prompt=f"strings: rot{k} {word}\n", answer="".join(shift_letter(c, k) for c in word))
    wrong = "".join(shift_letter(c, k + other) for c in word)  # other in 1..25: a different shift
    for pred in (wrong, wrong.upper(), wrong.capitalize()):
        assert not task.check(pred, ex.answer)
    assert task.check(ex.answer.upper(), ex.answer)


def _gsm8k_finals(n: int) -> list[str]:
    with GSM8K_TEST.open() as f:
        rows = [json.loads(line) for _, line in zip(range(n), f)]
    return [row["answer"].rsplit("####", 1)[1].strip() for row in rows]


@pytest.mark.skipif(not GSM8K_TEST.exists(), reason="real GSM8K test set not present")
def test_gsm8k_gold_answers_verify_against_themselves():
    """First 300 rows of the real test set: the raw final (`114,200`) verifies against itself and
    the parsed gold, with `$`/`dollars`/`.00` dressings; prose after it does not."""
    check = get_task("gsm8k").check
    finals = _gsm8k_finals(300)
    assert len(finals) == 300 and {"2,125", "114,200"} <= set(finals)  # raw finals keep commas
    for raw in finals:
        gold = split_solution(f"#### {raw}")[1]
        assert check(raw, raw) and check(raw, gold) and check(gold, gold), raw
        for dressed in (f"${raw}", f"{raw} dollars", f"{gold}.00", f"#### {raw}", f"{raw}."):
            assert check(dressed, gold), dressed
        assert not check(f"{raw} is not the answer", gold), raw


def test_unknown_verifier_lists_valid():
    with pytest.raises(LoramixError, match="unknown verifier 'nope'.*exact.*math"):
        get_verifier("nope")
    assert {"exact", "math", "letter", "bool", "binary", "list", "integer"} <= set(list_verifiers())
