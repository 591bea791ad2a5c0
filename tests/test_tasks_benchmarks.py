"""Benchmark loaders on hand-written fixtures (the HF layouts and each benchmark's original release:
AI2's ARC JSONL, CoLA's raw/GLUE TSV, Google's and SuperGLUE's BoolQ, MedQA's 4- and 5-option US
files) and on the real GSM8K test set."""

import json
from decimal import Decimal
from pathlib import Path

import pytest

from loramix.errors import DataError, LoramixError
from loramix.tasks import BENCHMARK_TASKS, get_task, verify_file
from loramix.tasks.benchmarks.gsm8k import split_solution

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
GSM8K_TEST = Path("/work/shared/data/gsm8k/test.jsonl")


def test_benchmark_names():
    assert BENCHMARK_TASKS == ("gsm8k", "arc", "medqa", "cola", "boolq", "medqa5")


@pytest.mark.skipif(not GSM8K_TEST.exists(), reason="real GSM8K test set not present")
def test_gsm8k_real_test_set():
    task = get_task("gsm8k", path=GSM8K_TEST)
    examples = task.examples()
    assert len(examples) == 1319
    perturbed = rejected = 0
    for ex in examples:
        assert task.is_correct(task.reference_completion(ex), ex), ex.answer
        gold = Decimal(ex.answer)
        for bad in {gold + 1, gold * 2 + 3, gold - 10} - {gold}:  # gold*2+3 == gold for gold -3
            perturbed += 1
            rejected += not task.is_correct(f'<think></think>\n{{"answer": "{bad}"}}', ex)
    assert perturbed == 3 * 1319 - sum(e.answer == "-3" for e in examples) and rejected == perturbed
    first = examples[0]
    assert first.answer == "18" and "<<" not in first.reasoning and first.reasoning.startswith("Janet sells")
    assert "Question: Janet" in first.prompt
    assert {e.answer for e in examples} >= {"70000", "1450000", "-10"}  # commas stripped, negatives kept


@pytest.mark.skipif(not GSM8K_TEST.exists(), reason="real GSM8K test set not present")
def test_gsm8k_verify_file_passes_every_gold_answer():
    report = verify_file(get_task("gsm8k"), GSM8K_TEST)
    assert (report.checked, report.failed) == (1319, 0)


def test_gsm8k_fixture_and_units():
    task = get_task("gsm8k", path=FIXTURES / "gsm8k.jsonl")
    ex = task.examples()[0]
    assert ex.answer == "3100"
    assert ex.reasoning == "Tom has 3*1,200=3,600 pins.\nHe has 3,600-500=3,100 left."
    for pred in ("3100", "3,100", "$3,100", "3100 dollars", "#### 3,100", "3100.0"):
        assert task.is_correct(f'<think>x</think>{{"answer": "{pred}"}}', ex), pred
    for pred in ("3101", "310", "31,00", "", "3100 pins", "3100 is not it"):  # words that are no unit: wrong
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
    ("arc", {"question": "q", "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]}, "answerKey": "D"},
     "line 2: field 'answerKey'"),
    ("arc", {"question": "q", "choices": {"text": ["a", "b"]}, "answerKey": "A"},
     "line 2: field 'choices.label': missing"),
    ("arc", {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "A"},
     "line 2: field 'choices': expected 3 to 5 choices, got 2"),
    ("arc", {"question": {"stem": "q", "choices": [{"text": "a", "label": "A"}, {"text": "b", "label": "B"},
                                                  {"label": "C"}]}, "answerKey": "A"},
     "line 2: field 'question.choices[2].text': missing"),
    ("arc", {"question": {"choices": []}, "answerKey": "A"}, "line 2: field 'question.stem': missing"),
    ("arc", {"question": {"stem": "q", "choices": [{"text": "a", "label": "A"}, {"text": "b", "label": "B"},
                                                  {"text": "c", "label": "X"}]}, "answerKey": "A"},
     "line 2: field 'question.choices': labels must be distinct, A-E or 1-5"),
    ("arc", {"question": ["q"], "answerKey": "A"}, "line 2: field 'question': expected str/dict, got list"),
    ("medqa", {"question": "q", "options": {"A": "x", "B": "y", "C": "z", "D": "w"}, "answer_idx": "E"},
     "line 2: field 'answer_idx'"),
    ("medqa", {"question": "q", "options": {"A": "x", "B": "y", "C": " ", "D": "w"}, "answer_idx": "A"},
     "line 2: field 'options.C': empty"),
    ("medqa", {"question": "q", "options": {"A": "x", "B": "y", "C": "z"}, "answer_idx": "A"},
     "line 2: field 'options': 3 options (A-C), but task 'medqa' is the 4-option benchmark"),
    ("cola", {"sentence": "s", "label": -1}, "line 2: field 'label': expected 0 or 1"),
    ("boolq", {"question": "q", "passage": "p", "answer": "yes"}, "line 2: field 'answer': expected bool"),
    ("boolq", {"question": "q", "passage": "p", "idx": 3}, "line 2: field 'answer': missing"),
    ("boolq", {"question": "q", "passage": "p", "idx": 3, "label": "maybe"},
     "line 2: field 'label': expected true/false"),
    ("boolq", {"question": "q", "answer": True}, "line 2: field 'passage': missing"),
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


# --- the benchmarks' original releases -------------------------------------------------------------


def _answers(name: str, fixture: str) -> list[str]:
    return [e.answer for e in get_task(name, path=FIXTURES / fixture).examples()]


def test_arc_ai2_jsonl():
    exs = get_task("arc", path=FIXTURES / "arc_ai2.jsonl").examples()
    assert [e.answer for e in exs] == ["C", "B", "A", "C", "A"]  # "1" becomes A
    assert exs[0].prompt.endswith(
        "Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the"
        " most likely effect of this increase in rotation?\nA. Planetary density will decrease.\n"
        "B. Planetary years will become longer.\nC. Planetary days will become shorter.\n"
        "D. Planetary gravity will become stronger.\n")
    assert "E. The Moon moves closer to and farther from the Sun.\n" in exs[3].prompt
    assert "B. a compound\nC. an element\n" in exs[4].prompt and "D. " not in exs[4].prompt  # 3 choices, stripped


def test_arc_ai2_and_hf_give_the_same_prompt(tmp_path):
    """The same question in both layouts gives the same Example."""
    hf = _rows(FIXTURES / "arc.jsonl")[1]
    ai2 = {"id": hf["id"], "answerKey": hf["answerKey"], "question": {"stem": hf["question"], "choices": [
        {"text": t, "label": lab} for t, lab in zip(hf["choices"]["text"], hf["choices"]["label"])]}}
    path = tmp_path / "ai2.jsonl"
    path.write_text(json.dumps(ai2) + "\n")
    assert get_task("arc", path=path).examples() == get_task("arc", path=FIXTURES / "arc.jsonl").examples()[1:2]


@pytest.mark.parametrize("fixture, answers", [
    ("cola_raw.tsv", ["1", "1", "0", "0", "1", "0"]),
    ("cola_glue_noheader.tsv", ["1", "1", "1", "1", "0"]),
    ("cola_glue.tsv", ["1", "1", "1", "1", "0"]),
])
def test_cola_tsv(fixture, answers):
    exs = get_task("cola", path=FIXTURES / fixture).examples()
    assert [e.answer for e in exs] == answers
    assert [e.meta["where"] for e in exs][:2] == (["line 2", "line 3"] if fixture == "cola_glue.tsv"
                                                  else ["line 1", "line 2"])
    for ex in exs:
        assert "\t" not in ex.prompt and "gj04" not in ex.prompt and "*" not in ex.prompt
    if fixture == "cola_raw.tsv":
        assert exs[3].prompt.endswith("\n\nSentence: They drank the pub.\n")
        assert 'Sentence: Mary said "Hello" to the baker.\n' in exs[4].prompt  # no TSV quoting
    if fixture == "cola_glue.tsv":
        assert "Sentence: The book was by John written.\n" in exs[4].prompt


def test_cola_tsv_same_prompt_as_jsonl(tmp_path):
    jsonl = get_task("cola", path=FIXTURES / "cola.jsonl").examples()
    path = tmp_path / "cola.tsv"
    path.write_text("".join(f"xx01\t{e.answer}\t\t{e.prompt.split('Sentence: ')[1]}" for e in jsonl))
    assert get_task("cola", path=path).examples() == jsonl


def test_tsv_splits_rows_on_newlines_only(tmp_path):
    path = tmp_path / "cola.tsv"
    path.write_text("gj04\t1\t\tThe cat\u2028sat.\r\ngj04\t0\t*\tCat the sat.\r\n", newline="")
    exs = get_task("cola", path=path).examples()
    assert [e.answer for e in exs] == ["1", "0"] and "Sentence: The cat sat.\n" in exs[0].prompt


def test_tab_separated_content_without_tsv_suffix(tmp_path):
    path = tmp_path / "in_domain_dev.txt"
    path.write_bytes((FIXTURES / "cola_raw.tsv").read_bytes().replace(b"\n", b"\r\n"))
    assert [e.answer for e in get_task("cola", path=path).examples()] == _answers("cola", "cola_raw.tsv")


@pytest.mark.parametrize("text, where", [
    ("gj04\t1\t\tGood.\ngj04\t0\t*\n", "line 2: expected 4 tab-separated columns (source, label, mark, "
                                         "sentence), got 3"),
    ("\ngj04\t1\tGood.\n",
     "line 2: expected 4 tab-separated columns (source, label, mark, sentence) or a header"),
    ("sentence\tlabel\nGood.\t1\nBad.\t0\textra\n",
     "line 3: expected 2 tab-separated columns (sentence, label), got 3"),
    ("gj04\t2\t\tGood.\n", "line 1: field 'label': expected 0 or 1, got '2'"),
    ("gj04\t1\t\t \n", "line 1: field 'sentence': empty"),
    ("index\tsentence\n0\tGood.\n", "line 2: field 'label': missing"),
    ("sentence\tlabel\tlabel\nGood.\t1\t1\n", "line 1: header names a column twice"),
])
def test_bad_tsv_names_file_and_line(tmp_path, text, where):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        get_task("cola", path=path).examples()
    assert str(err.value).startswith(f"{path}: {where}")


def test_tsv_without_header_needs_column_names(tmp_path):
    from loramix.tasks.rows import read_rows

    path = tmp_path / "x.tsv"
    path.write_text("gj04\t1\t\tGood.\n")
    with pytest.raises(DataError, match=r"x.tsv: line 1: TSV without a header line"):
        read_rows(path)
    rows = read_rows(path, tsv_columns=("a", "b", "c", "d"))
    assert rows == [("line 1", {"a": "gj04", "b": "1", "c": "", "d": "Good."})]


def test_non_json_file_says_what_is_read(tmp_path):
    path = tmp_path / "cola.csv"
    path.write_text("sentence,label\nGood.,1\n")
    with pytest.raises(DataError, match=r"cola.csv: line 1: invalid JSON: .*read as JSON Lines; loramix reads .*TSV"):
        get_task("cola").load(path)


@pytest.mark.parametrize("fixture, answers", [
    ("boolq_google.jsonl", ["false", "true", "true", "true"]),
    ("boolq_superglue.jsonl", ["false", "true", "false"]),
])
def test_boolq_google_and_superglue(fixture, answers):
    exs = get_task("boolq", path=FIXTURES / fixture).examples()
    assert [e.answer for e in exs] == answers
    assert exs[0].prompt.rstrip().endswith("Question: does ethanol take more energy make that produces?")
    assert "Ethanol fuel" not in exs[0].prompt or fixture == "boolq_superglue.jsonl"  # Google's title left out
    assert "Passage: All biomass" in exs[0].prompt or fixture == "boolq_superglue.jsonl"


def test_boolq_superglue_string_and_int_labels(tmp_path):
    rows = _rows(FIXTURES / "boolq_superglue.jsonl")
    labels = ["false", "True", 0]  # SuperGLUE strings, and the HF super_glue export's ints
    path = tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps({**r, "label": lab}) + "\n" for r, lab in zip(rows, labels)))
    assert [e.answer for e in get_task("boolq", path=path).examples()] == ["false", "true", "false"]


def test_medqa_us_files():
    four = get_task("medqa", path=FIXTURES / "medqa_us_4.jsonl").examples()
    assert [e.answer for e in four] == ["D", "A", "C"]
    assert four[1].prompt.endswith("D. Application of a device to maintain the sleeping position\n")
    assert '"' not in four[1].prompt.split("Question:")[1]  # the stray quote line is gone
    assert "Question: A 45-year-old man presents" in four[2].prompt
    assert "aVF. Which coronary artery is most likely occluded?\nA. " in four[2].prompt
    assert "\nC. Right coronary artery\nD. " in four[2].prompt
    five = get_task("medqa5", path=FIXTURES / "medqa_us_5.jsonl").examples()
    assert [e.answer for e in five] == ["E", "B", "E"]
    assert all(e.task == "medqa5" for e in five)
    assert "\nE. Nitrofurantoin\n" in five[0].prompt
    task = get_task("medqa5")
    assert task.is_correct('<think></think>{"answer": "E"}', five[0])
    assert not task.is_correct('<think></think>{"answer": "D"}', five[0])


@pytest.mark.parametrize("name, fixture, problem", [
    ("medqa", "medqa_us_5.jsonl", "5 options (A-E), but task 'medqa' is the 4-option benchmark; this is the "
                                  "5-option file, use task 'medqa5'"),
    ("medqa5", "medqa_us_4.jsonl", "4 options (A-D), but task 'medqa5' is the 5-option benchmark; this is the "
                                   "4-option file, use task 'medqa'"),
    ("medqa5", "medqa.json", "4 options (A-D), but task 'medqa5' is the 5-option benchmark; this is the "
                             "4-option file, use task 'medqa'"),
])
def test_medqa_option_count_must_match_task(name, fixture, problem):
    with pytest.raises(DataError) as err:
        get_task(name, path=FIXTURES / fixture).examples()
    where = "row 1" if fixture.endswith(".json") else "line 1"
    assert str(err.value) == f"{FIXTURES / fixture}: {where}: field 'options': {problem}"


@pytest.mark.parametrize("name, fixture", [
    ("arc", "arc_ai2.jsonl"), ("cola", "cola_raw.tsv"), ("cola", "cola_glue.tsv"),
    ("cola", "cola_glue_noheader.tsv"), ("boolq", "boolq_google.jsonl"), ("boolq", "boolq_superglue.jsonl"),
    ("medqa", "medqa_us_4.jsonl"), ("medqa5", "medqa_us_5.jsonl"),
])
def test_published_fixtures_verify(name, fixture):
    report = verify_file(get_task(name), FIXTURES / fixture)
    assert report.ok and report.checked == len(get_task(name).load(FIXTURES / fixture)) >= 3
