"""In-context few-shot evaluation of frozen generative models (Flamingo, IDEFICS), as OpenFlamingo evaluates them.

Per query, `shots` demonstrations from the training split (a seeded query set, or RICES) and the query make one
interleaved prompt (`mmbench.data.prompts`); the model then either generates (VQAv2: beam search, the answer
post-processed as OpenFlamingo does and scored with the official VQA accuracy) or scores class names by
log-likelihood (Hateful Memes: P("yes") from the two classes' length-normalised log-likelihoods, ROC-AUC).

Trials: trial t uses seed `seed + t` for its query set and draws; the result holds each trial's scores, their mean
(the task's metrics and score) and the sample standard deviation (ddof=1; 0 for one trial; OpenFlamingo prints
numpy's population std). Exactness: a query's prompt depends only on (seed, query index) and a batch is one block
of the stream, so 2 processes give exactly the 1-process numbers. Resume: finished batches are saved while a trial
runs and finished trials when it ends (`<cache>/incontext/<model>/<task>/<run key>/`), so a killed run loses at
most a minute of work; `--fresh` starts over.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmbench.data import IndexedStream, Reader, open_reader
from mmbench.data.prompts import PromptBuilder, effective_shots, query_set, template_fields
from mmbench.errors import ConfigError, DataError
from mmbench.lit import partial
from mmbench.lit.predict import StreamDataModule, predict
from mmbench.lit.trainer import make_trainer
from mmbench.metrics import classification
from mmbench.metrics.vqa import ANSWER_TYPES, postprocess_generation, question_accuracy
from mmbench.models.base import Capability, ModelWrapper
from mmbench.paths import atomic_save, atomic_write_text, model_folder
from mmbench.protocols.base import ProtocolOutput, RunContext
from mmbench.schema import InContextParams, TaskConfig

log = logging.getLogger("mmbench")

# Text travels between ranks as fixed-width UTF-8 bytes: a generated answer or caption (at most 20 tokens) and a
# caption task's references (COCO: 5-7 captions of ~50 characters).
ANSWER_BYTES = 256
REFERENCE_BYTES = 2048


def run(task: TaskConfig, ctx: RunContext) -> ProtocolOutput:
    p = task.incontext
    ctx.require(Capability.GENERATE, "in-context evaluation")
    for key in ("demonstration", "query"):
        template_fields(getattr(p, key), f"incontext.{key}")
    reader = open_reader(task, ctx.data_root)  # the query split, checked
    reader.check(p.train_split)  # the demonstrations' split, before the first step
    train = reader.random_access(p.train_split)
    if train is None or len(train) == 0:
        raise DataError(f"task {task.name!r}: the {p.train_split!r} split of {ctx.data_root} has no samples")
    k = effective_shots(p.shots, p.zero_shot_text_demos)
    neighbours = _rices(task, ctx, reader, k) if p.demonstrations == "rices" and k else None
    model = ctx.model()
    model.require(Capability.GENERATE, "in-context evaluation")

    key = (ctx.run_key or "unkeyed").split(":")[-1]
    state = ctx.cache_dir / "incontext" / model_folder(ctx.model_cfg.name) / task.name / key
    if ctx.fresh:
        partial.reset(state)
    trials, outputs = [], None
    for t in range(p.trials):
        seed = p.seed + t
        outputs = _trial(task, ctx, model, reader, train, seed, k, neighbours, state / f"trial-{seed}")
        metrics = _metrics(task, outputs)
        trials.append({"seed": seed, "metrics": metrics})
        log.info("%s trial %d/%d (seed %d): %s = %.2f", task.name, t + 1, p.trials, seed, task.primary,
                 100 * metrics[task.primary])  # fmt: skip

    metrics = {m: _mean([tr["metrics"][m] for tr in trials]) for m in trials[0]["metrics"]}
    details: dict[str, Any] = {
        "shots": p.shots,
        "demonstrations": p.demonstrations,
        "demonstrations_per_query": k,
        "text_only_demonstrations": p.shots == 0,
        "trials": [
            {"seed": tr["seed"], "scores": {s: 100 * tr["metrics"][s] for s in task.scores}, "metrics": tr["metrics"]}
            for tr in trials
        ],
        "std": {s: 100 * _std([tr["metrics"][s] for tr in trials]) for s in task.scores},
        "std_ddof": 1,
        "format": reader.format,
    }
    if p.demonstrations == "rices":
        details["rices_model"] = p.rices_model
    if p.mode == "generate" and outputs is not None and ctx.artifact_dir is not None:
        details["predictions"] = str(_write_predictions(task, ctx, outputs))
    return ProtocolOutput(metrics, n_samples=len(outputs["index"]), details=details, is_global_zero=_rank_zero())


def _trial(
    task: TaskConfig,
    ctx: RunContext,
    model: ModelWrapper,
    reader: Reader,
    train: Any,
    seed: int,
    k: int,
    neighbours: np.ndarray | None,
    folder: Any,
) -> dict[str, Tensor]:
    """One trial's per-query outputs, sorted by query index: from its saved result, else run (resuming)."""
    done_file = folder / "outputs.pt"
    if done_file.is_file():
        try:
            return torch.load(done_file, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a damaged trial file is redone, never trusted
            log.warning("%s is unreadable (%s): running the trial again", done_file, e)
    p = task.incontext
    batch = ctx.batch_size or p.batch_size
    builder = PromptBuilder(
        train=train,
        transform=model.image_transform(train=False),
        demonstration=p.demonstration,
        query=p.query,
        class_names=list(p.class_names),
        shots=p.shots,
        k=k,
        seed=seed,
        pool=query_set(len(train), p.query_set_size, seed) if neighbours is None else None,
        neighbours=neighbours,
    )
    stream = IndexedStream(reader, task.data.split, builder, batch, limit=ctx.limit)
    trainer = make_trainer(ctx.trainer)
    done = partial.load_parts(folder) if folder.is_dir() else {}
    stream.skip_blocks = partial.done_blocks(done, batch)
    if done:
        log.info("%s: resuming trial seed %d with %d queries already answered", task.name, seed, len(done["index"]))
    folder.mkdir(parents=True, exist_ok=True)
    predictor = partial.PartialPredictor(model, _step(p, "cider" in task.metrics), folder)
    new = predict(trainer, predictor, StreamDataModule(stream, ctx.num_workers, _collate))
    outputs = partial.merge(done, new)
    if not outputs:
        raise DataError(f"task {task.name!r}: the {task.data.split!r} split of {ctx.data_root} has no samples")
    if trainer.is_global_zero:
        try:
            atomic_save(done_file, outputs)
            for part in folder.glob("part-r*.pt"):
                part.unlink(missing_ok=True)
        except OSError as e:
            log.warning("cannot save trial seed %d to %s (%s): a resumed run will redo it", seed, done_file, e)
    return outputs


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch = {key: [it[key] for it in items] for key in items[0] if key != "index"}
    batch["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
    return batch


class _step:  # noqa: N801 - a picklable function object
    """One batch of queries -> per-query outputs (tensors, so that they gather across ranks)."""

    def __init__(self, p: InContextParams, captions: bool):
        self.p, self.captions = p, captions

    def __call__(self, model: ModelWrapper, batch: dict[str, Any]) -> dict[str, Tensor]:
        p = self.p
        images = [im.to(model_device(model)) for im in batch["images"]]
        if p.mode == "loglikelihood":
            scores = model.loglikelihood(images, batch["prompt"], list(p.class_names), p.normalize_length)  # (B, C)
            return {"logprobs": scores.float(), "label": torch.tensor(batch["label"], device=scores.device)}
        texts = model.generate(
            images,
            batch["prompt"],
            max_new_tokens=p.max_new_tokens,
            num_beams=p.num_beams,
            min_new_tokens=p.min_new_tokens,
            length_penalty=p.length_penalty,
        )
        answers = [POSTPROCESS[p.postprocess](t) for t in texts]
        out = {"answer": torch.stack([_encode(a, ANSWER_BYTES) for a in answers])}
        if self.captions:  # CIDEr is a corpus score: the references travel with the captions, scored at the end
            out["references"] = torch.stack([_encode("\n".join(r), REFERENCE_BYTES) for r in batch["answers"]])
            return out
        accuracy = [question_accuracy(a, refs) if refs else math.nan for a, refs in zip(answers, batch["answers"])]
        kinds = [ANSWER_TYPES.index(t) if t in ANSWER_TYPES else -1 for t in batch["answer_type"]]
        out["accuracy"] = torch.tensor(accuracy, dtype=torch.float64)
        out["answer_type"] = torch.tensor(kinds)
        out["question_id"] = torch.tensor(batch["question_id"], dtype=torch.long)
        return out


def postprocess_caption(text: str) -> str:
    """OpenFlamingo's `postprocess_captioning_generation` and its `.replace('"', "")` (evaluate_captioning)."""
    return text.split("Output", 1)[0].replace('"', "")


POSTPROCESS = {"vqa": postprocess_generation, "caption": postprocess_caption, "none": lambda t: t}


def model_device(model: ModelWrapper) -> torch.device:
    return next(model.parameters()).device


def _encode(text: str, width: int) -> Tensor:
    raw = text.encode("utf-8")[:width]
    return torch.tensor(list(raw) + [0] * (width - len(raw)), dtype=torch.uint8)


def _decode(row: Tensor) -> str:
    return bytes(int(b) for b in row.tolist() if b).decode("utf-8", errors="ignore")


def _metrics(task: TaskConfig, out: dict[str, Tensor]) -> dict[str, float]:
    """Natural-scale metrics of one trial (fractions), each one the task names."""
    if task.incontext.mode == "loglikelihood":
        logits, labels = out["logprobs"], out["label"].long()
        if (labels < 0).any():
            raise DataError(f"task {task.name!r}: the {task.data.split!r} split has unlabelled records")
        return classification.compute(task.metrics, logits, labels)
    if "references" in out:
        return _caption_metrics(task, out)
    acc = out["accuracy"].double()
    if torch.isnan(acc).any():
        raise DataError(
            f"task {task.name!r}: the {task.data.split!r} split has questions without answers (a test split is "
            f"scored by the server); in-context scoring needs an annotated split"
        )
    found = {"vqa_accuracy": float(acc.mean())}
    for i, kind in enumerate(ANSWER_TYPES):
        sel = acc[out["answer_type"].long() == i]
        found[f"vqa_accuracy_{kind}"] = float(sel.mean()) if len(sel) else math.nan
    missing = [m for m in task.metrics if m not in found]
    if missing:
        raise ConfigError(f"task {task.name!r}: key 'metrics': {missing[0]!r} is not a generation metric")
    return {m: found[m] for m in task.metrics}


def _caption_metrics(task: TaskConfig, out: dict[str, Tensor]) -> dict[str, float]:
    """CIDEr (pycocoevalcap's CIDEr-D, `mmbench.metrics.cider`) of the generated captions against every reference
    caption of their images."""
    from mmbench.metrics.cider import cider

    ids = [int(i) for i in out["index"].tolist()]
    refs = {i: _decode(r).split("\n") for i, r in zip(ids, out["references"])}
    if any(not any(r) for r in refs.values()):
        raise DataError(f"task {task.name!r}: the {task.data.split!r} split has images without reference captions")
    score, _ = cider({i: _decode(a) for i, a in zip(ids, out["answer"])}, refs)
    found = {"cider": score}
    missing = [m for m in task.metrics if m not in found]
    if missing:
        raise ConfigError(f"task {task.name!r}: key 'metrics': {missing[0]!r} is not a captioning metric")
    return found


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _write_predictions(task: TaskConfig, ctx: RunContext, out: dict[str, Tensor]) -> Any:
    """The last trial's answers as the official result file (`[{question_id, answer}]`), beside the results."""
    from mmbench.metrics.vqa import write_submission

    p = task.incontext
    rices = "-rices" if p.demonstrations == "rices" else ""
    name = f"{task.name}-{p.shots}shot{rices}_{task.data.split}_seed{p.seed + p.trials - 1}_predictions.json"
    path = ctx.artifact_dir / name
    if not _rank_zero():
        return path
    answers = [_decode(row) for row in out["answer"]]
    if "question_id" in out:  # VQA: the official result file
        write_submission(path, [int(q) for q in out["question_id"].tolist()], answers)
    else:
        rows = [{"index": int(i), "caption": a} for i, a in zip(out["index"].tolist(), answers)]
        atomic_write_text(path, json.dumps(rows))
    return path


# ---- RICES ------------------------------------------------------------------------------------------------------
def _rices(task: TaskConfig, ctx: RunContext, reader: Reader, k: int) -> np.ndarray:
    """(N_queries, k) training indices per query, nearest first-to-last by cosine of CLIP image embeddings (the
    most similar last, as OpenFlamingo's RICES orders them); embeddings through the feature cache."""
    from mmbench.models import build_model
    from mmbench.protocols.features import load_or_extract

    p = task.incontext
    if ctx.resolve_model is None:
        raise ConfigError("key 'incontext.demonstrations': rices needs a model registry to find 'rices_model'")
    cfg = ctx.resolve_model(p.rices_model)
    sub = dataclasses.replace(ctx, model_cfg=cfg, model_factory=lambda c, fresh=False: build_model(c), _model=None)
    sub.require(Capability.CONTRASTIVE, f"RICES (incontext.rices_model={p.rices_model!r})")
    batch = 64
    train = load_or_extract(dataclasses.replace(sub, limit=None), reader, [p.train_split], batch, "image_embeddings")
    queries = load_or_extract(sub, reader, [task.data.split], batch, "image_embeddings")
    bank = train.splits[p.train_split].features  # (N_train, E), L2-normalised
    if k > len(bank):
        raise ConfigError(f"key 'incontext.shots': {k} demonstrations per query but {p.train_split!r} has {len(bank)}")
    q = queries.splits[task.data.split].features  # (N_q, E)
    rows = [_nearest(q[s : s + 128], bank, k) for s in range(0, len(q), 128)]  # 128 x N_train scores at a time
    return torch.cat(rows).flip(1).numpy()  # most similar last


def _nearest(q: Tensor, bank: Tensor, k: int) -> Tensor:
    """(b, k) indices into `bank` of each row's k most similar, most similar first; ties (the same image under
    several questions) go to the lower index, so the pick never depends on topk's order among equals."""
    sim = q @ bank.T  # (b, N)
    threshold = torch.topk(sim, k, dim=1).values[:, -1:]  # (b, 1): the k-th best score
    rows, cols = (sim >= threshold).nonzero(as_tuple=True)  # candidates, by row then index
    order = torch.argsort(-sim[rows, cols], stable=True)  # best first, lower index first among ties
    order = order[torch.argsort(rows[order], stable=True)]  # grouped by row again, keeping that order
    rows, cols = rows[order], cols[order]
    rank = torch.arange(len(rows)) - torch.searchsorted(rows, rows, side="left")  # position within its row
    keep = rank < k
    return cols[keep].view(len(q), k)
