"""SigLIP (HF `SiglipModel`, e.g. `google/siglip-base-patch16-224`): CLIP-style towers trained with a sigmoid loss.

What each capability returns (proven equal to `SiglipModel`'s own forward on randomised weights in
tests/test_model_families.py):
- IMAGE: the vision tower's `pooler_output`, the multihead-attention-pooling ("MAP") head over the post-LayerNorm
  patch tokens. SigLIP's vision tower has no [CLS] token and no projection after that head: the MAP head *is* its
  pooling, trained with the model, and its output is exactly what the contrastive loss sees before normalisation
  (big_vision's `pre_logits`). Same width as the tower (`vision_config.hidden_size`).
- TEXT: the last token's state after the final LayerNorm, *before* the text tower's linear `head` (the projection
  into the shared space), as the CLIP wrapper's TEXT is CLIP's pooled EOS state before `text_projection`. SigLIP
  pools the last position, which with SigLIP's max-length padding is a pad token (pad = EOS `</s>`).
- FUSION: late fusion concat(IMAGE, TEXT), the FLAVA paper's CLIP baseline.
- CONTRASTIVE: `image_embeds` / `text_embeds` exactly as `SiglipModel.forward` computes them: each tower's
  `pooler_output` (text: after its `head`) divided by its L2 norm. The model's logits are `cos * exp(scale) + bias`
  with one scalar scale > 0 and one shared bias, a strictly increasing function of the cosine, so ranking by cosine
  (what the retrieval protocol does) ranks exactly as the sigmoid logits and probabilities do.

Text, as SigLIP was trained (big_vision; open_clip's SigLIP ports do the same): padded to the fixed length with
`padding="max_length"` (64 = `text_config.max_position_embeddings` for the released models; the HF docs ask for it)
and fed WITHOUT an attention mask: the pad tokens take part in attention. transformers 5's `SiglipTokenizer` also
returns an `attention_mask`; passing it would change every text feature, so `tokenize` keeps `input_ids` only.
The length is the preset's `max_text_length` capped at the text positions (so the default 77 gives 64).

Any image size: the vision tower runs with `interpolate_pos_encoding=True` (bicubic resize of the position table to
the input's patch grid; the identity at the trained size). Preprocessing: the checkpoint's
`preprocessor_config.json` (`SiglipImageProcessor`: 224x224 square resize, bicubic, mean/std 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmbench.errors import ConfigError
from mmbench.models.base import Capability, ModelWrapper, parse_arch
from mmbench.models.hf import load_or_init
from mmbench.models.tokenizers import load_tokenizer
from mmbench.schema import ModelConfig


@dataclass
class SiglipArch:
    """Only for random-init presets; released checkpoints carry their own config."""

    vision: dict[str, Any] = field(default_factory=dict)  # SiglipVisionConfig kwargs
    text: dict[str, Any] = field(default_factory=dict)  # SiglipTextConfig kwargs (vocab and special ids come from
    # the tokenizer)


class SiglipWrapper(ModelWrapper):
    capabilities = Capability.IMAGE | Capability.TEXT | Capability.FUSION | Capability.CONTRASTIVE
    arch_schema = SiglipArch

    @classmethod
    def arch_config_class(cls, key: str, arch: dict[str, Any]) -> type | None:
        from transformers import SiglipTextConfig, SiglipVisionConfig

        return {"vision": SiglipVisionConfig, "text": SiglipTextConfig}.get(key)

    def __init__(self, cfg: ModelConfig, model: Any, tokenizer: Any):
        super().__init__(cfg)
        if not getattr(model.config.vision_config, "vision_use_head", True):
            raise ConfigError(f"model {cfg.name!r}: this SigLIP vision tower has no pooling head (vision_use_head)")
        self.model = model
        self.tokenizer = tokenizer
        v, t = model.config.vision_config.hidden_size, model.config.text_config.hidden_size
        embedding = model.config.text_config.projection_size or t
        self.feature_dims = {"image": v, "text": t, "pair": v + t, "embedding": embedding}
        self.max_text_positions = model.config.text_config.max_position_embeddings

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> SiglipWrapper:
        from transformers import SiglipConfig, SiglipModel

        tokenizer = load_tokenizer(cfg)

        def make_config() -> Any:
            arch = parse_arch(cfg, SiglipArch)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            text = {**arch.text, "vocab_size": len(tokenizer), "pad_token_id": pad}
            text.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
            vision = {"image_size": cfg.preprocess.image_size, **arch.vision}
            return SiglipConfig(text_config=text, vision_config=vision)

        return cls(cfg, load_or_init(cfg, SiglipModel, make_config), tokenizer)

    def tokenize(
        self, texts: list[str], pairs: list[str] | None = None, max_length: int | None = None
    ) -> dict[str, Tensor]:
        if pairs is not None:  # one text tower without segment embeddings: join the pair as one text
            texts = [f"{a} {b}" for a, b in zip(texts, pairs)]
        enc = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.text_length(max_length),
            return_tensors="pt",
        )  # fmt: skip
        return {"input_ids": enc["input_ids"]}  # (B, L): no attention mask, as SigLIP was trained (module doc)

    def _text_state(self, **tokens: Tensor) -> Tensor:
        """(B, Dt) the last position's state after the final LayerNorm, before the text `head`."""
        out = self.model.text_model(**tokens)
        return out.last_hidden_state[:, -1]

    def image_features(self, pixel_values: Tensor) -> Tensor:
        out = self.model.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=True)
        return out.pooler_output  # (B, Dv): the MAP head's output

    def text_features(self, **tokens: Tensor) -> Tensor:
        return self._text_state(**tokens)  # (B, Dt)

    def pair_features(self, pixel_values: Tensor, **tokens: Tensor) -> Tensor:
        return torch.cat([self.image_features(pixel_values), self.text_features(**tokens)], dim=-1)  # (B, Dv+Dt)

    def image_embeddings(self, pixel_values: Tensor) -> Tensor:
        return F.normalize(self.image_features(pixel_values), dim=-1)  # (B, E), E = Dv

    def text_embeddings(self, **tokens: Tensor) -> Tensor:
        return F.normalize(self.model.text_model.head(self._text_state(**tokens)), dim=-1)  # (B, E)
