"""BEiT-3 (Wang et al., CVPR 2023, "Image as a Foreign Language"): the released checkpoints of microsoft/unilm/beit3.

Mirrors `torchscale==0.3.0`'s `BEiT3` for the backbone (`beit3_layers.py`, same state-dict keys, so a released
`beit3_*.pth` loads as it is: `beit3.<torchscale key>` plus head keys) and unilm's `beit3/modeling_finetune.py` for
the heads. Proven by tests/test_beit3_parity.py (equal to torchscale with every parameter randomised: image only,
text only, image+text with ragged padding) and tests/test_beit3.py (expert and padding invariants, the released
checkpoint layout, position interpolation, the wrapper contract).

Which pooled state each capability uses, and why (each is what the unilm head built for that use reads):
- IMAGE: a LayerNorm (`fc_norm`) of the mean patch token of a vision-only pass, before the encoder's final
  LayerNorm: `BEiT3ForImageClassification`, which unilm builds with `normalize_output=False`. `fc_norm` is trained
  only in the `*_in1k` checkpoints; elsewhere it starts as unilm starts it (weight 1, bias 0), a plain LayerNorm.
- TEXT: the `<s>` state (x[:, 0]) of a language-only pass after the final LayerNorm: what `language_head` reads in
  `BEiT3ForRetrieval`, i.e. BEiT-3's sentence representation as a dual encoder.
- FUSION: the VQA pooler (LayerNorm -> Linear -> tanh) of the vision [CLS] state of the joint pass, before the
  final LayerNorm: `BEiT3ForVisualQuestionAnswering` (`normalize_output=False`). Only VQA checkpoints carry a
  trained pooler; elsewhere it starts fresh (seeded by `init_seed`) as in unilm's VQA fine-tuning, so FUSION
  features are meant to be fine-tuned, not probed frozen.
- CONTRASTIVE: bias-free `vision_head` / `language_head` on x[:, 0] of two unimodal passes (after the final
  LayerNorm), L2-normalised: `BEiT3ForRetrieval`. Offered only when the checkpoint carries both heads (`*_itc_*`
  and retrieval checkpoints); random heads would make zero-shot retrieval meaningless, so the task is then n/a.

Preprocessing is unilm's vision-language eval transform: a bicubic resize to a square (no crop), mean = std = 0.5
(the presets' `resize_mode: square`; proven equal in tests/test_preprocess_parity.py). Other image sizes (VQA at
480) interpolate the vision position table on the fly by unilm's bicubic rule (`interpolate_vision_positions`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmbench.errors import CapabilityError, CheckpointError, ConfigError
from mmbench.models.base import Capability, ModelWrapper, parse_arch
from mmbench.models.beit3_checkpoint import LoadReport, load_into, resolve_file
from mmbench.models.beit3_layers import Beit3Config, Beit3Model, Pooler, init_weights_
from mmbench.models.beit3_tokenizer import SPM_FILENAME, spm_tokenizer
from mmbench.models.tokenizers import load_tokenizer
from mmbench.schema import ModelConfig

ALL = Capability.IMAGE | Capability.TEXT | Capability.FUSION | Capability.CONTRASTIVE


def beit3_config(cfg: ModelConfig) -> Beit3Config:
    """The preset's validated `arch` block; the position table defaults to the preset's image size."""
    arch = parse_arch(cfg, Beit3Config)
    if arch.img_size is None:
        arch.img_size = cfg.preprocess.image_size
    if arch.img_size % arch.patch_size:
        raise ConfigError(f"model {cfg.name!r}: key 'arch.img_size': {arch.img_size} is not a multiple of patch_size")
    return arch


def load_beit3_tokenizer(cfg: ModelConfig) -> Any:
    """A built-in (`mmbench:tiny-sentencepiece`), or `XLMRobertaTokenizer` over a sentencepiece model given as a
    local file, a folder holding `sentencepiece.bpe.model`, or a release URL (downloaded once)."""
    source = cfg.tokenizer
    if not source:
        raise ConfigError(
            f"model {cfg.name!r}: key 'tokenizer': BEiT-3 checkpoints carry no tokenizer; name the sentencepiece "
            "model (beit3.spm) or a built-in"
        )
    if source.startswith("mmbench:"):
        return load_tokenizer(cfg)
    folder = Path(source).expanduser()
    path = folder / SPM_FILENAME if folder.is_dir() else resolve_file(source, cfg.name, "tokenizer", "tokenizer")
    try:
        return spm_tokenizer(path, cfg.max_text_length)
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"model {cfg.name!r}: cannot load tokenizer {path}: {str(e).splitlines()[0]}") from None


class Beit3Wrapper(ModelWrapper):
    capabilities = ALL
    arch_schema = Beit3Config

    def __init__(self, cfg: ModelConfig, arch: Beit3Config, tokenizer: Any):
        super().__init__(cfg)
        self.tokenizer = tokenizer
        d = arch.encoder_embed_dim
        self.beit3 = Beit3Model(arch)
        self.vision_head = nn.Linear(d, d, bias=False)
        self.language_head = nn.Linear(d, d, bias=False)
        self.pooler = Pooler(d)
        self.fc_norm = nn.LayerNorm(d)
        self.feature_dims = {"image": d, "text": d, "pair": d, "embedding": d}
        self.load_report: LoadReport | None = None  # what the checkpoint supplied, for logs and results
        # The language position table's rows after fairseq's two unused ones (`Positions.text`).
        self.max_text_positions = arch.max_source_positions - 2

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> Beit3Wrapper:
        arch = beit3_config(cfg)
        checkpoint = None
        if not cfg.random_init:  # find the file before building anything large
            if not cfg.checkpoint:
                raise ConfigError(f"model {cfg.name!r}: key 'checkpoint' is empty and the preset is not random_init")
            checkpoint = resolve_file(cfg.checkpoint, cfg.name, "checkpoint", "checkpoint")
        tokenizer = load_beit3_tokenizer(cfg)
        if len(tokenizer) > arch.vocab_size:
            raise ConfigError(
                f"model {cfg.name!r}: key 'arch.vocab_size': {arch.vocab_size} is smaller than the tokenizer's "
                f"{len(tokenizer)} ids"
            )
        with torch.random.fork_rng(devices=[]):  # seeded init, global RNG untouched
            torch.manual_seed(cfg.init_seed)
            model = cls(cfg, arch, tokenizer)
            init_weights_(model)
        if checkpoint is not None:
            model.load_report = load_into(model, checkpoint, cfg.name)
            if not {"vision_head", "language_head"} <= set(model.load_report.heads_loaded):
                model.capabilities = ALL & ~Capability.CONTRASTIVE
        return model

    def tokenize(
        self, texts: list[str], pairs: list[str] | None = None, max_length: int | None = None
    ) -> dict[str, Tensor]:
        """`<s> text </s>` (pairs: `<s> a </s></s> b </s>`), padded to the longest; `padding_mask` is True at pads
        (unilm's convention, the name `text_features` & co. take)."""
        enc = self.tokenizer(
            list(texts),
            list(pairs) if pairs is not None else None,
            padding=True,
            truncation=True,
            max_length=self.text_length(max_length),
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "padding_mask": enc["attention_mask"] == 0}

    # ---- features ------------------------------------------------------------------------------------------
    def image_features(self, pixel_values: Tensor) -> Tensor:
        x = self.beit3(pixel_values=pixel_values, final_norm=False).last_hidden_state  # (B, 1+N, D)
        return self.fc_norm(x[:, 1:].mean(dim=1))  # (B, D)

    def text_features(self, input_ids: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        x = self.beit3(input_ids=input_ids, padding_mask=padding_mask).last_hidden_state  # (B, T, D)
        return x[:, 0]  # (B, D)

    def pair_features(self, pixel_values: Tensor, input_ids: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        out = self.beit3(pixel_values, input_ids, padding_mask, final_norm=False)
        return self.pooler(out.last_hidden_state[:, 0])  # (B, D): vision [CLS] of the joint pass

    def image_embeddings(self, pixel_values: Tensor) -> Tensor:
        self._require_heads()
        x = self.beit3(pixel_values=pixel_values).last_hidden_state  # (B, 1+N, D)
        return F.normalize(self.vision_head(x[:, 0]), dim=-1)  # (B, E)

    def text_embeddings(self, input_ids: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        self._require_heads()
        return F.normalize(self.language_head(self.text_features(input_ids, padding_mask)), dim=-1)  # (B, E)

    def _require_heads(self) -> None:
        if Capability.CONTRASTIVE not in self.capabilities:
            raise CapabilityError(
                f"model {self.cfg.name!r} has no CONTRASTIVE capability: its checkpoint has no "
                "vision_head/language_head (use an *_itc_* or retrieval checkpoint)"
            )
