"""Benchmark loaders on hand-written fixtures (raw HF field layouts) and on the real GSM8K test set."""

import json
import time
from decimal import Decimal
from pathlib import Path

import pytest

from loramix.errors import DataError, LoramixError
from loramix.tasks import BENCHMARK_TASKS, get_task, verify_file
from loramix.tasks.benchmarks.gsm8k import split_solution

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
GSM8K_TEST = Path("/work/shared/data/gsm8k/test.jsonl")


def test_benchmark_names():
    assert BENCHMARK_TASKS == ("gsm8k", "arc", "medqa", "cola", "boolq")


@pytest.mark.skipif(not GSM8K_TEST.exists(), reason="real GSM8K test set not present")
def test_gsm8k_real_test_set():
    task = get_task("gsm8k", path=GSM8K_TEST)
    start = time.perf_counter()
    examples = task.examples()
    assert len(examples) == 1319
    perturbed = rejected = 0
    for ex in examples:
        assert task.is_correct(task.reference_completion(ex), ex), ex.answer
        gold = Decimal(ex.answer)
        for bad in {gold + 1, gold * 2 + 3, gold - 10} - {gold}:  # gold*2+3 == gold for gold -3
            perturbed += 1
            rejected += not task.is_correct(f'<think></think>\n{{"answer": "{bad}"}}', ex)
    elapsed = time.perf_counter() - start
    assert perturbed == 3 * 1319 - sum(e.answer == "-3" for e in examples) and rejected == perturbed
    assert elapsed < 5, f"GSM8K gold+perturbation check took {elapsed:.2f}s"
    first = examples[0]
    assert first.answer == "18" and "<<" not in first.reasoning and first.reasoning.startswith("Janet sells")
    assert "Question: Janet" in first.prompt
    assert {e.answer for e in examples} >= {"70000", "1450000", "-10"}  # commas stripped, negatives kept


@pytest.mark.skipif(not GSM8K_TEST.exists(), reason="real GSM8K test set not present")
def test_gsm8k_verify_file_fast():
    start = time.perf_counter()
    report = verify_file(get_task("gsm8k"), GSM8K_TEST)
    assert (report.checked, report.failed) == (1319, 0)
    assert time.perf_counter() - start < 5


def test_gsm8k_fixture_and_units():
    task = get_task("gsm8k", path=FIXTURES / "gsm8k.jsonl")
    ex = task.examples()[0]
    assert ex.answer == "3100"
    assert ex.reasoning == "Tom has 3*1,200=3,600 pins.\nHe has 3,600-500=3,100 left."
    for pred in ("3100", "3,100", "$3,100", "3100 pins", "#### 3,100", "3100.0"):
        assert task.is_correct(f'<think>x</think>{{"answer": "{pred}"}}', ex), pred
    for pred in ("3101", "310", "31,00", ""):
        assert not task.is_correct(f'<think>x</think>{{"answer": "{pred}"}}', ex), pred


def test_split_solution():
    assert split_solution("a <<1+1=2>>2\n#### 1,000") == ("a 2", "1000")
    assert split_solution("no final answer") is None


def test_arc_fixture():
    task = get_task("arc", path=FIXTURES / "arc.jsonl")
    exs = task.examples()
    assert [e.answer for e in exs] == ["B", "C", "E", "A"]  # numeric labels 1-4 become letters
    assert "A. Earth orbits the Sun\nB. the Moon orbits Earth\nC. Earth rotates" in exs[1].prompt
    assert "E. wind" in exs[2].prompt
    for pred in ("B", "(B)", "b", "B. carbon dioxide", "option B"):
        assert task.is_correct(f'<think></think>{{"answer": "{pred}"}}', exs[0]), pred
    assert not task.is_correct('<think></think>{"answer": "A"}', exs[0])


@pytest.mark.parametrize("fixture", ["medqa.json", "medqa.jsonl"])
def test_medqa_fixture(fixture):
    task = get_task("medqa", path=FIXTURES / fixture)
    exs = task.examples()
    assert [e.answer for e in exs] == (["B", "D", "A"] if fixture == "medqa.json" else ["C", "D"])
    assert "D. " in exs[0].prompt and "E. " not in exs[0].prompt
    assert task.is_correct('{"answer": "(%s)"}' % exs[0].answer, exs[0])


def test_cola_fixture():
    task = get_task("cola", path=FIXTURES / "cola.jsonl")
    exs = task.examples()
    assert [e.answer for e in exs] == ["1", "1", "0", "0"]
    assert "Sentence: They drank the pub." in exs[2].prompt
    assert task.is_correct('{"answer": 0}', exs[2]) and not task.is_correct('{"answer": "1"}', exs[2])


def test_boolq_fixture():
    task = get_task("boolq", path=FIXTURES / "boolq.jsonl")
    exs = task.examples()
    assert [e.answer for e in exs] == ["false", "true", "true"]
    assert exs[0].prompt.rstrip().endswith("Question: is the moon larger than the earth?")
    assert exs[2].prompt.count("??") == 0
    for pred in ('"True"', '"true"', "true", '"yes"'):
        assert task.is_correct('<think></think>{"answer": %s}' % pred, exs[1]), pred
    assert not task.is_correct('<think></think>{"answer": "True"}', exs[0])


@pytest.mark.parametrize("name, fixture", [
    ("gsm8k", "gsm8k.jsonl"), ("arc", "arc.jsonl"), ("medqa", "medqa.json"), ("medqa", "medqa.jsonl"),
    ("cola", "cola.jsonl"), ("boolq", "boolq.jsonl"),
])
def test_fixtures_verify(name, fixture):
    report = verify_file(get_task(name), FIXTURES / fixture)
    assert report.ok and report.checked == sum(1 for _ in get_task(name).load(FIXTURES / fixture))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_parquet_json_list_and_save_to_disk(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows(FIXTURES / "arc.jsonl")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "arc.parquet")
    (tmp_path / "arc.json").write_text(json.dumps(rows))
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows[:2]),
                          "validation": datasets.Dataset.from_list(rows[2:])}).save_to_disk(tmp_path / "arc_dd")
    datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "arc_ds")
    want = [e.answer for e in get_task("arc", path=FIXTURES / "arc.jsonl").examples()]
    for p in ("arc.parquet", "arc.json", "arc_ds"):
        assert [e.answer for e in get_task("arc", path=tmp_path / p).examples()] == want, p
    task = get_task("arc", path=tmp_path / "arc_dd")
    assert [e.answer for e in task.examples()] == want[:2]  # the paper split (test) by default
    assert [e.answer for e in task.examples("validation")] == want[2:]
    assert task.examples(n=1) == task.examples()[:1]
    with pytest.raises(LoramixError, match="no split 'train'; splits: test, validation"):
        task.examples("train")


@pytest.mark.parametrize("name, row, where", [
    ("gsm8k", {"question": "q"}, "line 2: field 'answer': missing"),
    ("gsm8k", {"question": "q", "answer": "no final"}, "line 2: field 'answer': no '#### ' final answer"),
    ("gsm8k", {"question": 3, "answer": "#### 1"}, "line 2: field 'question': expected str, got int"),
    ("arc", {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"},
     "line 2: field 'answerKey'"),
    ("arc", {"question": "q", "choices": {"text": ["a", "b"]}, "answerKey": "A"}, "field 'label': missing"),
    ("medqa", {"question": "q", "options": {"A": "x", "B": "y"}, "answer_idx": "E"}, "line 2: field 'answer_idx'"),
    ("cola", {"sentence": "s", "label": -1}, "line 2: field 'label': expected 0 or 1"),
    ("boolq", {"question": "q", "passage": "p", "answer": "yes"}, "line 2: field 'answer': expected bool"),
])
def test_bad_rows_name_line_and_field(tmp_path, name, row, where):
    good = {"gsm8k": {"question": "q", "answer": "#### 1"}, "arc": _rows(FIXTURES / "arc.jsonl")[0],
            "medqa": _rows(FIXTURES / "medqa.jsonl")[0], "cola": {"sentence": "s", "label": 1},
            "boolq": {"question": "q", "passage": "p", "answer": True}}[name]
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as err:
        get_task(name, path=path).examples()
    assert str(path) in str(err.value) and where in str(err.value)


def test_bad_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"sentence": "s", "label": 1}\n\n{"sentence": "t", "label": \n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 3: invalid JSON"):
        get_task("cola").load(path)


def test_missing_path_and_file():
    with pytest.raises(LoramixError, match=r"task 'gsm8k' needs a data file"):
        get_task("gsm8k").examples()
    with pytest.raises(LoramixError, match="no such file"):
        get_task("gsm8k").load("/nonexistent/gsm8k.jsonl")
