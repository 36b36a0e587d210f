"""BEiT-3 without the reference: the tiny tokenizer's id layout."""

from __future__ import annotations

import pytest

from mmbench.models.beit3_tokenizer import SPM_FILENAME, tiny_sentencepiece, tiny_sentencepiece_model


@pytest.fixture(autouse=True)
def _offline_cache(tmp_path_factory, monkeypatch):
    """No network, and downloads/generated tokenizers go to a per-session temporary cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MMBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "mmbench-cache"))


# ---- tokenizer ---------------------------------------------------------------------------------------------------
def test_tiny_tokenizer_has_the_fairseq_layout():
    import sentencepiece as spm

    tok = tiny_sentencepiece(64)
    sp = spm.SentencePieceProcessor(model_file=str(tiny_sentencepiece_model() / SPM_FILENAME))
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == sp.get_piece_size() + 1 == len(tok) - 1
    text = "A red circle is left of the blue square, and 42 dogs sit near a Zebra ☃."
    pieces = sp.encode(text)
    assert sp.unk_id() in pieces  # the snowman: sentencepiece's <unk> (0) must become 3, not 0 + 1
    assert tok(text, add_special_tokens=False).input_ids == [3 if i == sp.unk_id() else i + 1 for i in pieces]

    ordinary = "the cat and the dog play with two small red balls in the garden"
    ids = tok(ordinary).input_ids
    assert ids[0] == 0 and ids[-1] == 2 and tok.unk_token_id not in ids
    for word in ("red", "circle", "square", "left"):  # frequent words of the tiny corpus are single pieces
        assert sp.piece_to_id("▁" + word) != sp.unk_id()
        assert tok(word, add_special_tokens=False).input_ids == [sp.piece_to_id("▁" + word) + 1]


def test_tiny_sentencepiece_model_is_deterministic(tmp_path, monkeypatch):
    models = []
    for name in ("a", "b"):
        monkeypatch.setenv("MMBENCH_CACHE", str(tmp_path / name))
        models.append((tiny_sentencepiece_model() / SPM_FILENAME).read_bytes())
    assert models[0] == models[1]
