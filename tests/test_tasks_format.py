"""Answer extraction and the reward table."""

import pytest
from hypothesis import given, strategies as st

from loramix.errors import LoramixError
from loramix.tasks import RewardConfig, extract_answer, format_completion, get_task, has_think, score
from loramix.tasks.base import Example
from loramix.tasks.format import (has_json_answer, is_empty_answer, json_objects, locate_answer,
                                  think_before_answer)


@pytest.mark.parametrize("completion, expected", [
    ('<think>2+2</think>\n{"answer": "4"}', "4"),
    ('<think>x</think>{"answer": "1"} and then {"answer": "2"}', "2"),  # last JSON object wins
    ('<think>{"answer": "9"}</think>\n{"answer": "7"}', "7"),  # after </think> first
    ('<think>{"answer": "9"}</think>\nno json here', "9"),  # then anywhere
    ('<think>x</think>{"answer": "3"} {"note": "no answer key"}', "3"),
    ('{"answer": "5"}', "5"),  # no think at all
    ('<think>x</think>\n{"answer": 12}', "12"),  # JSON number
    ('<think>x</think>\n{"answer": true}', "true"),  # JSON bool
    ('<think>x</think>\n{"answer": "  B  "}', "B"),  # whitespace stripped
    ('<think>x</think>\n{"answer": "18"', "18"),  # malformed JSON: answer: X fallback
    ("<think>x</think>\n{'answer': 'C'}", "C"),  # python-style quotes
    ("The answer is 42.", "42"),
    ("<think>x</think>\nanswer: (B)", "(B)"),
    ("<think>7+8</think>\n15", "15"),  # last line after </think>
    ('<think>x</think>{"answer": {"nested": 1}}', '{"nested": 1}'),
    ("", None),
    ('<think>x</think>\n{"answer": null}', None),  # explicit null is no answer
])
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


def test_json_objects_skips_garbage():
    assert json_objects('x {bad} {"a": 1} {"b": {"c": 2}} {') == [{"a": 1}, {"b": {"c": 2}}]


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
       st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30))
def test_reference_completion_roundtrip(reasoning, answer):
    expected = answer.strip()
    got = extract_answer(format_completion(reasoning.replace("</think>", ""), answer))
    assert got == expected


def test_format_completion_exact_text():
    assert format_completion("a b", "7") == '<think>a b</think>\n{"answer": "7"}'
    assert format_completion(None, "7") == '<think></think>\n{"answer": "7"}'


@pytest.mark.parametrize("completion, expected", [
    ("<think>a</think>", True), ("<think></think>", True), ("</think><think>", False),
    ("<think>a", False), ("a</think>", False), ("", False),
])
def test_has_think(completion, expected):
    assert has_think(completion) is expected


EX = Example(prompt="add: 2+2\n", answer="4", task="add")


@pytest.mark.parametrize("completion, expected", [
    ('<think>2+2+0=04|4</think>\n{"answer": "4"}', 1.2),  # correct + think
    ('{"answer": "4"}', 1.0),  # correct, no think
    ('<think>x</think>\n{"answer": "5"}', -0.9),  # wrong + think + json: think bonus only (exclusive)
    ('{"answer": "5"}', -1.0),  # wrong + json
    ("<think>x</think>\n5", -0.9),  # wrong + think, no json
    ("5", -1.1),  # wrong, nothing
    ("", -1.1),
    ("</think>{\"answer\": \"5\"}<think>", -1.0),  # think out of order gets nothing
])
def test_reward_table(completion, expected):
    task = get_task("add")
    assert task.reward(completion, EX) == pytest.approx(expected)


def test_reward_config_is_configurable():
    cfg = RewardConfig(correct=2.0, wrong=-1.0, think=0.5, json_answer=0.25)
    assert score('<think>x</think>{"answer": "1"}', True, cfg) == 2.5
    assert score('<think>x</think>{"answer": "1"}', False, cfg) == pytest.approx(-0.5)  # exclusive
    assert score('<think>x</think>{"answer": "1"}', False, RewardConfig(
        correct=2.0, wrong=-1.0, think=0.5, json_answer=0.25, bonuses="both")) == pytest.approx(-0.25)
    assert score("x", False, cfg) == -1.0
    assert cfg.max == 2.5 and RewardConfig().max == pytest.approx(1.2)
    task = get_task("add", reward_config=cfg)
    assert task.reward('<think>x</think>{"answer": "4"}', EX) == 2.5


@pytest.mark.parametrize("completion, correct, exclusive, both", [
    ('<think>x</think>{"answer": "4"}', True, 1.2, 1.2),  # correct + think
    ('{"answer": "4"}', True, 1.0, 1.0),  # correct + json: the json bonus is for wrong answers only
    ('<think>x</think>{"answer": "5"}', False, -0.9, -0.8),  # wrong + think + json: the rules differ here
    ('{"answer": "5"}', False, -1.0, -1.0),  # wrong + json, no think
    ("<think>x</think>5", False, -0.9, -0.9),  # wrong + think, no json
    ("5", False, -1.1, -1.1),  # wrong, bare
    ('<think>x</think>{"answer": null}', False, -1.1, -1.1),  # a null answer is no answer: no bonus
])
def test_reward_bonus_rules(completion, correct, exclusive, both):
    """`exclusive` (default) is the authors' lora_offline/reward.py: think bonus, else json-on-wrong;
    `both` is loramix's earlier rule, paying each bonus on its own."""
    assert RewardConfig().bonuses == "exclusive"
    assert score(completion, correct) == pytest.approx(exclusive)
    assert score(completion, correct, RewardConfig(bonuses="exclusive")) == pytest.approx(exclusive)
    assert score(completion, correct, RewardConfig(bonuses="both")) == pytest.approx(both)


def test_reward_bonus_rule_is_validated():
    with pytest.raises(LoramixError, match="valid: exclusive, both"):
        RewardConfig(bonuses="sum")
    task = get_task("add", reward_config=RewardConfig(bonuses="both"))
    assert task.reward('<think>x</think>{"answer": "5"}', EX) == pytest.approx(-0.8)
    assert get_task("add").reward('<think>x</think>{"answer": "5"}', EX) == pytest.approx(-0.9)


@pytest.mark.parametrize("completion, text, start, from_json", [
    ('<think>x</think>\n{"answer": "4"}', "4", 17, True),
    ('{"answer": "4"}<think>x</think>', "4", 0, True),  # no JSON after </think>: found anywhere
    ('<think>{"answer": "9"}</think>', "9", 7, True),
    ("<think>x</think> answer: 5", "5", 17, False),  # rule 3: where the match starts
    ("<think>x</think>\n5", "5", 16, False),  # rule 4: the text after the last </think>
    ('<think>x</think>{"answer": null}', None, 16, True),
])
def test_locate_answer(completion, text, start, from_json):
    found = locate_answer(completion)
    assert (found.text, found.start, found.from_json) == (text, start, from_json)
    assert extract_answer(completion) == text
    assert locate_answer("") is None


@pytest.mark.parametrize("text, empty", [
    (None, True), ("", True), ("   ", True), ("[]", True), ("{}", True), ('[""]', True), ("[ , ]", True),
    ("0", False), ("false", False), ("[3]", False), ("a", False), (".", False),
])
def test_is_empty_answer(text, empty):
    assert is_empty_answer(text) is empty


@pytest.mark.parametrize("completion, think, json_answer", [
    ('<think>x</think>{"answer": "5"}', True, True),
    ('{"answer": "5"}<think>x</think>', False, True),  # think after the answer
    ('{"answer": "5"}\n<think>x</think>\n', False, True),
    ('<think>x {"answer": "5"}</think>', False, True),  # the answer inside the think block
    ("<think>the answer is 5</think>", False, False),  # rule 3 inside the think block
    ('</think><think>x</think>{"answer": "5"}', True, True),  # the first <think> then the next </think>
    ("<think>x</think>\n5", True, False),  # a plain answer after the think block
    ("<think>x</think>", False, False),  # no answer at all
    ('<think>x</think>{"answer": ""}', False, False), ('<think>x</think>{"answer": "  "}', False, False),
    ('<think>x</think>{"answer": []}', False, False), ('<think>x</think>{"answer": {}}', False, False),
    ('<think>x</think>{"answer": 0}', True, True), ('<think>x</think>{"answer": false}', True, True),
])
def test_format_bonus_predicates(completion, think, json_answer):
    assert think_before_answer(completion) is think
    assert has_json_answer(completion) is json_answer


@pytest.mark.parametrize("completion, exclusive, both", [
    ('{"answer": "5"}<think>x</think>', -1.0, -1.0),  # think after the answer: no think bonus
    ('{"answer": "4"}<think>x</think>', 1.0, 1.0),  # ...correct or not
    ('<think>x {"answer": "4"}</think>', 1.0, 1.0),  # answer inside the think block
    ('<think>x</think>{"answer": ""}', -1.1, -1.1),  # empty answers earn no bonus, think or JSON
    ('<think>x</think>{"answer": "   "}', -1.1, -1.1),
    ('<think>x</think>{"answer": []}', -1.1, -1.1),
    ('{"answer": ""}', -1.1, -1.1),
    ("<think>x</think>", -1.1, -1.1),  # no answer at all
    ('<think>x</think>{"answer": "5"}', -0.9, -0.8),  # the ordinary cases are unchanged
    ('<think>x</think>{"answer": "4"}', 1.2, 1.2),
])
def test_reward_edge_cases(completion, exclusive, both):
    """Issue 17: think bonus only before the answer, no bonus for an empty answer (gold is 4)."""
    assert get_task("add").reward(completion, EX) == pytest.approx(exclusive)
    both_task = get_task("add", reward_config=RewardConfig(bonuses="both"))
    assert both_task.reward(completion, EX) == pytest.approx(both)
