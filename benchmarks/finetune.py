"""Training-step throughput: the fine-tuning LightningModule under a Lightning Trainer vs a bare PyTorch loop.

Both train the same model (same initial weights) on the same pre-collated batches with the same optimiser and
schedule (`FinetuneModule.configure_optimizers`); only the loop differs. Data loading is excluded on purpose
(both read a list of ready batches), so the ratio is the Trainer's own per-step overhead. Runs alternate
(bare, Lightning, bare, ...) and the median of each is reported, which evens out a noisy shared machine.

    PYTHONPATH=src python benchmarks/finetune.py            # about a minute on 2 CPU cores
    PYTHONPATH=src python benchmarks/finetune.py --hidden 64 --layers 2 --steps 40

The default model is the flava-tiny preset widened to a small text tower (hidden 128, 4 layers, ~0.9M trainable), so
that a step does real work; the flava-tiny preset itself (`--hidden 32 --layers 2`) mostly measures overhead.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
import warnings
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mmbench.config import Registry, parse_overrides
from mmbench.data.synthetic.glue import examples
from mmbench.lit.finetune import FinetuneModule
from mmbench.lit.finetune_data import Collate
from mmbench.lit.heads import head_loss, make_head
from mmbench.models import build_model


class Batches(Dataset):
    def __init__(self, batches: list[dict[str, Any]]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.batches[i]


class StepTimer(L.Callback):
    """Wall time from the start of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, idx: int) -> None:
        if idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, out: Any, batch: Any, idx: int) -> None:
        self.end = time.perf_counter()


def make_module(args: argparse.Namespace) -> tuple[FinetuneModule, Any]:
    reg = Registry()
    arch = [
        f"model.arch.hidden_size={args.hidden}",
        f"model.arch.text.num_hidden_layers={args.layers}",
        f"model.arch.text.num_attention_heads={max(2, args.hidden // 64)}",
        f"model.arch.text.intermediate_size={4 * args.hidden}",
    ]
    model = build_model(reg.model(args.model, parse_overrides(arch)["model"]))
    params = reg.task("sst2").finetune
    params.lr, params.max_steps, params.warmup_steps = 1e-4, args.steps, args.steps // 10
    torch.manual_seed(0)
    head = make_head(model.feature_dims["text"], 2, -1, 0.1, "tanh")
    module = FinetuneModule(model, head, params, evaluate=lambda g, e: {}, seed=0, accumulate=1)
    for name, p in module.named_parameters():  # what the protocol's probe freezes for a text task
        if not name.startswith(("model.model.text_model.", "head.")) or ".pooler." in name:
            p.requires_grad_(False)
    return module, model


def make_batches(model: Any, n: int, batch: int) -> list[dict[str, Any]]:
    rows = examples("sst2", "train", n * batch, seed=0)
    collate = Collate(model, "classification", None)
    items = [{"index": i, "text": r[0], "text_pair": None, "target": int(r[2])} for i, r in enumerate(rows)]
    return [collate(items[i * batch : (i + 1) * batch]) for i in range(n)]


def bare(module: FinetuneModule, batches: list[dict[str, Any]], warmup: int) -> float:
    """Steps per second of a plain loop: forward, loss, backward, optimiser and scheduler step, zero grads."""
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    module.train()
    start = 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        loss = head_loss(module.kind, module(batch), batch["target"])
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return (len(batches) - warmup) / (time.perf_counter() - start)


def lightning(module: FinetuneModule, batches: list[dict[str, Any]], warmup: int) -> float:
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    loader = DataLoader(Batches(batches), batch_size=None, shuffle=False, num_workers=0)
    trainer.fit(module, train_dataloaders=loader)
    return (len(batches) - warmup) / (timer.end - timer.start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="flava-tiny")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    module, model = make_module(args)
    batches = make_batches(model, args.steps, args.batch)
    seq = batches[0]["tokens"]["input_ids"].shape[1]
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    print(f"model {args.model} (text hidden {args.hidden}, {args.layers} layers, {trainable / 1e6:.2f}M trainable)")
    print(f"batch {args.batch} x ~{seq} tokens, {args.steps} steps ({args.warmup} warm-up), {args.threads} thread(s)")
    rates: dict[str, list[float]] = {"bare PyTorch": [], "Lightning": []}
    for _ in range(args.repeats):
        rates["bare PyTorch"].append(bare(copy.deepcopy(module), batches, args.warmup))
        rates["Lightning"].append(lightning(copy.deepcopy(module), batches, args.warmup))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{'loop':<14} {'steps/s (median)':>17} {'ms/step':>8}   runs")
    for name, values in rates.items():
        runs = " ".join(f"{v:.2f}" for v in values)
        print(f"{name:<14} {med[name]:>17.2f} {1000 / med[name]:>8.1f}   {runs}")
    ratio = med["bare PyTorch"] / med["Lightning"]
    print(f"Lightning overhead: {ratio:.3f}x the bare loop's time per step (target <= 1.10x)")


if __name__ == "__main__":
    main()
