"""Tokenizer loading, and the tiny tokenizers the random-weight presets build locally (no download).

A preset's `tokenizer` is a hub id or local directory (loaded with `AutoTokenizer`), or one of the built-in tiny
tokenizers `mmbench:tiny-wordpiece` (BERT WordPiece, FLAVA-style) and `mmbench:tiny-bpe` (CLIP byte-level BPE).
The tiny vocabularies hold a few hundred whole words plus every single character, so no ordinary text ever maps
to the unknown token (transformers 5 silently builds special-token-only tokenizers from the old `vocab_file=`
keyword; tests assert this does not happen here).
"""

from __future__ import annotations

import string
from functools import lru_cache
from typing import Any

from mmbench.errors import ConfigError
from mmbench.models.flamingo import tiny_flamingo_tokenizer
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


@lru_cache(maxsize=None)
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


def tiny_bpe(max_length: int = 77) -> Any:
    """A CLIP byte-level BPE tokenizer: all 256 byte symbols (plain and word-final) plus merges for whole words."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    for word in _words():
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for nxt in pieces[1:]:
            merges.append((merged, nxt))
            merged += nxt
            vocab_list.append(merged)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(vocab_list))}
    merges = list(dict.fromkeys(merges))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


BUILTIN = {
    "mmbench:tiny-wordpiece": tiny_wordpiece,
    "mmbench:tiny-bpe": tiny_bpe,
    "mmbench:tiny-flamingo": tiny_flamingo_tokenizer,
}


def load_tokenizer(cfg: ModelConfig, default: str | None = None) -> Any:
    """The preset's tokenizer: built-in tiny, or `AutoTokenizer` over the tokenizer/checkpoint id or directory."""
    from mmbench.models.base import hf_loading

    source = cfg.tokenizer or default or cfg.checkpoint
    if not source:
        raise ConfigError(f"model {cfg.name!r}: key 'tokenizer': no tokenizer and no checkpoint to take it from")
    if source.startswith("mmbench:"):
        if source not in BUILTIN:
            raise ConfigError(f"model {cfg.name!r}: key 'tokenizer': unknown built-in {source!r} ({sorted(BUILTIN)})")
        return BUILTIN[source](cfg.max_text_length)
    from transformers import AutoTokenizer

    with hf_loading(cfg, "tokenizer"):
        return AutoTokenizer.from_pretrained(source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
