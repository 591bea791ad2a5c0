"""Verifiers by name: `check(pred, gold) -> bool` compares an extracted answer with a gold answer.

- `exact`: equal after stripping surrounding whitespace.
- `text`: equal after lower-casing and collapsing whitespace.
- `list`: equal as sequences of items split on commas/whitespace (`1, 2,3` == `1 2 3`); a final period,
  surrounding brackets and quotes around items are ignored (`3 7.` and `["3", "7"]` read as `3 7`).
- `letter`: option letters, case-insensitive; `B`, `(B)`, `B.`, `B) text`, `option B` all read as B.
- `bool`: true/false; `True`, `yes`, `T`, `1` all read as true.
- `binary`: 0/1 labels; `acceptable`/`true`/`yes` read as 1, `unacceptable`/`false`/`no` as 0.
- `integer`: plain numbers only, with `math`'s normalisation (used by the synthetic domains).
- `math` (alias `number`): numbers; strips `#### `, `$`, thousands commas and a trailing unit from `UNITS`
  (`18 dollars`, `5 km/h`), compares plain numbers exactly (fast path), and hands anything else (fractions,
  LaTeX) to math-verify, except a prediction still holding a word (other than LaTeX and `sqrt`/`pi`-style
  names), which is wrong: math-verify reads the last number of any prose (`1221 is not the answer` as 1221).
"""

from __future__ import annotations

import re
import threading
from decimal import Decimal, InvalidOperation
from typing import Callable

from loramix.errors import unknown_name

Verifier = Callable[[str | None, str], bool]

_VERIFIERS: dict[str, Verifier] = {}


def register_verifier(name: str, fn: Verifier | None = None):
    """Register `fn` under `name` (usable as a decorator)."""

    def add(f: Verifier) -> Verifier:
        _VERIFIERS[name] = f
        return f

    return add(fn) if fn is not None else add


def get_verifier(name: str) -> Verifier:
    """The verifier called `name`; an unknown name is a LoramixError listing the valid ones."""
    if name not in _VERIFIERS:
        raise unknown_name("verifier", name, _VERIFIERS)
    return _VERIFIERS[name]


def list_verifiers() -> list[str]:
    return sorted(_VERIFIERS)


@register_verifier("exact")
def exact(pred: str | None, gold: str) -> bool:
    return pred is not None and pred.strip() == gold.strip()


@register_verifier("text")
def text(pred: str | None, gold: str) -> bool:
    return pred is not None and " ".join(pred.lower().split()) == " ".join(gold.lower().split())


def _items(s: str) -> list[str]:
    """`3 7 31 52.`, `[3, 7, 31, 52]` and `["3", "7", "31", "52"]` all -> ["3", "7", "31", "52"]."""
    body = s.strip().rstrip(".").strip().strip("[]()")
    return [t for t in (t.strip("\"'") for t in re.split(r"[\s,;]+", body)) if t]


@register_verifier("list")
def items(pred: str | None, gold: str) -> bool:
    return pred is not None and _items(pred) == _items(gold)


_LETTER_ALONE = re.compile(r"\s*[(\[]?\s*([A-Za-z])\s*(?:[)\].:]|$|\s)")
_LETTER_NAMED = re.compile(r"\b(?:option|answer|choice)\s*(?:is\s*)?[(\[]?([A-Za-z])\b", re.IGNORECASE)


def normalize_letter(s: str | None) -> str | None:
    """`B`, `(b)`, `B.`, `B) Paris`, `option B` -> `B`; anything else -> None."""
    if s is None:
        return None
    m = _LETTER_ALONE.match(s) or _LETTER_NAMED.search(s)
    return m.group(1).upper() if m else None


@register_verifier("letter")
def letter(pred: str | None, gold: str) -> bool:
    p = normalize_letter(pred)
    return p is not None and p == normalize_letter(gold)


_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


def normalize_bool(s: str | None) -> str | None:
    """`True`/`yes`/`T`/`1` -> `true`; `False`/`no`/`F`/`0` -> `false`; else None."""
    if s is None:
        return None
    key = s.strip().strip(".!\"'()").strip().lower()
    return "true" if key in _TRUE else "false" if key in _FALSE else None


@register_verifier("bool")
def boolean(pred: str | None, gold: str) -> bool:
    p = normalize_bool(pred)
    return p is not None and p == normalize_bool(gold)


_ONE = {"1", "acceptable", "grammatical", "true", "yes"}
_ZERO = {"0", "unacceptable", "ungrammatical", "false", "no"}


def normalize_binary(s: str | None) -> str | None:
    if s is None:
        return None
    key = s.strip().strip(".!\"'()").strip().lower()
    return "1" if key in _ONE else "0" if key in _ZERO else None


@register_verifier("binary")
def binary(pred: str | None, gold: str) -> bool:
    p = normalize_binary(pred)
    return p is not None and p == normalize_binary(gold)


# Units a numeric answer may carry after the number (GSM8K-style currency and measures). Anything
# else after the number makes it a different answer: `1221 is not the answer` is not 1221.
UNITS = frozenset("""
    dollar dollars usd cent cents euro euros pound pounds pence yen peso pesos rupee rupees
    second seconds sec secs minute minutes min mins hour hours hr hrs day days week weeks month months
    year years
    mile miles km kilometer kilometers kilometre kilometres m meter meters metre metres cm centimeter
    centimeters mm millimeter millimeters foot feet ft inch inches yard yards yd yds
    kg kilogram kilograms g gram grams lb lbs ounce ounces oz ton tons tonne tonnes
    l liter liters litre litres ml milliliter milliliters gallon gallons gal cup cups quart quarts pint pints
    h mph kph kmh degree degrees calorie calories percent %
""".split())
_MATH_WORDS = frozenset("sqrt pi inf infinity ln log exp sin cos tan".split())
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT = "(?:" + "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True)) + r")(?![A-Za-z])"
_UNIT_PHRASE = (rf"(?:(?:sq\.?|square|cubic)\s+)?{_UNIT}(?:\s+old)?"  # 5 square feet, 7 years old
                rf"(?:\s*(?:/|\bper\b|\ban?\b)\s*{_UNIT})?"  # 18 dollars per hour, 5 km/h
                rf"|(?:/|\bper\b|\ban?\b)\s*{_UNIT}")  # $9 an hour, $9/hour
_PLAIN_NUMBER = re.compile(_NUMBER)
_NUMBER_WITH_UNIT = re.compile(rf"({_NUMBER})\s*(?:{_UNIT_PHRASE})?", re.IGNORECASE)
_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|mbox|textrm)\s*\{([^{}]*)\}")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{2,}")


def normalize_number(s: str) -> str:
    """Strip `#### `, currency signs, thousands commas, a final period and a trailing unit from
    `UNITS` (`18 dollars` -> `18`); other trailing words are kept (`12 apples` stays)."""
    s = s.strip().replace("\u2212", "-")
    s = s.removeprefix("####").strip()
    s = _LATEX_TEXT.sub(r" \1 ", s)  # 18\text{ dollars} -> 18 dollars
    s = re.sub(r"\\?[$\u20ac\u00a3]", "", s)
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    s = s.rstrip(".").strip()
    m = _NUMBER_WITH_UNIT.fullmatch(s)
    return m.group(1) if m else s


def has_prose(s: str) -> bool:
    """True when `s` holds a word (2+ letters, outside LaTeX commands) that is not a math name
    (`sqrt`, `pi`, ...). Such a prediction is not math-verify's to judge: it reads the last number of
    any prose (`18 hours 30 minutes` as 30). Units count only right after a lone number (`normalize_number`)."""
    return any(w.lower() not in _MATH_WORDS for w in _WORD.findall(_LATEX_COMMAND.sub(" ", s)))


def _plain_decimal(s: str) -> Decimal | None:
    if not _PLAIN_NUMBER.fullmatch(s):
        return None
    try:
        return Decimal(s)
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        return None


@register_verifier("math")
def math(pred: str | None, gold: str) -> bool:
    """Numeric equivalence: an exact Decimal comparison when both sides are plain numbers,
    otherwise math-verify (`verify(parse(gold), parse(pred))`)."""
    if pred is None or not pred.strip():
        return False
    p, g = normalize_number(pred), normalize_number(gold)
    pd, gd = _plain_decimal(p), _plain_decimal(g)
    if pd is not None and gd is not None:
        return pd == gd
    return not has_prose(p) and _math_verify(g, p)


register_verifier("number", math)


@register_verifier("integer")
def integer(pred: str | None, gold: str) -> bool:
    """Plain numbers only (same normalisation as `math`, no math-verify): fast on garbage."""
    if pred is None:
        return False
    p, g = _plain_decimal(normalize_number(pred)), _plain_decimal(normalize_number(gold))
    return p is not None and p == g


def _math_verify(gold: str, pred: str) -> bool:
    from math_verify import parse, verify

    # math-verify's timeouts use signal.alarm, which only works in the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        g, p = parse(gold, parsing_timeout=timeout), parse(pred, parsing_timeout=timeout)
        return bool(g) and bool(p) and bool(verify(g, p, timeout_seconds=timeout))
    except Exception:  # math-verify raises on pathological inputs; that is a wrong answer
        return False
