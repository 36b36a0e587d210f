"""The rehearsal's data side (benchmarks/rehearsal.py): real-shape data for its tasks, and the data path's own
throughput per task (decode + transform + collate in the loader's workers, no model) with the model's transforms
and tokenizer.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple


def write_data(tasks: list[str], data_root: Path, n: int | dict[str, int], registry: Any) -> list[dict[str, Any]]:
    """Real-shape data for every task under `data_root/<dirname>` (GLUE configs share one folder), `n` records per
    split (or `n[task]`). Tasks that read the same files (vqav2 and vqav2_fewshot) get one copy, written with the
    largest `n` any of them asks for."""
    from mmbench.data import dataset_root, synthetic

    sizes = n if isinstance(n, dict) else dict.fromkeys(tasks, n)
    written: dict[Any, dict[str, Any]] = {}  # one folder (GLUE: one config) -> its writer's task and n
    for name in tasks:
        task = registry.task(name)
        key = (dataset_root(task, data_root), task.data.format, name if task.data.format == "glue" else None)
        if key not in written:
            written[key] = {"task": task, "n": sizes[name], "tasks": [name]}
        else:
            written[key]["n"] = max(written[key]["n"], sizes[name])
            written[key]["tasks"].append(name)
    rows = []
    for (target, fmt, _), job in written.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        staged = synthetic.write(
            job["task"], data_root.parent / "staging" / job["task"].name, n=job["n"], real_shape=True
        )
        if fmt == "glue":  # `<glue>/<config>/...`: move the config folder into the shared one
            target.mkdir(parents=True, exist_ok=True)
            for part in staged.iterdir():
                if not (target / part.name).exists():
                    part.rename(target / part.name)
        else:
            staged.rename(target)
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        rows.append({"task": ",".join(job["tasks"]), "format": fmt, "n": job["n"],
                     "seconds": time.perf_counter() - start, "mb": size / 2**20})  # fmt: skip
    shutil.rmtree(data_root.parent / "staging", ignore_errors=True)
    return rows


class DataPath(NamedTuple):
    rate: float  # samples/s (in-context: queries/s, each decoding its demonstrations' images and its own)
    problem: str | None  # a data-path failure a real run would meet, or None
    note: str = ""  # what the row's note gains (in-context: the prompts' lengths in the model's tokens)


def data_path(model: Any, task: Any, root: Path, spec: dict[str, Any]) -> DataPath:
    """The task's data path over its evaluated split, with the model's transforms and tokenizer. Fine-tuning also
    checks that the training table is lazy."""
    import torch
    from torch.utils.data import DataLoader

    from mmbench.data import IndexedStream, open_reader

    reader = open_reader(task, root)
    problem, prompts = None, []
    if task.protocol == "finetune":
        to_item, collate, problem = _finetune_items(model, task, reader)
    elif task.protocol == "incontext":
        to_item, collate = _incontext_items(model, task, reader, prompts)
    elif task.protocol == "retrieval":
        transform, k = model.image_transform(train=False), task.retrieval.captions_per_image

        def to_item(rec: dict[str, Any]) -> dict[str, Any]:
            return {"pixel_values": transform(rec["image"]), "captions": rec["captions"][:k]}

        def collate(items: list[dict[str, Any]]) -> Any:
            pixels = torch.stack([it["pixel_values"] for it in items])
            return pixels, model.tokenize([c for it in items for c in it["captions"]])
    else:
        transform = model.image_transform(train=False)

        def to_item(rec: dict[str, Any]) -> Any:
            return transform(rec["image"]), rec["label"]

        def collate(items: list[Any]) -> Any:
            return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

    stream = IndexedStream(reader, task.data.split, to_item, spec["batch"], limit=spec["n"])
    loader = DataLoader(stream, batch_size=spec["batch"], num_workers=spec["workers"], collate_fn=collate)
    count, start, first = 0, time.perf_counter(), None
    for batch in loader:
        size = len(batch["index"]) if isinstance(batch, dict) else len(batch[0])
        prompts += batch.get("prompt", []) if isinstance(batch, dict) else []
        if first is None:  # the first batch pays for starting the workers: steady state from the second on
            first, first_size = time.perf_counter(), size
        else:
            count += size
    end = time.perf_counter()
    rate = count / (end - first) if count else first_size / (end - start)
    return DataPath(rate, problem, prompt_lengths(model, prompts) if prompts else "")


def _finetune_items(model: Any, task: Any, reader: Any) -> tuple[Any, Any, str | None]:
    from mmbench.lit.finetune_data import Collate, item_fn
    from mmbench.protocols.finetune import effective_params, text_length

    p = effective_params(task, synthetic=False)
    problem = None
    if p.input == "pair" and reader.random_access(p.train_split) is None:
        problem = (
            f"data: the {reader.format} reader offers no random access, so fine-tuning holds the "
            f"{p.train_split!r} split in memory with every image decoded (grows with the dataset)"
        )
    transform = model.image_transform(train=False, image_size=p.image_size) if p.input == "pair" else None
    to_item = item_fn(p.head, p.input, task.data.split, transform)
    return to_item, Collate(model, p.head, text_length(p, model.cfg, model)["used"]), problem


def _incontext_items(model: Any, task: Any, reader: Any, prompts: list[str]) -> tuple[Any, Any]:
    """The protocol's own `PromptBuilder` (trial seed `incontext.seed`): per query, its demonstrations' records and
    images decoded and transformed with its own, the prompt built. The prompts come back in the batches (strings:
    tokenized after the clock stops)."""
    import torch

    from mmbench.data.prompts import PromptBuilder, effective_shots, query_set

    p = task.incontext
    train = reader.random_access(p.train_split)
    if train is None or len(train) == 0:
        raise ValueError(f"the {p.train_split!r} split has no random access or no records")
    builder = PromptBuilder(
        train=train, transform=model.image_transform(train=False), demonstration=p.demonstration, query=p.query,
        class_names=list(p.class_names), shots=p.shots, k=effective_shots(p.shots, p.zero_shot_text_demos),
        seed=p.seed, pool=query_set(len(train), p.query_set_size, p.seed),
    )  # fmt: skip

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"index": torch.tensor([it["index"] for it in items]), "prompt": [it["prompt"] for it in items],
                "images": [it["images"] for it in items]}  # fmt: skip

    return builder, collate


def prompt_tokens(model: Any, prompt: str) -> int:
    """The prompt's length in the tokens the model reads: IDEFICS's spelling (BOS, fake tokens around each image,
    "\\n" chunk ends) through the wrapper's own translation; the Flamingo presets spell the markers as the prompt
    does (`<image>`, `<|endofchunk|>`), so their tokenizer reads it as it is."""
    translate = getattr(model, "idefics_text", None)
    text = translate(prompt) if translate else prompt
    # Not verbose: the tokenizer's model_max_length is the preset's feature length (Flamingo: 128), not the context.
    return len(model.tokenizer(text, add_special_tokens=translate is None, verbose=False)["input_ids"])


def prompt_lengths(model: Any, prompts: list[str]) -> str:
    lengths = [prompt_tokens(model, p) for p in prompts]
    return f"prompts {min(lengths)}-{max(lengths)} tokens"
