"""CIDEr-D and its tokenizer (`mmbench.metrics.cider`) against pycocoevalcap 1.2, the scorer COCO captioning uses.

pycocoevalcap's `PTBTokenizer` runs the Stanford CoreNLP 3.4.1 jar it ships with `java`; its `Cider` is numpy. The
parity tests hand both the same inputs: a corpus of COCO-like captions from a seeded generator plus a hand-written
list of tricky ones (tokenizer), and a few hundred images with 5 references each and candidates of every quality
(scores). They skip when pycocoevalcap or java is missing; the rest of the file needs neither.
"""

from __future__ import annotations

import math
import random
import shutil

import pytest

from mmbench.metrics.cider import CiderScore, cider, ngram_counts, ptb_tokenize, tokenize_captions


def _pycocoevalcap(java: bool):
    if java and shutil.which("java") is None:
        pytest.skip("pycocoevalcap's PTBTokenizer runs a jar: java is not on PATH")
    cider_module = pytest.importorskip(
        "pycocoevalcap.cider.cider",
        reason="pycocoevalcap is not installed (pip install --no-deps -r requirements/parity.txt)",
    )
    tokenizer_module = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    return cider_module.Cider, tokenizer_module.PTBTokenizer


# Rules of the tokenizer, one or more per caption; each was also checked against the jar when written down.
TRICKY = [
    "A man's dog doesn't (really) like \"cats\"...",
    "He cannot go, he's gonna wanna leave; it's 3.5 km / 1,000 m.",
    "I'm sure it's 1 1/2 cups -- yes - no--ok etc.",
    "A café in Zürich: naïve résumé, crème brûlée & jalapeño.",
    "a [red] {blue} <image> sign reading 'STOP'",
    "Two people at AT&T, At&T and S&P-500 offices.",
    "A 6-year-old boy in a black-and-white T-shirt.",
    "The U.S. flag. The dog",
    "a.m. and p.m. e.g. i.e. vs. Mr. Smith, Dr. Who and St. Louis",
    "fig. 3 shows no. 5, no. five, Co. Ltd and Pty. Ltd.",
    "rock 'n' roll in the '90s at 10 o'clock with O'Neil",
    "can't won't shouldn't DON'T Can't ain't",
    "'Twas 'tis y'all ma'am 'em 'til li'l c'mon",
    "US$5, $5, £5, €5, 5¢, 50% and #1",
    "http://example.com/a?b=c. www.coco.org and a@b.com @user #tag",
    "A smiley :) ;-) :D ^_^ (^_^) and <3",
    "a dog . . . and a cat .... ok ... fine …",
    "She said “hello” and ‘bye’ «ciao»",
    "--- a ---- b ----- c -- d - e",
    "A  man   with   double  spaces\tand a tab",
    "the soft\u00adhyphen and non\u00a0breaking space",
    "emoji \U0001f600 in a caption \U0001f436!",
    "ΑΘΗΝΑ and Москва and 東京",
    "A C++ and C# book on a table.",
    "3/4/2010 10-20-2020 1/2 ½ ¼ 2-3 24/7 and/or w/",
    "(555) 123-4567 or 555-1234 or 555.123.4567",
    "plan B.",
    "A man riding a horse.",  # "B." above looks ahead into this caption: "plan b" here, "plan b." alone
    "a file.txt and a photo.jpg, image.png!",
    "-LRB- -lrb- and &amp; &quot;quoted&quot; &lt;b&gt;",
    "",
    "   ",
    ".",
    "?!",
    "A",
    "an Ark. store in ark. city, Calif. The end",
    "Dogs' bowls and James' car; the dogs's toy",
    "MULTIPLE CAPITALS ON A SIGN THAT SAYS 'OPEN'.",
    "a pizza with pepperoni,mushrooms,and olives.",
    "a sign that says:no parking!",
    "A man.A woman.",
    "The number 3.14159 and -5 and +7 and .5 and 5.",
    "two dogs(one brown)playing",
    "a 'quoted' word and a `backtick'",
    "a ```triple``` and ''double'' quote",
    "it is 5:30pm on 12/25",
    "A N.Y.C. taxi and a U.S.A. flag near U.K. shops",
    "he said: 'I'll go'",
    "x. The y. A z. an",
    "Someone's kid's toy.",
    # Tokens that cross captions: an acronym's lookahead over blank captions, a tag's quoted attribute.
    "vitamin C.",
    "",
    "  ",
    "A man with a cat",
    "a tag <a title='left open",
    "still open' here> and a dog",
]
# The captions whose tokens depend on a neighbour: tokenized alone they differ from pycocoevalcap's batch output.
NEIGHBOUR_DEPENDENT = {
    "plan B.": ("plan b", "plan b."),
    "vitamin C.": ("vitamin c", "vitamin c."),
    "a tag <a title='left open": ("a tag <a\u00a0title='left\u00a0open", "a tag < a title = left open"),
    "still open' here> and a dog": ("still\u00a0open'\u00a0here> and a dog", "still open here > and a dog"),
}

SUBJECTS = ["a man", "a woman", "two dogs", "a young boy", "an old lady", "three people", "a cat", "a brown horse",
            "the skier", "a group of kids", "some zebras", "a baseball player", "a chef", "the bus"]  # fmt: skip
VERBS = ["riding", "sitting on", "standing next to", "holding", "eating", "looking at", "walking down", "playing with",
         "flying over", "parked near", "jumping over", "laying on"]  # fmt: skip
OBJECTS = ["a red bicycle", "the beach", "a wooden table", "a slice of pizza", "a busy street", "a frisbee",
           "a snowy hill", "a large clock", "the kitchen counter", "a black-and-white photo", "a hot-dog stand",
           "an umbrella", "a stop sign"]  # fmt: skip
PLACES = ["in a park", "at night", "on a sunny day", "near the water", "in the kitchen", "at the U.S. Open",
          "in New York City", "by a café", "on 5th Ave.", "at 10:30 a.m.", "under a tree"]  # fmt: skip
DECORATIONS = [
    lambda s, r: s[0].upper() + s[1:],
    lambda s, r: s + ".",
    lambda s, r: s + " .",
    lambda s, r: s + "...",
    lambda s, r: s + "!",
    lambda s, r: s.replace(" ", "  ", 1),
    lambda s, r: s.replace(" a ", ' a "big" ', 1),
    lambda s, r: s.replace(" on ", " on (what looks like) ", 1),
    lambda s, r: s + ", it's " + r.choice(["sunny", "raining", "3.5 degrees", "1,000 feet up", "the dog's"]),
    lambda s, r: s + " that doesn't " + r.choice(["move", "care", "fit"]),
    lambda s, r: s + " -- " + r.choice(["wow", "nice", "ok"]),
    lambda s, r: s + "; " + r.choice(["2", "10", "100%", "$20", "#5"]) + " of them",
    lambda s, r: s.upper(),
    lambda s, r: s.replace("a ", "a naïve ", 1),
    lambda s, r: " " + s + " ",
    lambda s, r: s + " " + r.choice(["etc.", "e.g. this", "vs. that", "i.e."]),
]


def coco_like_caption(rng: random.Random) -> str:
    caption = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
    if rng.random() < 0.6:
        caption += " " + rng.choice(PLACES)
    for decorate in rng.sample(DECORATIONS, k=rng.randint(0, 3)):
        caption = decorate(caption, rng)
    return caption


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    rng = random.Random(2015)
    return TRICKY + [coco_like_caption(rng) for _ in range(400)]


# --- tokenizer -----------------------------------------------------------------------------------------------------


def test_tokenizer_matches_pycocoevalcap_on_a_corpus(corpus):
    _, PTBTokenizer = _pycocoevalcap(java=True)
    images = {i: [{"caption": c} for c in corpus[i : i + 5]] for i in range(0, len(corpus), 5)}
    expected = [line for lines in PTBTokenizer().tokenize(images).values() for line in lines]  # one jar run
    ours = tokenize_captions(corpus)
    differ = [(c, e, o) for c, e, o in zip(corpus, expected, ours) if e != o]
    print(f"\ntokenizer: {len(corpus)} captions, {len(differ)} differ from pycocoevalcap's PTBTokenizer")
    assert len(expected) == len(ours) == len(corpus)
    assert not differ, differ[:5]
    # One caption at a time gives the same except where a token depends on the neighbouring caption.
    alone = {c: (e, ptb_tokenize(c)) for c, e in zip(corpus, expected) if ptb_tokenize(c) != e}
    assert alone == NEIGHBOUR_DEPENDENT


def test_character_classes_match_the_jar():
    # Letters and digits come from Python's unicodedata minus the code points newer than the jar's Unicode tables:
    # probe all of those, both ways, and every 29th BMP character, in one jar run.
    from mmbench.metrics.ptb_rules import _JAR_ONLY_LETTERS, _NEWER_CODE_POINTS

    _, PTBTokenizer = _pycocoevalcap(java=True)
    line_breaks = {0x0A, 0x0B, 0x0C, 0x0D, 0x2028, 0x2029}  # known difference 1
    probes = sorted(_NEWER_CODE_POINTS | {ord(c) for c in _JAR_ONLY_LETTERS} | set(range(0, 0x10000, 29)))
    probes = [cp for cp in probes if cp not in line_breaks and not 0xD800 <= cp < 0xE000]
    captions = [f"a{chr(cp)}b {chr(cp)} 1{chr(cp)}2 x{chr(cp)}" for cp in probes]
    expected = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    ours = tokenize_captions(captions)
    differ = [hex(cp) for i, cp in enumerate(probes) if expected[i][0] != ours[i]]
    print(f"\ncharacter classes: {len(probes)} BMP characters probed, {len(differ)} differ")
    assert not differ


@pytest.mark.parametrize("caption", ["plan B.", "a smiley :)", "no. 5 etc."])
def test_one_caption_alone_matches_pycocoevalcap(caption):
    # The end of the text is a context of its own (":)" is a smiley only when something follows it).
    _, PTBTokenizer = _pycocoevalcap(java=True)
    assert ptb_tokenize(caption) == PTBTokenizer().tokenize({0: [{"caption": caption}]})[0][0]


def test_tokenizer_rules_by_hand():
    # Contractions split before the apostrophe; "n't" after a letter that is not n.
    assert ptb_tokenize("A dog's ball, it doesn't fit.") == "a dog 's ball it does n't fit"
    assert ptb_tokenize("cannot gonna") == "can not gon na"
    # Brackets become -LRB- etc. and -lowerCase makes them lower case, out of reach of pycocoevalcap's
    # upper-case PUNCTUATIONS; quotes become `` '' and are dropped.
    assert ptb_tokenize('a (red) "stop" [sign]') == "a -lrb- red -rrb- stop -lsb- sign -rsb-"
    # Numbers, abbreviations and hyphenated words stay whole; sentence periods and ellipses go.
    assert ptb_tokenize("3.5 kg, 1,000 U.S. soldiers... e.g. a well-known x-ray.") == (
        "3.5 kg 1,000 u.s. soldiers e.g. a well-known x-ray"
    )
    # Case-sensitive classes inside a case-insensitive lexer.
    assert ptb_tokenize("AT&T at&t") == "at&t at & t"
    # Spaces inside a fraction become U+00A0, which str.split() (and so CIDEr) splits on again.
    assert ptb_tokenize("1 1/2 cups") == "1\u00a01/2 cups"
    # A caption's own newline is a space; empty and punctuation-only captions give "".
    assert tokenize_captions(["a dog\non grass", "", " . ! ", "end"]) == ["a dog on grass", "", "", "end"]
    # The next caption decides an acronym-like last token ("A" is on the lexer's sentence-start list, "a" is not).
    assert tokenize_captions(["vitamin C.", "A man"])[0] == "vitamin c"
    assert tokenize_captions(["vitamin C.", "a man"])[0] == "vitamin c."


def test_line_breaks_inside_a_caption_are_spaces():
    # Known difference 1: the jar would start a new line at "\r" and shift every later caption by one.
    assert tokenize_captions(["a dog\ron grass", "a cat\u2028sleeping", "end"]) == [
        "a dog on grass",
        "a cat sleeping",
        "end",
    ]


# --- scores --------------------------------------------------------------------------------------------------------


def _dataset(rng: random.Random, images: int) -> tuple[dict[int, str], dict[int, list[str]]]:
    """Raw references (5 per image) and candidates: exact copies, partial overlaps, empty, unrelated, re-cased."""
    references = {i: [coco_like_caption(rng) for _ in range(5)] for i in range(images)}
    candidates = {}
    for i, refs in references.items():
        kind = i % 6
        if kind == 0:
            candidates[i] = refs[rng.randrange(5)]
        elif kind == 1:
            words = refs[rng.randrange(5)].split()
            candidates[i] = " ".join(w for w in words if rng.random() < 0.6)
        elif kind == 2:
            candidates[i] = ""
        elif kind == 3:
            candidates[i] = references[(i + 7) % images][0] if i >= 7 else coco_like_caption(rng)
        elif kind == 4:
            candidates[i] = refs[0].upper().rstrip(".") + "!"
        else:
            candidates[i] = coco_like_caption(rng)
    return candidates, references


def _pycocoevalcap_cider(Cider, candidates, references) -> CiderScore:
    keys = list(references)
    score, scores = Cider().compute_score({k: references[k] for k in keys}, {k: [candidates[k]] for k in keys})
    return CiderScore(float(score), dict(zip(keys, map(float, scores))))


def _max_diff(a: CiderScore, b: CiderScore) -> tuple[float, float]:
    assert a.per_image.keys() == b.per_image.keys()
    return abs(a.score - b.score), max(abs(a.per_image[k] - b.per_image[k]) for k in a.per_image)


def test_cider_matches_pycocoevalcap_on_tokenized_captions():
    Cider, _ = _pycocoevalcap(java=False)
    candidates, references = _dataset(random.Random(0), images=300)
    # Already-tokenized text: lower-case words, as the tokenizer would leave them.
    candidates = {k: " ".join(v.lower().replace(".", " ").split()) for k, v in candidates.items()}
    references = {k: [" ".join(r.lower().replace(".", " ").split()) for r in v] for k, v in references.items()}
    ours = cider(candidates, references, tokenized=True)
    reference = _pycocoevalcap_cider(Cider, candidates, references)
    corpus_diff, image_diff = _max_diff(ours, reference)
    print(f"\nCIDEr on tokenized input, 300 images: {ours.score:.6f} vs {reference.score:.6f}, "
          f"max |diff| corpus {corpus_diff:.2e}, per image {image_diff:.2e}")  # fmt: skip
    assert corpus_diff <= 1e-9 and image_diff <= 1e-9
    assert 0.1 < ours.score < 10  # a meaningful mix, not all zeros


def test_cider_pipeline_matches_pycocoevalcap_on_raw_captions():
    # What COCOEvalCap computes for "CIDEr": PTBTokenizer on references and on candidates, then Cider.
    Cider, PTBTokenizer = _pycocoevalcap(java=True)
    candidates, references = _dataset(random.Random(1), images=400)
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": r} for r in v] for k, v in references.items()})
    res = tokenizer.tokenize({k: [{"caption": c}] for k, c in candidates.items()})
    score, scores = Cider().compute_score(gts, res)
    reference = CiderScore(float(score), dict(zip(gts.keys(), map(float, scores))))
    ours = cider(candidates, references)
    corpus_diff, image_diff = _max_diff(ours, reference)
    print(f"\nCIDEr on raw captions, 400 images x 5 references: {ours.score:.6f} vs {reference.score:.6f}, "
          f"max |diff| corpus {corpus_diff:.2e}, per image {image_diff:.2e}")  # fmt: skip
    assert corpus_diff <= 1e-9 and image_diff <= 1e-9
    # Every kind of candidate is there: copies score high, empty ones 0.
    assert min(ours.per_image[k] for k in range(0, 400, 6)) > 1.0
    assert all(ours.per_image[k] == 0.0 for k in range(2, 400, 6))


def test_a_copy_of_the_references_beats_a_partial_caption():
    references = {
        0: ["a man riding a horse on the beach", "a person rides a horse along the shore"],
        1: ["two dogs playing with a frisbee", "a pair of dogs chase a frisbee in a park"],
        2: ["a plate of food on a table", "a dinner plate with pasta and salad"],
    }
    full = cider({0: references[0][0], 1: "dogs", 2: "food"}, references)
    partial = cider({0: "a man on the beach", 1: "dogs", 2: "food"}, references)
    assert full.per_image[0] > partial.per_image[0] > 0
    assert full.per_image[1] == partial.per_image[1]  # the other images do not move
    assert full.score > partial.score
    # Tokenization is applied: case and punctuation do not change a score.
    shouted = cider({0: "A MAN RIDING A HORSE, ON THE BEACH!", 1: "dogs", 2: "food"}, references)
    assert shouted.per_image[0] == full.per_image[0]


def test_one_image_scores_zero_as_in_pycocoevalcap():
    # With one image every n-gram's idf is log(1) - log(max(1, df)) = 0, so every vector is 0 and so is the score.
    candidates, references = {"only": "a cat on a mat"}, {"only": ["a cat on a mat", "a cat sitting on a mat"]}
    ours = cider(candidates, references)
    assert ours == CiderScore(0.0, {"only": 0.0})
    Cider, _ = _pycocoevalcap(java=False)
    assert _pycocoevalcap_cider(Cider, candidates, references) == ours


def test_ngram_counts_and_length_penalty_by_hand():
    assert ngram_counts("a b a b", max_n=2) == {("a",): 2, ("b",): 2, ("a", "b"): 2, ("b", "a"): 1}
    refs = {0: ["a b c d"], 1: ["x y z w"]}
    exact = cider({0: "a b c d", 1: "q"}, refs, tokenized=True).per_image[0]
    # idf of every n-gram of image 0 is log(2) - log(1); the candidate equals its only reference, so each cosine
    # is 1 and the length penalty is 1: 10 * mean(1, 1, 1, 1) / 1 reference = 10.
    assert exact == pytest.approx(10.0, abs=1e-12)
    # Two words more: "e" and "f" are in no reference, so their idf is log(2) - log(max(1, 0)), the same as the rest.
    # With equal weights each cosine is sqrt(shared / candidate n-grams), the references' n-grams all being shared:
    # sqrt(4/6), sqrt(3/5), sqrt(2/4), sqrt(1/3); delta = 5 - 3 bigrams gives the penalty exp(-2^2 / (2 * 6^2)).
    longer = cider({0: "a b c d e f", 1: "q"}, refs, tokenized=True).per_image[0]
    cosines = [math.sqrt(4 / 6), math.sqrt(3 / 5), math.sqrt(2 / 4), math.sqrt(1 / 3)]
    assert longer == pytest.approx(10 * sum(cosines) / 4 * math.exp(-4 / 72), abs=1e-12)


def test_mismatched_or_empty_inputs_name_the_image():
    with pytest.raises(ValueError, match=r"no candidate for \[2\]"):
        cider({1: "a cat"}, {1: ["a cat"], 2: ["a dog"]})
    with pytest.raises(ValueError, match=r"image 1 needs a non-empty list"):
        cider({1: "a cat"}, {1: []})
    with pytest.raises(ValueError, match=r"image 1 needs a non-empty list"):
        cider({1: "a cat"}, {1: "a cat"})
    with pytest.raises(ValueError, match="no images"):
        cider({}, {})
