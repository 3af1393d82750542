"""Read CMMLU / C-Eval items from a local folder in the official layout (or a Hub dataset) and
render them as prompts the way lm-evaluation-harness's ``cmmlu`` / ``ceval-valid`` tasks do.

Layouts (the ones the benchmarks ship):

    CMMLU   <root>/dev/<subject>.csv, <root>/test/<subject>.csv     header ",Question,A,B,C,D,Answer"
    C-Eval  <root>/{dev,val,test}/<subject>_<split>.csv              header "id,question,A,B,C,D,answer,explanation"

Cells are read as text (the csv module, not pandas' type guessing), so "0.50" stays "0.50" and a
choice "None" or "null" stays that word; lm-evaluation-harness loads local CSVs through pandas,
which turns such cells into NaN and the prompt into "nan" -- the one place the two can differ.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..config import resolve_path
from ..errors import UserError
from .subjects import CEVAL_SUBJECTS, CMMLU_SUBJECTS, ceval_description, cmmlu_description

LETTERS = ("A", "B", "C", "D")
BENCHMARKS = ("cmmlu", "ceval")
# The split each benchmark is scored on (C-Eval's test answers are not public) and its column names.
LAYOUT = {
    "cmmlu": {"eval_split": "test", "question": "Question", "answer": "Answer"},
    "ceval": {"eval_split": "val", "question": "question", "answer": "answer"},
}
HUB_IDS = {"cmmlu": "haonan-li/cmmlu", "ceval": "ceval/ceval-exam"}


@dataclass(frozen=True)
class MCItem:
    benchmark: str
    subject: str
    index: int                 # 0-based row in the subject's evaluated split
    question: str
    choices: tuple[str, str, str, str]
    answer: str | None         # "A".."D"; None where the split has no answers


def _csv_path(root: Path, benchmark: str, subject: str, split: str) -> Path:
    if benchmark == "cmmlu":
        return root / split / f"{subject}.csv"
    return root / split / f"{subject}_{split}.csv"


def local_subjects(root: Path, benchmark: str) -> list[str]:
    """Subjects with a file in the evaluated split, in the benchmark's order (others after, sorted)."""
    split = LAYOUT[benchmark]["eval_split"]
    folder = root / split
    if benchmark == "cmmlu":
        found = {p.stem for p in folder.glob("*.csv")}
    else:
        found = {p.stem[: -len(f"_{split}")] for p in folder.glob(f"*_{split}.csv")}
    official = list(CMMLU_SUBJECTS if benchmark == "cmmlu" else CEVAL_SUBJECTS)
    return [s for s in official if s in found] + sorted(found - set(official))


def _rows(path: Path, benchmark: str, subject: str) -> list[MCItem]:
    lay = LAYOUT[benchmark]
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        need = {lay["question"], *LETTERS}
        if not need <= set(reader.fieldnames or ()):
            raise UserError(f"{path}: expected columns {sorted(need)} (the official {benchmark} layout), "
                            f"found {reader.fieldnames}")
        items = []
        for i, row in enumerate(reader):
            ans = (row.get(lay["answer"]) or "").strip() or None
            if ans is not None and ans not in LETTERS:
                raise UserError(f"{path}: row {i}: answer {ans!r} is not one of A, B, C, D")
            items.append(MCItem(benchmark, subject, i, row[lay["question"]],
                                tuple(row[c] for c in LETTERS), ans))
    return items


def _hub_rows(benchmark: str, hub_id: str, subject: str, split: str) -> list[MCItem]:
    import datasets

    lay = LAYOUT[benchmark]
    try:
        ds = datasets.load_dataset(hub_id, subject, split=split)
    except Exception as e:  # offline, unknown id, gated: the user needs the local-folder route
        raise UserError(
            f"cannot load {benchmark} subject {subject!r} from the Hub dataset {hub_id!r} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Download the benchmark and "
            f"set eval.{benchmark}.path=<folder> in the official layout "
            f"({'dev/ and test/ CSVs per subject' if benchmark == 'cmmlu' else 'dev/ val/ test/ CSVs <subject>_<split>.csv'})"
        ) from None
    return [MCItem(benchmark, subject, i, str(r[lay["question"]]), tuple(str(r[c]) for c in LETTERS),
                   (str(r.get(lay["answer"]) or "").strip() or None)) for i, r in enumerate(ds)]


class Benchmark:
    """One benchmark's items and few-shot examples, local folder or Hub id."""

    def __init__(self, name: str, path: str):
        if name not in BENCHMARKS:
            raise UserError(f"eval.benchmarks: unknown benchmark {name!r}; choose from cmmlu, ceval, chat")
        self.name = name
        self.path = str(path)
        local = resolve_path(self.path)
        self.root = local if local.is_dir() else None
        if self.root is not None:
            available = local_subjects(self.root, name)
            if not available:
                raise UserError(
                    f"eval.{name}.path={self.path}: no {LAYOUT[name]['eval_split']}/ CSVs found in {self.root}; "
                    f"expected the official {name} layout "
                    f"({'dev/<subject>.csv and test/<subject>.csv' if name == 'cmmlu' else '<split>/<subject>_<split>.csv'})"
                )
        elif "/" in self.path and not self.path.startswith((".", "/", "~")):
            available = list(CMMLU_SUBJECTS if name == "cmmlu" else CEVAL_SUBJECTS)
        else:
            raise UserError(
                f"eval.{name}.path={self.path}: no such folder. Put the {name} data there in its official "
                f"layout, or set eval.{name}.path to a Hub dataset id ({HUB_IDS[name]}) where the Hub is reachable"
            )
        self.available = available
        self.subjects = list(available)
        self._cache: dict[tuple[str, str], list[MCItem]] = {}

    def split_items(self, subject: str, split: str) -> list[MCItem]:
        key = (subject, split)
        if key not in self._cache:
            if self.root is not None:
                p = _csv_path(self.root, self.name, subject, split)
                if not p.exists():
                    raise UserError(f"eval.{self.name}.path: {p} is missing (needed for the {split} split)")
                self._cache[key] = _rows(p, self.name, subject)
            else:
                self._cache[key] = _hub_rows(self.name, self.path, subject, split)
        return self._cache[key]

    def items(self) -> list[MCItem]:
        split = LAYOUT[self.name]["eval_split"]
        return [it for s in self.subjects for it in self.split_items(s, split)]

    def load_all(self, shots: int) -> None:
        """Read every evaluated item and few-shot example now, so bad data fails before any model work."""
        self.items()
        for s in self.subjects:
            self.shots(s, shots)

    def shots(self, subject: str, k: int) -> list[MCItem]:
        """The first k dev items (lm-evaluation-harness's ``first_n`` few-shot sampler)."""
        if k <= 0:
            return []
        dev = self.split_items(subject, "dev")
        if len(dev) < k:
            raise UserError(f"eval.shots={k}: {self.name} subject {subject} has only {len(dev)} dev items")
        return dev[:k]

    def description(self, subject: str) -> str:
        table = CMMLU_SUBJECTS if self.name == "cmmlu" else CEVAL_SUBJECTS
        if subject not in table:  # a subject of the user's own: name it as the file does
            return f"以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n"
        return cmmlu_description(subject) if self.name == "cmmlu" else ceval_description(subject)


def question_text(item: MCItem) -> str:
    """lm-evaluation-harness's ``doc_to_text`` for both tasks."""
    a, b, c, d = item.choices
    return f"{item.question.strip()}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\n答案："


def prompt_text(bench: Benchmark, item: MCItem, shots: int) -> str:
    """Description, k solved dev examples, then the question: the harness's plain-text context
    (fewshot delimiter "\\n\\n", target delimiter " ")."""
    examples = "".join(f"{question_text(ex)} {ex.answer}\n\n" for ex in bench.shots(item.subject, shots))
    return bench.description(item.subject) + examples + question_text(item)


def as_chat_conversations(bench: Benchmark, items: list[MCItem], shots: int = 0) -> list[dict]:
    """Items as canonical training conversations (the ``messages`` format): the prompt text as the
    user turn, the answer letter as the assistant's reply -- what ``eval.chat_template=true`` scores."""
    return [{"id": f"{it.benchmark}-{it.subject}-{it.index}", "source": f"{it.benchmark}_mc",
             "messages": [{"role": "user", "content": prompt_text(bench, it, shots)},
                          {"role": "assistant", "content": it.answer}]}
            for it in items if it.answer]
