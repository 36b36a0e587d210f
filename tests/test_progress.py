"""Progress bars that read right: optimizer steps against the run's total, samples against the split's size where the
reader knows it (the bar's rendered text, captured from a real tiny run; no timings asserted)."""

from __future__ import annotations

import re

import pytest
from torch.utils.data import DataLoader

import mmbench
from mmbench import paths
from mmbench.data import IndexedStream, open_reader, synthetic
from mmbench.lit.trainer import rank_share

_FRAME_SPLIT = re.compile(r"[\r\n]+")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _frames(text: str) -> list[str]:
    """Every state a bar was drawn in (tqdm redraws in place with \\r and moves between bars with ANSI codes)."""
    return [f.strip() for f in _FRAME_SPLIT.split(_ANSI.sub("", text)) if f.strip()]


def _counts(frames: list[str], prefix: str) -> list[str]:
    """The `n/total` or `n` part of every frame of the bar named `prefix`."""
    pattern = re.compile(re.escape(prefix) + r": (?:step )?(\d+(?:/\d+)?)(?: samples)? ")
    return [m.group(1) for f in frames if (m := pattern.match(f))]


def test_fine_tuning_shows_steps_of_the_total_and_evaluation_shows_samples_of_the_split(tmp_path, capsys):
    mmbench.evaluate(
        "clip-tiny",
        ["rte", "flickr30k"],
        data="synthetic",
        limit=40,
        overrides=["task.data.synthetic.finetune.max_steps=4", "task.data.synthetic.finetune.val_every_steps=2"],
        output=tmp_path / "out",
        cache_dir=tmp_path / "cache",  # a fresh run folder: the fine-tuning really trains
        num_workers=0,
        progress=True,
    )
    frames = _frames(capsys.readouterr().out)
    # one bar for the whole run, counting optimizer steps up to max_steps: never Lightning's `Epoch 2/-2`
    steps = _counts(frames, "fine-tuning")
    assert steps[0] == "0/4" and steps[-1] == "4/4"
    assert sorted(set(steps), key=lambda s: int(s.split("/")[0])) == ["0/4", "1/4", "2/4", "3/4", "4/4"]
    # the stream's index knows the split's size (301); --limit 40 caps it; batches of 16 count 16, 32, 40
    assert _counts(frames, "validate rte validation")[-4:] == ["0/40", "16/40", "32/40", "40/40"]
    assert _counts(frames, "rte validation")[-1] == "40/40"
    # retrieval's shards are indexed (member offsets) before streaming, so they know their size too
    retrieval = _counts(frames, "flickr30k test")
    assert retrieval[0] == "0/40" and retrieval[-1] == "40/40"
    text = "\n".join(frames)
    assert "Epoch" not in text and "/?" not in text and "/-" not in text and "it/s" not in text


@pytest.mark.parametrize("workers", [0, 2])
def test_each_ranks_total_is_the_number_of_samples_its_stream_yields(workers):
    task = mmbench.config.Registry().task("rte")
    reader = open_reader(task, synthetic.ensure(task, paths.cache_dir()))
    for limit in (None, 100):
        for world in (1, 2, 3):
            for rank in range(world):
                stream = IndexedStream(reader, "validation", lambda rec: rec["index"], block_size=16, limit=limit)
                stream.set_partition(rank, world)
                streamed = sum(1 for _ in DataLoader(stream, batch_size=None, num_workers=workers))
                assert rank_share(stream, workers) == streamed, (limit, world, rank)
