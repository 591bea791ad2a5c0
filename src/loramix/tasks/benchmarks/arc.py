"""ARC-Challenge (test, 1,172 rows), in either published layout, told apart per row:
- Hugging Face (`allenai/ai2_arc`): `question` (text), `choices` (`{"text": [...], "label": [...]}`),
  `answerKey`;
- AI2's original JSONL (`ARC-Challenge-Test.jsonl`): `question` is an object with `stem` and
  `choices` (`[{"text": ..., "label": ...}, ...]`), plus `answerKey`.
A question has 3 to 5 choices labelled A-E or 1-5. Options are shown as A, B, C, ... in order,
whatever the raw labels; the gold answer is the letter of `answerKey`. Verified by letter match."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loramix.errors import DataError
from loramix.tasks.base import Example
from loramix.tasks.benchmarks.base import BenchmarkTask, benchmark_prompt, letters, one_line
from loramix.tasks.rows import field

_LABEL_SETS = (tuple("ABCDE"), tuple("12345"))


def choice_prompt(kind: str, question: str, options: list[str]) -> str:
    lines = "\n".join(f"{k}. {t}" for k, t in zip(letters(len(options)), options))
    return benchmark_prompt(f"Answer the {kind} question with the letter of the correct option.",
                            f"Question: {question}\n{lines}\n")


def _hf_choices(row: dict[str, Any], path: str | Path, where: str) -> tuple[list[Any], list[Any], str]:
    choices = field(row, "choices", path, where, dict)
    texts = field(choices, "text", path, where, list, shown="choices.text")
    labels = field(choices, "label", path, where, list, shown="choices.label")
    if len(texts) != len(labels):
        raise DataError(path, f"{where}: field 'choices'", f"{len(texts)} texts but {len(labels)} labels")
    return texts, labels, "choices"


def _ai2_choices(question: dict[str, Any], path: str | Path, where: str) -> tuple[list[Any], list[Any], str]:
    choices = field(question, "choices", path, where, list, shown="question.choices")
    texts, labels = [], []
    for i, choice in enumerate(choices):
        name = f"question.choices[{i}]"
        if not isinstance(choice, dict):
            raise DataError(path, f"{where}: field {name!r}", f"expected an object, got {type(choice).__name__}")
        texts.append(field(choice, "text", path, where, (str, int, float), shown=f"{name}.text"))
        labels.append(field(choice, "label", path, where, (str, int), shown=f"{name}.label"))
    return texts, labels, "question.choices"


class ARCTask(BenchmarkTask):
    name = "arc"
    answer_type = "letter"
    verifier = "letter"
    description = "ARC-Challenge science multiple choice"
    paper_split, paper_size = "test", 1172

    def from_row(self, row: dict[str, Any], path: str | Path, where: str) -> Example:
        question = field(row, "question", path, where, (str, dict))
        if isinstance(question, dict):  # AI2's own release
            stem_name, stem = "question.stem", field(question, "stem", path, where, shown="question.stem")
            texts, labels, name = _ai2_choices(question, path, where)
        else:
            stem_name, stem = "question", question
            texts, labels, name = _hf_choices(row, path, where)
        if not stem.strip():
            raise DataError(path, f"{where}: field {stem_name!r}", "empty")
        labels = [str(x).strip() for x in labels]
        if not 3 <= len(labels) <= 5:
            raise DataError(path, f"{where}: field {name!r}", f"expected 3 to 5 choices, got {len(labels)}")
        if len(set(labels)) != len(labels) or not any(set(labels) <= set(s) for s in _LABEL_SETS):
            raise DataError(path, f"{where}: field {name!r}", f"labels must be distinct, A-E or 1-5; got {labels}")
        options = [one_line(str(t)) for t in texts]
        if not all(options):
            raise DataError(path, f"{where}: field {name!r}", "an option text is empty")
        key = str(field(row, "answerKey", path, where, (str, int))).strip()
        if key not in labels:
            raise DataError(path, f"{where}: field 'answerKey'", f"{key!r} is not one of {labels}")
        gold = letters(len(labels))[labels.index(key)]
        return Example(choice_prompt("science", stem.strip(), options), gold, None, self.name)
