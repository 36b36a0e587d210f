"""Zero-shot classification (CLIP §3.1.4) as CLIP_benchmark's `metrics/zeroshot_classification.py` does it: per class,
every template filled with the class name is embedded with the text tower, each embedding L2-normalised, the mean
renormalised; logits = the images' normalised contrastive embeddings x that class matrix (cosines; CLIP's x100 logit
scale changes no ranking). `tests/test_zeroshot.py` runs CLIP_benchmark's own functions on the same model and data.

Prompts: the task's `zeroshot.classnames` / `zeroshot.templates` (the repo's prompt file, CLIP's published lists),
or with `prompt_source: dataset` -- and always on synthetic data, whose classes are scene words -- the dataset's own
`classnames.txt` and `zeroshot_classification_templates.txt` (the layout of the `clip-benchmark/wds_*` repos; the
task's templates when the dataset has none). The dataset's `classnames.txt` is the label order either way.

Mapping the prompt class names onto `classnames.txt` (`map_classnames`): by position, as CLIP_benchmark does with
the published `classnames.txt` (its own lists). The counts must match, and a dataset class whose name (case, `_`
and spaces aside) is another position's prompt class means the orders differ: both are errors naming the files.
A dataset class spelled in another scheme (ImageNet wnids, UCF101 folder names) maps by position.

Image embeddings come from the feature cache (`protocols.features`, kind `image_embeddings`: exact under DDP, and a
hit never builds the model). The class matrix is computed on every rank alike (same weights, same prompts) and
cached by content in `<cache>/zeroshot/` (`class_key`): a warm rerun runs no text tower at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import nullcontext
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmbench.data import open_reader
from mmbench.data.classification import CLASSNAMES_FILE
from mmbench.errors import ConfigError, DataError
from mmbench.metrics.accuracy import METRICS, mean_per_class, top1
from mmbench.models.base import Capability, ModelWrapper
from mmbench.models.fingerprint import source_identity, weights_fingerprint
from mmbench.paths import atomic_save
from mmbench.protocols.base import ProtocolOutput, RunContext
from mmbench.protocols.features import load_or_extract
from mmbench.protocols.sample_rows import classification_rows
from mmbench.schema import TaskConfig

log = logging.getLogger("mmbench")

CLASS_EMBEDDING_VERSION = 1  # bump when the classifier code changes what class embeddings come out
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
MIN_CLASSES_TOP5 = 5  # top-5 is defined (not trivially 1) from 5 classes on; CLIP_benchmark reports NaN below


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def map_classnames(prompt_names: list[str], dataset_names: list[str], prompts_where: str, labels_where: str) -> None:
    """Check that `prompt_names` can stand for `dataset_names` position by position (see the module docstring)."""
    if len(prompt_names) != len(dataset_names):
        raise DataError(
            f"{labels_where}: {len(dataset_names)} classes, but the prompt class names of {prompts_where} are "
            f"{len(prompt_names)} (line i of {CLASSNAMES_FILE} is prompt class i)"
        )
    # first position of each name: CLIP's ImageNet list names two classes 'missile' and two 'sunglasses'
    position: dict[str, int] = {}
    for j, p in enumerate(prompt_names):
        position.setdefault(_norm(p), j)
    for i, name in enumerate(dataset_names):
        if _norm(name) == _norm(prompt_names[i]):
            continue
        j = position.get(_norm(name))
        if j is not None:
            raise DataError(
                f"{labels_where}: line {i + 1} is {name!r}, which is prompt class {j + 1} of {prompts_where}: "
                "the class orders differ"
            )


def _prompts(task: TaskConfig, ctx: RunContext, reader: Any) -> tuple[list[str], list[str], dict[str, Any]]:
    """(class names in label order, templates, what was used and where it came from)."""
    params = task.zeroshot
    labels_where = f"{reader.root}/{CLASSNAMES_FILE}"
    dataset_names = reader.classnames()
    source = "dataset" if ctx.data_source == "synthetic" else params.prompt_source
    if source == "dataset":
        # image folders list class *folder* names, spaces written as underscores
        names = [n.replace("_", " ") for n in dataset_names] if reader.format == "image_folder" else dataset_names
        templates_path = Path(reader.root) / TEMPLATES_FILE
        if templates_path.is_file():
            templates = [t.strip() for t in templates_path.read_text(encoding="utf-8").splitlines() if t.strip()]
            templates_from = str(templates_path)
        else:
            templates, templates_from = list(params.templates), params.templates_source or "task zeroshot.templates"
        record = {"prompt_source": "dataset", "classnames_source": labels_where, "templates_source": templates_from}
        if ctx.data_source == "synthetic":
            record["why"] = "synthetic data: its classes are scene words, which CLIP's lists do not name"
    else:
        where = f"task {task.name!r} key 'zeroshot.classnames' ({params.prompts_file or 'the task file'})"
        if not params.classnames or not params.templates:
            empty = "classnames" if not params.classnames else "templates"
            raise ConfigError(f"task {task.name!r}: key 'zeroshot.{empty}': empty (prompt_source: task needs both)")
        map_classnames(params.classnames, dataset_names, where, labels_where)
        names, templates = list(params.classnames), list(params.templates)
        record = {
            "prompt_source": "task",
            "prompts_file": params.prompts_file,
            "classnames_source": params.classnames_source,
            "templates_source": params.templates_source,
            "mapping": "by position (counts checked, orders checked where names agree)",
            "names_agreeing": sum(_norm(a) == _norm(b) for a, b in zip(names, dataset_names)),
        }
    bad = [t for t in templates if "{c}" not in t]
    if not templates or bad:
        raise DataError(f"{record['templates_source']}: " + (f"template {bad[0]!r} has no '{{c}}'" if bad else "empty"))
    return names, templates, record


def class_key(ctx: RunContext, weights: str, names: list[str], templates: list[str], max_length: int | None):
    """(hex digest, its parts) of a class matrix: everything that moves it, nothing that does not (batch size)."""
    cfg = ctx.model_cfg
    tokenizer = cfg.tokenizer or cfg.checkpoint
    separate = cfg.tokenizer and not cfg.tokenizer.startswith("mmbench:") and cfg.tokenizer != cfg.checkpoint
    parts = {
        "version": CLASS_EMBEDDING_VERSION,
        "weights": weights,
        "wrapper": cfg.wrapper,
        # a built-in tokenizer is code (named + library version); a separate hub/local one, its content
        "tokenizer": {
            "name": tokenizer,
            "content": source_identity(cfg.tokenizer, None, ctx.cache_dir) if separate else None,
            "transformers": _version("transformers"),
        },
        "max_text_length": max_length or cfg.max_text_length,
        "precision": ctx.trainer.precision or "32-true",
        "classnames": names,
        "templates": templates,
    }
    if separate and parts["tokenizer"]["content"] is None:
        return None  # not on disk yet: unknown until the model is built
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest(), parts


def _version(lib: str) -> str:
    try:
        return metadata.version(lib)
    except metadata.PackageNotFoundError:
        return "absent"


def _cache_path(ctx: RunContext, key: str) -> Path:
    return Path(ctx.cache_dir) / "zeroshot" / key[:2] / f"{key}.pt"


def _load(path: Path, n_classes: int) -> Tensor | None:
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        emb = entry["class_embeddings"]
        if emb.ndim != 2 or emb.shape[0] != n_classes:
            raise ValueError(f"shape {tuple(emb.shape)} is not ({n_classes}, E)")
        if entry.get("digest") != _digest(emb):
            raise ValueError("its embeddings do not match their checksum")
    except Exception as e:  # a damaged entry is a miss (recomputed and rewritten), never a wrong number
        log.warning("class-embedding cache entry %s is unreadable (%s); computing again", path, e)
        return None
    return emb


def _digest(t: Tensor) -> str:
    return hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode() + t.contiguous().numpy().tobytes()).hexdigest()


def _autocast(precision: str, device: torch.device):
    """The Trainer's mixed precision for the text tower too, so that text and images see the same arithmetic."""
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@torch.no_grad()
def class_embeddings(
    model: ModelWrapper,
    names: list[str],
    templates: list[str],
    batch_size: int,
    max_length: int | None = None,
    precision: str = "32-true",
) -> Tensor:
    """(C, E) float32: per class, the renormalised mean of its L2-normalised template embeddings."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    prompts = [t.replace("{c}", name) for name in names for t in templates]  # class-major: (C * T)
    chunks = []
    with _autocast(precision, device):
        for i in range(0, len(prompts), batch_size):
            tokens = model.tokenize(prompts[i : i + batch_size], max_length=max_length)
            emb = model.text_embeddings(**{k: v.to(device) for k, v in tokens.items()})  # (b, E)
            chunks.append(F.normalize(emb.float(), dim=-1))
    model.train(was_training)
    per_prompt = torch.cat(chunks).view(len(names), len(templates), -1)  # (C, T, E)
    return F.normalize(per_prompt.mean(dim=1), dim=-1).cpu()  # (C, E)


def zeroshot_logits(image_embeddings: Tensor, classes: Tensor) -> Tensor:
    """(N, C) cosines of the L2-normalised image embeddings (N, E) with the class matrix (C, E)."""
    return F.normalize(image_embeddings.float(), dim=-1) @ classes.float().T  # (N, C)


def top_k(logits: Tensor, target: Tensor, k: int) -> float:
    """Fraction of samples whose true class is among the `k` highest logits."""
    top = logits.topk(k, dim=1).indices  # (N, k)
    return float((top == target[:, None]).any(dim=1).double().mean()) if len(target) else 0.0


def _text_device(ctx: RunContext) -> torch.device:
    if torch.cuda.is_available() and ctx.trainer.accelerator in ("auto", "gpu", "cuda"):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _cached_classifier(ctx: RunContext, task: TaskConfig, names: list[str], templates: list[str]):
    """(the cached class matrix or None, the cache key or None). Looked up before any image work, so that every
    rank of a multi-process run sees the same hit or miss (rank 0 writes only after extraction, as features do)."""
    weights = weights_fingerprint(ctx.model_cfg, memo_dir=ctx.cache_dir)
    key = class_key(ctx, weights, names, templates, task.zeroshot.max_text_length) if weights else None
    return (_load(_cache_path(ctx, key[0]), len(names)) if key else None), key


def _compute_classifier(ctx: RunContext, task: TaskConfig, names: list[str], templates: list[str], key):
    """(the class matrix, "miss" | "unsaved" | "uncached"), with the text tower; rank 0 caches it."""
    params = task.zeroshot
    model = ctx.model()
    model.require(Capability.CONTRASTIVE, "zero-shot classification")
    if key is None:  # the build fetched the weights: now they can be named
        weights = weights_fingerprint(ctx.model_cfg, memo_dir=ctx.cache_dir)
        key = class_key(ctx, weights, names, templates, params.max_text_length) if weights else None
    model.to(_text_device(ctx))
    precision = str(ctx.trainer.precision or "32-true")
    batch = ctx.batch_size or params.batch_size
    classes = class_embeddings(model, names, templates, batch, params.max_text_length, precision)
    if key is None:
        return classes, "uncached"
    if not _is_global_zero():
        return classes, "miss"
    path = _cache_path(ctx, key[0])
    entry = {"class_embeddings": classes, "digest": _digest(classes), "parts": json.dumps(key[1], default=str)}
    try:
        atomic_save(path, entry)
    except (OSError, RuntimeError) as e:  # the cache only saves time: a failed write is a warning
        log.warning("class-embedding cache: cannot write %s (%s); going on without caching", path, e)
        return classes, "unsaved"
    return classes, "miss"


def _is_global_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def run(task: TaskConfig, ctx: RunContext) -> ProtocolOutput:
    params = task.zeroshot
    ctx.require(Capability.CONTRASTIVE, "zero-shot classification")
    if task.primary not in METRICS:
        raise ConfigError(f"task {task.name!r}: key 'primary': zero-shot classification reports {sorted(METRICS)}")
    reader = open_reader(task, ctx.data_root)
    if not hasattr(reader, "classnames"):
        raise ConfigError(f"task {task.name!r}: data format {reader.format!r} carries no class labels")
    split = task.data.split
    try:
        reader.check(split)
    except DataError as e:
        raise DataError(f"task {task.name!r}: {split!r} split: {e}") from None
    names, templates, prompts = _prompts(task, ctx, reader)

    classes, key = _cached_classifier(ctx, task, names, templates)
    ext = load_or_extract(ctx, reader, [split], ctx.batch_size or params.batch_size, kind="image_embeddings")
    test = ext.splits[split]
    class_cache = "hit"
    if classes is None:
        classes, class_cache = _compute_classifier(ctx, task, names, templates, key)
    logits = zeroshot_logits(test.features, classes)  # (N, C)
    pred, target = logits.argmax(dim=1), test.labels
    n_classes = len(names)
    metrics = {
        "top1": top1(pred, target),
        # NaN is written as null: top-5 is undefined (every sample a hit) below 5 classes, as in CLIP_benchmark
        "top5": top_k(logits, target, 5) if n_classes >= MIN_CLASSES_TOP5 else float("nan"),
        "mean_per_class": mean_per_class(pred, target),
    }
    details = {
        "num_classes": n_classes,
        "num_templates": len(templates),
        **prompts,
        "top5": "reported" if n_classes >= MIN_CLASSES_TOP5 else f"null: {n_classes} classes (< {MIN_CLASSES_TOP5})",
        "n_test": len(target),
        "embedding_dim": int(classes.shape[1]),
        "format": reader.format,
        "cache": {"image_embeddings": ext.cache[split], "class_embeddings": class_cache},
    }
    if ext.cache_error:
        details["feature_cache_error"] = ext.cache_error
    samples = None
    if ctx.log_samples:  # score: softmax of CLIP's 100 x cosine; rows in sample-index order, as the embeddings
        samples = classification_rows(reader, split, torch.arange(len(target)), logits, target, scale=100.0)
    return ProtocolOutput(
        metrics, n_samples=len(target), details=details, is_global_zero=ext.is_global_zero, samples=samples
    )
