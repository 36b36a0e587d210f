"""Typed shapes of the registries (omegaconf structured configs): one meaning per field, unknown keys are errors.

A model preset (`models/<name>.yaml`) validates into `ModelConfig`, a task (`tasks/<domain>/<name>.yaml`) into
`TaskConfig`. Protocol settings live in one typed block per protocol; a task fills the block of its `protocol`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

DOMAINS = ("language", "vision", "multimodal")
PROTOCOLS = ("retrieval", "linear_probe", "finetune")


@dataclass
class PreprocessConfig:
    """The checkpoint's own eval preprocessing: resize, centre-crop to `image_size`, normalise.

    A checkpoint that carries a `preprocessor_config.json` (HF image processor) replaces this block with what that
    file says (see `mmbench.models.preprocess`); the preset states the same values, so that runs without the file
    (offline, random-init twins) preprocess alike.
    """

    image_size: int = 224  # side of the square the model sees (the centre crop)
    resize: int = 224  # shortest_edge: length of the short side; square: side of the square (>= image_size)
    # shortest_edge: aspect kept, long side int(resize * long / short) (CLIP, open_clip); square: resize x resize,
    # aspect ignored (FLAVA's FlavaImageProcessor, BEiT-3)
    resize_mode: str = "shortest_edge"
    interpolation: str = "bicubic"  # PIL resampling filter: nearest | bilinear | bicubic | box | hamming | lanczos
    # where the crop starts when the margin is odd: round (torchvision CenterCrop, half to even) | floor (HF image
    # processors). One pixel, but a different image.
    crop_rounding: str = "round"
    mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    std: list[float] = field(default_factory=lambda: list(CLIP_STD))


@dataclass
class ModelConfig:
    name: str = MISSING
    wrapper: str = MISSING  # "module:Class", imported only when the model is built
    description: str = ""
    checkpoint: str | None = None  # HF hub id, local directory or file; None only for random-init presets
    revision: str | None = None
    tokenizer: str | None = None  # defaults to the checkpoint
    random_init: bool = False  # tiny presets: same architecture, random weights, labelled as such in results
    init_seed: int = 0
    trust_remote_code: bool = False
    max_text_length: int = 77  # image-text inputs (the contrastive length for CLIP and FLAVA)
    # Text-only inputs (GLUE): FLAVA's own code uses 512 for text-only tasks and 77 for image-text ones.
    # None = max_text_length. Either is capped at the positions the built model has (`max_text_positions`).
    text_only_max_length: int | None = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    arch: dict[str, Any] = field(default_factory=dict)  # wrapper-specific; each wrapper validates its own
    finetune: dict[str, Any] = field(default_factory=dict)  # wrapper-specific fine-tuning defaults (what to freeze)


@dataclass
class DataConfig:
    format: str = MISSING  # reader name (see `mmbench.data.READERS`)
    alt_formats: list[str] = field(default_factory=list)  # also accepted, tried in order when `format` is absent
    root: str | None = None  # default: $MMBENCH_DATA/<dirname>
    dirname: str | None = None  # folder under $MMBENCH_DATA; default: the task name
    split: str = "test"
    source: str = ""  # where users get the data; printed when it is missing
    options: dict[str, Any] = field(default_factory=dict)  # reader options
    synthetic: dict[str, Any] = field(default_factory=dict)  # options for the synthetic writer


@dataclass
class RetrievalParams:
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    captions_per_image: int = 5  # keep the first N captions of each image (COCO has 6-7 for some)
    chunk_size: int = 1024  # rows of the similarity matrix held at once
    batch_size: int = 64


@dataclass
class LinearProbeParams:
    """CLIP appendix A.3: frozen image features, multinomial logistic regression (L-BFGS), L2 sweep on val."""

    batch_size: int = 64  # feature extraction batch
    train_split: str = "train"
    val_split: str | None = None  # the official val split when the dataset has one
    holdout_fraction: float = 0.1  # otherwise a seeded hold-out of train
    holdout_seed: int = 0
    max_iter: int = 1000
    l2_min: float = 1e-6
    l2_max: float = 1e6
    steps_per_decade: int = 8  # the sweep refines down to this many steps per decade
    tol: float = 1e-4  # L-BFGS stops at this max |gradient| of the per-sample objective (sklearn's default tol)
    num_classes: int | None = None  # the real dataset's class count, checked against its classnames.txt


@dataclass
class FinetuneParams:
    """One recipe for all 11 fine-tuned tasks: FLAVA B.2 (multimodal) and fairseq RoBERTa (GLUE)."""

    head: str = "classification"  # classification | regression (STS-B) | vqa (soft-score multi-label)
    input: str = "pair"  # text: text_features (GLUE) | pair: pair_features (image + text)
    num_labels: int = 2  # for head=vqa the answer vocabulary decides
    label_names: list[str] = field(default_factory=list)
    head_hidden: int = 1536  # the paper's 2-layer MLP head; 0 = a single linear layer; -1 = the feature dim
    head_dropout: float = 0.1
    # gelu: dropout -> Linear -> LayerNorm -> GELU -> Linear (the paper's multimodal MLP head);
    # tanh: dropout -> Linear -> tanh -> dropout -> Linear (fairseq's RoBERTa classification head, GLUE)
    head_activation: str = "gelu"
    model_dropout: float | None = None  # p of every nn.Dropout in the wrapper (fairseq GLUE: 0.1); None = as built
    optimizer: str = "adamw"  # adamw | adam
    lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01
    schedule: str = "cosine"  # cosine | polynomial (linear decay to 0 after warm-up)
    warmup_steps: int = 0
    max_steps: int = 1000  # optimizer updates
    batch_size: int = 32  # effective batch per update, reached by gradient accumulation
    device_batch_size: int | None = None  # per device and micro-step; None = batch_size
    # None = the model preset's: `text_only_max_length` for input: text, `max_text_length` for input: pair
    max_text_length: int | None = None
    image_size: int | None = None  # e.g. 480 for VQA; None = the preset's
    train_split: str = "train"
    # Which checkpoint is evaluated (`mmbench.lit.run_folder`):
    #   split: the best on `val_split` (GLUE: dev, which is also the scored split; the result says so);
    #   holdout: the best on a seeded hold-out of `train_split` (`holdout_fraction` of it, removed from training);
    #   final: the last one (fixed-schedule recipes); nothing is evaluated during training.
    selection: str = "split"
    val_split: str | None = None  # selection: split: the split that selects; None = data.split
    holdout_fraction: float = 0.05
    holdout_seed: int = 0
    val_every_steps: int = 1000  # validation (and the resumable checkpoint) every this many updates, and at the end
    select_metric: str | None = None  # None = the task's primary metric
    # Validation values within this of the best so far are ties and the incumbent (earlier) checkpoint keeps its
    # place, so a pick does not flip on rounding: 1e-5 is above the float32 noise of correlations and ROC-AUC
    # (~1e-7) and below one sample of the largest dev set (QQP, 40,430: 2.5e-5), so a real difference counts.
    select_tolerance: float = 1e-5
    # more evaluation splits, metric suffix -> split: MNLI {mismatched: validation_mismatched} -> accuracy_mismatched
    eval_splits: dict[str, str] = field(default_factory=dict)
    # Splits predicted but not scored (hidden labels), written as submission files: VQAv2 test-dev for the server.
    predict_splits: list[str] = field(default_factory=list)
    grad_clip_norm: float = 0.0  # 0 = no clipping (neither recipe clips)


@dataclass
class TaskConfig:
    name: str = MISSING
    domain: str = MISSING
    protocol: str = MISSING
    display_name: str = ""
    description: str = ""
    version: int = 1  # bump when the task definition changes what the numbers mean
    data: DataConfig = field(default_factory=DataConfig)
    metrics: list[str] = field(default_factory=list)  # every metric the protocol reports
    primary: str = MISSING
    scores: list[str] = field(default_factory=list)  # metrics that enter the domain average (0-100 scale)
    score_labels: dict[str, str] = field(default_factory=dict)  # table row label per score
    retrieval: RetrievalParams = field(default_factory=RetrievalParams)
    linear_probe: LinearProbeParams = field(default_factory=LinearProbeParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
