"""The VQAv2 answer vocabulary and the soft targets the VQA head is trained against (BCE with logits).

Vocabulary: the normalised `multiple_choice_answer` of every question in the vocabulary splits (train2014 +
val2014), kept when it occurs in at least `min_count` (9) questions; sorted, `<unk>` first (index 0, never a
target). On the real data this gives the customary ~3,129 answers. "Normalised" = the official evaluator's
prediction processing (`mmbench.metrics.vqa.normalize_prediction`), so that every class is an answer in the form
the evaluator compares.

Soft targets, two schemes (`data.options.vqa.soft_score`):
- `official` (default): the target of candidate `a` is exactly the official accuracy the evaluator would give the
  prediction `a` for this question: the mean over the 10 leave-one-out subsets of min(1, matches / 3), with the
  evaluator's processing of prediction and references. With 10 answers of which `c` match, that is 0, 0.3, 0.6,
  0.9, 1.0 for c = 0, 1, 2, 3, >=4, so arg-max training optimises the metric itself.
- `beit3`: BEiT-3's (and ViLT's) recipe: count the *raw* reference strings that equal the vocabulary entry exactly
  and look the count up in the fixed table 0/0.3/0.6/0.9/1.0. For the usual 10 answers the table equals the
  leave-one-out values; it differs where references are not already in normalised form (a raw "two" or "yes!"
  counts for nothing, whereas the official scheme punctuation-processes disagreeing references) and for questions
  with other than 10 answers (the table ignores their number).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable

import torch

from mmbench.metrics.vqa import leave_one_out_accuracy, normalize_prediction, process_references

UNK = "<unk>"
SOFT_SCORES = ("official", "beit3")
_BEIT3_TABLE = (0.0, 0.3, 0.6, 0.9, 1.0)  # by number of matching annotators, capped at 4


class AnswerVocab:
    """`answers[0]` is `<unk>`; `hash` identifies the vocabulary's content (recorded with results)."""

    def __init__(self, answers: list[str], soft_score: str = "official"):
        if not answers or answers[0] != UNK:
            raise ValueError(f"an answer vocabulary starts with {UNK!r}")
        if len(set(answers)) != len(answers):
            dup = next(a for a, k in Counter(answers).items() if k > 1)
            raise ValueError(f"answer {dup!r} appears twice in the vocabulary")
        if soft_score not in SOFT_SCORES:
            raise ValueError(f"unknown VQA soft score {soft_score!r} (known: {', '.join(SOFT_SCORES)})")
        self.answers = list(answers)
        self.soft_score = soft_score
        self._index = {a: i for i, a in enumerate(self.answers)}
        # The form the evaluator compares for each candidate, so that a candidate's official target is exact even
        # for the rare entry that normalisation does not leave unchanged.
        self._by_compared: dict[str, list[int]] = {}
        for i, a in enumerate(self.answers[1:], start=1):
            self._by_compared.setdefault(normalize_prediction(a), []).append(i)
        self.hash = hashlib.sha256("\n".join(self.answers).encode()).hexdigest()[:16]

    @classmethod
    def build(cls, multiple_choice_answers: Iterable[str], min_count: int = 9, soft_score: str = "official"):
        """From the `multiple_choice_answer` of every question: normalise, count, keep >= `min_count`, sort."""
        counts = Counter(normalize_prediction(a) for a in multiple_choice_answers)
        kept = sorted(a for a, k in counts.items() if k >= min_count and a and a != UNK)
        return cls([UNK, *kept], soft_score=soft_score)

    def __len__(self) -> int:
        return len(self.answers)

    def __repr__(self) -> str:
        return f"AnswerVocab({len(self)} answers, soft_score={self.soft_score!r}, hash={self.hash})"

    def index(self, answer: str) -> int:
        """The class of `answer` (as given, else in normalised form); 0 (`<unk>`) when it is not in the vocabulary."""
        if answer in self._index:
            return self._index[answer]
        return self._index.get(normalize_prediction(answer), 0)

    def soft_targets(self, answers: list[str]) -> torch.Tensor:
        """FloatTensor[len(self.answers)]: the score of each candidate for these raw reference answers (all zeros
        for a question without answers, e.g. a test split); `<unk>` is never a target."""
        target = torch.zeros(len(self.answers), dtype=torch.float32)
        if not answers:
            return target
        if self.soft_score == "official":
            refs = process_references(answers)
            for ref in set(refs):
                score = leave_one_out_accuracy(ref, refs)
                for i in self._by_compared.get(ref, ()):
                    target[i] = score
        else:
            for ans, count in Counter(answers).items():
                i = self._index.get(ans, 0)
                if i:
                    target[i] = _BEIT3_TABLE[min(count, 4)]
        return target
