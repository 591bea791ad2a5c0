"""Named verifiers, including the numeric fast path and math-verify's behaviour on integers."""

import pytest

from loramix.errors import LoramixError
from loramix.tasks import get_verifier, list_verifiers
from loramix.tasks.verifiers import normalize_letter, normalize_number


@pytest.mark.parametrize("pred, gold, ok", [
    ("18", "18", True), ("18.0", "18", True), ("18.", "18", True), ("19", "18", False),
    ("$1,450,000", "1450000", True), ("1,450,000", "1450000", True), ("18 dollars", "18", True),
    ("#### 18", "18", True), ("-3", "-3", True), ("3", "-3", False), ("\u221210", "-10", True),
    ("0.5", "1/2", True),  # math-verify path
    ("\\frac{36}{2}", "18", True), ("\\boxed{18}", "18", True), ("\\frac{37}{2}", "18", False),
    ("1,2", "12", False),  # not a thousands separator: math-verify reads 1.2, not 12
    ("", "18", False), (None, "18", False), ("eighteen", "18", False),
    ("70001", "70000", False), ("1000001", "1000000", False),  # big integers: exact, no tolerance
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
    assert normalize_number("12 apples") == "12"


def test_unknown_verifier_lists_valid():
    with pytest.raises(LoramixError, match="unknown verifier 'nope'.*exact.*math"):
        get_verifier("nope")
    assert {"exact", "math", "letter", "bool", "binary", "list", "integer"} <= set(list_verifiers())
