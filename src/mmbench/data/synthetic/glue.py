"""Synthetic GLUE: the 8 tasks in the `nyu-mll/glue` parquet layout, generated from the scene grammar.

`<out>/<config>/{train,validation,test}-00000-of-00001.parquet` (MNLI: `validation_matched`,
`validation_mismatched`, `test_matched`, `test_mismatched`) with the hub's column names and dtypes (`idx` int32,
class labels int64, STS-B's float32), and the hub's hidden test labels (-1). Every label is decided by a scene
(`mmbench.data.synthetic.text`), so a tiny model learns the tasks: SST-2 polarity (with negation and `but`
clauses), CoLA acceptability (agreement, word order, doubled and dropped words), MRPC/QQP paraphrase of a fact
(vs one slot changed), MNLI 3-way and RTE/QNLI 2-way entailment, and STS-B scores in [0, 5] counting shared
attributes. MNLI's mismatched splits use the other "genre" of templates.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmbench.data.synthetic.scene import Scene, sample_scene
from mmbench.data.synthetic.text import (
    QUESTION_STYLES,
    STATEMENT_STYLES,
    acceptable_sentence,
    corrupt,
    fact_of,
    mutate,
    nli,
    question,
    review,
    rte,
    similar_pair,
    statement,
    wh_question,
)

# config -> (text columns, is regression)
CONFIGS: dict[str, tuple[tuple[str, ...], bool]] = {
    "cola": (("sentence",), False),
    "sst2": (("sentence",), False),
    "mrpc": (("sentence1", "sentence2"), False),
    "qqp": (("question1", "question2"), False),
    "stsb": (("sentence1", "sentence2"), True),
    "mnli": (("premise", "hypothesis"), False),
    "qnli": (("question", "sentence"), False),
    "rte": (("sentence1", "sentence2"), False),
}

Example = tuple[str, str | None, float]  # text, text pair, label
Generator = Callable[[Scene, random.Random, str], Example]


def _sst2(scene: Scene, rng: random.Random, split: str) -> Example:
    text, label = review(scene, rng)
    return text, None, label


def _cola(scene: Scene, rng: random.Random, split: str) -> Example:
    sentence = acceptable_sentence(scene, rng)
    if rng.random() < 0.5:
        return sentence, None, 1
    return corrupt(sentence, scene, rng), None, 0


def _paraphrase(as_question: bool, p_positive: float) -> Generator:
    """MRPC (statements) / QQP (questions): the same fact in another template (1), or a fact with one slot
    changed or of another kind (0)."""
    styles = QUESTION_STYLES if as_question else STATEMENT_STYLES
    render = question if as_question else statement

    def gen(scene: Scene, rng: random.Random, split: str) -> Example:
        o = rng.choice(scene.objects)
        kinds = ["exists", "position", "size", "count"]
        fact = fact_of(o, rng.choice(kinds), scene)
        first = rng.randrange(styles)
        if rng.random() < p_positive:
            return render(fact, first), render(fact, (first + rng.randrange(1, styles)) % styles), 1
        if rng.random() < 0.75:
            other = mutate(fact, rng)
        else:
            other = fact_of(rng.choice(scene.objects), rng.choice([k for k in kinds if k != fact.kind]), scene)
        return render(fact, first), render(other, rng.randrange(styles)), 0

    return gen


def _qnli(scene: Scene, rng: random.Random, split: str) -> Example:
    """A question about one object and a sentence that answers it (0), or that is about another object or
    another property (1)."""
    o = rng.choice(scene.objects)
    kind = rng.choice(["position", "size", "count"])
    fact = fact_of(o, kind, scene)
    if rng.random() < 0.5:
        return wh_question(fact), statement(fact, rng.randrange(STATEMENT_STYLES)), 0
    if rng.random() < 0.5:
        other = mutate(fact, rng)
        while other.kind != kind or (other.colour, other.shape) == (fact.colour, fact.shape):
            other = mutate(fact, rng)  # another object, same property
    else:
        other = fact_of(o, rng.choice([k for k in ("position", "size", "count") if k != kind]), scene)
    return wh_question(fact), statement(other, rng.randrange(STATEMENT_STYLES)), 1


def _mnli(scene: Scene, rng: random.Random, split: str) -> Example:
    label = rng.randrange(3)
    premise, hypothesis = nli(scene, rng, label, genre=1 if "mismatched" in split else 0)
    return premise, hypothesis, label


def _rte(scene: Scene, rng: random.Random, split: str) -> Example:
    label = rng.randint(0, 1)
    premise, hypothesis = rte(scene, rng, label)
    return premise, hypothesis, label


def _stsb(scene: Scene, rng: random.Random, split: str) -> Example:
    return similar_pair(rng)


GENERATORS: dict[str, Generator] = {
    "cola": _cola,
    "sst2": _sst2,
    "mrpc": _paraphrase(as_question=False, p_positive=0.6),
    "qqp": _paraphrase(as_question=True, p_positive=0.4),
    "stsb": _stsb,
    "mnli": _mnli,
    "qnli": _qnli,
    "rte": _rte,
}


def splits_of(config: str) -> list[str]:
    if config == "mnli":
        return ["train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"]
    return ["train", "validation", "test"]


def examples(config: str, split: str, n: int, seed: int) -> list[Example]:
    """Example i of a split depends only on (seed, config, split, i)."""
    gen = GENERATORS[config]
    out = []
    for i in range(n):
        rng = random.Random(f"{seed}/{config}/{split}/{i}")
        out.append(gen(sample_scene(rng, 1, 4), rng, split))
    return out


def write_glue(
    out: Path, n: int, seed: int, config: str, n_train: int = 2000, n_test: int = 16, split: str = "", **_: Any
) -> None:
    """Write one config's splits: train (`n_train`), validation (`n`) and test (`n_test`, labels -1)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if config not in CONFIGS:
        raise ValueError(f"synthetic glue: unknown config {config!r} (have: {', '.join(CONFIGS)})")
    columns, regression = CONFIGS[config]
    folder = Path(out) / config
    folder.mkdir(parents=True, exist_ok=True)
    for name in splits_of(config):
        size = n_train if name == "train" else n_test if name.startswith("test") else n
        rows = examples(config, name, size, seed)
        hidden = name.startswith("test")
        data: dict[str, Any] = {columns[0]: [r[0] for r in rows]}
        if len(columns) == 2:
            data[columns[1]] = [r[1] for r in rows]
        labels = [-1 if hidden else r[2] for r in rows]
        data["label"] = pa.array(labels, pa.float32() if regression else pa.int64())
        data["idx"] = pa.array(range(size), pa.int32())
        pq.write_table(pa.table(data), folder / f"{name}-00000-of-00001.parquet")
    if split and split not in splits_of(config):
        raise ValueError(f"synthetic glue: {config} has no split {split!r} (have: {', '.join(splits_of(config))})")
