"""Typed shapes of the registries (omegaconf structured configs): one meaning per field, unknown keys are errors.

A model preset (`models/<name>.yaml`) validates into `ModelConfig`, a task (`tasks/<domain>/<name>.yaml`) into
`TaskConfig`. Protocol settings live in one typed block per protocol; a task fills the block of its `protocol`.
A field with an allowed range or set of values says so in its metadata (`at_least`, `between`, `one_of`);
`out_of_range` checks a whole config against them, so `chunk_size=0` is an error naming the key, not a
"range() arg 3 must not be zero" from deep inside a protocol.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

DOMAINS = ("language", "vision", "multimodal")
PROTOCOLS = ("retrieval", "linear_probe", "finetune", "incontext", "zeroshot")
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")  # torchvision's


@dataclass(frozen=True)
class Range:
    """Allowed numbers: `low` <= x (or < x when `low_open`), likewise `high`; applies to each item of a list."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, x: Any) -> bool:
        if isinstance(x, bool) or not isinstance(x, int | float) or math.isnan(x):
            return False
        low_ok = self.low is None or (x > self.low if self.low_open else x >= self.low)
        return low_ok and (self.high is None or (x < self.high if self.high_open else x <= self.high))

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def _meta_field(default: Any, meta: dict[str, Any]) -> Any:
    if callable(default):  # a factory for a list default
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def at_least(default: Any, low: float, *, strictly: bool = False) -> Any:
    return _meta_field(default, {"range": Range(low, None, low_open=strictly)})


def between(default: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Any:
    return _meta_field(default, {"range": Range(low, high, low_open, high_open)})


def one_of(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": choices})


def out_of_range(cfg: Any, prefix: str = "") -> tuple[str, str] | None:
    """(dotted key, what is allowed) of the first value of `cfg` (a config dataclass, nested ones included) that
    its field's range or choices do not admit; None when every value is allowed. None values are never checked
    (they mean "use the default")."""
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            found = out_of_range(value, f"{key}.")
            if found:
                return found
        rng, choices = f.metadata.get("range"), f.metadata.get("choices")
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            where = key if i is None else f"{key}[{i}]"
            if rng is not None and item is not None and not rng.admits(item):
                return where, f"{item!r} is out of range (allowed: {rng})"
            if choices is not None and item not in choices:
                close = difflib.get_close_matches(str(item), choices, n=1, cutoff=0.5)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                return where, f"{item!r} is not one of {', '.join(choices)}{hint}"
    check = getattr(cfg, "cross_check", None)
    found = check() if check else None
    return (f"{prefix}{found[0]}", found[1]) if found else None


@dataclass
class PreprocessConfig:
    """The checkpoint's own eval preprocessing: resize, centre-crop to `image_size`, normalise.

    A checkpoint that carries a `preprocessor_config.json` (HF image processor) replaces this block with what that
    file says (see `mmbench.models.preprocess`); the preset states the same values, so that runs without the file
    (offline, random-init twins) preprocess alike.
    """

    image_size: int = at_least(224, 1)  # side of the square the model sees (the centre crop)
    resize: int = at_least(224, 1)  # shortest_edge: length of the short side; square: side of the square
    # shortest_edge: aspect kept, long side int(resize * long / short) (CLIP, open_clip); square: resize x resize,
    # aspect ignored (FLAVA's FlavaImageProcessor, BEiT-3)
    resize_mode: str = one_of("shortest_edge", "shortest_edge", "square")
    interpolation: str = one_of("bicubic", *INTERPOLATIONS)
    # where the crop starts when the margin is odd: round (torchvision CenterCrop, half to even) | floor (HF image
    # processors). One pixel, but a different image.
    crop_rounding: str = one_of("round", "round", "floor")
    mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    std: list[float] = at_least(lambda: list(CLIP_STD), 0, strictly=True)

    def cross_check(self) -> tuple[str, str] | None:
        if len(self.mean) != len(self.std):
            return "std", f"has {len(self.std)} values but mean has {len(self.mean)}"
        return None


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
    max_text_length: int = at_least(77, 1)  # image-text inputs (the contrastive length for CLIP and FLAVA)
    # Text-only inputs (GLUE): FLAVA's own code uses 512 for text-only tasks and 77 for image-text ones.
    # None = max_text_length. Either is capped at the positions the built model has (`max_text_positions`).
    text_only_max_length: int | None = at_least(None, 1)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    arch: dict[str, Any] = field(default_factory=dict)  # wrapper-specific; each wrapper validates its own
    finetune: dict[str, Any] = field(default_factory=dict)  # wrapper-specific fine-tuning defaults (what to freeze)
    # What a model spec (`hf:`, `timm:`, ... see models/specs.py) resolved its weights to: `hf:<repo>@<commit>` of a
    # cached hub snapshot, or the `sha256:` content digest of a local folder or file. Set by specs only; None (every
    # preset) is left out of the recorded config and its hash, so results made before the field existed stay valid.
    source_id: str | None = None


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
    ks: list[int] = at_least(lambda: [1, 5, 10], 1)
    captions_per_image: int = at_least(5, 1)  # keep the first N captions of each image (COCO has 6-7 for some)
    chunk_size: int = at_least(1024, 1)  # rows of the similarity matrix held at once
    batch_size: int = at_least(64, 1)  # images per batch; also (image, caption) pairs per ITM forward
    # ITM re-ranking (FUSION models with an ITM head): each query's contrastive top `rerank_k` candidates are
    # ranked by the ITM head, both ways; reported beside the contrastive recalls as `tr_r1_itm`, ... 0 = off. Left
    # out of the recorded config (and so of the config hash) when off: results made before it existed stay valid.
    rerank_k: int = at_least(0, 0)

    def cross_check(self) -> tuple[str, str] | None:
        return ("ks", "is empty (expected at least one k)") if not self.ks else None


RERANK_OFF = {"rerank_k": 0}  # RetrievalParams' re-ranking keys at "off": not recorded (see resolved_task_dict)


@dataclass
class ZeroShotParams:
    """Zero-shot classification from class-name prompts (CLIP §3.1.4, CLIP_benchmark); see protocols/zeroshot.py.

    The lists come from the task's prompt file (`tasks/vision/zeroshot/<dataset>.yaml`, included by the task), in
    the dataset's label order; `prompt_source: dataset` reads the dataset's own `classnames.txt` and
    `zeroshot_classification_templates.txt` instead (synthetic data always does: its classes are scene words).
    """

    batch_size: int = at_least(64, 1)  # image batch (extraction) and prompt batch (text tower)
    prompt_source: str = one_of("task", "task", "dataset")
    classnames: list[str] = field(default_factory=list)  # prompt class names, line i = label i of classnames.txt
    templates: list[str] = field(default_factory=list)  # "{c}" is replaced by the class name
    prompts_file: str = ""  # the repo file the two lists come from (named in errors and results)
    classnames_source: str = ""  # where the class names were taken from
    templates_source: str = ""  # where the templates were taken from
    max_text_length: int | None = at_least(None, 1)  # None = the preset's max_text_length

    def cross_check(self) -> tuple[str, str] | None:
        for i, template in enumerate(self.templates):
            if "{c}" not in template:
                return f"templates[{i}]", f"{template!r} has no '{{c}}' for the class name"
        return None


@dataclass
class LinearProbeParams:
    """CLIP appendix A.3: frozen image features, multinomial logistic regression (L-BFGS), L2 sweep on val."""

    batch_size: int = at_least(64, 1)  # feature extraction batch
    train_split: str = "train"
    val_split: str | None = None  # the official val split when the dataset has one
    holdout_fraction: float = between(0.1, 0, 1, low_open=True, high_open=True)  # otherwise a seeded hold-out
    holdout_seed: int = 0
    max_iter: int = at_least(1000, 1)
    l2_min: float = at_least(1e-6, 0, strictly=True)
    l2_max: float = at_least(1e6, 0, strictly=True)
    steps_per_decade: int = at_least(8, 1)  # the sweep refines down to this many steps per decade
    tol: float = at_least(1e-4, 0, strictly=True)  # L-BFGS stops at this max |gradient| (sklearn's default tol)
    num_classes: int | None = at_least(None, 2)  # the real dataset's class count, checked against classnames.txt

    def cross_check(self) -> tuple[str, str] | None:
        if self.l2_max < self.l2_min:
            return "l2_max", f"{self.l2_max:g} is below l2_min {self.l2_min:g}"
        return None


@dataclass
class FinetuneParams:
    """One recipe for all 11 fine-tuned tasks: FLAVA B.2 (multimodal) and fairseq RoBERTa (GLUE)."""

    head: str = "classification"  # classification | regression (STS-B) | vqa (soft-score multi-label)
    input: str = "pair"  # text: text_features (GLUE) | pair: pair_features (image + text)
    num_labels: int = at_least(2, 1)  # for head=vqa the answer vocabulary decides
    label_names: list[str] = field(default_factory=list)
    head_hidden: int = at_least(1536, -1)  # the paper's 2-layer MLP head; 0 = one linear layer; -1 = feature dim
    head_dropout: float = between(0.1, 0, 1, high_open=True)
    # gelu: dropout -> Linear -> LayerNorm -> GELU -> Linear (the paper's multimodal MLP head);
    # tanh: dropout -> Linear -> tanh -> dropout -> Linear (fairseq's RoBERTa classification head, GLUE)
    head_activation: str = one_of("gelu", "gelu", "tanh")
    # p of every nn.Dropout in the wrapper (fairseq GLUE: 0.1); None = as built
    model_dropout: float | None = between(None, 0, 1, high_open=True)
    optimizer: str = one_of("adamw", "adamw", "adam")
    lr: float = at_least(1e-5, 0, strictly=True)
    betas: list[float] = between(lambda: [0.9, 0.999], 0, 1, high_open=True)
    eps: float = at_least(1e-8, 0, strictly=True)
    weight_decay: float = at_least(0.01, 0)
    schedule: str = one_of("cosine", "cosine", "polynomial")  # polynomial: linear decay to 0 after warm-up
    warmup_steps: int = at_least(0, 0)
    max_steps: int = at_least(1000, 0)  # optimizer updates
    batch_size: int = at_least(32, 1)  # effective batch per update, reached by gradient accumulation
    device_batch_size: int | None = at_least(None, 1)  # per device and micro-step; None = batch_size
    # None = the model preset's: `text_only_max_length` for input: text, `max_text_length` for input: pair
    max_text_length: int | None = at_least(None, 1)
    image_size: int | None = at_least(None, 1)  # e.g. 480 for VQA; None = the preset's
    train_split: str = "train"
    # Which checkpoint is evaluated (`mmbench.lit.run_folder`):
    #   split: the best on `val_split` (GLUE: dev, which is also the scored split; the result says so);
    #   holdout: the best on a seeded hold-out of `train_split` (`holdout_fraction` of it, removed from training);
    #   final: the last one (fixed-schedule recipes); nothing is evaluated during training.
    selection: str = one_of("split", "split", "holdout", "final")
    val_split: str | None = None  # selection: split: the split that selects; None = data.split
    holdout_fraction: float = between(0.05, 0, 1, low_open=True, high_open=True)
    holdout_seed: int = 0
    # validation (and the resumable checkpoint) every this many updates, and at the end
    val_every_steps: int = at_least(1000, 1)
    select_metric: str | None = None  # None = the task's primary metric
    # Validation values within this of the best so far are ties and the incumbent (earlier) checkpoint keeps its
    # place, so a pick does not flip on rounding: 1e-5 is above the float32 noise of correlations and ROC-AUC
    # (~1e-7) and below one sample of the largest dev set (QQP, 40,430: 2.5e-5), so a real difference counts.
    select_tolerance: float = at_least(1e-5, 0)
    # more evaluation splits, metric suffix -> split: MNLI {mismatched: validation_mismatched} -> accuracy_mismatched
    eval_splits: dict[str, str] = field(default_factory=dict)
    # Splits predicted but not scored (hidden labels), written as submission files: VQAv2 test-dev for the server.
    predict_splits: list[str] = field(default_factory=list)
    grad_clip_norm: float = at_least(0.0, 0)  # 0 = no clipping (neither recipe clips)

    def cross_check(self) -> tuple[str, str] | None:
        if len(self.betas) != 2:
            return "betas", f"{self.betas} is not two numbers"
        return None


@dataclass
class InContextParams:
    """Few-shot in-context evaluation of a frozen generative model, as OpenFlamingo's `open_flamingo/eval/evaluate.py`
    (defaults are its own): per query, `shots` demonstrations from a seeded query set of the training split (or by
    RICES), an interleaved prompt, then generation (scored on the answer) or log-likelihood of class names.

    Prompts are data: `demonstration` and `query` are format strings over the record fields `{question}`, `{answer}`
    (VQA: the first reference answer, OpenFlamingo's `answers[0]`), `{text}` (Hateful Memes: the meme's OCR text)
    and `{class_name}` (`class_names[label]`), with `<image>` and `<|endofchunk|>` markers (`models.base`).
    """

    shots: int = at_least(4, 0)  # demonstrations per query (OpenFlamingo: 0, 4, 8, 16, 32)
    # 0 shots: this many demonstrations with their `<image>` markers removed (text only), OpenFlamingo's
    # `compute_effective_num_shots` following Flamingo; the query keeps its image.
    zero_shot_text_demos: int = at_least(2, 0)
    trials: int = at_least(1, 1)  # trial t draws demonstrations with seed `seed + t`; result: per trial, mean, std
    seed: int = 42  # OpenFlamingo's default trial seed
    query_set_size: int = at_least(2048, 1)  # demonstrations come from this many seeded training examples
    train_split: str = "train"
    demonstrations: str = one_of("random", "random", "rices")
    # RICES: the preset whose CLIP image embeddings rank training images (OpenFlamingo: open_clip ViT-L-14 openai)
    rices_model: str = "clip-large"
    mode: str = one_of("generate", "generate", "loglikelihood")
    demonstration: str = ""  # one demonstration, e.g. "<image>Question:{question} Short answer:{answer}..."
    query: str = ""  # the query, ending where the model continues (both required for protocol: incontext)
    # generate: decoding (OpenFlamingo VQA: 3 beams, 5 new tokens, no minimum, length_penalty 0)
    max_new_tokens: int = at_least(5, 1)
    min_new_tokens: int = at_least(0, 0)
    num_beams: int = at_least(3, 1)
    length_penalty: float = 0.0
    # vqa: OpenFlamingo's `postprocess_vqa_generation`; caption: its `postprocess_captioning_generation`, quotes removed
    postprocess: str = one_of("vqa", "vqa", "caption", "none")
    # loglikelihood: the candidates, in label order; the score is the mean log-probability per token (OpenFlamingo's
    # `normalize_length=True`) unless this is False
    class_names: list[str] = field(default_factory=list)
    normalize_length: bool = True
    batch_size: int = at_least(8, 1)  # queries per forward (OpenFlamingo's default)

    def cross_check(self) -> tuple[str, str] | None:
        if self.mode == "loglikelihood" and len(self.class_names) < 2:
            return "class_names", "needs at least two class names for mode: loglikelihood"
        if self.min_new_tokens > self.max_new_tokens:
            return "min_new_tokens", f"{self.min_new_tokens} is above max_new_tokens {self.max_new_tokens}"
        return None


@dataclass
class Resources:
    """What one (model, task) job asks a cluster scheduler for (`mmbench run --launcher slurm`, see
    `mmbench.launch`). Never part of the config hash: where and how long a job runs does not move its numbers.
    Defaults suit a zero-shot pass; the task bases (`tasks/*/_*.yaml`) and heavy tasks set their own."""

    gpus: int = at_least(1, 0)  # per node; the job runs on this many devices per node unless --devices says
    nodes: int = at_least(1, 1)
    cpus: int = at_least(8, 1)  # per node, shared among its GPUs' processes (data loading, decoding)
    mem_gb: int = at_least(32, 1)  # host memory per node
    time_minutes: int = at_least(60, 1)  # wall-clock limit of one attempt; a longer run requeues and resumes


@dataclass
class TaskConfig:
    name: str = MISSING
    domain: str = MISSING
    protocol: str = MISSING
    display_name: str = ""
    description: str = ""
    version: int = at_least(1, 1)  # bump when the task definition changes what the numbers mean
    data: DataConfig = field(default_factory=DataConfig)
    metrics: list[str] = field(default_factory=list)  # every metric the protocol reports
    primary: str = MISSING
    scores: list[str] = field(default_factory=list)  # metrics that enter the domain average (0-100 scale)
    score_labels: dict[str, str] = field(default_factory=dict)  # table row label per score
    retrieval: RetrievalParams = field(default_factory=RetrievalParams)
    linear_probe: LinearProbeParams = field(default_factory=LinearProbeParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    incontext: InContextParams = field(default_factory=InContextParams)
    zeroshot: ZeroShotParams = field(default_factory=ZeroShotParams)
    resources: Resources = field(default_factory=Resources)  # for launchers; not in the config hash


def result_name(task: TaskConfig) -> str:
    """The result file's stem: the task name; in-context tasks add the shot count and RICES (`vqav2_fewshot-4shot`,
    `vqav2_fewshot-4shot-rices`), so that each number of shots and each way of choosing demonstrations keeps its
    own result; ITM re-ranked retrieval adds its k (`flickr30k-itm16`), never replacing the contrastive result."""
    if task.protocol == "retrieval" and task.retrieval.rerank_k:
        return f"{task.name}-itm{task.retrieval.rerank_k}"  # ITM re-ranked: beside the contrastive result
    if task.protocol != "incontext":
        return task.name
    rices = "-rices" if task.incontext.demonstrations == "rices" else ""
    return f"{task.name}-{task.incontext.shots}shot{rices}"
