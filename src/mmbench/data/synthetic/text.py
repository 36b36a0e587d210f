"""Sentences about scenes: the text side of the scene world, for the synthetic GLUE tasks.

A *fact* is a small claim about a scene (an object exists, sits in a cell, has a size; how many shapes of a colour
there are), rendered by one of several templates. Templates of the same fact are paraphrases; changing one slot of a
fact changes its meaning. Everything a label says is decided by the scene, so the tasks built on this are learnable
by reading (and comparing) words, which is what a tiny model can do. The words are mostly the tiny tokenizers'
whole-word vocabulary (`mmbench.models.tokenizers.TINY_WORDS`), keeping sequences short.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from mmbench.data.synthetic.scene import COLOURS, COLS, ROWS, SHAPES, SIZES, Obj, Scene, number_word

KINDS = ("exists", "position", "size", "count")
PICTURES = ("picture", "image", "photo", "scene")


@dataclass(frozen=True)
class Fact:
    kind: str  # exists | position | size | count
    colour: str = ""
    shape: str = ""  # "" for count facts (they count shapes of a colour)
    cell: int = -1
    size: str = ""
    count: int = -1

    def holds(self, scene: Scene) -> bool:
        match = [o for o in scene.objects if o.colour == self.colour and (not self.shape or o.shape == self.shape)]
        if self.kind == "exists":
            return bool(match)
        if self.kind == "count":
            return len(match) == self.count
        if self.kind == "position":
            return any(o.cell == self.cell for o in match)
        return any(o.size == self.size for o in match)


def where(cell: int) -> str:
    return "centre" if cell == 4 else f"{ROWS[cell // 3]} {COLS[cell % 3]}"


def a(phrase: str) -> str:
    """The indefinite article the phrase takes ("an orange circle")."""
    return f"{'an' if phrase[:1] in 'aeiou' else 'a'} {phrase}"


def plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


def listing(objs: list[Obj] | tuple[Obj, ...], with_size: bool = False) -> str:
    return " and ".join(a(o.phrase(with_size)) for o in objs)


def fact_of(o: Obj, kind: str, scene: Scene) -> Fact:
    """The true fact of `kind` about object `o` of `scene`."""
    if kind == "count":
        return Fact("count", colour=o.colour, count=scene.count(colour=o.colour))
    return Fact(
        kind, o.colour, o.shape, cell=o.cell if kind == "position" else -1, size=o.size if kind == "size" else ""
    )


def mutate(fact: Fact, rng: random.Random) -> Fact:
    """The same fact with one slot changed, so that it means something else."""
    options = ["colour"] + (["shape"] if fact.shape else [])
    options += {"position": ["cell"], "size": ["size"], "count": ["count"]}.get(fact.kind, [])
    slot = rng.choice(options)
    if slot == "colour":
        return replace(fact, colour=rng.choice([c for c in COLOURS if c != fact.colour]))
    if slot == "shape":
        return replace(fact, shape=rng.choice([s for s in SHAPES if s != fact.shape]))
    if slot == "cell":
        return replace(fact, cell=rng.choice([c for c in range(9) if c != fact.cell]))
    if slot == "size":
        return replace(fact, size=next(s for s in SIZES if s != fact.size))
    return replace(fact, count=rng.choice([n for n in range(1, 5) if n != fact.count]))


# ---- statements and questions; `style` picks a template, so two styles of one fact are paraphrases ------------
STATEMENT_STYLES = 3
QUESTION_STYLES = 2


def statement(f: Fact, style: int) -> str:
    c, s = f.colour, f.shape
    n = number_word(f.count) if f.count >= 0 else ""
    forms = {
        "exists": [f"there is {a(c)} {s}", f"{a(c)} {s} is in the picture", f"the image has {a(c)} {s} in it"],
        "position": [
            f"the {c} {s} is at the {where(f.cell)}",
            f"at the {where(f.cell)} there is {a(c)} {s}",
            f"{a(c)} {s} is in the {where(f.cell)} of the image",
        ],
        "size": [f"the {c} {s} is {f.size}", f"there is a {f.size} {c} {s}", f"the {s} that is {c} is {f.size}"],
        "count": [
            f"there are {n} {c} shapes" if f.count != 1 else f"there is one {c} shape",
            f"the picture has {n} {c} {'shape' if f.count == 1 else 'shapes'}",
            f"{n} of the shapes are {c}" if f.count != 1 else f"one of the shapes is {c}",
        ],
    }[f.kind]
    return forms[style % len(forms)]


def question(f: Fact, style: int) -> str:
    """A yes/no question whose answer is the fact (QQP-style duplicates share the fact)."""
    c, s = f.colour, f.shape
    forms = {
        "exists": [f"is there {a(c)} {s} ?", f"is {a(c)} {s} in the picture ?"],
        "position": [f"is the {c} {s} at the {where(f.cell)} ?", f"is there {a(c)} {s} at the {where(f.cell)} ?"],
        "size": [f"is the {c} {s} {f.size} ?", f"is there a {f.size} {c} {s} ?"],
        "count": [
            f"are there {number_word(f.count)} {c} shapes ?" if f.count != 1 else f"is there one {c} shape ?",
            f"how many {c} shapes are there , {number_word(f.count)} ?",
        ],
    }[f.kind]
    return forms[style % len(forms)]


def wh_question(f: Fact) -> str:
    """The open question that `f` answers (QNLI)."""
    if f.kind == "position":
        return f"where is the {f.colour} {f.shape} ?"
    if f.kind == "size":
        return f"how big is the {f.colour} {f.shape} ?"
    if f.kind == "count":
        return f"how many {f.colour} shapes are there ?"
    return f"is there {a(f.colour)} {f.shape} ?"


# ---- sentiment (SST-2) ------------------------------------------------------------------------------------------
POSITIVE = ("good", "great", "happy", "nice", "wonderful")
NEGATIVE = ("bad", "terrible", "sad", "awful", "boring")


def review(scene: Scene, rng: random.Random) -> tuple[str, int]:
    """A one-sentence opinion about the picture; 1 = positive. Negation and `but` clauses make word order count."""
    label = rng.randint(0, 1)
    objs, pic = list(scene.objects), rng.choice(PICTURES)
    first = objs[0].phrase()

    def adj(positive: bool) -> str:
        return rng.choice(POSITIVE if positive else NEGATIVE)

    form = rng.randrange(5)
    if form == 0:
        return f"this {pic} of {listing(objs)} on a {scene.background} background is {adj(label == 1)}", label
    if form == 1:
        return f"i {'love' if label else 'hate'} this {pic} of {listing(objs)}", label
    if form == 2:
        return f"{a(adj(label == 1))} {pic} with {listing(objs)}", label
    if form == 3:  # negation flips the adjective
        return f"this {pic} of {a(first)} is not {adj(label == 0)}", label
    return f"the {first} is {adj(label == 0)} but the {pic} is {adj(label == 1)}", label  # the main clause decides


# ---- acceptability (CoLA) ---------------------------------------------------------------------------------------
def acceptable_sentence(scene: Scene, rng: random.Random) -> str:
    o = rng.choice(scene.objects)
    kind = rng.choice(KINDS)
    if rng.random() < 0.25:
        return f"{listing(scene.objects)} {'is' if len(scene.objects) == 1 else 'are'} in the {rng.choice(PICTURES)}"
    return statement(fact_of(o, kind, scene), rng.randrange(STATEMENT_STYLES))


def corrupt(sentence: str, scene: Scene, rng: random.Random) -> str:
    """An ungrammatical variant: agreement error, adjective after noun, doubled or dropped word, swapped words."""
    words = sentence.split()
    how = rng.randrange(5)
    o = rng.choice(scene.objects)
    if how == 0:  # number agreement
        n = rng.randint(2, 4)
        return rng.choice(
            [f"there is {number_word(n)} {o.colour} {o.shape}s", f"there are {a(o.colour)} {o.shape}"]
            + [f"{number_word(n)} {o.colour} {o.shape} is in the picture"]
        )
    if how == 1:  # noun before its adjective
        return f"{a(o.shape)} {o.colour} is at the {where(o.cell)}"
    if how == 2 and len(words) > 3:  # a function word twice
        i = rng.choice([i for i, w in enumerate(words) if w in ("the", "a", "is", "are", "at", "in")] or [0])
        return " ".join(words[: i + 1] + [words[i]] + words[i + 1 :])
    if how == 3 and len(words) > 3:  # the verb dropped
        verbs = [i for i, w in enumerate(words) if w in ("is", "are", "has")]
        if verbs:
            return " ".join(words[: verbs[0]] + words[verbs[0] + 1 :])
    i = rng.randrange(len(words) - 1)  # two neighbouring words swapped
    if words[i] == words[i + 1]:
        return f"{o.shape} the {o.colour} is at the {where(o.cell)}"
    return " ".join(words[:i] + [words[i + 1], words[i]] + words[i + 2 :])


# ---- entailment (MNLI, RTE) -------------------------------------------------------------------------------------
def absent_object(scene: Scene, rng: random.Random) -> tuple[str, str]:
    present = {(o.colour, o.shape) for o in scene.objects}
    return rng.choice([(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present])


def nli(scene: Scene, rng: random.Random, label: int, genre: int) -> tuple[str, str]:
    """Premise listing every object (colour and shape only, nothing else) and a hypothesis that is entailed
    (0), unknown from it (1: sizes and positions are not stated) or contradicted (2: the list is exhaustive).
    Genre 1 (MNLI's mismatched splits) frames the premise differently and adds hypothesis forms of its own."""
    objs, pic = list(scene.objects), rng.choice(PICTURES)
    n = len(objs)
    if genre == 0:
        premise = f"the {pic} shows {number_word(n)} {plural('shape', n)} : {listing(objs)}"
    else:
        premise = f"on a {scene.background} background you can see only {listing(objs)}"
    o = rng.choice(objs)
    size = rng.choice(list(SIZES))
    if label == 0:
        options = [f"there is {a(o.colour)} {o.shape}", count_sentence(n)]
        extra = [f"{a(o.colour)} {o.shape} is in the {pic}", f"the {pic} has {a(o.colour)} shape"]
    elif label == 1:
        options = [
            f"the {o.colour} {o.shape} is {size}",
            f"the {o.colour} {o.shape} is at the {where(rng.randrange(9))}",
        ]
        extra = [f"a {size} {o.shape} is in the {pic}", f"there is a {size} {o.colour} {o.shape}"]
    else:
        c, s = absent_object(scene, rng)
        options = [
            f"there is no {o.colour} {o.shape}",
            f"there is {a(c)} {s}",
            count_sentence(rng.choice([k for k in range(1, 6) if k != n])),
        ]
        extra = [f"the {pic} has no {o.colour} {o.shape}", f"{a(c)} {s} is in the {pic}"]
    return premise, rng.choice(options + extra if genre == 1 else options)


def rte(scene: Scene, rng: random.Random, label: int) -> tuple[str, str]:
    """Premise stating where every object is; hypothesis entailed (0) or not (1: false or not stated)."""
    objs = list(scene.objects)
    premise = " , ".join(f"{a(o.phrase())} is at the {where(o.cell)}" for o in objs)
    o = rng.choice(objs)
    if label == 0:
        return premise, rng.choice([f"the {o.phrase()} is at the {where(o.cell)}", f"there is {a(o.phrase())}"])
    c, s = absent_object(scene, rng)
    other = rng.choice([k for k in range(9) if k != o.cell])
    options = [
        f"the {o.phrase()} is at the {where(other)}",
        f"there is {a(c)} {s}",
        f"there is no {o.colour} {o.shape}",
        f"the {o.phrase()} is {rng.choice(list(SIZES))}",  # not stated: not entailed
    ]
    return premise, rng.choice(options)


# ---- similarity (STS-B) -----------------------------------------------------------------------------------------
def count_sentence(n: int) -> str:
    return "there is one shape" if n == 1 else f"there are {number_word(n)} shapes"


def described(o: Obj, style: int) -> str:
    if style == 0:
        return f"a {o.size} {o.colour} {o.shape} at the {where(o.cell)}"
    return f"at the {where(o.cell)} there is a {o.size} {o.colour} {o.shape}"


def similar_pair(rng: random.Random) -> tuple[str, str, float]:
    """Two object descriptions sharing k of their 5 attributes (size, colour, shape, row, column): score k,
    jittered by up to 0.3 and kept in [0, 5]."""
    a = Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(SIZES)), rng.randrange(9))
    k = rng.randint(0, 5)
    changed = set(rng.sample(["size", "colour", "shape", "row", "col"], 5 - k))
    shape = rng.choice([s for s in SHAPES if s != a.shape]) if "shape" in changed else a.shape
    colour = rng.choice([c for c in COLOURS if c != a.colour]) if "colour" in changed else a.colour
    size = next(s for s in SIZES if s != a.size) if "size" in changed else a.size
    row = rng.choice([r for r in range(3) if r != a.cell // 3]) if "row" in changed else a.cell // 3
    col = rng.choice([c for c in range(3) if c != a.cell % 3]) if "col" in changed else a.cell % 3
    b = Obj(shape, colour, size, row * 3 + col)
    score = min(5.0, max(0.0, k + rng.uniform(-0.3, 0.3)))
    return described(a, rng.randrange(2)), described(b, rng.randrange(2)), round(score, 3)
