"""Fine-tuning (GLUE, VQAv2, SNLI-VE, Hateful Memes): train wrapper + head, select the best validation
checkpoint, evaluate it on the task's split(s).

- Recipe: the task's `finetune` block (the paper's lrs, updates, batch sizes and warm-ups as defaults). The
  effective batch `batch_size` is reached by gradient accumulation over `devices x device batch` (the device
  batch is `--batch-size`, else `device_batch_size`, else `batch_size` / devices).
- Synthetic data: a `finetune:` mapping inside `data.synthetic` overrides the recipe only when the data are
  synthetic (a few hundred updates at a tiny model's learning rate instead of the paper's 2k-124k), so
  `mmbench run --data synthetic` finishes in seconds per task while real runs keep the paper's schedule.
  `--limit N` caps every split (train included) at N samples.
- Resume: checkpoints live in `<cache>/finetune/<model>/<task>/<config hash>/` (`mmbench.lit.run_folder`); the
  same command after a kill resumes from `last.ckpt`; a finished folder is only re-evaluated.
- Checks first: every split the run reads (train, selection, `data.split`, `eval_splits`, `predict_splits`) goes
  through the reader's `check`, labelled ones must have labels, and the VQA answer vocabulary is built, all before
  the first step, so a missing test-dev file does not end a run after hours of training.
- Text length: `finetune.max_text_length`, else the preset's `text_only_max_length` for `input: text` (FLAVA: 512,
  its own text-only length) or `max_text_length` for `input: pair` (the image-text length), never more than the
  model's positions (`max_text_positions`); recorded in `details.text_length`.
- Selection (`finetune.selection`, `mmbench.lit.run_folder`): `split` = the best `select_metric` (default: the
  primary) on `val_split` (default `data.split`: then the selection split is the scored split, and
  `details.selection.is_scored_split` says so: GLUE, as in the fairseq recipe the paper used); `holdout` = the best
  on a seeded hold-out of the training split, removed from training (Hateful Memes); `final` = the last
  checkpoint (VQAv2's fixed schedule). Checked every `val_every_steps` updates and after the last; scores within
  `select_tolerance` of the incumbent are ties it keeps. The rule, its data and the chosen step go in `details`.
- Evaluation: the selected weights on `data.split`, plus each `eval_splits` entry (MNLI mismatched), predictions
  gathered by sample index across ranks and scored once.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mmbench.config import config_hash, to_dict
from mmbench.data import IndexedStream, open_reader
from mmbench.errors import ConfigError, DataError
from mmbench.lit import run_folder
from mmbench.lit.finetune import FinetuneModule, freeze_unused, set_dropout
from mmbench.lit.finetune_data import (
    Collate,
    FinetuneData,
    Table,
    TableStream,
    holdout_split,
    item_fn,
    training_table,
)
from mmbench.lit.heads import HEADS, make_head
from mmbench.lit.loggers import close_loggers, make_logger
from mmbench.lit.predict import StreamDataModule
from mmbench.lit.trainer import make_trainer
from mmbench.metrics import classification
from mmbench.models.base import Capability
from mmbench.paths import model_folder
from mmbench.protocols.base import ProtocolOutput, RunContext
from mmbench.protocols.sample_rows import classification_rows, regression_rows, sample_ref
from mmbench.schema import FinetuneParams, ModelConfig, TaskConfig

log = logging.getLogger("mmbench")


def effective_params(task: TaskConfig, synthetic: bool) -> FinetuneParams:
    """The task's recipe, with `data.synthetic.finetune` applied when the data are synthetic."""
    override = task.data.synthetic.get("finetune") if synthetic else None
    if not override:
        return task.finetune
    try:
        merged = OmegaConf.merge(OmegaConf.structured(FinetuneParams), to_dict(task.finetune), override)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(
            f"task {task.name!r}: key 'data.synthetic.finetune.{key}': {str(e).splitlines()[0]}"
        ) from None


def split_metrics(task: TaskConfig, p: FinetuneParams) -> dict[str, tuple[str, list[str]]]:
    """suffix -> (split, metric names computed on it); "" is `data.split`. MNLI: accuracy on validation_matched
    and accuracy -> accuracy_mismatched on validation_mismatched."""
    out = {"": (task.data.split, [m for m in task.metrics if not any(m.endswith(f"_{s}") for s in p.eval_splits)])}
    for suffix, split in p.eval_splits.items():
        out[suffix] = (split, [m[: -len(suffix) - 1] for m in task.metrics if m.endswith(f"_{suffix}")])
    if p.head != "vqa":
        regression = p.head == "regression"
        for _, names in out.values():
            bad = [n for n in names if n not in classification.known(regression)]
            if bad:
                have = ", ".join(classification.known(regression))
                raise ConfigError(f"task {task.name!r}: key 'metrics': {bad[0]!r} is not a {p.head} metric ({have})")
    return out


def _evaluator(p: FinetuneParams, names: list[str], vocab: Any, split: str):
    def evaluate(gathered: dict[str, torch.Tensor], extras: dict[int, Any]) -> dict[str, float]:
        if p.head == "vqa":
            from mmbench.metrics.vqa import vqa_scores

            order = gathered["index"].tolist()
            predicted = [vocab.answers[i] for i in gathered["pred"].tolist()]
            scores = vqa_scores(
                predicted, [extras[i]["answers"] for i in order], [extras[i]["answer_type"] for i in order]
            )
            return {k: float(v) for k, v in scores.items()}
        if "target" not in gathered:
            raise DataError(f"split {split!r}: no labels to score")
        return classification.compute(names, gathered["output"], gathered["target"], p.head == "regression")

    return evaluate


def _batch_plan(p: FinetuneParams, ctx: RunContext) -> tuple[int, int, int]:
    world = ctx.trainer.devices * ctx.trainer.num_nodes
    micro = ctx.batch_size or p.device_batch_size or max(1, p.batch_size // world)
    per_device, rest = divmod(p.batch_size, world)
    accumulate, rest2 = divmod(per_device, micro) if not rest else (0, 1)
    if rest or rest2 or accumulate < 1:
        raise ConfigError(
            f"finetune.batch_size {p.batch_size} is not a multiple of devices x device batch ({world} x {micro}); "
            f"set --batch-size or finetune.device_batch_size to a divisor of {p.batch_size // max(1, world)}"
        )
    return world, micro, accumulate


@dataclass
class _Run:
    """What one fine-tuning run is made of, once the data and the model are open."""

    task: TaskConfig
    ctx: RunContext
    p: FinetuneParams
    reader: Any
    vocab: Any
    folder: Path
    module: FinetuneModule
    collate: Collate
    eval_transform: Any
    # (split, gathered outputs, extras) of each scored split, kept for the sample log (`ctx.log_samples`)
    scored: list[tuple[str, dict[str, torch.Tensor], dict[int, Any]]] = field(default_factory=list)

    @property
    def block_size(self) -> int:
        return self.ctx.batch_size or self.p.device_batch_size or self.p.batch_size

    def stream(self, split: str) -> IndexedStream:
        to_item = item_fn(self.p.head, self.p.input, split, self.eval_transform, self.vocab)
        return IndexedStream(self.reader, split, to_item, self.block_size, self.ctx.limit)

    def selection_stream(self, val_split: str, held_out: Any) -> IndexedStream | TableStream:
        """What selection evaluates: the validation split, the held-out training rows, or nothing (final)."""
        p = self.p
        if p.selection == "split":
            return self.stream(val_split)
        to_item = item_fn(p.head, p.input, f"{p.train_split} (hold-out)", self.eval_transform, self.vocab)
        return TableStream(held_out if p.selection == "holdout" else [], to_item, self.block_size)


def run(task: TaskConfig, ctx: RunContext) -> ProtocolOutput:
    p = effective_params(task, ctx.data_source == "synthetic")
    _check_params(task, p)
    needed = Capability.TEXT if p.input == "text" else Capability.FUSION
    ctx.require(needed, f"fine-tuning on {'text' if p.input == 'text' else 'image+text'}")
    evals = split_metrics(task, p)
    select = p.select_metric or task.primary
    if p.head != "vqa" and select not in evals[""][1]:
        raise ConfigError(f"task {task.name!r}: finetune.select_metric {select!r} is not among {evals[''][1]}")
    world, micro, accumulate = _batch_plan(p, ctx)

    reader = open_reader(task, ctx.data_root)
    val_split = p.val_split or task.data.split
    check_data(reader, p, evals, val_split)
    vocab = reader.answer_vocab(ctx.cache_dir) if p.head == "vqa" else None  # names a missing vocabulary file
    table = training_table(reader, p.train_split, ctx.limit)
    trained, held_out = table, None
    if p.selection == "holdout":  # removed from training: selection never sees a record the model trained on
        trained, held_out = holdout_split(table, p.holdout_fraction, p.holdout_seed)
    fingerprint = hashlib.sha256(f"{len(table)}/{vocab.hash if vocab else ''}".encode()).hexdigest()[:16]
    key = ctx.run_key or config_hash(ctx.model_cfg, task, {"seed": ctx.seed, "limit": ctx.limit})
    folder = ctx.cache_dir / "finetune" / model_folder(ctx.model_cfg.name) / task.name / key.split(":")[-1]
    sharded = ctx.trainer.strategy == "fsdp"
    state = run_folder.prepare(folder, fingerprint, fresh=ctx.fresh, sharded=sharded, accumulate=accumulate)

    rule = _rule(task, p, val_split, select, held_out)
    evaluate = _evaluator(p, evals[""][1], vocab, val_split if p.selection == "split" else "the hold-out")
    module, frozen = _build_module(ctx, p, vocab, evaluate, accumulate)
    length = text_length(p, ctx.model_cfg, module.model)
    pair = p.input == "pair"
    collate = Collate(module.model, p.head, length["used"])
    train_transform = module.model.image_transform(train=True, image_size=p.image_size) if pair else None
    train_set = Table(trained, item_fn(p.head, p.input, p.train_split, train_transform, vocab, train=True))
    unused = freeze_unused(module, collate([train_set[i] for i in range(min(2, len(train_set)))]))
    eval_transform = module.model.image_transform(train=False, image_size=p.image_size) if pair else None
    r = _Run(task, ctx, p, reader, vocab, folder, module, collate, eval_transform)

    callback = run_folder.RunFolder(
        folder, select, p.max_steps, fingerprint, rule, p.selection, p.select_tolerance, sharded, accumulate
    )
    if state is not None and state.get("done") or p.max_steps == 0:
        trainer = make_trainer(ctx.trainer)  # a finished run folder: evaluate only
        if ctx.trainer.logger is not None:
            log.info("%s: nothing to train (%s is finished, or max_steps is 0), so nothing to log", task.name, folder)
        summary = {"resumed_from": state.get("step", 0) if state else 0, **(state or {})}
    else:
        data = FinetuneData(
            train_set, r.selection_stream(val_split, held_out), collate, micro, accumulate, p.max_steps,
            p.val_every_steps, ctx.seed, ctx.num_workers,
        )  # fmt: skip
        trainer = _fit(r, data, callback, accumulate, resume=state is not None)
        summary = {"resumed_from": callback.resumed_from, **callback.state_dict()}
    selected = run_folder.load_best(module, folder)
    metrics, counts, per_rank = _evaluate_splits(r, trainer, evals)
    submissions = _predict_splits(r, trainer)

    info = {
        "rule": rule,
        "summary": summary,
        "selected": selected,
        "batch": {"effective": p.batch_size, "device": micro, "devices": world, "accumulate": accumulate},
        "text_length": length,
        "n_train": len(trained),
        "frozen_params": len(frozen),
        "unused_params_frozen": len(unused),
    }
    details = _details(r, info, counts, per_rank, submissions)
    samples = sample_rows(r) if ctx.log_samples else None
    n = counts[task.data.split]
    return ProtocolOutput(metrics, n, details=details, is_global_zero=trainer.is_global_zero, samples=samples)


def sample_rows(r: _Run) -> Iterator[dict[str, Any]]:
    """Every scored split's predictions (`split` says which; MNLI has two), as its metrics saw them. Classification:
    `prediction` the argmax class, `score` its softmax probability, `correct`, and `prob_1` for two classes (the
    AUROC of Hateful Memes ranks it); regression (STS-B): the predicted value as `prediction` and `score`; VQA:
    the predicted answer text, `target` the annotators' answers, `score` its VQA accuracy (mean = the metric)."""
    for split, out, extras in r.scored:
        where = {"split": split}
        if r.p.head == "vqa":
            yield from _vqa_rows(r, split, out, extras)
        elif r.p.head == "regression":
            yield from regression_rows(r.reader, split, out["index"], out["output"], out.get("target"), where)
        else:
            yield from classification_rows(r.reader, split, out["index"], out["output"], out.get("target"), where)


def _vqa_rows(r: _Run, split: str, out: dict[str, torch.Tensor], extras: dict[int, Any]) -> Iterator[dict[str, Any]]:
    from mmbench.metrics.vqa import question_accuracy

    for i, pred in zip(out["index"].tolist(), out["pred"].tolist()):
        answer, answers = r.vocab.answers[pred], extras[i]["answers"]
        yield {
            **sample_ref(r.reader, split, i),
            "split": split,
            "prediction": answer,
            "target": answers,
            "score": question_accuracy(answer, answers),
            "answer_type": extras[i]["answer_type"],
        }


def _details(
    r: _Run, info: dict[str, Any], counts: dict[str, int], per_rank: dict[str, list[int]], submissions: dict
) -> dict[str, Any]:
    """What the result records about the run: selection (rule, data, chosen step), history, batch plan, sizes."""
    summary, selected = info["summary"], info["selected"]
    chosen_by = summary.get("chosen_by") if selected else None
    details = {
        "format": r.reader.format,
        "selection": {
            **info["rule"],
            "chosen_step": summary.get("best_step") if selected else None,
            "chosen_value": summary.get("best_value") if selected else None,
            "chosen_by": chosen_by,
        },
        "evaluated": "initial weights (max_steps: 0)" if not selected else _evaluated(chosen_by),
        "val_history": summary.get("history", []),
        "resumed_from_step": summary["resumed_from"],
        "steps": r.p.max_steps,
        "batch": info["batch"],
        "text_length": info["text_length"],
        "n_train": info["n_train"],
        "n_eval": counts,
        "samples_per_rank": per_rank,
        "frozen_params": info["frozen_params"],
        "unused_params_frozen": info["unused_params_frozen"],
        "finetune": to_dict(r.p),
        "run_folder": str(r.folder),
    }
    if r.vocab is not None:
        details["answer_vocab"] = {"size": len(r.vocab.answers), "hash": r.vocab.hash}
    if submissions:
        details["submissions"] = submissions
    return details


def _check_params(task: TaskConfig, p: FinetuneParams) -> None:
    where = f"task {task.name!r}: key 'finetune"
    if p.head not in HEADS or p.input not in ("text", "pair"):
        raise ConfigError(f"task {task.name!r}: finetune.head {p.head!r} / input {p.input!r} is not supported")
    if p.selection not in run_folder.SELECTIONS:
        raise ConfigError(f"{where}.selection': {p.selection!r} is not one of {', '.join(run_folder.SELECTIONS)}")
    if p.selection == "holdout" and not 0 < p.holdout_fraction < 1:
        raise ConfigError(f"{where}.holdout_fraction': {p.holdout_fraction} is not between 0 and 1")
    if not p.select_tolerance >= 0:
        raise ConfigError(f"{where}.select_tolerance': {p.select_tolerance} is negative")
    if p.predict_splits and p.head != "vqa":
        raise ConfigError(f"{where}.predict_splits': only supported for head: vqa")


def check_data(reader: Any, p: FinetuneParams, evals: dict[str, tuple[str, list[str]]], val_split: str) -> None:
    """Every split the run will read, before anything is trained: the reader's own check (files, image folders),
    labels where the run needs them, samples where it predicts. Fails with the reader's one-line message."""
    labelled = {p.train_split, *(s for s, _ in evals.values())}
    if p.selection == "split":
        labelled.add(val_split)
    unlabelled = set(p.predict_splits) - labelled
    for split in sorted(labelled | unlabelled):
        reader.check(split)
    for split in sorted(labelled):
        _require_labels(reader, split, p.head)
    for split in sorted(unlabelled):
        _require_labels(reader, split, None)


def text_length(p: FinetuneParams, cfg: ModelConfig, model: Any) -> dict[str, Any]:
    """The token length texts are cut to: the recipe's, else the preset's for the input kind; capped at the
    positions the model has (`max_text_positions`, when the wrapper states it)."""
    if p.max_text_length is not None:
        asked, source = p.max_text_length, "finetune.max_text_length"
    elif p.input == "text" and cfg.text_only_max_length is not None:
        asked, source = cfg.text_only_max_length, "model.text_only_max_length"
    else:
        asked, source = cfg.max_text_length, "model.max_text_length"
    limit = getattr(model, "max_text_positions", None)
    used = min(asked, limit) if limit is not None else asked
    if used < asked:
        log.info("%s: %s %d is more than the model's %d text positions: using %d", cfg.name, source, asked, limit, used)
    return {"used": used, "asked": asked, "from": source, "model_limit": limit}


def _build_module(
    ctx: RunContext, p: FinetuneParams, vocab: Any, evaluate: Any, accumulate: int
) -> tuple[FinetuneModule, list[str]]:
    """A fresh copy of the wrapper (the preset's `finetune.frozen` applied, the recipe's dropout set) + a new
    head seeded by the run's seed alone. Returns the module and the frozen parameter names."""
    model = ctx.model(fresh=True)
    model.require(Capability.TEXT if p.input == "text" else Capability.FUSION, "fine-tuning")
    frozen = model.freeze_for_finetuning()
    if p.model_dropout is not None:
        set_dropout(model, p.model_dropout)
    num_labels = len(vocab.answers) if vocab is not None else 1 if p.head == "regression" else p.num_labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        in_dim = model.feature_dims["text" if p.input == "text" else "pair"]
        head = make_head(in_dim, num_labels, p.head_hidden, p.head_dropout, p.head_activation)
    return FinetuneModule(model, head, p, evaluate, seed=ctx.seed, accumulate=accumulate), frozen


def _fit(r: _Run, data: FinetuneData, callback: run_folder.RunFolder, accumulate: int, resume: bool) -> Any:
    p = r.p
    trainer = make_trainer(
        r.ctx.trainer,
        max_steps=p.max_steps,
        max_epochs=-1,  # one Lightning epoch = one validation interval (see mmbench.lit.finetune_data)
        accumulate_grad_batches=accumulate,
        reload_dataloaders_every_n_epochs=1,
        num_sanity_val_steps=0,
        gradient_clip_val=p.grad_clip_norm or None,
        log_every_n_steps=max(1, min(50, p.val_every_steps)),
        callbacks=[callback],
        logger=make_logger(r.ctx.trainer.logger),  # --logger: the training curves; False without one
    )
    ckpt = r.folder / run_folder.LAST if resume else None
    try:
        trainer.fit(r.module, datamodule=data, ckpt_path=ckpt, weights_only=True)
    finally:
        close_loggers(trainer)
    return trainer


def _evaluate_splits(
    r: _Run, trainer: Any, evals: dict[str, tuple[str, list[str]]]
) -> tuple[dict[str, float], dict[str, int], dict[str, list[int]]]:
    """The selected weights on `data.split` and every `eval_splits` entry, gathered by index, scored once.
    Returns the metrics, the samples per split and how each split's samples were shared among the ranks."""
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    per_rank: dict[str, list[int]] = {}
    module = r.module
    for suffix, (split, names) in evals.items():
        module.evaluate = _evaluator(r.p, names, r.vocab, split)
        data = StreamDataModule(r.stream(split), r.ctx.num_workers, r.collate)
        trainer.predict(module, datamodule=data, return_predictions=False)
        if not module.outputs:
            raise DataError(f"task {r.task.name!r}: the {split!r} split of {r.ctx.data_root} has no samples")
        scores = module.evaluate(module.outputs, module.extras)
        _check_defined(r.task, split, {k: v for k, v in scores.items() if k in (*r.task.scores, r.task.primary)})
        metrics.update({f"{k}_{suffix}" if suffix else k: v for k, v in scores.items()})
        counts[split] = len(module.outputs["index"])
        per_rank[split] = list(module.samples_per_rank)
        if r.ctx.log_samples:  # the gathered predictions just scored; the next split's pass makes new ones
            r.scored.append((split, module.outputs, module.extras))
        if r.p.head == "vqa" and not suffix and r.ctx.artifact_dir is not None and trainer.is_global_zero:
            _write_submission(r.ctx, r.task, module, r.vocab, split)
    return metrics, counts, per_rank


def _predict_splits(r: _Run, trainer: Any) -> dict[str, str]:
    """Predict the `predict_splits` (labels hidden, e.g. VQAv2 test-dev2015) with the selected weights and write
    each as the official result file for server scoring; returns {split: file name} (paths are local)."""
    if not r.p.predict_splits:
        return {}
    written = {}
    for split in r.p.predict_splits:  # checked before training (`check_data`)
        data = StreamDataModule(r.stream(split), r.ctx.num_workers, r.collate)
        trainer.predict(r.module, datamodule=data, return_predictions=False)
        if not r.module.outputs:
            raise DataError(f"task {r.task.name!r}: the {split!r} split of {r.ctx.data_root} has no samples")
        if r.ctx.artifact_dir is not None and trainer.is_global_zero:
            written[split] = _write_submission(r.ctx, r.task, r.module, r.vocab, split).name
    return written


def _require_labels(reader: Any, split: str, head: str | None) -> None:
    """Fail before training when a split the run needs is empty, or unlabelled (GLUE's test splits) when `head`
    says which labels it needs."""
    first = next(iter(reader.samples(split, limit=1)), None)
    where = f"task {reader.task.name!r}: the {split!r} split of {reader.root}"
    if first is None:
        raise DataError(f"{where} has no samples")
    if head is None:
        return
    if (not first.get("answers")) if head == "vqa" else first.get("label") is None:
        what = "answers" if head == "vqa" else "labels"
        raise DataError(f"{where} has no {what} (test labels are hidden: evaluate on a validation split)")


def _rule(task: TaskConfig, p: FinetuneParams, val_split: str, select: str, held_out: Any) -> dict[str, Any]:
    """How the evaluated checkpoint is chosen, and on which data (recorded in state.json and the result)."""
    if p.selection == "final":
        return {"rule": "final", "data": None, "is_scored_split": False, "every_steps": p.val_every_steps}
    if p.selection == "holdout":
        data = {"split": p.train_split, "holdout_fraction": p.holdout_fraction, "holdout_seed": p.holdout_seed}
        data["n"] = len(held_out)
    else:
        data = {"split": val_split}
    return {
        "rule": p.selection,
        "data": data,
        "is_scored_split": p.selection == "split" and val_split == task.data.split,
        "metric": select,
        "mode": "max",
        "tolerance": p.select_tolerance,
        "ties": "the incumbent (earlier) checkpoint keeps its place unless beaten by more than the tolerance",
        "every_steps": p.val_every_steps,
        "also_at": "the last step",
    }


def _evaluated(chosen_by: str | None) -> str:
    """Which weights the scores are of: the best by value, the final ones, or why the final ones."""
    return "best" if chosen_by in (None, "value") else chosen_by


def _check_defined(task: TaskConfig, split: str, scores: dict[str, float]) -> None:
    for name, value in scores.items():
        if isinstance(value, float) and math.isnan(value):
            raise DataError(f"task {task.name!r}: {name} is undefined on split {split!r} (its labels hold one class)")


def _write_submission(ctx: RunContext, task: TaskConfig, module: FinetuneModule, vocab: Any, split: str) -> Path:
    """`<results>/runs/<model>/<task>_<split>_submission.json`: `[{"question_id", "answer"}]`, the official format."""
    from mmbench.metrics.vqa import write_submission

    order = module.outputs["index"].tolist()
    predicted = [vocab.answers[i] for i in module.outputs["pred"].tolist()]
    path = ctx.artifact_dir / f"{task.name}_{split}_submission.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_submission(path, [module.extras[i]["question_id"] for i in order], predicted)
    return path
