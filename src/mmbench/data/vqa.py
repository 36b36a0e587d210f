"""VQAv2 in its official files: question and annotation JSON + the COCO image folders.

```
<root>/v2_OpenEnded_mscoco_<split>_questions.json   {"questions": [{"image_id", "question", "question_id"}], ...}
<root>/v2_mscoco_<split>_annotations.json           {"annotations": [{"question_id", "image_id", "question_type",
                                                      "answer_type", "multiple_choice_answer",
                                                      "answers": [{"answer", "answer_confidence", "answer_id"} x 10]}]}
<root>/<image split>/COCO_<image split>_<image_id:012d>.jpg
```
Splits: train2014 and val2014 (annotated), test-dev2015 and test2015 (questions only). test-dev2015 is a subset of
test2015 and has no image folder of its own: its images live in `test2015/` (`image_split` maps the one to the
other). Options (`data.options.vqa`): `questions`, `annotations` and `image_path` file-name patterns, the
`image_split` mapping, and the answer vocabulary's `vocab_splits`, `min_answer_count` and `soft_score`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mmbench.data.base import Reader, Record, decode_image
from mmbench.data.jsonfiles import read_json, require
from mmbench.data.vqa_vocab import SOFT_SCORES, AnswerVocab
from mmbench.errors import ConfigError, DataError
from mmbench.paths import atomic_write_text

DEFAULT_OPTIONS: dict[str, Any] = {
    "questions": "v2_OpenEnded_mscoco_{split}_questions.json",
    "annotations": "v2_mscoco_{split}_annotations.json",
    "image_path": "{image_split}/COCO_{image_split}_{image_id:012d}.jpg",
    "image_split": {"test-dev2015": "test2015"},  # splits whose images live in another split's folder
    "vocab_splits": ["train2014", "val2014"],
    "min_answer_count": 9,
    "soft_score": "official",  # official | beit3 (see mmbench.data.vqa_vocab)
}
VOCAB_VERSION = 1  # bump when the vocabulary construction changes


class VqaReader(Reader):
    format = "vqa"

    def __init__(self, root: Path, task):
        super().__init__(root, task)
        unknown = sorted(set(self.options) - set(DEFAULT_OPTIONS))
        if unknown:
            raise ConfigError(
                f"task {task.name!r}: key 'data.options.vqa.{unknown[0]}': unknown option "
                f"(known: {', '.join(DEFAULT_OPTIONS)})"
            )
        self.options = {**DEFAULT_OPTIONS, **self.options}
        if self.options["soft_score"] not in SOFT_SCORES:
            raise ConfigError(
                f"task {task.name!r}: key 'data.options.vqa.soft_score': {self.options['soft_score']!r} is not one "
                f"of {', '.join(SOFT_SCORES)}"
            )
        self._entries_cache: dict[str, list[tuple[dict, dict | None]]] = {}

    # ---- layout ---------------------------------------------------------------------------------------------

    def questions_file(self, split: str) -> Path:
        return self.root / self.options["questions"].format(split=split)

    def annotations_file(self, split: str) -> Path:
        return self.root / self.options["annotations"].format(split=split)

    def image_split(self, split: str) -> str:
        return self.options["image_split"].get(split, split)

    def image_path(self, split: str, image_id: int) -> Path:
        return self.root / self.options["image_path"].format(image_split=self.image_split(split), image_id=image_id)

    @classmethod
    def detect(cls, root: Path, task) -> bool:
        return cls(root, task).questions_file(task.data.split).is_file()

    def expected(self) -> str:
        split = self.task.data.split
        ann = f", {self.annotations_file(split)}" if not split.startswith("test") else ""
        example = self.image_path(split, 0).relative_to(self.root)
        return f"{self.questions_file(split)}{ann} and the COCO images, e.g. {self.root}/{example} (VQAv2 files)"

    def check(self, split: str) -> None:
        if not self.questions_file(split).is_file():
            raise DataError(f"{self.questions_file(split)}: missing (expected {self.expected()})")
        # Test splits ship questions only; every other split must have its annotations.
        if not split.startswith("test") and not self.annotations_file(split).is_file():
            raise DataError(f"{self.annotations_file(split)}: missing (split {split!r} needs its annotations)")
        folder = self.image_path(split, 0).parent
        if not folder.is_dir():
            raise DataError(f"{folder}: image folder missing (expected {self.expected()})")

    # ---- records --------------------------------------------------------------------------------------------

    def _entries(self, split: str) -> list[tuple[dict, dict | None]]:
        """(question, annotation or None) in the order of the questions file; parsed once per split."""
        if split in self._entries_cache:
            return self._entries_cache[split]
        qfile = self.questions_file(split)
        questions = read_json(qfile, "questions")
        for i, q in enumerate(questions):
            where = f"{qfile}: questions[{i}]"
            if not isinstance(q, dict):
                raise DataError(f"{where}: expected an object")
            require(q, "question_id", int, where)
            require(q, "image_id", int, where)
            require(q, "question", str, where)
        anns: dict[int, dict] | None = None
        afile = self.annotations_file(split)
        if afile.is_file():
            anns = _annotations_by_question(afile)
        elif not split.startswith("test"):
            raise DataError(f"{afile}: missing (split {split!r} needs its annotations)")
        entries = []
        for i, q in enumerate(questions):
            ann = None
            if anns is not None:
                ann = anns.get(q["question_id"])
                if ann is None:
                    raise DataError(f"{afile}: no annotation for question_id {q['question_id']} ({qfile.name} [{i}])")
                if ann["image_id"] != q["image_id"]:
                    raise DataError(
                        f"{afile}: question_id {q['question_id']} has image_id {ann['image_id']} but "
                        f"{qfile.name} says {q['image_id']}"
                    )
            entries.append((q, ann))
        self._entries_cache[split] = entries
        return entries

    def samples(
        self, split: str, limit: int | None = None, keep: Callable[[int], bool] | None = None
    ) -> Iterator[Record]:
        entries = self._entries(split)
        for index, (q, ann) in enumerate(entries[:limit] if limit is not None else entries):
            if keep is not None and not keep(index):
                continue
            path = self.image_path(split, q["image_id"])
            yield {
                "index": index,
                "text": q["question"],
                "text_pair": None,
                "image": decode_image(path, f"{path} (question_id {q['question_id']})"),
                "label": None,
                "answers": [a["answer"] for a in ann["answers"]] if ann else [],
                "question_id": q["question_id"],
                "answer_type": ann["answer_type"] if ann else "",
                "question_type": ann["question_type"] if ann else "",
            }

    # ---- answer vocabulary ----------------------------------------------------------------------------------

    def answer_vocab(
        self, cache_dir: Path, min_count: int | None = None, splits: list[str] | None = None
    ) -> AnswerVocab:
        """The answer vocabulary of the vocabulary splits, built once and cached under `cache_dir/vqa/`, keyed by
        the annotation files' identity (path, size, mtime) so a changed file rebuilds it."""
        min_count = self.options["min_answer_count"] if min_count is None else min_count
        splits = list(self.options["vocab_splits"] if splits is None else splits)
        files = [self.annotations_file(s) for s in splits]
        for f in files:
            if not f.is_file():
                raise DataError(f"{f}: missing (the VQA answer vocabulary is built from {', '.join(splits)})")
        identity = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
        key_src = json.dumps({"files": identity, "min_count": min_count, "version": VOCAB_VERSION})
        key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
        cache = Path(cache_dir) / "vqa" / f"answer-vocab-{key}.json"
        soft_score = self.options["soft_score"]
        if cache.is_file():
            try:
                return AnswerVocab(json.loads(cache.read_text())["answers"], soft_score=soft_score)
            except (json.JSONDecodeError, KeyError, ValueError):
                pass  # a damaged cache entry is rebuilt below
        mc_answers = []
        for f in files:
            for i, ann in enumerate(read_json(f, "annotations")):
                mc_answers.append(require(ann, "multiple_choice_answer", str, f"{f}: annotations[{i}]"))
        vocab = AnswerVocab.build(mc_answers, min_count=min_count, soft_score=soft_score)
        meta = {"answers": vocab.answers, "hash": vocab.hash, "min_count": min_count, "splits": splits}
        atomic_write_text(cache, json.dumps({**meta, "sources": [f.name for f in files]}))
        return vocab


def _annotations_by_question(afile: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for i, ann in enumerate(read_json(afile, "annotations")):
        where = f"{afile}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise DataError(f"{where}: expected an object")
        qid = require(ann, "question_id", int, where)
        require(ann, "image_id", int, where)
        require(ann, "answer_type", str, where)
        require(ann, "question_type", str, where)
        answers = require(ann, "answers", list, where)
        if not answers:
            raise DataError(f"{where} (question_id {qid}): empty 'answers'")
        for j, a in enumerate(answers):
            if not isinstance(a, dict):
                raise DataError(f"{where} (question_id {qid}): answers[{j}]: expected an object")
            require(a, "answer", str, f"{where} (question_id {qid}): answers[{j}]")
        if qid in out:
            raise DataError(f"{where}: question_id {qid} annotated twice")
        out[qid] = ann
    return out
