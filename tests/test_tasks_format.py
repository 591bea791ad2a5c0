"""Answer extraction and the reward table."""

import pytest
from hypothesis import given, strategies as st

from loramix.errors import LoramixError
from loramix.tasks import RewardConfig, extract_answer, format_completion, get_task, has_think, score
from loramix.tasks.base import Example
from loramix.tasks.format import json_objects


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
    ('<think>x</think>{"answer": null}', False, -0.9, -0.9),  # a null answer is no JSON answer
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
