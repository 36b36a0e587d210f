"""Tokenizer loading, and the tiny tokenizers the random-weight presets build locally (no download).

A preset's `tokenizer` is a hub id or local directory (loaded with `AutoTokenizer`), or one of the built-in tiny
tokenizers in `BUILTIN` (WordPiece for FLAVA, byte-level BPE for CLIP, sentencepiece for BEiT-3,
a GPT-style BPE with Flamingo's media tokens, a LLaMA BPE with IDEFICS's image tokens).
The tiny vocabularies hold a few hundred whole words plus every single character, so no ordinary text ever maps
to the unknown token (transformers 5 silently builds special-token-only tokenizers from the old `vocab_file=`
keyword; tests assert this does not happen here).
"""

from __future__ import annotations

import importlib
import string
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from mmbench.errors import CheckpointError, ConfigError
from mmbench.schema import ModelConfig

# Whole words: the synthetic scene grammar and the everyday words of GLUE-like sentences. Anything else is spelled
# out from single characters.
TINY_WORDS = """
a an the and or but not no yes is are was were be been it its this that these those there here of in on at to
from with without by for as than then so if what which who where when how many much more less most least very
one two three four five six seven eight nine ten zero some all each every both either neither other another
red green blue yellow purple orange white black gray grey brown pink cyan
circle circles square squares triangle triangles star stars shape shapes object objects thing things
small large big tiny huge left right top bottom middle center centre above below next beside near far
image picture photo scene background of colour color count number same different similar equal
cat dog man woman person people car tree house street water sky ball child children group
good bad great terrible happy sad nice awful love hate like best worst boring wonderful movie film story
man men woman women boy girl play plays playing sit sits sitting stand stands standing walk walks walking
question answer true false entailment neutral contradiction sentence means mean meaning
""".split()


@cache
def _words() -> tuple[str, ...]:
    return tuple(dict.fromkeys(TINY_WORDS))


def tiny_wordpiece(max_length: int = 77) -> Any:
    """A BERT WordPiece tokenizer over the tiny vocabulary (`[PAD]`=0, `[UNK]`=1, `[CLS]`=2, `[SEP]`=3)."""
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = specials + list(_words()) + chars + ["##" + c for c in string.ascii_lowercase + string.digits]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return BertTokenizer(vocab=vocab, model_max_length=max_length)


def _bpe_encode(word: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges by rank (lowest first) to one word's symbols, as the `tokenizers` BPE model does."""
    while len(word) > 1:
        pairs = [(ranks.get(p, 1 << 30), i) for i, p in enumerate(zip(word, word[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        word = word[:i] + [word[i] + word[i + 1]] + word[i + 2 :]
    return word


def tiny_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """Merges that make every word one token (CLIP's word-final `</w>` symbols)."""
    return chained_merges(list(word[:-1]) + [word[-1] + "</w>"] for word in words)


def chained_merges(words: Iterable[list[str]]) -> list[tuple[str, str]]:
    """Merges that make each word (a list of initial symbols) one token, built deterministically: for each word in
    turn, encode it with the merges so far and chain its remaining pieces left to right. New merges rank after all
    earlier ones, so they never change how an earlier word encodes. (The `tokenizers` trainer breaks frequency ties
    differently in every process, which would give a tiny model different token ids on every run.)"""
    ranks: dict[tuple[str, str], int] = {}
    for symbols in words:
        pieces = _bpe_encode(symbols, ranks)
        merged = pieces[0]
        for nxt in pieces[1:]:
            ranks.setdefault((merged, nxt), len(ranks))
            merged += nxt
    return sorted(ranks, key=ranks.get)


def tiny_bpe(max_length: int = 77) -> Any:
    """A CLIP byte-level BPE tokenizer: all 256 byte symbols (plain and word-final) plus merges that make every
    tiny-vocabulary word a single token."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    merges = tiny_merges(_words())
    tokens = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


# IDEFICS's tokens for images (`IdeficsProcessor` spells them so; idefics-9b's vocabulary adds exactly these two, at
# ids 32000 and 32001, and no `<end_of_utterance>`: that one only the instruct checkpoints have).
IDEFICS_IMAGE_TOKENS = ("<fake_token_around_image>", "<image>")
# The words of OpenFlamingo's in-context prompts that TINY_WORDS lacks ("Short answer:", "Output:", ...), so that
# 32-shot prompts stay well inside the tiny model's context.
PROMPT_WORDS = ("short", "output", "written", "hateful", "caption")


def tiny_idefics(max_length: int = 2048) -> Any:
    """A LLaMA tokenizer (idefics-9b's kind: BPE with byte fallback, `▁` for spaces, BOS added, `<unk>` as pad)
    whose merges make each tiny-vocabulary word, lower-case and capitalised, one token with and without its `▁`;
    every printable ASCII character is a token, anything else (a newline) falls back to its `<0xNN>` byte, as in
    LLaMA's vocabulary. IDEFICS's two image tokens come right after the base vocabulary, as in idefics-9b."""
    from transformers import LlamaTokenizer

    words = list(dict.fromkeys(w for word in (*_words(), *PROMPT_WORDS) for w in (word, word.capitalize())))
    merges = chained_merges([*(list(w) for w in words), *(["▁", *w] for w in words)])
    chars = [c for c in string.printable if not c.isspace()]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), "▁", *chars, *(a + b for a, b in merges)]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    # add_bos_token: LLaMA tokenizers add BOS, but built from a vocabulary they do not unless told.
    tok = LlamaTokenizer(vocab=vocab, merges=merges, pad_token="<unk>", add_bos_token=True, model_max_length=max_length)
    tok.add_special_tokens({"additional_special_tokens": list(IDEFICS_IMAGE_TOKENS)})
    return tok


# Built-in tiny tokenizers, addressed lazily ("module:function") so that wrappers' modules load only when used.
BUILTIN: dict[str, str] = {
    "mmbench:tiny-wordpiece": "mmbench.models.tokenizers:tiny_wordpiece",  # FLAVA (BERT WordPiece)
    "mmbench:tiny-bpe": "mmbench.models.tokenizers:tiny_bpe",  # CLIP (byte-level BPE)
    "mmbench:tiny-sentencepiece": "mmbench.models.beit3_tokenizer:tiny_sentencepiece",  # BEiT-3 (XLM-R layout)
    "mmbench:tiny-flamingo": "mmbench.models.flamingo:tiny_flamingo_tokenizer",  # causal LM + <image> tokens
    "mmbench:tiny-idefics": "mmbench.models.tokenizers:tiny_idefics",  # LLaMA BPE + IDEFICS image tokens
}


def builtin_tokenizer(name: str, max_length: int) -> Any:
    module, _, attr = BUILTIN[name].partition(":")
    return getattr(importlib.import_module(module), attr)(max_length)


def load_tokenizer(cfg: ModelConfig, default: str | None = None) -> Any:
    """The preset's tokenizer: built-in tiny, or `AutoTokenizer` over the tokenizer/checkpoint id or directory."""
    from mmbench.models.base import hf_loading, is_local_path

    source = cfg.tokenizer or default or cfg.checkpoint
    if not source:
        raise ConfigError(f"model {cfg.name!r}: key 'tokenizer': no tokenizer and no checkpoint to take it from")
    if source.startswith("mmbench:"):
        if source not in BUILTIN:
            raise ConfigError(f"model {cfg.name!r}: key 'tokenizer': unknown built-in {source!r} ({sorted(BUILTIN)})")
        return builtin_tokenizer(source, cfg.max_text_length)
    if is_local_path(source) and not Path(source).expanduser().exists():
        raise CheckpointError(f"model {cfg.name!r}: checkpoint path {source} does not exist (looked for the tokenizer)")
    from transformers import AutoTokenizer

    with hf_loading(cfg, "tokenizer"):
        return AutoTokenizer.from_pretrained(source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
