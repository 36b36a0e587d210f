"""The model wrapper protocol: what a model can do (`Capability`) and the pooled features protocols ask for.

Protocols ask for capabilities, never for model classes. A wrapper is an `nn.Module` built from a `ModelConfig`
by `from_config`; it owns its checkpoint loading, preprocessing and tokenizer, so that a preset id pins
everything that moves the numbers.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from torch import Tensor, nn

from mmbench.errors import CapabilityError, CheckpointError, ConfigError
from mmbench.models.arch import check_arch_keys
from mmbench.models.preprocess import ImageTransform, check_preprocess, resolve_preprocess
from mmbench.schema import ModelConfig, PreprocessConfig

T = TypeVar("T")

# The GENERATE contract's prompt markers (OpenFlamingo's spelling). Protocols write prompts with these; a wrapper
# whose model spells them otherwise (IDEFICS: `<fake_token_around_image><image><fake_token_around_image>`,
# `<end_of_utterance>`) translates them in `generate` / `loglikelihood`.
MEDIA_MARKER = "<image>"  # one image, taken in order from the prompt's images
CHUNK_END_MARKER = "<|endofchunk|>"  # ends one demonstration; generation stops when the model emits it


class Capability(enum.Flag):
    NONE = 0
    IMAGE = enum.auto()  # image_features
    TEXT = enum.auto()  # text_features
    FUSION = enum.auto()  # pair_features
    CONTRASTIVE = enum.auto()  # image_embeddings / text_embeddings in a shared space
    GENERATE = enum.auto()
    ITM = enum.auto()  # itm_image_states / itm_scores: an image-text matching head on the fusion encoder


class ModelWrapper(nn.Module):
    """Base of every wrapper. Subclasses set `capabilities` and `feature_dims` and override what they can do.

    Every wrapper also: takes images of any size a task asks for (its vision position table is interpolated to
    the input's patch grid, tests/test_image_size.py); reports `max_text_positions` and never tokenizes beyond it;
    applies `self.preprocess`, recorded with where it came from in `preprocess_source`.
    """

    capabilities: Capability = Capability.NONE
    feature_dims: dict[str, int]

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.feature_dims = {}
        # The checkpoint's own preprocessor_config.json where it has one, else the preset; results record which.
        resolved = resolve_preprocess(cfg)
        self.preprocess: PreprocessConfig = resolved.config
        self.preprocess_source: str = resolved.source
        # The most text tokens the text encoder accepts (None: unbounded); `tokenize` never exceeds it.
        self.max_text_positions: int | None = None

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> ModelWrapper:
        raise NotImplementedError

    # ---- preset validation (when the preset is loaded, before anything is built) ------------------------------
    arch_schema: ClassVar[type | None] = None  # the dataclass the preset's `arch` block validates into

    @classmethod
    def arch_config_class(cls, key: str, arch: dict[str, Any]) -> type | None:
        """The HF config class whose kwargs the `arch` field `key` holds (CLIP's `vision` -> `CLIPVisionConfig`),
        or None. Only asked for non-empty blocks, so presets without them never import transformers here."""
        return None

    @classmethod
    def check_config(cls, cfg: ModelConfig) -> None:
        """Errors that omegaconf's schema cannot catch, naming the key: unknown keys at any depth of `arch`
        (HF config classes would keep them silently), ill-typed `arch` values, bad `preprocess` choices."""
        try:
            check_preprocess(cfg.preprocess)
            if cls.arch_schema is not None:
                check_arch_keys(dict(cfg.arch), cls.arch_schema, cls.arch_config_class)
        except ConfigError as e:
            raise ConfigError(f"model {cfg.name!r}: {e}") from None
        if cls.arch_schema is not None:
            parse_arch(cfg, cls.arch_schema)

    # ---- preprocessing -------------------------------------------------------------------------------------
    def image_transform(self, train: bool = False, image_size: int | None = None) -> Callable[[Any], Tensor]:
        """PIL image -> normalised tensor with the checkpoint's eval preprocessing (`self.preprocess`; `train` adds
        nothing: the paper protocols fine-tune without augmentation). `image_size` overrides the crop (VQA at 480)
        and scales the resize with it, in either resize mode."""
        return ImageTransform(self.preprocess, image_size)

    def tokenize(
        self, texts: list[str], pairs: list[str] | None = None, max_length: int | None = None
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def text_length(self, max_length: int | None = None) -> int:
        """The length `tokenize` truncates to: the one asked for (or the preset's), never more than the text
        encoder's positions."""
        n = max_length or self.cfg.max_text_length
        return n if self.max_text_positions is None else min(n, self.max_text_positions)

    # ---- features ------------------------------------------------------------------------------------------
    def image_features(self, pixel_values: Tensor) -> Tensor:
        raise self._missing(Capability.IMAGE)

    def text_features(self, **tokens: Tensor) -> Tensor:
        raise self._missing(Capability.TEXT)

    def pair_features(self, pixel_values: Tensor, **tokens: Tensor) -> Tensor:
        raise self._missing(Capability.FUSION)

    def image_embeddings(self, pixel_values: Tensor) -> Tensor:
        raise self._missing(Capability.CONTRASTIVE)

    def text_embeddings(self, **tokens: Tensor) -> Tensor:
        raise self._missing(Capability.CONTRASTIVE)

    # ---- image-text matching (ITM) ----------------------------------------------------------------------------
    def itm_image_states(self, pixel_values: Tensor) -> Tensor:
        """(B, N, D): what the ITM head needs from each image, computed once per image and then paired with many
        captions (`itm_scores_from_states`), as re-ranked retrieval does."""
        raise self._missing(Capability.ITM)

    def itm_scores_from_states(self, image_states: Tensor, **tokens: Tensor) -> Tensor:
        """(B,) log-probability that caption i matches the image whose `itm_image_states` are row i: the ITM
        head's log-softmax at "match". Training (cross-entropy over match / no match) fixes only the difference of
        the two logits, so the match logit alone carries a per-pair offset that ranking must not depend on."""
        raise self._missing(Capability.ITM)

    def itm_scores(self, pixel_values: Tensor, **tokens: Tensor) -> Tensor:
        """(B,) `itm_scores_from_states` for aligned (image i, caption i) pairs."""
        return self.itm_scores_from_states(self.itm_image_states(pixel_values), **tokens)

    # ---- generation (GENERATE) -------------------------------------------------------------------------------
    def generate(
        self,
        images: list[Tensor],
        prompts: list[str],
        *,
        max_new_tokens: int,
        num_beams: int = 1,
        min_new_tokens: int = 0,
        length_penalty: float = 1.0,
    ) -> list[str]:
        """Continue each prompt: greedy (`num_beams=1`) or beam search, batched with left padding and the LM's KV
        cache, stopping at the model's end-of-chunk token or after `max_new_tokens`. `images[i]` is a (T_i, C, H, W)
        tensor (T_i may be 0) from `image_transform`, one image per `MEDIA_MARKER` of `prompts[i]`, in order.
        Returns the new text only, special tokens removed, not stripped. A prompt that does not fit the model's
        context (with `max_new_tokens`) is a `ConfigError` naming its length."""
        raise self._missing(Capability.GENERATE)

    def loglikelihood(
        self, images: list[Tensor], prompts: list[str], continuations: list[str], normalize_length: bool = False
    ) -> Tensor:
        """(B, C) log-probability of each continuation (tokenized on its own, without special tokens, appended to
        the prompt's tokens) given prompt i and its images: the sum over its tokens, or their mean with
        `normalize_length` (OpenFlamingo's class scores). The prompt is encoded once (KV cache) for all C."""
        raise self._missing(Capability.GENERATE)

    def freeze_for_finetuning(self) -> list[str]:
        """Freeze the submodules the preset's `finetune.frozen` names (dotted prefixes, e.g. `vision_encoder`);
        returns the frozen parameter names. Flamingo's defaults keep its vision encoder and LM frozen."""
        prefixes = tuple(str(p) for p in self.cfg.finetune.get("frozen", []))
        frozen = []
        for name, param in self.named_parameters():
            if prefixes and name.startswith(prefixes):
                param.requires_grad_(False)
                frozen.append(name)
        missing = [p for p in prefixes if not any(n.startswith(p) for n in frozen)]
        if missing:
            raise ConfigError(f"model {self.cfg.name!r}: key 'finetune.frozen': no parameters under {missing}")
        return frozen

    def fsdp_wrap_modules(self) -> set[type[nn.Module]]:
        """The submodule classes `--strategy fsdp` shards as units (each gathered whole only while it runs). By
        default the classes of the repeated layers of every `nn.ModuleList` named like a transformer layer
        (`...Layer`, `...Block`); a wrapper whose big parts are named otherwise overrides this."""
        return {
            type(m)
            for stack in self.modules()
            if isinstance(stack, nn.ModuleList)
            for m in stack
            if type(m).__name__.endswith(("Layer", "Block"))
        }

    def require(self, needed: Capability, what: str) -> None:
        """Raise `CapabilityError` (recorded as n/a) when the model lacks a capability `what` needs."""
        check_capabilities(self.cfg.name, self.capabilities, needed, what)

    def _missing(self, cap: Capability) -> CapabilityError:
        return CapabilityError(f"model {self.cfg.name!r} has no {cap.name} capability")


def check_capabilities(model: str, have: Capability, needed: Capability, what: str) -> None:
    lacking = needed & ~have
    if lacking:
        names = "/".join(c.name for c in Capability if c and c in lacking and c.name)
        raise CapabilityError(f"model {model!r} has no {names} capability, which {what} needs")


def parse_arch(cfg: ModelConfig, schema: type[T]) -> T:
    """Validate the preset's free-form `arch` block against a wrapper's own dataclass, naming the bad key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    assert is_dataclass(schema)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg.arch))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"model {cfg.name!r}: key 'arch.{key}': {str(e).splitlines()[0]}") from None


def is_local_path(checkpoint: str) -> bool:
    return checkpoint.startswith((".", "/", "~")) or Path(checkpoint).expanduser().exists()


def require_checkpoint(cfg: ModelConfig) -> str:
    """The preset's checkpoint as a local path or hub id; a missing local path is a clear error."""
    if not cfg.checkpoint:
        raise ConfigError(f"model {cfg.name!r}: key 'checkpoint' is empty and the preset is not random_init")
    if is_local_path(cfg.checkpoint):
        path = Path(cfg.checkpoint).expanduser()
        if not path.exists():
            raise CheckpointError(f"model {cfg.name!r}: checkpoint path {path} does not exist")
        return str(path)
    return cfg.checkpoint


@contextmanager
def hf_loading(cfg: ModelConfig, what: str = "checkpoint") -> Iterator[None]:
    """Turn transformers/huggingface_hub load failures into one line naming the checkpoint and how to get it."""
    try:
        yield
    except OSError as e:  # transformers/huggingface_hub report a missing or unreachable file as OSError
        ckpt = cfg.checkpoint
        if ckpt and not is_local_path(ckpt):
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
            how = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
            raise CheckpointError(
                f"model {cfg.name!r}: {what} {ckpt!r} is not in the local Hugging Face cache and {how}. "
                f"Fetch it on a machine with network (`hf download {ckpt}`) and copy the cache, or point the "
                f"preset at a local copy with `--set model.checkpoint=/path/to/dir`."
            ) from None
        raise CheckpointError(f"model {cfg.name!r}: cannot load {what} from {ckpt}: {str(e).splitlines()[0]}") from None
