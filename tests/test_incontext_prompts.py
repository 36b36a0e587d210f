"""In-context prompts and demonstration choice (`mmbench.data.prompts`) against OpenFlamingo's eval rules.

OpenFlamingo's prompt methods live in `open_flamingo/eval/models/open_flamingo.py`, which the 2.0.1 wheel does not
ship, so the prompts are checked against strings written out by hand from that file (`get_vqa_prompt`,
`get_hateful_memes_prompt`) and `evaluate.py`'s joining rules; the helpers the wheel does ship
(`eval/utils.compute_effective_num_shots`, `eval/vqa_metric.postprocess_vqa_generation`) are imported and compared.
"""

from __future__ import annotations

import importlib.util
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pytest
import torch

from mmbench.data.prompts import (
    PromptBuilder,
    build_prompt,
    effective_shots,
    query_set,
    random_demonstrations,
    template_fields,
)
from mmbench.errors import ConfigError
from mmbench.metrics.vqa import postprocess_generation
from mmbench.protocols.incontext import _nearest


def _open_flamingo_eval(module: str):
    """open_flamingo/eval/<module>.py loaded from its file (the package __init__ imports open_clip)."""
    try:
        path = Path(distribution("open-flamingo").locate_file(f"open_flamingo/eval/{module}.py"))
    except PackageNotFoundError:
        pytest.skip("open-flamingo is not installed (pip install --no-deps -r requirements/parity.txt)")
    spec = importlib.util.spec_from_file_location(f"_of_eval_{module}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


VQA_DEMOS = [
    {"index": 0, "text": "What color is the circle?", "answers": ["red", "red", "dark red"]},
    {"index": 1, "text": "How many squares are there?", "answers": ["2", "two"]},
]
VQA_QUERY = {"index": 7, "text": "Is there a star?", "answers": ["yes"]}
HM_DEMOS = [
    {"index": 0, "text": "have a nice day", "label": 0},
    {"index": 1, "text": "you people are vermin", "label": 1},
]
HM_QUERY = {"index": 9, "text": "look at this cat", "label": 0}


def _templates(registry, task):
    p = registry.task(task).incontext
    return p.demonstration, p.query, list(p.class_names)


def test_vqa_prompt_is_openflamingos(registry):
    demo, query, names = _templates(registry, "vqav2_fewshot")
    prompt = build_prompt(VQA_DEMOS, VQA_QUERY, demo, query, names, text_only_demos=False)
    assert prompt == (
        "<image>Question:What color is the circle? Short answer:red<|endofchunk|>\n"
        "<image>Question:How many squares are there? Short answer:2<|endofchunk|>\n"
        "<image>Question:Is there a star? Short answer:"
    )


def test_zero_shot_keeps_the_demonstrations_text_without_their_images(registry):
    demo, query, names = _templates(registry, "vqav2_fewshot")
    prompt = build_prompt(VQA_DEMOS, VQA_QUERY, demo, query, names, text_only_demos=True)
    assert prompt == (
        "Question:What color is the circle? Short answer:red<|endofchunk|>\n"
        "Question:How many squares are there? Short answer:2<|endofchunk|>\n"
        "<image>Question:Is there a star? Short answer:"
    )


def test_hateful_memes_prompt_is_openflamingos(registry):
    demo, query, names = _templates(registry, "hateful_memes_fewshot")
    prompt = build_prompt(HM_DEMOS, HM_QUERY, demo, query, names, text_only_demos=False)
    assert names == ["no", "yes"]
    assert prompt == (
        "<image>is an image with: 'have a nice day' written on it. Is it hateful? Answer:no<|endofchunk|>"
        "<image>is an image with: 'you people are vermin' written on it. Is it hateful? Answer:yes<|endofchunk|>"
        "<image>is an image with: 'look at this cat' written on it. Is it hateful? Answer:"
    )


@pytest.mark.parametrize("task", ["coco_fewshot", "flickr30k_fewshot"])
def test_caption_prompt_is_openflamingos(registry, task):
    demo, query, names = _templates(registry, task)
    demos = [{"index": 0, "captions": [" A dog runs on the beach. ", "a dog"]}, {"index": 1, "captions": ["Two cats."]}]
    prompt = build_prompt(demos, {"index": 5, "captions": ["hidden"]}, demo, query, names, text_only_demos=False)
    assert (
        prompt
        == "<image>Output:A dog runs on the beach.<|endofchunk|>\n<image>Output:Two cats.<|endofchunk|>\n<image>Output:"
    )


def test_the_query_never_shows_its_own_target(registry):
    """A template that (by mistake) names the answer field still cannot leak the query's answer or label."""
    prompt = build_prompt([], {"index": 0, "text": "q?", "answers": ["secret"], "label": 1}, "",
                          "{question}{answer}{class_name}", ["no", "yes"], text_only_demos=False)  # fmt: skip
    assert prompt == "q?"


def test_caption_postprocessing_is_openflamingos():
    from mmbench.protocols.incontext import postprocess_caption

    # open_flamingo/eval/coco_metric.py imports pycocotools at module level, so its one-liner is written out here:
    # `predictions.split("Output", 1)[0]`, then evaluate_captioning's `.replace('"', "")`.
    cases = {"a dog Output: a cat": "a dog ", 'the "big" dog': "the big dog", "x": "x"}
    for text, want in cases.items():
        assert postprocess_caption(text) == want


@pytest.mark.parametrize("shots", [0, 4, 8, 16, 32])
def test_effective_shots_follow_openflamingo(shots):
    utils = _open_flamingo_eval("utils")
    assert effective_shots(shots, 2) == utils.compute_effective_num_shots(shots, "open_flamingo")


def test_answer_postprocessing_is_openflamingos():
    ref = _open_flamingo_eval("vqa_metric").postprocess_vqa_generation
    texts = ["red", "red Question:what", "two, three", "yes\nQuestion", "Short answer: no", "a, b, c", "  blue  ",
             "AnswerQuestion", "it is green. Answer: red", ""]  # fmt: skip
    for t in texts:
        assert postprocess_generation(t) == ref(t), t


def test_unknown_template_field_names_the_key():
    with pytest.raises(ConfigError, match=r"key 'incontext.query': unknown field \{ocr\}"):
        template_fields("<image>is an image with: '{ocr}' written on it.", "incontext.query")
    assert template_fields("<image>Question:{question} Short answer:{answer}", "k") == ["question", "answer"]


def test_demonstrations_depend_only_on_seed_and_query():
    pool = query_set(5000, 2048, seed=42)
    assert len(pool) == len(set(pool.tolist())) == 2048 and pool.max() < 5000
    assert not np.array_equal(pool, query_set(5000, 2048, seed=43))
    first = [random_demonstrations(pool, 8, 42, i) for i in range(20)]
    again = [random_demonstrations(pool, 8, 42, i) for i in reversed(range(20))][::-1]  # any order, same draws
    assert first == again
    assert all(len(set(d)) == 8 and set(d) <= set(pool.tolist()) for d in first)
    assert len({tuple(d) for d in first}) == 20  # each query its own draw
    with pytest.raises(ConfigError, match="query set holds 3"):
        random_demonstrations(pool[:3], 4, 42, 0)


def test_prompt_builder_shows_the_drawn_demonstrations_with_their_images(registry):
    demo, query, names = _templates(registry, "vqav2_fewshot")
    train = [{"index": i, "text": f"q{i}?", "answers": [f"a{i}"], "image": i} for i in range(50)]
    transform = lambda i: torch.full((3, 2, 2), float(i))  # noqa: E731 - the image is its index
    pool = query_set(len(train), 20, seed=1)
    for shots in (4, 0):
        k = effective_shots(shots, 2)
        builder = PromptBuilder(train, transform, demo, query, names, shots, k, seed=1, pool=pool)
        item = builder({"index": 3, "text": "what?", "answers": ["x"], "image": 99})
        chosen = random_demonstrations(pool, k, 1, 3)
        expected = build_prompt([train[i] for i in chosen], {"text": "what?", "answers": []}, demo, query, names,
                                shots == 0)  # fmt: skip
        assert item["prompt"] == expected
        shown = [*chosen, 99] if shots else [99]
        assert item["images"][:, 0, 0, 0].tolist() == [float(i) for i in shown]


def test_rices_order_is_nearest_last_and_ties_go_to_the_lower_index():
    gen = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(40, 8, generator=gen), dim=1)
    bank = torch.cat([bank, bank[:10]])  # exact ties: the same image under two indices
    q = torch.cat([bank[:5] + 0.01 * torch.randn(5, 8, generator=gen), torch.randn(3, 8, generator=gen)])
    got = _nearest(q, bank, 6)
    sim = (q @ bank.T).tolist()
    for row, picks in zip(sim, got.tolist()):
        brute = sorted(range(len(row)), key=lambda j: (-row[j], j))[:6]  # best first, lower index among equals
        assert picks == brute
