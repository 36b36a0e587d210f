"""`--strategy fsdp`: Lightning's `FSDPStrategy` (PyTorch FSDP, FULL_SHARD) with the suite's choices.

- Units: the wrapper's `fsdp_wrap_modules()` (`mmbench.models.base`; by default its transformer blocks), each
  gathered whole only while it runs, so one device holds one block's full parameters plus its shard of the rest.
- `use_orig_params=True`: parameters keep their names (weight-decay groups, `freeze_for_finetuning`), and frozen and
  trainable parameters may share a unit.
- Checkpoints are FULL state dicts (rank 0 writes one file: the model by name, the optimizer by parameter id), so a
  run resumes under another number of processes or nodes, FSDP or not.
- CPU: Lightning refuses the `"fsdp"` name without a GPU; PyTorch's FSDP itself runs on CPU over gloo, which is how
  the tests run it. This strategy does not refuse it.

FSDP wraps modules in place, so a model it has wrapped is not set up again: `unwrap` returns every unit's module
with its full parameters (collective: every rank calls it) when a Trainer is done with it.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from mmbench.errors import ConfigError
from mmbench.models.base import ModelWrapper


def wrap_modules(module: nn.Module) -> set[type[nn.Module]]:
    """The union of the `fsdp_wrap_modules()` of every wrapper inside `module` (a LightningModule)."""
    classes: set[type[nn.Module]] = set()
    for m in module.modules():
        if isinstance(m, ModelWrapper):
            classes |= set(m.fsdp_wrap_modules())
    return classes


class ShardedStrategy(FSDPStrategy):
    """FSDP with the wrappers' own units, FULL checkpoints and gloo on CPU (see the module docstring)."""

    strategy_name = "mmbench_fsdp"

    def __init__(self, **kwargs: Any):
        super().__init__(state_dict_type="full", use_orig_params=True, **kwargs)

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        classes = wrap_modules(model)
        policy = {"auto_wrap_policy": ModuleWrapPolicy(classes)} if classes else {}
        # FSDP cannot shard a 0-d parameter (FLAVA's and CLIP's `logit_scale`): each rank keeps its own copy,
        # which stays equal only while nothing trains it.
        scalars = [(n, p) for n, p in model.named_parameters() if p.ndim == 0]
        training = self.lightning_module.trainer.state.fn == "fit"
        trained = [n for n, p in scalars if p.requires_grad and training]
        if trained:
            raise ConfigError(f"--strategy fsdp: cannot train the 0-d parameter {trained[0]!r} (FSDP shards tensors)")
        policy["ignored_states"] = [p for _, p in scalars]
        # The device as a `torch.device`, not Lightning's index: with None PyTorch looks for an accelerator and
        # refuses a CPU run, which it supports when told.
        return FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=self.root_device,
            **policy,
            **self.kwargs,
        )

    def teardown(self) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        if isinstance(self.model, FSDP):  # before Lightning moves the module: the shards are still FSDP's
            unwrap(self.model)
            self.model = self.lightning_module
        super().teardown()


def unwrap(root: nn.Module) -> None:
    """Undo FSDP's in-place wrapping of `root`'s module tree: every unit's inner module goes back in its place,
    holding its full, unsharded parameters (on CPU when they were on a GPU, one unit at a time, so no device ever
    holds the whole model). Every rank calls it (the parameters are all-gathered)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp._flat_param import FlatParameter

    units = [m for m in root.modules() if isinstance(m, FSDP)]
    for unit in reversed(units):  # innermost first: `recurse=False` gathers this unit's own parameters only
        offload = any(p.is_cuda for p in unit.parameters(recurse=False))
        with FSDP.summon_full_params(unit, recurse=False, writeback=False, offload_to_cpu=offload):
            full = [
                (m, name, p.detach().clone(), p.requires_grad)
                for m in _own_modules(unit)
                for name, p in m.named_parameters(recurse=False)
                if not isinstance(p, FlatParameter)
            ]
        for m, name, value, requires_grad in full:
            setattr(m, name, nn.Parameter(value, requires_grad=requires_grad))
    for m in [root, *root.modules()]:
        for child_name, child in list(m.named_children()):
            if isinstance(child, FSDP):
                setattr(m, child_name, _inner(child))


def _own_modules(unit: nn.Module) -> list[nn.Module]:
    """The modules whose parameters `unit` manages: its subtree, without nested units' subtrees."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    out, stack = [], [unit.module]
    while stack:
        m = stack.pop()
        out.append(m)
        stack.extend(c for c in m.children() if not isinstance(c, FSDP))
    return out


def _inner(unit: nn.Module) -> nn.Module:
    inner = unit.module
    while hasattr(inner, "_checkpoint_wrapped_module"):  # activation checkpointing's wrapper, if any
        inner = inner._checkpoint_wrapped_module
    return inner


def is_sharded(trainer: Any) -> bool:
    return isinstance(getattr(trainer, "strategy", None), FSDPStrategy)


def full_state_dict(trainer: Any, module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict with full tensors: under FSDP gathered (a collective: every rank calls; rank 0
    gets the tensors), otherwise the module's own."""
    if is_sharded(trainer) and trainer.strategy.model is not module:
        return trainer.strategy.lightning_module_state_dict()
    return module.state_dict()
