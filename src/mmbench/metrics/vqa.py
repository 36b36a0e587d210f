"""The official VQA accuracy (GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py`), quirks included.

Default rules (`revision="2017"`): the evaluator as released for VQA v2.0 (commit a4f1afd, Oct 2017) and its
python3 port (1579c35), which every published VQAv2 number and the EvalAI server were computed with:

1. The prediction: `\\n` and `\\t` become spaces, strip, then *always* punctuation then digit/article processing.
2. The 10 reference answers: *only when they are not all identical*, punctuation processing and nothing else (no
   strip, no digits/articles: the annotation files ship answers that are already normalised). So ten identical
   `"1,000"` references stay `"1,000"` and the prediction `"1,000"` (normalised to `"1000"`) scores 0.
3. Per question: the mean over the 10 answers of min(1, #(the *other 9* answers equal to the prediction) / 3).
4. Overall, per answer type, per question type: the mean over questions. The official evaluator prints
   `round(100 * mean, 2)`; `vqa_scores` returns the unrounded fraction, so official = round(100 * ours, 2).

Punctuation: for each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``, every occurrence is deleted when the
*original* text has that character next to a space or contains a digit-comma-digit (`1,000`), else replaced by a
space; then periods not followed by a digit are deleted, at most 32 of them (see `_PERIOD`). Digits/articles:
lowercase, split on whitespace, none/zero..ten -> 0..10, drop a/an/the, expand the contractions table, join.

`revision="2021"` is the repository's current head (a013f00, "Fixed processing answers bug", March 2021): both
prediction and references are whitespace-cleaned, and *only when the references disagree* both get the full
punctuation + digit/article processing; when all 10 agree neither does (prediction "two" vs ten "2" scores 0).
MMF and open_flamingo normalise the references fully in every case, which is neither. mmbench reports 2017.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from mmbench.paths import atomic_write_text

ANSWER_TYPES = ("yes/no", "number", "other")
REVISIONS = ("2017", "2021")

_PUNCTUATION = tuple(';/[]"{}()=+\\_-><@`,?!')  # in the evaluator's order
# The official pattern is `(?!<=\d)(\.)(?!\d)`: `(?!<=\d)` is a look*ahead* for the literal "<=" + digit (a typo for
# the look-behind `(?<!\d)`), which can never match where a period stands, so a period after a digit ("5.") is
# deleted too. The evaluator calls `sub("", text, re.UNICODE)`: the flag lands in the *count* argument, and
# re.UNICODE == 32, so at most 32 periods are deleted.
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_COUNT = int(re.UNICODE)
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# The evaluator's 120 contractions, verbatim (straight apostrophes since its 2016 fix), as "missing>expanded".
# The keys with a capital I ("Im", "Ive", "Id've", "I'dve") never match because words are lowercased first, and
# "somebody'd" maps to "somebodyd" (reversed in the original): kept as they are, since they decide scores.
_CONTRACTIONS = dict(
    pair.split(">")
    for pair in """
    aint>ain't arent>aren't cant>can't couldve>could've couldnt>couldn't couldn'tve>couldn't've couldnt've>couldn't've
    didnt>didn't doesnt>doesn't dont>don't hadnt>hadn't hadnt've>hadn't've hadn'tve>hadn't've hasnt>hasn't
    havent>haven't hed>he'd hed've>he'd've he'dve>he'd've hes>he's howd>how'd howll>how'll hows>how's Id've>I'd've
    I'dve>I'd've Im>I'm Ive>I've isnt>isn't itd>it'd itd've>it'd've it'dve>it'd've itll>it'll let's>let's maam>ma'am
    mightnt>mightn't mightnt've>mightn't've mightn'tve>mightn't've mightve>might've mustnt>mustn't mustve>must've
    neednt>needn't notve>not've oclock>o'clock oughtnt>oughtn't ow's'at>'ow's'at 'ows'at>'ow's'at 'ow'sat>'ow's'at
    shant>shan't shed've>she'd've she'dve>she'd've she's>she's shouldve>should've shouldnt>shouldn't
    shouldnt've>shouldn't've shouldn'tve>shouldn't've somebody'd>somebodyd somebodyd've>somebody'd've
    somebody'dve>somebody'd've somebodyll>somebody'll somebodys>somebody's someoned>someone'd
    someoned've>someone'd've someone'dve>someone'd've someonell>someone'll someones>someone's somethingd>something'd
    somethingd've>something'd've something'dve>something'd've somethingll>something'll thats>that's thered>there'd
    thered've>there'd've there'dve>there'd've therere>there're theres>there's theyd>they'd theyd've>they'd've
    they'dve>they'd've theyll>they'll theyre>they're theyve>they've twas>'twas wasnt>wasn't wed've>we'd've
    we'dve>we'd've weve>we've werent>weren't whatll>what'll whatre>what're whats>what's whatve>what've whens>when's
    whered>where'd wheres>where's whereve>where've whod>who'd whod've>who'd've who'dve>who'd've wholl>who'll
    whos>who's whove>who've whyll>why'll whyre>why're whys>why's wont>won't wouldve>would've wouldnt>wouldn't
    wouldnt've>wouldn't've wouldn'tve>wouldn't've yall>y'all yall'll>y'all'll y'allll>y'all'll yall'd've>y'all'd've
    y'alld've>y'all'd've y'all'dve>y'all'd've youd>you'd youd've>you'd've you'dve>you'd've youll>you'll
    youre>you're youve>you've
    """.split()
)


def process_punctuation(text: str) -> str:
    """The evaluator's punctuation step (module docstring); every decision looks at the *original* text."""
    out = text
    has_number_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in _PUNCTUATION:
        if has_number_comma or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Lowercase, number words to digits, drop articles, expand contractions, single spaces."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_prediction(answer: str) -> str:
    """What the evaluator compares for a predicted answer (2017 rules: always fully processed)."""
    return process_digit_article(process_punctuation(_clean_whitespace(answer)))


def process_references(answers: Sequence[str]) -> list[str]:
    """The 10 reference answers as the evaluator compares them (2017 rules): punctuation-processed only when they
    are not all identical, and nothing else."""
    if len(set(answers)) > 1:
        return [process_punctuation(a) for a in answers]
    return list(answers)


def _compared(prediction: str, answers: Sequence[str], revision: str) -> tuple[str, list[str]]:
    if revision == "2017":
        return normalize_prediction(prediction), process_references(answers)
    if revision == "2021":
        refs, pred = [_clean_whitespace(a) for a in answers], _clean_whitespace(prediction)
        if len(set(refs)) > 1:
            refs = [process_digit_article(process_punctuation(a)) for a in refs]
            pred = process_digit_article(process_punctuation(pred))
        return pred, refs
    raise ValueError(f"unknown VQA evaluator revision {revision!r} (known: {', '.join(REVISIONS)})")


def leave_one_out_accuracy(prediction: str, references: Sequence[str]) -> float:
    """Mean over the answers of min(1, #(the other answers equal to `prediction`) / 3); both already processed.

    The evaluator leaves out each answer *dict* (answer ids make them distinct), i.e. each position."""
    if not references:
        raise ValueError("no reference answers (a test split cannot be scored locally)")
    matches = sum(r == prediction for r in references)
    total = 0.0
    for ref in references:
        others = matches - (ref == prediction)
        total += min(1.0, others / 3)
    return total / len(references)


def question_accuracy(prediction: str, answers: Sequence[str], revision: str = "2017") -> float:
    """The official accuracy of one predicted answer against the raw reference answers, in [0, 1]."""
    pred, refs = _compared(prediction, answers, revision)
    return leave_one_out_accuracy(pred, refs)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def vqa_scores(
    predicted: list[str],
    answers: list[list[str]],
    answer_types: list[str],
    question_types: list[str] | None = None,
    *,
    revision: str = "2017",
) -> dict[str, float]:
    """Official VQA accuracy as fractions: `vqa_accuracy` and `vqa_accuracy_<answer type>` for yes/no, number and
    other (NaN when no question has that type); with `question_types`, also `vqa_accuracy_qtype_<question type>`.
    The evaluator's printed numbers are `round(100 * value, 2)`."""
    n = len(predicted)
    if len(answers) != n or len(answer_types) != n or (question_types is not None and len(question_types) != n):
        raise ValueError(
            f"vqa_scores: {n} predictions but {len(answers)} answer lists, {len(answer_types)} answer types"
            + (f", {len(question_types)} question types" if question_types is not None else "")
        )
    if n == 0:
        raise ValueError("vqa_scores: no questions")
    per_question = []
    for i, (pred, refs) in enumerate(zip(predicted, answers)):
        if not refs:
            raise ValueError(f"vqa_scores: question {i} has no reference answers (test splits are server-scored)")
        per_question.append(question_accuracy(pred, refs, revision))
    out = {"vqa_accuracy": _mean(per_question)}
    for kind in ANSWER_TYPES:
        out[f"vqa_accuracy_{kind}"] = _mean([a for a, t in zip(per_question, answer_types) if t == kind])
    if question_types is not None:
        for qtype in sorted(set(question_types)):
            out[f"vqa_accuracy_qtype_{qtype}"] = _mean([a for a, q in zip(per_question, question_types) if q == qtype])
    return out


def write_submission(path: str | Path, question_ids: list[int], predicted: list[str]) -> Path:
    """The official result file `[{"question_id": int, "answer": str}, ...]` for the evaluation server, written
    atomically (a crash never leaves a truncated file that the server would reject halfway through)."""
    if len(question_ids) != len(predicted):
        raise ValueError(f"write_submission: {len(question_ids)} question ids but {len(predicted)} answers")
    seen: set[int] = set()
    for qid in question_ids:
        if qid in seen:
            raise ValueError(f"write_submission: question_id {qid} appears twice")
        seen.add(qid)
    rows = [{"question_id": int(q), "answer": str(a)} for q, a in zip(question_ids, predicted)]
    return atomic_write_text(path, json.dumps(rows))


def postprocess_generation(text: str) -> str:
    """OpenFlamingo's `postprocess_vqa_generation` (open_flamingo/eval/vqa_metric.py): a generated answer is cut
    at the first "Question", "Answer" or "Short" (the model starting the next demonstration) and at the first
    ", "; the official normalisation is `question_accuracy`'s."""
    answer = re.split("Question|Answer|Short", text, maxsplit=1)[0]
    return re.split(", ", answer, maxsplit=1)[0]
