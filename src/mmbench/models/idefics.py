"""IDEFICS (Laurençon et al. 2023, the OBELICS paper): HF `IdeficsForVisionText2Text`, e.g. HuggingFaceM4/idefics-9b.

A Flamingo reproduction (CLIP ViT-H/14, Perceiver Resampler, gated cross-attention into LLaMA) that ships its own
processor; this wrapper speaks the GENERATE contract of `models.base` by doing what `IdeficsProcessor` does
(transformers 5, `models/idefics/processing_idefics.py`) and proves it equal to the processor + `model.generate` /
forward in tests/test_idefics.py.

Prompt translation (the contract's OpenFlamingo spelling -> IDEFICS's):
- `<|endofchunk|>` -> the preset's `arch.end_of_chunk_token`, and generation stops when the model emits that token
  (or EOS). For idefics-9b it is "\\n": its tokenizer has no end-of-chunk token (its added vocabulary is exactly
  `<fake_token_around_image>` and `<image>`; `<end_of_utterance>` exists only in the -instruct checkpoints, and
  `IdeficsProcessor` inserts it only between two consecutive text items and only when the tokenizer has it, so never
  for idefics-9b), and IDEFICS's own in-context evaluation (HuggingFaceM4's m4 `Vgpt2OpenEndedVQAInContext`, which
  IDEFICS's in-context tasks subclass) ends every demonstration with "\\n" and cuts the answer at the next
  "Question"/"Image"/... after banning "\\n" from the generation; stopping at "\\n" keeps the same answer. EOS
  (`</s>`) would be wrong: IDEFICS packed training documents with it, so the processor's image mask cuts every
  token after an EOS off its image, and the model reads it as "a new document starts".
- The prompt is split at `<image>` into text parts and images, as the processor's list input: BOS first (the
  processor adds `<s>` as text), each non-empty text part stripped of spaces at both ends (the processor's
  `item.strip(" ")`), each image as `<fake_token_around_image><image><fake_token_around_image>`, and an image that
  directly follows another as `<image><fake_token_around_image>` (they share the fake token between them).
- `image_attention_mask` (B, T, N): a token attends to the latest image at or before it (the `<image>` token to
  its own), to none before the first image, and to none after an EOS until the next image (the processor's
  `image_attention_mask_for_packed_input_ids` + `incremental_to_binary_attention_mask`, vectorised). New tokens
  (generated, or continuations being scored) use the last prompt token's row, as HF's generate does.

Batches are left-padded with the tokenizer's pad token; HF's IDEFICS forward numbers positions from each row's
first real token (attention-mask cumsum), and `loglikelihood` continues those positions from the KV cache.
Decoding settings are exactly those `generate` is given: the checkpoint's `generation_config.json` is replaced by
one that names only BOS/EOS/pad, so nothing in it (bad words, n-gram bans) changes results silently.

Features: IMAGE = the vision tower's pooled output (post-LayerNorm CLS, before anything IDEFICS adds), with
`interpolate_pos_encoding=True` so any image size works (the identity at the trained size); generation and scoring
also run the tower with it. Preprocessing is `IdeficsImageProcessor`'s: a square bicubic resize to `image_size`,
no crop, CLIP mean/std (tests/test_idefics.py against its PIL and torchvision backends).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmbench.errors import ConfigError
from mmbench.models.base import CHUNK_END_MARKER, MEDIA_MARKER, Capability, ModelWrapper, parse_arch
from mmbench.models.hf import load_or_init, tokenize
from mmbench.models.tokenizers import IDEFICS_IMAGE_TOKENS, load_tokenizer
from mmbench.schema import ModelConfig

FAKE_TOKEN, IMAGE_TOKEN = IDEFICS_IMAGE_TOKENS


@dataclass
class IdeficsArch:
    # The text that stands for the contract's `<|endofchunk|>`; generation stops at its token. Must be one token
    # after a word. idefics-9b: "\n" (module docstring).
    end_of_chunk_token: str = "\n"
    # Random-init presets only (released checkpoints carry their config): IdeficsConfig kwargs (vocabulary sizes
    # and special ids come from the tokenizer), IdeficsVisionConfig kwargs, IdeficsPerceiverConfig kwargs.
    idefics: dict[str, Any] = field(default_factory=dict)
    vision: dict[str, Any] = field(default_factory=dict)
    perceiver: dict[str, Any] = field(default_factory=dict)


@dataclass
class Encoded:
    """A left-padded batch of translated prompts, in the model's input names."""

    input_ids: Tensor  # (B, T)
    attention_mask: Tensor  # (B, T)
    pixel_values: Tensor  # (B, N, C, H, W), zero images where a row has fewer than N (N >= 1)
    image_attention_mask: Tensor  # (B, T, N)
    lengths: Tensor  # (B,) real tokens per row

    def inputs(self) -> dict[str, Tensor]:
        keys = ("input_ids", "attention_mask", "pixel_values", "image_attention_mask")
        return {k: getattr(self, k) for k in keys}


def image_attention_mask(input_ids: Tensor, image_id: int, eos_id: int | None, num_images: int) -> Tensor:
    """(B, T) ids -> (B, T, num_images) 0/1: which image each token attends to (the processor's rule, above)."""
    b, t = input_ids.shape
    is_image = input_ids == image_id  # (B, T)
    current = is_image.long().cumsum(-1) - 1  # (B, T) index of the latest image at or before t; -1 before any
    positions = torch.arange(t, device=input_ids.device).expand(b, t)  # (B, T)
    none = torch.full_like(positions, -1)
    last_image = torch.where(is_image, positions, none).cummax(-1).values  # (B, T)
    if eos_id is not None:
        eos_at = torch.where(input_ids == eos_id, positions, none).cummax(-1).values  # (B, T) latest EOS at or before
        eos_before = torch.cat([none[:, :1], eos_at[:, :-1]], dim=1)  # (B, T) latest EOS strictly before t
        current = current.masked_fill(eos_before > last_image, -1)
    valid = (current >= 0) & (current < num_images)  # (B, T)
    one_hot = F.one_hot(current.clamp(0, num_images - 1), num_images)  # (B, T, N)
    return one_hot * valid[..., None]


class IdeficsWrapper(ModelWrapper):
    capabilities = Capability.IMAGE | Capability.GENERATE
    arch_schema = IdeficsArch

    @classmethod
    def arch_config_class(cls, key: str, arch: dict[str, Any]) -> type | None:
        from transformers import IdeficsConfig, IdeficsPerceiverConfig, IdeficsVisionConfig

        return {"idefics": IdeficsConfig, "vision": IdeficsVisionConfig, "perceiver": IdeficsPerceiverConfig}.get(key)

    def __init__(self, cfg: ModelConfig, model: Any, tokenizer: Any):
        from transformers import GenerationConfig

        super().__init__(cfg)
        self.model = model
        self.tokenizer = tokenizer
        arch = parse_arch(cfg, IdeficsArch)
        config = model.config
        self.feature_dims = {"image": config.vision_config.embed_dim}
        self.max_text_positions = config.max_position_embeddings
        self.image_token_id, self.fake_token_id = self._special_ids(config)
        self.end_of_chunk = arch.end_of_chunk_token
        self.end_of_chunk_id = self._single_token_id(arch.end_of_chunk_token)
        self.stop_ids = list(dict.fromkeys([self.end_of_chunk_id, tokenizer.eos_token_id]))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        ids = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": self.pad_id,
        }
        model.generation_config = GenerationConfig(**ids)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> IdeficsWrapper:
        from transformers import IdeficsConfig, IdeficsForVisionText2Text

        tokenizer = load_tokenizer(cfg)

        def make_config() -> Any:
            arch = parse_arch(cfg, IdeficsArch)
            base = tokenizer.vocab_size  # the vocabulary before added tokens (IDEFICS's "additional" rows)
            return IdeficsConfig(
                **arch.idefics,
                vocab_size=base,
                additional_vocab_size=len(tokenizer) - base,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                vision_config={"image_size": cfg.preprocess.image_size, **arch.vision},
                perceiver_config=dict(arch.perceiver),
            )

        return cls(cfg, load_or_init(cfg, IdeficsForVisionText2Text, make_config), tokenizer)

    def _special_ids(self, config: Any) -> tuple[int, int]:
        rows = config.vocab_size + config.additional_vocab_size
        ids = []
        for token in (IMAGE_TOKEN, FAKE_TOKEN):
            i = self.tokenizer.convert_tokens_to_ids(token)
            if i is None or i == self.tokenizer.unk_token_id or i >= rows:
                raise ConfigError(
                    f"model {self.cfg.name!r}: key 'tokenizer': it has no {token} token within the model's {rows} "
                    "embedding rows (an IDEFICS tokenizer adds <fake_token_around_image> and <image>)"
                )
            ids.append(int(i))
        return ids[0], ids[1]

    def _single_token_id(self, text: str) -> int:
        """The id `text` tokenizes to after a word: what the model emits when it ends a chunk."""
        before = self.tokenizer("a", add_special_tokens=False).input_ids
        after = self.tokenizer("a" + text, add_special_tokens=False).input_ids
        if not text or after[: len(before)] != before or len(after) != len(before) + 1:
            raise ConfigError(
                f"model {self.cfg.name!r}: key 'arch.end_of_chunk_token': {text!r} is not a single token after a word "
                f"(it tokenizes as {self.tokenizer.convert_ids_to_tokens(after[len(before) - 1 :])})"
            )
        return after[-1]

    # ---- prompts -------------------------------------------------------------------------------------------
    def idefics_text(self, prompt: str) -> str:
        """The contract's prompt in IDEFICS's spelling, as `IdeficsProcessor` builds it from the same parts."""
        parts = prompt.replace(CHUNK_END_MARKER, self.end_of_chunk).split(MEDIA_MARKER)
        text, last_was_image = self.tokenizer.bos_token, False
        for i, part in enumerate(parts):
            if i > 0:  # an image stood between parts i-1 and i
                text += IMAGE_TOKEN + FAKE_TOKEN if last_was_image else FAKE_TOKEN + IMAGE_TOKEN + FAKE_TOKEN
                last_was_image = True
            if part:  # the processor's text items: every part between images that is not empty
                text += part.strip(" ")
                last_was_image = False
        return text

    def encode(self, images: list[Tensor], prompts: list[str]) -> Encoded:
        """Translate, tokenize and left-pad prompts; pad each row's images to the batch's most."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} image tensors")
        for i, (pixels, prompt) in enumerate(zip(images, prompts)):
            if pixels.shape[0] != prompt.count(MEDIA_MARKER):
                raise ValueError(
                    f"prompt {i} has {prompt.count(MEDIA_MARKER)} {MEDIA_MARKER} but {pixels.shape[0]} images"
                )
        rows = [self.tokenizer(self.idefics_text(p), add_special_tokens=False).input_ids for p in prompts]
        lengths = torch.tensor([len(r) for r in rows])  # (B,)
        t = int(lengths.max())
        input_ids = torch.full((len(rows), t), self.pad_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(rows), t), dtype=torch.long)  # (B, T)
        for i, row in enumerate(rows):
            input_ids[i, t - len(row) :] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, t - len(row) :] = 1
        n = max(1, max(int(p.shape[0]) for p in images))
        shape = next(
            (p.shape[1:] for p in images if p.shape[0]), (3, self.preprocess.image_size, self.preprocess.image_size)
        )
        pixel_values = torch.zeros((len(rows), n, *shape))  # (B, N, C, H, W)
        for i, pixels in enumerate(images):
            pixel_values[i, : pixels.shape[0]] = pixels
        eos = self.tokenizer.eos_token_id
        mask = image_attention_mask(input_ids, self.image_token_id, eos, n)  # (B, T, N)
        device = self.model.device
        return Encoded(
            input_ids.to(device), attention_mask.to(device), pixel_values.to(device), mask.to(device), lengths
        )

    def _check_context(self, lengths: Tensor, extra: int, what: str) -> None:
        positions = self.model.config.max_position_embeddings
        i = int(lengths.argmax())
        if int(lengths[i]) + extra > positions:
            raise ConfigError(
                f"model {self.cfg.name!r}: prompt {i} is {int(lengths[i])} tokens, and with {what} ({extra}) that is "
                f"{int(lengths[i]) + extra}, more than the model's {positions} positions"
            )

    # ---- GENERATE ------------------------------------------------------------------------------------------
    @torch.no_grad()
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
        decoding = {"num_beams": num_beams, "min_new_tokens": min_new_tokens, "length_penalty": length_penalty}
        rows = self.generate_tokens(images, prompts, max_new_tokens=max_new_tokens, **decoding)
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in rows]

    @torch.no_grad()
    def generate_tokens(
        self,
        images: list[Tensor],
        prompts: list[str],
        *,
        max_new_tokens: int,
        num_beams: int = 1,
        min_new_tokens: int = 0,
        length_penalty: float = 1.0,
    ) -> list[list[int]]:
        """`generate`'s new token ids per prompt, up to (not including) the first stop token."""
        enc = self.encode(images, prompts)
        self._check_context(enc.lengths, max_new_tokens, "max_new_tokens")
        inputs = enc.inputs()
        # The vision tower once per image: given pixels, HF's generate repeats them per beam before the tower runs
        # (3 beams: 3x the tower's work, most of a step at real scale); its states are what it would compute.
        pixels = inputs.pop("pixel_values")  # (B, N, C, H, W)
        flat = pixels.flatten(0, 1).to(self.model.dtype)  # (B*N, C, H, W), as HF casts them
        tower = self.model.model.vision_model(pixel_values=flat, interpolate_pos_encoding=True)
        inputs["image_encoder_embeddings"] = tower.last_hidden_state.unflatten(0, pixels.shape[:2])  # (B, N, P+1, D)
        out = self.model.generate(**inputs, **self.decoding(max_new_tokens, num_beams, min_new_tokens, length_penalty))
        new = out[:, enc.input_ids.shape[1] :].tolist()  # (B, <= max_new_tokens)
        return [self._until_stop(row) for row in new]

    def decoding(
        self, max_new_tokens: int, num_beams: int, min_new_tokens: int, length_penalty: float
    ) -> dict[str, Any]:
        """`model.generate` keyword arguments: greedy or beam search, stopping at the chunk end or EOS."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "min_new_tokens": min_new_tokens,
            "num_beams": num_beams,
            "do_sample": False,
            "eos_token_id": self.stop_ids,
            "pad_token_id": self.pad_id,
            "interpolate_pos_encoding": True,
        }
        if num_beams > 1:  # HF warns about a length penalty without beams
            kwargs.update(length_penalty=length_penalty, early_stopping=False)
        return kwargs

    def _until_stop(self, row: list[int]) -> list[int]:
        """New tokens up to the first stop token (the chunk end is text here, not a special token to skip)."""
        for i, token in enumerate(row):
            if token in self.stop_ids:
                return row[:i]
        return row

    @torch.no_grad()
    def loglikelihood(
        self, images: list[Tensor], prompts: list[str], continuations: list[str], normalize_length: bool = False
    ) -> Tensor:
        enc = self.encode(images, prompts)
        conts = [self.tokenizer(c, add_special_tokens=False).input_ids for c in continuations]
        empty = [i for i, c in enumerate(conts) if not c]
        if empty:
            raise ValueError(f"continuation {empty[0]} ({continuations[empty[0]]!r}) has no tokens")
        self._check_context(enc.lengths, max(len(c) for c in conts), "the longest continuation")
        b, c, lc = len(prompts), len(conts), max(len(c) for c in conts)
        visual = self._visual_states(enc.pixel_values)
        prefill = self.model(
            input_ids=enc.input_ids,
            attention_mask=enc.attention_mask,
            image_attention_mask=enc.image_attention_mask,
            use_cache=True,
            logits_to_keep=1,
            **visual,
        )
        first = prefill.logits[:, -1].float().log_softmax(-1)  # (B, V): the first continuation token's scores
        cache = prefill.cache
        cache.batch_repeat_interleave(c)  # rows b*C + j: prompt b, continuation j

        device = enc.input_ids.device
        ids = torch.full((c, lc), self.pad_id, dtype=torch.long, device=device)  # (C, Lc), right-padded
        mask = torch.zeros((c, lc), dtype=torch.long, device=device)  # (C, Lc)
        for j, cont in enumerate(conts):
            ids[j, : len(cont)] = torch.tensor(cont, device=device)
            mask[j, : len(cont)] = 1
        ids, mask = ids.repeat(b, 1), mask.repeat(b, 1)  # (B*C, Lc)
        positions = enc.lengths.to(device).repeat_interleave(c)[:, None] + torch.arange(lc, device=device)  # (B*C, Lc)
        last_row = enc.image_attention_mask[:, -1:].repeat_interleave(c, 0)  # (B*C, 1, N)
        out = self.model(
            input_ids=ids,
            attention_mask=torch.cat([enc.attention_mask.repeat_interleave(c, 0), mask], dim=1),  # (B*C, T+Lc)
            position_ids=positions,
            image_attention_mask=last_row.expand(-1, lc, -1),  # (B*C, Lc, N)
            cache=cache,
            use_cache=True,
            **{k: self._repeat_images(v, b, c) for k, v in visual.items()},
        )
        scores = torch.cat([first.repeat_interleave(c, 0)[:, None], out.logits[:, :-1].float().log_softmax(-1)], 1)
        token_scores = scores.gather(-1, ids[..., None]).squeeze(-1) * mask  # (B*C, Lc)
        total = token_scores.sum(-1)  # (B*C,)
        if normalize_length:
            total = total / mask.sum(-1)
        return total.view(b, c).cpu()

    def _visual_states(self, pixel_values: Tensor) -> dict[str, Tensor]:
        """The visual tokens the cross-attention reads, computed once: (B*N, L, D) under the input name that
        IDEFICS's forward takes them by (after the resampler when the model has one)."""
        inner = self.model.model
        pixels = pixel_values.flatten(0, 1).to(self.model.dtype)  # (B*N, C, H, W)
        states = inner.vision_model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        if self.model.config.use_resampler:
            return {"perceiver_embeddings": inner.perceiver_resampler(states)}  # (B*N, latents, D)
        return {"image_encoder_embeddings": states}  # (B*N, P+1, D)

    @staticmethod
    def _repeat_images(states: Tensor, b: int, c: int) -> Tensor:
        """(B*N, L, D) -> (B*C*N, L, D): each prompt's images once per continuation."""
        return states.unflatten(0, (b, -1)).repeat_interleave(c, 0).flatten(0, 1)

    # ---- features ------------------------------------------------------------------------------------------
    def tokenize(
        self, texts: list[str], pairs: list[str] | None = None, max_length: int | None = None
    ) -> dict[str, Tensor]:
        if pairs is not None:  # a causal LM has no segments: one text, the pair joined by a space
            texts = [f"{a} {b}" for a, b in zip(texts, pairs)]
        return tokenize(self.tokenizer, texts, None, self.text_length(max_length), ("input_ids", "attention_mask"))

    def image_features(self, pixel_values: Tensor) -> Tensor:
        out = self.model.model.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=True)
        return out.pooler_output  # (B, Dv)
