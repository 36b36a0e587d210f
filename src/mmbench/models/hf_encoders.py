"""Single-modality Hugging Face encoders through `AutoModel`: text (BERT, RoBERTa, DeBERTa, ...) for GLUE, vision (ViT,
DeiT, DINOv2) for linear probes. Proven equal to the library's own forward on randomised weights in
tests/test_model_families.py.

`HfTextEncoderWrapper`, TEXT only: the first token's last hidden state ([CLS] for BERT, `<s>` for RoBERTa), not
`pooler_output`: the pooler is a tanh layer trained only by BERT's next-sentence objective and shipped untrained in
RoBERTa checkpoints (transformers warns that it is newly initialised), so a feature through it would be noise. GLUE
fine-tuning puts its own head on this state. Tokenizer: the checkpoint's `AutoTokenizer`; a sentence pair is the
tokenizer's pair encoding (`[CLS] a [SEP] b [SEP]`, `<s> a </s></s> b </s>`), with `token_type_ids` where the
tokenizer produces them and the model takes them. Positions: `max_position_embeddings`, less RoBERTa's offset where
the position table has a padding index (RoBERTa/XLM-R/MPNet number positions from `pad_token_id + 1`: 514 -> 512).

`HfVisionEncoderWrapper`, IMAGE only: the [CLS] token's last hidden state after the final LayerNorm,
`last_hidden_state[:, 0]`. For DINOv2 that is exactly its `pooler_output` (the recipe's layer-normed [CLS], which
the DINOv2 paper probes); ViT's and DeiT's `pooler_output` instead goes through a dense+tanh layer that most
checkpoints never trained (google/vit-* ship it from the ImageNet-21k pre-training head or randomly initialised),
so the [CLS] state before it is used. Any image size: `interpolate_pos_encoding=True` (ViT, DeiT); DINOv2
always interpolates its position table to the input's patch grid. Preprocessing: the checkpoint's
`preprocessor_config.json` (ViTImageProcessor: 224x224 square resize, mean/std 0.5; BitImageProcessor for DINOv2:
short side 256, centre crop 224, ImageNet mean/std).

Random init (tiny presets): `arch: {model_type: bert, config: {hidden_size: 32, ...}}`, the kwargs of the config
class transformers registers for `model_type`; the text vocabulary and pad id come from the tokenizer.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from mmbench.errors import ConfigError
from mmbench.models.base import Capability, ModelWrapper, hf_loading, parse_arch, require_checkpoint
from mmbench.models.hf import load_or_init, tokenize
from mmbench.models.hf_spec import TEXT_ENCODER_TYPES, VISION_ENCODER_TYPES
from mmbench.models.tokenizers import load_tokenizer
from mmbench.schema import ModelConfig

# model_type -> what the wrapper has been checked against: an encoder whose position 0 is a summary token. One list,
# kept where `hf:` specs dispatch on it (hf_spec imports nothing heavy).
TEXT_MODEL_TYPES = TEXT_ENCODER_TYPES
VISION_MODEL_TYPES = VISION_ENCODER_TYPES


@dataclass
class HfEncoderArch:
    """Only for random-init presets; released checkpoints carry their own config."""

    model_type: str = ""  # a transformers model type: bert, roberta, vit, dinov2, ...
    config: dict[str, Any] = field(default_factory=dict)  # kwargs of that model type's config class


def _config_class(model_type: str) -> type:
    from transformers import CONFIG_MAPPING

    try:
        return CONFIG_MAPPING[model_type]
    except KeyError:
        raise ConfigError(f"key 'arch.model_type': {model_type!r} is not a transformers model type") from None


class _HfEncoder(ModelWrapper):
    arch_schema = HfEncoderArch
    model_types: tuple[str, ...] = ()

    @classmethod
    def arch_config_class(cls, key: str, arch: dict[str, Any]) -> type | None:
        return _config_class(str(arch.get("model_type", ""))) if key == "config" else None

    @classmethod
    def check_config(cls, cfg: ModelConfig) -> None:
        super().check_config(cfg)
        if cfg.random_init:
            cls._check_type(cfg, parse_arch(cfg, HfEncoderArch).model_type, "key 'arch.model_type'")

    @classmethod
    def _check_type(cls, cfg: ModelConfig, model_type: str, where: str) -> None:
        if model_type not in cls.model_types:
            raise ConfigError(
                f"model {cfg.name!r}: {where}: {model_type!r} is not supported by {cls.__name__} "
                f"(supported: {', '.join(cls.model_types)})"
            )

    @classmethod
    def _check_checkpoint(cls, cfg: ModelConfig) -> None:
        """The checkpoint's model type, read from its config before anything else is loaded from it."""
        from transformers import AutoConfig

        if cfg.random_init:
            cls._check_type(cfg, parse_arch(cfg, HfEncoderArch).model_type, "key 'arch.model_type'")
            return
        with hf_loading(cfg):
            found = AutoConfig.from_pretrained(
                require_checkpoint(cfg), revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
            )
        cls._check_type(cfg, found.model_type, f"checkpoint {cfg.checkpoint} has a {type(found).__name__}")

    @classmethod
    def _load(cls, cfg: ModelConfig, adjust: dict[str, Any]) -> Any:
        """`AutoModel` from the checkpoint, or random init from `arch` (`adjust`: kwargs the preset cannot know)."""
        from transformers import MODEL_MAPPING, AutoModel

        if not cfg.random_init:
            return load_or_init(cfg, AutoModel, lambda: None)
        arch = parse_arch(cfg, HfEncoderArch)
        config_class = _config_class(arch.model_type)
        return load_or_init(cfg, MODEL_MAPPING[config_class], lambda: config_class(**{**adjust, **arch.config}))


class HfTextEncoderWrapper(_HfEncoder):
    capabilities = Capability.TEXT
    model_types = TEXT_MODEL_TYPES

    def __init__(self, cfg: ModelConfig, model: Any, tokenizer: Any):
        super().__init__(cfg)
        self.model = model
        self.tokenizer = tokenizer
        self.feature_dims = {"text": model.config.hidden_size}
        self.max_text_positions = text_positions(model)
        takes = set(inspect.signature(model.forward).parameters)
        self.input_keys = tuple(k for k in tokenizer.model_input_names if k in takes)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> HfTextEncoderWrapper:
        cls._check_checkpoint(cfg)
        tokenizer = load_tokenizer(cfg)
        adjust = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
        return cls(cfg, cls._load(cfg, adjust), tokenizer)

    def tokenize(
        self, texts: list[str], pairs: list[str] | None = None, max_length: int | None = None
    ) -> dict[str, Tensor]:
        return tokenize(self.tokenizer, texts, pairs, self.text_length(max_length), self.input_keys)

    def text_features(self, **tokens: Tensor) -> Tensor:
        return self.model(**tokens).last_hidden_state[:, 0]  # (B, D): [CLS] / <s>


def text_positions(model: Any) -> int:
    """Tokens the model can take: `max_position_embeddings`, less the offset of position tables that number from
    `padding_idx + 1` (RoBERTa's `create_position_ids_from_input_ids`)."""
    table = getattr(getattr(model, "embeddings", None), "position_embeddings", None)
    offset = table.padding_idx + 1 if isinstance(table, nn.Embedding) and table.padding_idx is not None else 0
    return model.config.max_position_embeddings - offset


class HfVisionEncoderWrapper(_HfEncoder):
    capabilities = Capability.IMAGE
    model_types = VISION_MODEL_TYPES

    def __init__(self, cfg: ModelConfig, model: Any):
        super().__init__(cfg)
        self.model = model
        self.feature_dims = {"image": model.config.hidden_size}
        # DINOv2 has no switch: it always interpolates its position table
        takes = inspect.signature(model.forward).parameters
        self.forward_kwargs = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in takes else {}

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> HfVisionEncoderWrapper:
        cls._check_checkpoint(cfg)
        return cls(cfg, cls._load(cfg, {"image_size": cfg.preprocess.image_size}))

    def tokenize(self, texts: list[str], pairs: list[str] | None = None, max_length: int | None = None):
        raise self._missing(Capability.TEXT)

    def image_features(self, pixel_values: Tensor) -> Tensor:
        out = self.model(pixel_values=pixel_values, **self.forward_kwargs)
        return out.last_hidden_state[:, 0]  # (B, D): [CLS] after the final LayerNorm
