"""CLIP (HF `CLIPModel`, e.g. `openai/clip-vit-base-patch16`), the FLAVA paper's baseline.

IMAGE: vision pooled ([CLS] after the post-LayerNorm, before projection); TEXT: text pooled (first EOS, before
projection); FUSION: the paper's late fusion, concat(image, text) features; CONTRASTIVE: the normalised
`visual_projection` / `text_projection` outputs, i.e. what `CLIPModel`'s logits use. Proven equal to `CLIPModel`'s
outputs on randomised weights in tests/test_models.py.

Any image size: the vision tower always runs with HF's `interpolate_pos_encoding=True`, which resizes the position
table bicubically to the input's patch grid (VQA at 480 -> 30x30 for ViT-B/16) and is the identity at the trained
size. Text: at most `text_config.max_position_embeddings` tokens (77).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmbench.models.base import Capability, ModelWrapper, parse_arch
from mmbench.models.hf import load_or_init, tokenize
from mmbench.models.tokenizers import load_tokenizer
from mmbench.schema import ModelConfig


@dataclass
class ClipArch:
    """Only for random-init presets; released checkpoints carry their own config."""

    projection_dim: int = 512
    vision: dict[str, Any] = field(default_factory=dict)  # CLIPVisionConfig kwargs
    text: dict[str, Any] = field(default_factory=dict)  # CLIPTextConfig kwargs (vocab and special ids come
    # from the tokenizer)


class ClipWrapper(ModelWrapper):
    capabilities = Capability.IMAGE | Capability.TEXT | Capability.FUSION | Capability.CONTRASTIVE
    arch_schema = ClipArch

    @classmethod
    def arch_config_class(cls, key: str, arch: dict[str, Any]) -> type | None:
        from transformers import CLIPTextConfig, CLIPVisionConfig

        return {"vision": CLIPVisionConfig, "text": CLIPTextConfig}.get(key)

    def __init__(self, cfg: ModelConfig, model: Any, tokenizer: Any):
        super().__init__(cfg)
        self.model = model
        self.tokenizer = tokenizer
        v, t = model.config.vision_config.hidden_size, model.config.text_config.hidden_size
        self.feature_dims = {"image": v, "text": t, "pair": v + t, "embedding": model.config.projection_dim}
        self.max_text_positions = model.config.text_config.max_position_embeddings

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> ClipWrapper:
        from transformers import CLIPConfig, CLIPModel

        tokenizer = load_tokenizer(cfg)

        def make_config() -> Any:
            arch = parse_arch(cfg, ClipArch)
            text = dict(arch.text)
            text.update(
                vocab_size=len(tokenizer),
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            vision = {"image_size": cfg.preprocess.image_size, **arch.vision}
            return CLIPConfig(text_config=text, vision_config=vision, projection_dim=arch.projection_dim)

        return cls(cfg, load_or_init(cfg, CLIPModel, make_config), tokenizer)

    def tokenize(self, texts: list[str], pairs: list[str] | None = None, max_length: int | None = None):
        if pairs is not None:  # CLIP's text tower has no segment embeddings: join the pair as one text
            texts, pairs = [f"{a} {b}" for a, b in zip(texts, pairs)], None
        return tokenize(self.tokenizer, texts, pairs, self.text_length(max_length), ("input_ids", "attention_mask"))

    def image_features(self, pixel_values: Tensor) -> Tensor:
        out = self.model.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=True)
        return out.pooler_output  # (B, Dv)

    def text_features(self, **tokens: Tensor) -> Tensor:
        return self.model.text_model(**tokens).pooler_output  # (B, Dt)

    def pair_features(self, pixel_values: Tensor, **tokens: Tensor) -> Tensor:
        return torch.cat([self.image_features(pixel_values), self.text_features(**tokens)], dim=-1)  # (B, Dv+Dt)

    def image_embeddings(self, pixel_values: Tensor) -> Tensor:
        return F.normalize(self.model.visual_projection(self.image_features(pixel_values)), dim=-1)  # (B, E)

    def text_embeddings(self, **tokens: Tensor) -> Tensor:
        return F.normalize(self.model.text_projection(self.text_features(**tokens)), dim=-1)  # (B, E)
