"""FLAVA (HF `FlavaModel`, `facebook/flava-full`).

IMAGE / TEXT: the unimodal encoders' [CLS] state after their final LayerNorm (HF's unimodal `pooler_output` is a
tanh pooler that neither the contrastive path nor the paper's linear probe uses). FUSION: the multimodal encoder's
[CLS_M] state, the input of the paper's fine-tuning heads. CONTRASTIVE: the normalised `image_projection` /
`text_projection` of the unimodal [CLS] states, exactly what `FlavaForPreTraining`'s contrastive logits use
(`get_*_features(...).pooler_output[:, 0]`; HF's `*_embeddings` outputs are per token). Proven in
tests/test_models.py against `FlavaForPreTraining` and `FlavaModel.forward` on the same randomised weights.

ITM: `FlavaForPreTraining`'s image-text matching head (`itm_head`: tanh pooler on [CLS_M], then two logits, index
1 = match) on the same multimodal state. Released checkpoints are loaded through `FlavaForPreTraining` so that
`facebook/flava-full`'s `itm_head.*` weights come with the encoders (codebook not built); a checkpoint without them
(a `FlavaModel` save) loads the same encoders and lacks the ITM capability, with the reason. Random-init presets
seed the head after the encoders, so the encoders' weights are those `FlavaModel` alone gets. The head is frozen
and outside the module tree: it is for evaluation, and fine-tuning never sees or saves it. Proven in
tests/test_itm.py against `FlavaForPreTraining`.

Any image size: `FlavaImageModel` takes HF's `interpolate_pos_encoding` (bicubic resize of the position table to
the input's patch grid; the identity at the trained size), but `FlavaModel.forward` does not pass it on. So
`pair_features` runs the three encoders itself, the way `FlavaModel.forward` wires them (see there). Text: at most
`text_config.max_position_embeddings` tokens (512 for flava-full).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmbench.errors import CapabilityError
from mmbench.models.base import Capability, ModelWrapper, hf_loading, parse_arch, require_checkpoint
from mmbench.models.hf import load_or_init, tokenize
from mmbench.models.tokenizers import load_tokenizer
from mmbench.schema import ModelConfig


@dataclass
class FlavaArch:
    """Only for random-init presets; released checkpoints carry their own config."""

    hidden_size: int = 768
    projection_dim: int = 768
    image: dict[str, Any] = field(default_factory=dict)  # FlavaImageConfig kwargs
    text: dict[str, Any] = field(default_factory=dict)  # FlavaTextConfig kwargs (vocab size from the tokenizer)
    multimodal: dict[str, Any] = field(default_factory=dict)  # FlavaMultimodalConfig kwargs
    codebook: dict[str, Any] = field(default_factory=dict)  # FlavaImageCodebookConfig kwargs (pre-training only)


def flava_config(cfg: ModelConfig, vocab_size: int) -> Any:
    """The HF `FlavaConfig` of a random-init preset (also used by tests to build `FlavaForPreTraining`)."""
    from transformers import FlavaConfig

    arch = parse_arch(cfg, FlavaArch)
    image = {"image_size": cfg.preprocess.image_size, "hidden_size": arch.hidden_size, **arch.image}
    text = {"hidden_size": arch.hidden_size, **arch.text, "vocab_size": vocab_size}
    multimodal = {"hidden_size": arch.hidden_size, **arch.multimodal}
    return FlavaConfig(
        image_config=image,
        text_config=text,
        multimodal_config=multimodal,
        image_codebook_config=dict(arch.codebook),
        hidden_size=arch.hidden_size,
        projection_dim=arch.projection_dim,
    )


class FlavaWrapper(ModelWrapper):
    capabilities = Capability.IMAGE | Capability.TEXT | Capability.FUSION | Capability.CONTRASTIVE | Capability.ITM
    arch_schema = FlavaArch

    @classmethod
    def arch_config_class(cls, key: str, arch: dict[str, Any]) -> type | None:
        from transformers import FlavaImageCodebookConfig, FlavaImageConfig, FlavaMultimodalConfig, FlavaTextConfig

        blocks = {
            "image": FlavaImageConfig,
            "text": FlavaTextConfig,
            "multimodal": FlavaMultimodalConfig,
            "codebook": FlavaImageCodebookConfig,
        }
        return blocks.get(key)

    def __init__(self, cfg: ModelConfig, model: Any, tokenizer: Any, itm_head: Any = None):
        super().__init__(cfg)
        self.model = model
        self.tokenizer = tokenizer
        # HF `FlavaITMHead`, or None when the checkpoint has none. Kept outside the module tree (and so outside
        # `state_dict`): fine-tuning checkpoints and run folders hold the encoders only, as before the head existed.
        object.__setattr__(self, "_itm_head", itm_head)
        if itm_head is None:
            self.capabilities = type(self).capabilities & ~Capability.ITM
        else:
            itm_head.requires_grad_(False).eval()
        c = model.config
        self.feature_dims = {
            "image": c.image_config.hidden_size,
            "text": c.text_config.hidden_size,
            "pair": c.multimodal_config.hidden_size,
            "embedding": c.projection_dim,
        }
        self.max_text_positions = c.text_config.max_position_embeddings

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> FlavaWrapper:
        from transformers import FlavaModel
        from transformers.models.flava.modeling_flava import FlavaITMHead

        tokenizer = load_tokenizer(cfg)
        if not cfg.random_init:
            model, head = _load_pretrained(cfg)
            return cls(cfg, model, tokenizer, head)
        model = load_or_init(cfg, FlavaModel, lambda: flava_config(cfg, len(tokenizer)))
        with torch.random.fork_rng(devices=[]):  # after the encoders, on its own seed: they are FlavaModel's alone
            torch.manual_seed(cfg.init_seed + 1)
            head = FlavaITMHead(model.config)
            head.apply(model._init_weights)  # HF's init (normal(0, initializer_range), zero biases)
        return cls(cfg, model, tokenizer, head)

    @property
    def itm_head(self) -> Any:
        return self._itm_head

    def require(self, needed: Capability, what: str) -> None:
        if Capability.ITM in needed and self.itm_head is None:
            raise self._no_itm(what)
        super().require(needed, what)

    def _no_itm(self, what: str) -> CapabilityError:
        return CapabilityError(
            f"model {self.cfg.name!r} has no ITM capability, which {what} needs: its checkpoint "
            f"{self.cfg.checkpoint!r} holds no image-text matching head (FlavaForPreTraining's itm_head.* weights; "
            "a FlavaModel save has none)"
        )

    def tokenize(self, texts: list[str], pairs: list[str] | None = None, max_length: int | None = None):
        keys = ("input_ids", "attention_mask", "token_type_ids")
        return tokenize(self.tokenizer, texts, pairs, self.text_length(max_length), keys)

    def image_features(self, pixel_values: Tensor) -> Tensor:
        out = self.model.image_model(pixel_values=pixel_values, interpolate_pos_encoding=True)
        return out.last_hidden_state[:, 0]  # (B, Di)

    def text_features(self, **tokens: Tensor) -> Tensor:
        return self.model.text_model(**tokens).last_hidden_state[:, 0]  # (B, Dt)

    def pair_features(self, pixel_values: Tensor, **tokens: Tensor) -> Tensor:
        """`FlavaModel.forward`'s multimodal path with the image positions interpolated: each unimodal encoder's
        last layer output *before* its final LayerNorm, projected to the multimodal width, image tokens first; the
        text mask extended over [CLS_M] and the image tokens; the multimodal encoder's [CLS_M] state."""
        return self._fuse(self._image_mm(pixel_values), tokens)

    def _image_mm(self, pixel_values: Tensor) -> Tensor:
        m = self.model
        image = m.image_model(
            pixel_values=pixel_values, interpolate_pos_encoding=True, output_hidden_states=True, return_dict=True
        )
        return m.image_to_mm_projection(image.hidden_states[-1])  # (B, 1+P, Dm)

    def _fuse(self, image_mm: Tensor, tokens: dict[str, Tensor]) -> Tensor:
        m = self.model
        text = m.text_model(**tokens, output_hidden_states=True, return_dict=True)
        text_mm = m.text_to_mm_projection(text.hidden_states[-1])  # (B, T, Dm)
        mask = tokens.get("attention_mask")
        if mask is not None:
            b, n = image_mm.shape[:2]
            ones = torch.ones(b, n + int(m.multimodal_model.use_cls_token), device=mask.device)  # (B, 1+1+P)
            mask = torch.cat([ones, mask], dim=1)  # (B, 1+1+P+T), float as in FlavaModel.forward
        out = m.multimodal_model(torch.cat([image_mm, text_mm], dim=1), attention_mask=mask, return_dict=True)
        return out.last_hidden_state[:, 0]  # (B, Dm)

    def itm_image_states(self, pixel_values: Tensor) -> Tensor:
        """(B, 1+P, Dm): the image tokens as the multimodal encoder takes them (`pair_features`' image half)."""
        if self.itm_head is None:
            raise self._no_itm("itm_image_states")
        return self._image_mm(pixel_values)

    def itm_logits_from_states(self, image_states: Tensor, **tokens: Tensor) -> Tensor:
        """(B, 2) `FlavaForPreTraining.itm_logits` (no match, match) of aligned pairs."""
        if self.itm_head is None:
            raise self._no_itm("itm_logits")
        fused = self._fuse(image_states, tokens)  # (B, Dm)
        head = self.itm_head.to(device=fused.device, dtype=fused.dtype)  # in place; a no-op once it is there
        return head(fused[:, None])  # the pooler reads [:, 0] -> (B, 2)

    def itm_logits(self, pixel_values: Tensor, **tokens: Tensor) -> Tensor:
        return self.itm_logits_from_states(self.itm_image_states(pixel_values), **tokens)  # (B, 2)

    def itm_scores_from_states(self, image_states: Tensor, **tokens: Tensor) -> Tensor:
        return self.itm_logits_from_states(image_states, **tokens).log_softmax(dim=-1)[:, 1]  # (B,) log P(match)

    def image_embeddings(self, pixel_values: Tensor) -> Tensor:
        return F.normalize(self.model.image_projection(self.image_features(pixel_values)), dim=-1)  # (B, E)

    def text_embeddings(self, **tokens: Tensor) -> Tensor:
        return F.normalize(self.model.text_projection(self.text_features(**tokens)), dim=-1)  # (B, E)


def _load_pretrained(cfg: ModelConfig) -> tuple[Any, Any]:
    """(FlavaModel, FlavaITMHead or None) from a released checkpoint, through `FlavaForPreTraining` so that the ITM
    head's weights come along; the head is None when the checkpoint has no `itm_head.*` weights (HF would have
    left it at random init, which must not pass for a trained head)."""
    from transformers import FlavaForPreTraining

    source = require_checkpoint(cfg)
    with hf_loading(cfg):
        full, info = FlavaForPreTraining.from_pretrained(
            source,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            init_codebook=False,  # the DALL-E codebook is only for pre-training losses
            output_loading_info=True,
        )
    has_itm = not any(k.startswith("itm_head.") for k in info["missing_keys"])
    return full.flava, full.itm_head if has_itm else None
