"""The one fine-tuning LightningModule of all 11 fine-tuned tasks: wrapper + head + loss, and exact evaluation.

Features come from the wrapper (`text_features` for GLUE, `pair_features` for the multimodal tasks), the head is
`mmbench.lit.heads.make_head`, the loss `head_loss`. Evaluation (the validation that selects the checkpoint, and
the final predictions) keeps every output by sample index and gathers it across ranks (`gather_indexed`), then
computes the metrics once from the gathered outputs with the protocol's `evaluate` function, so every rank holds
exactly the single-process numbers. Stateful torchmetrics objects are not used for this on purpose: their DDP
sync would count the samples a sampler pads in twice. The arithmetic is torchmetrics' functional API
(`mmbench.metrics.classification`).

Optimiser: AdamW (decoupled weight decay; what fairseq's `adam` is) or Adam (L2 in the gradient). Parameters with
fewer than 2 dimensions (biases, LayerNorm and other norm gains, scalar gates) get no weight decay, as in BERT /
RoBERTa / BEiT-3 fine-tuning code. Schedule: linear warm-up over `warmup_steps` updates, then cosine or linear
("polynomial", power 1, fairseq's `polynomial_decay`) decay to 0 at `max_steps`.

Dropout masks of each micro-batch are drawn from a generator seeded by (seed, the micro-batch's position in the
global sample stream of `mmbench.lit.finetune_data`), so a run resumed from a checkpoint draws exactly the masks the
uninterrupted run drew, whatever else consumed random numbers in between (no RNG state needs saving), and the same
samples get the same masks however an update is split into ranks x accumulation (with the same device batch):
two processes train exactly as one process accumulating two micro-batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from mmbench.lit.heads import head_loss
from mmbench.lit.predict import gather_indexed
from mmbench.models.base import ModelWrapper
from mmbench.schema import FinetuneParams

# gathered outputs {"index", "output" | "pred", "target"?} + per-sample extras by index -> metrics
Evaluate = Callable[[dict[str, Tensor], dict[int, Any]], dict[str, float]]


class WarmupDecay:
    """LambdaLR factor for update k (0-based): (k + 1) / warmup during warm-up, then cosine or linear decay to 0
    at `total`. A plain object (not a lambda) so the scheduler's state pickles into checkpoints."""

    def __init__(self, warmup: int, total: int, schedule: str):
        if schedule not in ("cosine", "polynomial"):
            raise ValueError(f"schedule {schedule!r}: expected cosine or polynomial")
        self.warmup, self.total, self.schedule = int(warmup), int(total), schedule

    def __call__(self, k: int) -> float:
        if k < self.warmup:
            return (k + 1) / self.warmup
        progress = min(1.0, (k - self.warmup) / max(1, self.total - self.warmup))
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress


def param_groups(module: nn.Module, weight_decay: float, matrices: set[str] | None = None) -> list[dict[str, Any]]:
    """Trainable parameters split into decayed (matrices, embeddings) and not decayed (ndim < 2). `matrices`:
    the names of the parameters with ndim >= 2, taken before FSDP flattened them into 1-d shards."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            is_matrix = p.ndim >= 2 if matrices is None else _unwrapped_name(name) in matrices
            (decay if is_matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _unwrapped_name(name: str) -> str:
    """A parameter's name as the unwrapped module spells it (FSDP inserts `_fsdp_wrapped_module.`)."""
    return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")


def _micro_seed(seed: int, chunk: int) -> int:
    return (seed * 1_000_003 + chunk * 8_191) % (2**63 - 1)


class FinetuneModule(L.LightningModule):
    def __init__(
        self,
        model: ModelWrapper,
        head: nn.Module,
        params: FinetuneParams,
        evaluate: Evaluate,
        seed: int = 0,
        accumulate: int = 1,
    ):
        super().__init__()
        self.model, self.head = model, head
        self.params, self.evaluate = params, evaluate
        self.seed, self.accumulate = seed, accumulate
        self.kind = params.head
        self.val_metrics: dict[str, float] = {}
        self.outputs: dict[str, Tensor] = {}  # the last predict pass, gathered
        self.extras: dict[int, Any] = {}
        self.samples_per_rank: list[int] = []  # of the last gather (provenance for multi-process runs)
        self._chunks: list[dict[str, Tensor]] = []
        self._extras: list[tuple[int, Any]] = []
        self._matrices = {n for n, p in self.named_parameters() if p.ndim >= 2}  # weight decay, under FSDP too

    # ---- forward and loss ---------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> Tensor:
        tokens = batch["tokens"]
        if self.params.input == "text":
            features = self.model.text_features(**tokens)  # (B, D)
        else:
            features = self.model.pair_features(batch["pixel_values"], **tokens)  # (B, D)
        return self.head(features)  # (B, C) logits, or (B, 1) for regression

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        micro = self.global_step * self.accumulate + batch_idx % self.accumulate
        # the position of this micro-batch in the global stream (`StepSampler.positions`), in micro-batches
        seed = _micro_seed(self.seed, micro * self.trainer.world_size + self.global_rank)
        # Only the generators this step draws from: `torch.manual_seed` would also queue a lazy seeding of every
        # CUDA device (with a captured stack trace), about 1 ms per step on a CPU run.
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        loss = head_loss(self.kind, self(batch), batch["target"])
        if self.logger is not None:  # --logger only: logging every step costs time that runs without one keep
            self._log_training(loss)
        return loss

    def _log_training(self, loss: Tensor) -> None:
        """This rank's micro-batch loss and the learning rate of the update it belongs to (every parameter group
        follows one schedule). Lightning writes them every `log_every_n_steps` updates, from rank zero."""
        self.log("train_loss", loss.detach(), on_step=True, on_epoch=False)
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            self.log("lr", float(scheduler.get_last_lr()[0]), on_step=True, on_epoch=False)

    # ---- evaluation: collect by index, gather, compute once -----------------------------------------------------
    def _collect(self, batch: dict[str, Any]) -> None:
        output = self(batch).detach().float()
        out: dict[str, Tensor] = {"index": batch["index"]}
        if self.kind == "vqa":
            out["pred"] = output.argmax(-1)  # (B,): gathering 3k logits per question would not scale
        else:
            out["output"] = output.squeeze(-1) if self.kind == "regression" else output
            if "target" in batch:
                out["target"] = batch["target"].float() if self.kind == "regression" else batch["target"]
        self._chunks.append(out)
        if batch.get("extras") is not None:
            self._extras.extend(zip(batch["index"].tolist(), batch["extras"]))

    def _gather(self) -> tuple[dict[str, Tensor], dict[int, Any]]:
        gathered = gather_indexed(self, self._chunks, self.samples_per_rank)
        extras = gather_objects(self, self._extras) if self.kind == "vqa" else {}  # every rank calls, or none
        self._chunks, self._extras = [], []
        return gathered, extras

    def on_validation_epoch_start(self) -> None:
        self._chunks, self._extras = [], []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._collect(batch)

    def on_validation_epoch_end(self) -> None:
        gathered, extras = self._gather()
        self.val_metrics = self.evaluate(gathered, extras) if gathered else {}
        for name, value in self.val_metrics.items():
            # For the progress bar and --logger (selection reads `val_metrics`). The values are identical on every
            # rank; sync_dist averages them anyway, which costs one tiny all-reduce and keeps Lightning from warning.
            self.log(f"val_{name}", value, prog_bar=True, sync_dist=True)

    def on_predict_epoch_start(self) -> None:
        self._chunks, self._extras = [], []

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._collect(batch)

    def on_predict_epoch_end(self) -> None:
        self.outputs, self.extras = self._gather()

    # ---- optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        p = self.params
        groups = param_groups(self, p.weight_decay, self._matrices)
        kwargs = dict(lr=p.lr, betas=tuple(p.betas), eps=p.eps)
        if p.optimizer == "adamw":
            opt = torch.optim.AdamW(groups, **kwargs)
        elif p.optimizer == "adam":
            opt = torch.optim.Adam(groups, **kwargs)
        else:
            raise ValueError(f"optimizer {p.optimizer!r}: expected adamw or adam")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupDecay(p.warmup_steps, p.max_steps, p.schedule))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        root = self.trainer.model
        if gradient_clip_val and isinstance(root, FSDP):
            # The norm over every rank's shard (Lightning's FSDP precision refuses clipping by norm: a plain
            # clip_grad_norm_ would see this rank's shard only).
            root.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)


def gather_objects(module: L.LightningModule, items: list[tuple[int, Any]]) -> dict[int, Any]:
    """Per-sample Python objects (VQA answers, question ids) from every rank, keyed by sample index."""
    world = module.trainer.world_size if module._trainer is not None else 1
    if world > 1:
        parts: list[Any] = [None] * world
        torch.distributed.all_gather_object(parts, items)
        items = [it for part in parts for it in part]
    return dict(items)


def set_dropout(model: nn.Module, p: float) -> int:
    """Set the probability of every `nn.Dropout` in `model` (the recipe's dropout); returns how many. Attention
    implementations that keep their dropout as a float (HF CLIP's) are not reached."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p, n = p, n + 1
    return n


def freeze_unused(module: FinetuneModule, batch: dict[str, Any]) -> list[str]:
    """Freeze the trainable parameters that one training batch leaves without a gradient (FLAVA's image and
    fusion encoders on GLUE): they would never change, and DDP requires every trainable parameter to take part.
    Returns their names. Runs on a forked RNG so training randomness is untouched."""
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        was_training = module.training
        module.train()
        head_loss(module.kind, module(batch), batch["target"]).backward()
        module.train(was_training)
    unused = []
    for name, p in trainable:
        if p.grad is None:
            p.requires_grad_(False)
            unused.append(name)
        p.grad = None
    return unused
