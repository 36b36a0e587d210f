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
import os
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from mmbench.data.base import Reader, Record, decode_image
from mmbench.data.columns import Codes, LazyRecords, StrColumn, require_files, stat_fingerprint
from mmbench.data.jsonfiles import iter_json_list, require
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


@dataclass
class _VqaSplit:
    """A split's compact index (~200 bytes a question): questions in file order, annotations in theirs."""

    annotated: bool
    question: StrColumn = field(default_factory=StrColumn)
    question_id: array = field(default_factory=lambda: array("q"))
    image_id: array = field(default_factory=lambda: array("q"))
    ann_row: array = field(default_factory=lambda: array("l"))  # question i's annotation row
    ann_image_id: array = field(default_factory=lambda: array("q"))
    answers: StrColumn = field(default_factory=StrColumn)  # the 10 answers as a JSON list
    answer_type: Codes = field(default_factory=Codes)
    question_type: Codes = field(default_factory=Codes)


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
        self._splits: dict[str, _VqaSplit] = {}

    # ---- layout ---------------------------------------------------------------------------------------------

    def questions_file(self, split: str) -> Path:
        return self.root / self.options["questions"].format(split=split)

    def annotations_file(self, split: str) -> Path:
        return self.root / self.options["annotations"].format(split=split)

    def image_split(self, split: str) -> str:
        return self.options["image_split"].get(split, split)

    def image_path(self, split: str, image_id: int) -> Path:
        return self.root / self.image_relpath(split, image_id)

    def image_relpath(self, split: str, image_id: int) -> str:
        return self.options["image_path"].format(image_split=self.image_split(split), image_id=image_id)

    def _image_relpaths(self, split: str) -> list[str]:
        """Every distinct image the split names, in order of first reference."""
        return [self.image_relpath(split, i) for i in dict.fromkeys(self._index(split).image_id)]

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
        images = [os.path.join(self.root, rel) for rel in self._image_relpaths(split)]
        require_files(images, split, self.questions_file(split).name)

    def fingerprint(self, split: str) -> str:
        """The question and annotation files and every image the split names (name, size, mtime): one `stat` per
        distinct image (82,783 for train2014), ~0.3 s on a local disk, beside hours of fine-tuning."""
        files = [self.options["questions"].format(split=split)]
        if self._index(split).annotated:
            files.append(self.options["annotations"].format(split=split))
        return stat_fingerprint(self.root, files + self._image_relpaths(split))

    # ---- records --------------------------------------------------------------------------------------------

    def _index(self, split: str) -> _VqaSplit:
        """The split's compact index in the order of the questions file; built once per split. The annotation
        and question files are parsed one entry at a time (see `mmbench.data.jsonfiles.iter_json_list`)."""
        if split not in self._splits:
            afile = self.annotations_file(split)
            if not afile.is_file() and not split.startswith("test"):
                raise DataError(f"{afile}: missing (split {split!r} needs its annotations)")
            index = _VqaSplit(annotated=afile.is_file())
            row_of = _read_annotations(afile, index) if index.annotated else {}
            qfile = self.questions_file(split)
            for i, q in enumerate(iter_json_list(qfile, "questions")):
                where = f"{qfile}: questions[{i}]"
                if not isinstance(q, dict):
                    raise DataError(f"{where}: expected an object")
                qid = require(q, "question_id", int, where)
                image_id = require(q, "image_id", int, where)
                index.question.append(require(q, "question", str, where))
                index.question_id.append(qid)
                index.image_id.append(image_id)
                if index.annotated:
                    row = row_of.get(qid)
                    if row is None:
                        raise DataError(f"{afile}: no annotation for question_id {qid} ({qfile.name} [{i}])")
                    if index.ann_image_id[row] != image_id:
                        raise DataError(
                            f"{afile}: question_id {qid} has image_id {index.ann_image_id[row]} but "
                            f"{qfile.name} says {image_id}"
                        )
                    index.ann_row.append(row)
            self._splits[split] = index
        return self._splits[split]

    def random_access(self, split: str, limit: int | None = None) -> Sequence[Record]:
        n = len(self._index(split).question_id)
        return LazyRecords(n if limit is None else min(n, limit), partial(self._record, split))

    def sample_ref(self, split: str, i: int) -> dict[str, Any]:
        index = self._index(split)
        image = self.image_relpath(split, index.image_id[i])
        return {"id": index.question_id[i], "image": image, "text": index.question[i]}

    def _record(self, split: str, i: int) -> Record:
        index = self._splits[split]
        qid = index.question_id[i]
        path = self.image_path(split, index.image_id[i])
        row = index.ann_row[i] if index.annotated else None
        return {
            "index": i,
            "text": index.question[i],
            "text_pair": None,
            "image": decode_image(path, f"{path} (question_id {qid})"),
            "label": None,
            "answers": json.loads(index.answers[row]) if row is not None else [],
            "question_id": qid,
            "answer_type": index.answer_type[row] if row is not None else "",
            "question_type": index.question_type[row] if row is not None else "",
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
            for i, ann in enumerate(iter_json_list(f, "annotations")):
                mc_answers.append(require(ann, "multiple_choice_answer", str, f"{f}: annotations[{i}]"))
        vocab = AnswerVocab.build(mc_answers, min_count=min_count, soft_score=soft_score)
        meta = {"answers": vocab.answers, "hash": vocab.hash, "min_count": min_count, "splits": splits}
        atomic_write_text(cache, json.dumps({**meta, "sources": [f.name for f in files]}))
        return vocab


def _read_annotations(afile: Path, index: _VqaSplit) -> dict[int, int]:
    """Append every annotation of `afile` to `index` (in file order); returns question_id -> annotation row."""
    row_of: dict[int, int] = {}
    for i, ann in enumerate(iter_json_list(afile, "annotations")):
        where = f"{afile}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise DataError(f"{where}: expected an object")
        qid = require(ann, "question_id", int, where)
        image_id = require(ann, "image_id", int, where)
        answer_type = require(ann, "answer_type", str, where)
        question_type = require(ann, "question_type", str, where)
        answers = require(ann, "answers", list, where)
        if not answers:
            raise DataError(f"{where} (question_id {qid}): empty 'answers'")
        for j, a in enumerate(answers):
            if not isinstance(a, dict):
                raise DataError(f"{where} (question_id {qid}): answers[{j}]: expected an object")
            require(a, "answer", str, f"{where} (question_id {qid}): answers[{j}]")
        if qid in row_of:
            raise DataError(f"{where}: question_id {qid} annotated twice")
        row_of[qid] = len(index.ann_image_id)
        index.ann_image_id.append(image_id)
        index.answers.append(json.dumps([a["answer"] for a in answers], ensure_ascii=False))
        index.answer_type.append(answer_type)
        index.question_type.append(question_type)
    return row_of
