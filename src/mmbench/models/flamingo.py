"""Flamingo (Alayrac et al. 2022) in the OpenFlamingo layout: a frozen HF `CLIPVisionModel`, a Perceiver Resampler,
and gated cross-attention blocks inserted into any HF causal LM.

Mirrors `open_flamingo/src/flamingo.py` + `flamingo_lm.py` of open-flamingo 2.0.1 (the reference); proven equal to
it on tiny random weights in tests/test_flamingo_parity.py (full-model logits, several images per sample, both
masking modes) and against OpenFlamingo-layout checkpoints in tests/test_flamingo.py.

- Vision: OpenFlamingo feeds the resampler open_clip's `visual(x)[1]` with `output_tokens=True`. In the 2023
  open_clip releases it was trained with (>= 2.16, before `final_ln_after_pool` existed) that is `x[:, 1:]` of the
  last transformer block: the patch tokens *without* the CLS token and *before* `ln_post` (later releases apply
  `ln_post` to the tokens by default). With HF `CLIPVisionModel` that is `last_hidden_state[:, 1:]` (HF's
  `pre_layrnorm` is open_clip's `ln_pre`).
- Any image size: the CLIP tower runs with HF's `interpolate_pos_encoding=True` in `encode_media` and
  `image_features` (a bicubic resize of its position table to the input's patch grid; the identity at the trained
  size). OpenFlamingo's own eval transform is open_clip's (the presets state it; tests/test_preprocess_parity.py).
- Insertion: the gated block for decoder layer i (when (i+1) % every == 0) runs *before* that layer, through a
  forward pre-hook on the layer the preset names (`arch.decoder_layers`, e.g. `gpt_neox.layers`). The LM's module
  tree stays exactly HF's, so its own weights live under `lang_encoder.*` and the new blocks under
  `gated_cross_attn_layers.{i}.*`, and freezing the prefix `model.lang_encoder` freezes the LM but not the blocks.
- Features: IMAGE = vision pooled (post-LN CLS, before projection). TEXT = final LM hidden state of the last
  non-pad token with no media: cross-attention contributes nothing but the gated feed-forwards still run, exactly
  as for text before the first `<image>`. FUSION = the same with the image: `pair_features` takes the tokens that
  `tokenize(texts)` produced and, when they hold no `<image>` token, inserts one at the start of every row (after a
  BOS token if every row starts with one), OpenFlamingo's "<image>text" prompt. Tokens that already hold
  `<image>` tokens are used as they are, with `pixel_values` (B, T_img, C, H, W) giving their T_img images.
- Cross-attention per LM call: a forward pre-hook on the LM's base model reads each call's input_ids and sets every
  token's text time (which image it sees) before the decoder layers run, so the blocks stay right under a KV cache.
  Inside `conditioned(media, cached=True)` (generation, scoring after a prefill) OpenFlamingo's cached-media rule
  applies: a call whose tokens hold no `<image>` continues after the last conditioned locations (see
  `_condition_call`). GENERATE (`generate`, `loglikelihood`) lives in `flamingo_generate`.
- Weights: the backbones come from `arch.vision_encoder` / `arch.lang_encoder` (or are random for `random_init`
  presets); the preset's `checkpoint` names the OpenFlamingo `checkpoint.pt` (hub repo, directory or file) that is
  loaded over them (see `flamingo_checkpoint`). Without one the resampler and blocks keep their seeded init.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from omegaconf import MISSING
from torch import Tensor, nn

from mmbench.errors import ConfigError
from mmbench.models.arch import did_you_mean
from mmbench.models.base import CHUNK_END_MARKER, MEDIA_MARKER, Capability, ModelWrapper, parse_arch
from mmbench.models.flamingo_checkpoint import CheckpointReport, load_openflamingo_checkpoint, resolve_checkpoint_file
from mmbench.models.flamingo_generate import continuation_logprobs, generate_ids
from mmbench.models.flamingo_layers import GatedCrossAttentionBlock, PerceiverResampler, media_time
from mmbench.models.hf import load_or_init, tokenize
from mmbench.schema import ModelConfig


@dataclass
class PerceiverArch:
    depth: int = 6
    heads: int = 8
    dim_head: int = 64
    num_latents: int = 64
    ff_mult: int = 4


@dataclass
class CrossAttentionArch:
    heads: int = 8
    dim_head: int = 64
    ff_mult: int = 4
    only_attend_immediate_media: bool = True  # False: text attends to every preceding image


@dataclass
class FlamingoArch:
    decoder_layers: str = MISSING  # dotted path of the LM's decoder-layer ModuleList, e.g. gpt_neox.layers
    cross_attn_every_n_layers: int = 1
    vision_encoder: str | None = None  # HF id or directory of a CLIP vision tower (released presets)
    vision_encoder_revision: str | None = None
    lang_encoder: str | None = None  # HF id or directory of the causal LM (released presets)
    lang_encoder_revision: str | None = None
    checkpoint_file: str = "checkpoint.pt"  # file in the hub repo or directory `checkpoint` names
    media_token: str = "<image>"
    end_of_chunk_token: str = "<|endofchunk|>"
    # The pad token the checkpoint's vocabulary was built with, added when the tokenizer lacks it. OpenFlamingo added
    # `<PAD>` to RedPajama's tokenizer, which had no pad token under transformers 4; transformers 5 gives GPT-NeoX
    # tokenizers `<|padding|>` instead, which would leave the vocabulary one row short of the checkpoint's.
    # None: add `<PAD>` only if the tokenizer has no pad token (OpenFlamingo's rule).
    pad_token: str | None = None
    perceiver: PerceiverArch = field(default_factory=PerceiverArch)
    cross_attn: CrossAttentionArch = field(default_factory=CrossAttentionArch)
    # Random-init presets only: the LM's HF `model_type` and config kwargs, CLIPVisionConfig kwargs.
    lm_model_type: str | None = None
    lm: dict[str, Any] = field(default_factory=dict)
    vision: dict[str, Any] = field(default_factory=dict)


def decoder_layer_list(lang_encoder: nn.Module, path: str) -> nn.ModuleList:
    """The LM's decoder-layer ModuleList at a dotted path; a wrong path names the LM class and what it found."""
    module: Any = lang_encoder
    for part in path.split("."):
        module = getattr(module, part, None)
    if not isinstance(module, nn.ModuleList):
        found = type(module).__name__ if module is not None else "nothing"
        raise ConfigError(
            f"key 'arch.decoder_layers': {path!r} is not a ModuleList of decoder layers in "
            f"{type(lang_encoder).__name__} (found {found})"
        )
    return module


@dataclass
class MediaConditioning:
    """What the gated blocks attend to while `Flamingo.conditioned` is active."""

    media: Tensor | None  # (B, T_img, n, Dv) resampled images; None: text only
    cached: bool  # OpenFlamingo's `_use_cached_vision_x`: calls may continue a KV cache
    locations: Tensor | None = None  # (B, T) bool: the media locations last conditioned on
    text_time: Tensor | None = None  # (B, T_call): the image each token of the LM call under way sees


class Flamingo(nn.Module):
    """Vision encoder -> Perceiver Resampler -> gated cross-attention into a causal LM."""

    def __init__(
        self,
        vision_encoder: nn.Module,
        lang_encoder: nn.Module,
        *,
        media_token_id: int,
        decoder_layers: str,
        cross_attn_every_n_layers: int = 1,
        perceiver: PerceiverArch | None = None,
        cross_attn: CrossAttentionArch | None = None,
    ):
        super().__init__()
        if cross_attn_every_n_layers < 1:
            raise ConfigError("key 'arch.cross_attn_every_n_layers': must be at least 1")
        perceiver, cross_attn = perceiver or PerceiverArch(), cross_attn or CrossAttentionArch()
        self.media_token_id = media_token_id
        self.decoder_layers = decoder_layers
        self.vis_dim = vision_encoder.config.hidden_size
        self.lang_dim = lang_encoder.get_input_embeddings().embedding_dim
        self.vision_encoder = vision_encoder
        self.perceiver = PerceiverResampler(self.vis_dim, **dataclasses.asdict(perceiver))
        self.lang_encoder = lang_encoder
        layers = decoder_layer_list(lang_encoder, decoder_layers)
        self.gated_cross_attn_layers = nn.ModuleDict(
            {
                str(i): GatedCrossAttentionBlock(self.lang_dim, self.vis_dim, **dataclasses.asdict(cross_attn))
                for i in range(len(layers))
                if (i + 1) % cross_attn_every_n_layers == 0
            }
        )
        if not self.gated_cross_attn_layers:
            raise ConfigError(f"key 'arch.cross_attn_every_n_layers': exceeds the LM's {len(layers)} layers")
        for key in self.gated_cross_attn_layers:
            layers[int(key)].register_forward_pre_hook(partial(self._cross_attend, key), with_kwargs=True)
        # Each call of the LM's base model (prefill, every decode step) first reads its input_ids for media tokens.
        lang_encoder.base_model.register_forward_pre_hook(self._condition_call, with_kwargs=True)
        self._conditioning: MediaConditioning | None = None  # set inside `conditioned`

    def encode_media(self, pixel_values: Tensor) -> Tensor:
        """(B, T_img, C, H, W) images, or (B, C, H, W) one per sample -> (B, T_img, num_latents, Dv) resampled
        visual tokens."""
        if pixel_values.ndim == 4:  # one image per sample
            pixel_values = pixel_values[:, None]  # (B, 1, C, H, W)
        b, t = pixel_values.shape[:2]
        out = self.vision_encoder(pixel_values=pixel_values.flatten(0, 1), interpolate_pos_encoding=True)
        patches = out.last_hidden_state[:, 1:]  # (B*T_img, P, Dv): no CLS, before the post-LayerNorm
        return self.perceiver(patches.unflatten(0, (b, t)))  # (B, T_img, n, Dv)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, pixel_values: Tensor | None = None):
        """Next-token logits (B, T, V); `pixel_values` (B, T_img, C, H, W) or None for text only."""
        media = self.encode_media(pixel_values) if pixel_values is not None else None
        with self.conditioned(media):
            return self.lang_encoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def hidden_states(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, pixel_values: Tensor | None = None
    ) -> Tensor:
        """The LM's final hidden states (B, T, D), i.e. what its LM head reads."""
        media = self.encode_media(pixel_values) if pixel_values is not None else None
        with self.conditioned(media):
            out = self.lang_encoder.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state  # (B, T, D)

    @contextmanager
    def conditioned(self, media: Tensor | None, cached: bool = False) -> Iterator[MediaConditioning]:
        """Within this context every LM call cross-attends to `media` (B, T_img, n, Dv) from `encode_media` (None:
        text only). `cached=True` is for calls that continue a KV cache (`lang_encoder.generate`, scoring after a
        prefill): OpenFlamingo's cached-media rule then applies (`_condition_call`)."""
        self._conditioning = MediaConditioning(media, cached)
        try:
            yield self._conditioning
        finally:
            self._conditioning = None

    def _condition_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook of the LM's base model: each token's text time for this call, OpenFlamingo's rule
        (`FlamingoLMMixin.forward` + `MaskedCrossAttention(use_cached_media=...)`): if the media are cached (`cached`),
        a previous call conditioned the locations and this call's input_ids hold no media token, every token's text
        time is the count of media tokens in the last conditioned locations (a decode step continues after the
        prompt's last image); otherwise this call's input_ids become the locations and text time is their running
        count. So a decode step that emits `<image>` re-conditions: in that step and every later one, the rows that
        emitted it see image 1 and the other rows none, exactly as in the reference (which does not reorder the
        locations across beams either)."""
        state = self._conditioning
        if state is None:  # the LM called on its own, not through this module: leave it unchanged
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise TypeError(f"{type(module).__name__} got no input_ids: Flamingo finds its media tokens in them")
        locations = input_ids == self.media_token_id  # (B, T)
        if state.cached and state.locations is not None and not locations.any():
            count = state.locations.sum(dim=-1, keepdim=True)  # (B, 1)
            state.text_time = count.expand_as(locations)  # (B, T)
            return
        state.locations = locations
        state.text_time = media_time(locations)  # (B, T)
        if state.media is not None and locations.numel():
            most = int(state.text_time[:, -1].max())
            if most > state.media.shape[1]:
                raise ValueError(f"a text holds {most} media tokens but only {state.media.shape[1]} images were given")

    def _cross_attend(self, key: str, layer: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Forward pre-hook of decoder layer `key`: run its gated block on the layer's input hidden states."""
        state = self._conditioning
        if state is None:  # the LM called on its own, not through this module: leave it unchanged
            return None
        block = partial(self.gated_cross_attn_layers[key], media=state.media, text_time=state.text_time)
        if args:
            return (block(args[0]), *args[1:]), kwargs
        if "hidden_states" not in kwargs:
            raise TypeError(f"{type(layer).__name__} got no positional or `hidden_states` input to cross-attend")
        kwargs["hidden_states"] = block(kwargs["hidden_states"])
        return args, kwargs


def last_token_states(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """(B, T, D) -> (B, D) at each row's last non-pad position (either padding side)."""
    b, t = hidden.shape[:2]
    if attention_mask is None:
        return hidden[:, -1]
    positions = torch.arange(t, device=hidden.device)  # (T,)
    last = (attention_mask.to(torch.long) * positions).argmax(dim=-1)  # (B,)
    return hidden[torch.arange(b, device=hidden.device), last]  # (B, D)


def add_flamingo_tokens(tokenizer: Any, arch: FlamingoArch) -> None:
    """Add `<|endofchunk|>` and `<image>`, then the pad token, in OpenFlamingo's order (token ids must line up with
    the checkpoint's embedding rows); tokens already present are kept."""
    vocab = tokenizer.get_vocab()
    new = [t for t in (arch.end_of_chunk_token, arch.media_token) if t not in vocab]
    if new:
        tokenizer.add_special_tokens({"additional_special_tokens": new})
    if arch.pad_token is not None:
        tokenizer.add_special_tokens({"pad_token": arch.pad_token})
    elif tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<PAD>"})


def tiny_flamingo_tokenizer(max_length: int = 77, flamingo_tokens: bool = True) -> Any:
    """A GPT-NeoX-style byte-level BPE (RedPajama's kind: no BOS/EOS added) whose merges, learnt with the
    `tokenizers` trainer, make each tiny-vocabulary word one token with and without its leading space; with
    `<|endofchunk|>`, `<image>` and `<PAD>` added unless `flamingo_tokens=False`."""
    import json

    from tokenizers import Tokenizer, models, trainers
    from transformers import GPTNeoXTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from mmbench.models.tokenizers import TINY_WORDS

    symbols = list(bytes_to_unicode().values())
    bpe = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=100_000, min_frequency=1, show_progress=False, initial_alphabet=symbols)
    words = dict.fromkeys(TINY_WORDS)
    bpe.train_from_iterator([space + w for w in words for space in ("", "Ġ")], trainer=trainer)  # Ġ: byte-level space
    learnt = json.loads(bpe.to_str())["model"]
    tokens = ["<|endoftext|>", *symbols, *sorted(learnt["vocab"], key=learnt["vocab"].get)]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learnt["merges"]]
    tok = GPTNeoXTokenizer(vocab=vocab, merges=merges, pad_token=None, model_max_length=max_length)
    if flamingo_tokens:
        add_flamingo_tokens(tok, FlamingoArch(decoder_layers=""))
    return tok


class FlamingoWrapper(ModelWrapper):
    capabilities = Capability.IMAGE | Capability.TEXT | Capability.FUSION | Capability.GENERATE
    arch_schema = FlamingoArch

    @classmethod
    def arch_config_class(cls, key: str, arch: dict[str, Any]) -> type | None:
        from transformers import CONFIG_MAPPING, CLIPVisionConfig

        if key == "vision":
            return CLIPVisionConfig
        if key != "lm" or not arch.get("lm_model_type"):
            return None  # without a model type there is nothing to check `lm` against (from_config says so)
        lm_type = str(arch["lm_model_type"])
        if lm_type not in CONFIG_MAPPING:
            hint = did_you_mean(lm_type, CONFIG_MAPPING.keys())
            raise ConfigError(f"key 'arch.lm_model_type': {lm_type!r} is not an HF model type{hint}")
        return CONFIG_MAPPING[lm_type]

    def __init__(self, cfg: ModelConfig, model: Flamingo, tokenizer: Any, report: CheckpointReport | None = None):
        super().__init__(cfg)
        self.model = model
        self.tokenizer = tokenizer
        self.arch = parse_arch(cfg, FlamingoArch)
        # Right padding keeps every row's positions starting at 0: HF causal LMs number positions from the start
        # of the sequence, not from the first real token.
        self.tokenizer.padding_side = "right"
        self.checkpoint_report = report
        self.feature_dims = {"image": model.vis_dim, "text": model.lang_dim, "pair": model.lang_dim}
        # One position is kept for the `<image>` token `pair_features` inserts; None: the LM names no bound.
        positions = getattr(model.lang_encoder.config, "max_position_embeddings", None)
        self.max_text_positions = positions - 1 if positions else None

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> FlamingoWrapper:
        from mmbench.models.tokenizers import load_tokenizer

        arch = parse_arch(cfg, FlamingoArch)
        if not cfg.random_init and not (arch.vision_encoder and arch.lang_encoder):
            raise ConfigError(f"model {cfg.name!r}: keys 'arch.vision_encoder' and 'arch.lang_encoder' are required")
        if cfg.random_init and not arch.lm_model_type:
            raise ConfigError(f"model {cfg.name!r}: key 'arch.lm_model_type' is required for a random_init preset")
        # Find the checkpoint first: offline, a missing file should fail before gigabytes of backbones load.
        checkpoint = resolve_checkpoint_file(cfg, arch.checkpoint_file) if cfg.checkpoint else None
        # The tokenizer is the LM's: its revision, and errors naming it rather than the Flamingo checkpoint.
        lm_cfg = dataclasses.replace(
            cfg, checkpoint=cfg.tokenizer or arch.lang_encoder, revision=arch.lang_encoder_revision
        )
        tokenizer = load_tokenizer(lm_cfg, default=arch.lang_encoder)
        add_flamingo_tokens(tokenizer, arch)
        vision = _vision_encoder(cfg, arch)
        lm = _lang_encoder(cfg, arch, tokenizer)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            try:
                model = Flamingo(
                    vision,
                    lm,
                    media_token_id=tokenizer.convert_tokens_to_ids(arch.media_token),
                    decoder_layers=arch.decoder_layers,
                    cross_attn_every_n_layers=arch.cross_attn_every_n_layers,
                    perceiver=arch.perceiver,
                    cross_attn=arch.cross_attn,
                )
            except ConfigError as e:
                raise ConfigError(f"model {cfg.name!r}: {e}") from None
        report = load_openflamingo_checkpoint(model, checkpoint, cfg.name) if checkpoint else None
        return cls(cfg, model, tokenizer, report)

    def tokenize(
        self, texts: list[str], pairs: list[str] | None = None, max_length: int | None = None
    ) -> dict[str, Tensor]:
        if pairs is not None:  # a causal LM has no segments: one text, the pair joined by a space
            texts = [f"{a} {b}" for a, b in zip(texts, pairs)]
        keys = ("input_ids", "attention_mask")
        return tokenize(self.tokenizer, texts, None, self.text_length(max_length), keys)

    def image_features(self, pixel_values: Tensor) -> Tensor:
        out = self.model.vision_encoder(pixel_values=pixel_values, interpolate_pos_encoding=True)
        return out.pooler_output  # (B, Dv)

    def text_features(self, **tokens: Tensor) -> Tensor:
        mask = tokens.get("attention_mask")
        hidden = self.model.hidden_states(tokens["input_ids"], mask)  # (B, T, D)
        return last_token_states(hidden, mask)  # (B, D)

    def pair_features(self, pixel_values: Tensor, **tokens: Tensor) -> Tensor:
        input_ids, mask = self._with_media_token(tokens["input_ids"], tokens.get("attention_mask"))
        hidden = self.model.hidden_states(input_ids, mask, pixel_values)  # (B, T+1, D)
        return last_token_states(hidden, mask)  # (B, D)

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
        ids = generate_ids(
            self,
            images,
            self._own_markers(prompts),
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            min_new_tokens=min_new_tokens,
            length_penalty=length_penalty,
        )
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def loglikelihood(
        self, images: list[Tensor], prompts: list[str], continuations: list[str], normalize_length: bool = False
    ) -> Tensor:
        return continuation_logprobs(self, images, self._own_markers(prompts), continuations, normalize_length)

    def _own_markers(self, prompts: list[str]) -> list[str]:
        """The contract's `<image>` / `<|endofchunk|>` in the preset's spelling (OpenFlamingo's by default)."""
        pairs = [(MEDIA_MARKER, self.arch.media_token), (CHUNK_END_MARKER, self.arch.end_of_chunk_token)]
        pairs = [(a, b) for a, b in pairs if a != b]
        for a, b in pairs:
            prompts = [p.replace(a, b) for p in prompts]
        return prompts

    def _with_media_token(self, input_ids: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Insert `<image>` at the start of every row unless the tokens already place their media tokens."""
        media_id = self.model.media_token_id
        if (input_ids == media_id).any():
            return input_ids, mask
        bos = self.tokenizer.bos_token_id
        # Tokenizers that add BOS (LLaMA's) put the image after it; GPT-NeoX/MPT ones add none.
        at = int(bos is not None and input_ids.shape[1] > 0 and bool((input_ids[:, 0] == bos).all()))
        column = torch.full_like(input_ids[:, :1], media_id)  # (B, 1)
        input_ids = torch.cat([input_ids[:, :at], column, input_ids[:, at:]], dim=1)  # (B, T+1)
        if mask is not None:
            mask = torch.cat([mask[:, :at], torch.ones_like(mask[:, :1]), mask[:, at:]], dim=1)  # (B, T+1)
        return input_ids, mask


def _vision_encoder(cfg: ModelConfig, arch: FlamingoArch) -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    sub = dataclasses.replace(cfg, checkpoint=arch.vision_encoder, revision=arch.vision_encoder_revision)
    return load_or_init(
        sub, CLIPVisionModel, lambda: CLIPVisionConfig(**{"image_size": cfg.preprocess.image_size, **arch.vision})
    )


def _lang_encoder(cfg: ModelConfig, arch: FlamingoArch, tokenizer: Any) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    if cfg.random_init:
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
        config = AutoConfig.for_model(
            arch.lm_model_type,
            **{**ids, **arch.lm, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id},
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            return AutoModelForCausalLM.from_config(config)
    sub = dataclasses.replace(cfg, checkpoint=arch.lang_encoder, revision=arch.lang_encoder_revision)
    lm = load_or_init(sub, AutoModelForCausalLM, lambda: None)
    if lm.get_input_embeddings().num_embeddings != len(tokenizer):
        # As OpenFlamingo: the vocabulary becomes exactly the tokenizer's (RedPajama's 50432 rows shrink to 50280),
        # which is the shape of the checkpoint's embeddings. New rows are seeded; the checkpoint overwrites them.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            lm.resize_token_embeddings(len(tokenizer))
    return lm
