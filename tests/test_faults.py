"""The fault catalogue: bad input and failing machines, and what mmbench must do about each.

Every `Fault` in CATALOGUE is made in a fresh copy of a small world (a dataset, results of the three protocols, their
feature, synthetic-data and fine-tuning caches; built once per module), then one command runs through
`mmbench.cli.main` in-process (in a subprocess where the fault needs a real file-size limit), and the test checks
- the exit status: one per error class (`mmbench.errors.EXIT_CODES`);
- one error line, no traceback, holding the expected words (the file or key at fault);
- that the world -- results and caches included -- is byte-for-byte unchanged (a cache may only gain entries),
  unless the entry is a recovery that rewrites something on purpose (`rewrites=True`; its `check` says what).
Adding a fault is one entry: the command, the exit status, the words, and a `make` function if the fault needs
setting up. Faults that need a real kill -9 are in `test_faults_processes.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mmbench.cli import main
from mmbench.errors import EXIT_CODES
from mmbench.results.store import read, result_path

# The three protocols on tiny data: zero-shot retrieval, a linear probe and a 2-step fine-tuning.
FLICKR = ("--model", "clip-tiny", "--task", "flickr30k", "--data-root", "{w}/data")
FLOWERS = ("--model", "clip-tiny", "--task", "flowers102", "--data", "synthetic", "--limit", "40")
SHORT = ("--set", "task.data.synthetic.finetune.max_steps=2", "--set", "task.data.synthetic.finetune.val_every_steps=1")
RTE = ("--model", "clip-tiny", "--task", "rte", "--data", "synthetic", "--limit", "16", *SHORT)
TABLE = ("table", "--results", "{w}/out", "--reported", str(Path(__file__).parents[1] / "results" / "reported"))


def run(*args: str) -> Callable[[Path], list[str]]:
    """`mmbench run` in world `w` (its results and cache; a later --output wins)."""
    base = ("run", "--no-progress", "--num-workers", "0", "--output", "{w}/out", "--cache-dir", "{w}/cache")
    return cmd(*base, *args)


def cmd(*args: str) -> Callable[[Path], list[str]]:
    return lambda w: [a.format(w=w) for a in args]


@dataclass
class Fault:
    name: str
    argv: Callable[[Path], list[str]]
    code: int  # expected exit status
    words: tuple[str, ...] = ()  # in the error line (in the log when code is 0); "{w}" is the world folder
    make: Callable[[Path], None] | None = None  # make the fault in world `w` before the command
    check: Callable[[Path], None] | None = None  # anything else that must hold afterwards
    rewrites: bool = False  # a recovery that rewrites results or caches (else the world must be unchanged)
    env: tuple[tuple[str, str], ...] = ()  # environment for the command ("{w}" formatted)
    during: Callable[[Path], object] | None = None  # a context manager around the command
    file_size_limit: int | None = None  # run in a subprocess whose files cannot grow past this many bytes


# --- making faults ---------------------------------------------------------------------------------------------------


def _write(rel: str, content: str | bytes) -> Callable[[Path], None]:
    def make(w: Path) -> None:
        path = w / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return make


def _edit_result(rel: str, **changes: object) -> Callable[[Path], None]:
    """Rewrite keys of a result file (still valid JSON): "scores.tr_r1" addresses a nested key."""

    def make(w: Path) -> None:
        path = w / "out" / "runs" / rel
        data = json.loads(path.read_text())
        for key, value in changes.items():
            *parents, leaf = key.split(".")
            node = data
            for p in parents:
                node = node[p]
            node[leaf] = value
        path.write_text(json.dumps(data))

    return make


def _corrupt_coco(w: Path) -> None:
    import webdataset as wds

    shutil.copytree(w / "data" / "flickr30k", w / "data" / "coco")
    with wds.TarWriter(str(w / "data" / "coco" / "test" / "0.tar")) as sink:
        sink.write({"__key__": "s0000000", "webp": b"garbage", "txt": "a caption"})


def _empty_split(w: Path) -> None:
    split = w / "data" / "flickr30k" / "test"
    for shard in split.glob("*.tar"):
        shard.unlink()
    tarfile.open(split / "0.tar", "w").close()  # a well-formed tar with no member
    (split / "nshards.txt").write_text("1\n")


def _karpathy_with_bad_json(w: Path) -> None:
    assert main(["data", "synth", "--task", "flickr30k", "--format", "karpathy", "--out", f"{w}/k/flickr30k"]) == 0
    (w / "k" / "flickr30k" / "dataset_flickr30k.json").write_text('{"images": [')


def _glue_with_bad_parquet(w: Path) -> None:
    generated = next((w / "cache" / "synthetic" / "rte").glob("glue-*"))
    shutil.copytree(generated, w / "g" / "glue")
    (w / "g" / "glue" / "rte" / "validation-00000-of-00001.parquet").write_bytes(b"PAR1 not really")


def _replace_data(w: Path) -> None:
    """The dataset repaired or replaced under the same path: other images, same layout and size."""
    from mmbench.config import Registry
    from mmbench.data import synthetic

    synthetic.write(Registry().task("flickr30k"), w / "data" / "flickr30k", n=12, seed=7)


def _stale_run_folder(w: Path) -> None:
    """A fine-tuning run folder whose data fingerprint no longer matches (made from other data)."""
    state = next((w / "cache" / "finetune" / "clip-tiny" / "rte").glob("*/state.json"))
    data = json.loads(state.read_text())
    state.write_text(json.dumps({**data, "fingerprint": "from other data"}))
    (state.parent / "left-over.txt").write_text("must go")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_checkpoint(w: Path) -> None:
    evil = _Evil()
    evil.marker = w / "pwned"
    torch.save({"model": evil}, w / "evil.pth")


def _users_folder(w: Path) -> None:
    (w / "mine").mkdir()
    (w / "mine" / "thesis.tex").write_text("years of work")


@contextmanager
def _read_only(w: Path, rel: str) -> Iterator[None]:
    """Make a folder unwritable: permission bits, or, for root (who ignores them), the immutable attribute."""
    folder = w / rel
    folder.chmod(0o555)
    immutable = os.access(folder, os.W_OK)
    if immutable and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        folder.chmod(0o755)
        pytest.skip("cannot make a folder read-only here (root without chattr)")
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


# --- what must hold afterwards ---------------------------------------------------------------------------------------


def _no_file(rel: str) -> Callable[[Path], None]:
    def check(w: Path) -> None:
        assert not (w / rel).exists(), f"{rel} exists"

    return check


def _no_temporaries(w: Path) -> None:
    left = [p for p in w.rglob("*") if p.name.endswith(".tmp")]
    assert not left, f"temporary files left behind: {left}"


def _no_dataset_nor_temporaries(w: Path) -> None:
    assert not (w / "new").exists()
    _no_temporaries(w)


def _valid_result(rel: str) -> Callable[[Path], None]:
    def check(w: Path) -> None:
        res = read(w / "out" / "runs" / rel)
        assert res.status == "ok" and res.n_samples > 0

    return check


def _recomputed_on_new_data(w: Path) -> None:
    res = read(w / "out" / "runs" / "clip-tiny" / "flickr30k.json")
    assert res.data_fingerprint != WORLD_FINGERPRINTS["flickr30k"] and res.data_fingerprint.startswith("sha256:")


def _run_folder_cleared(w: Path) -> None:
    state = next((w / "cache" / "finetune" / "clip-tiny" / "rte").glob("*/state.json"))
    assert not (state.parent / "left-over.txt").exists()
    assert json.loads(state.read_text())["fingerprint"] != "from other data"
    assert read(w / "out" / "runs" / "clip-tiny" / "rte.json").details["resumed_from_step"] == 0


def _replaced_synthetic(w: Path) -> None:
    assert json.loads((w / "data" / "flickr30k" / "SYNTHETIC.json").read_text())["n"] == 3


WORLD_FINGERPRINTS: dict[str, str] = {}

CATALOGUE = [
    # -- typos and bad values: exit 2, before any work ------------------------------------------------------------
    Fault("model name typo", run("--model", "clip-tinny", "--task", "flickr30k"), 2, ("'clip-tinny'", "'clip-tiny'")),
    Fault("task name typo", run("--model", "clip-tiny", "--task", "flicker30k"), 2, ("'flicker30k'", "'flickr30k'")),
    Fault("group name typo", run("--model", "clip-tiny", "--group", "retreival"), 2, ("'retreival'", "'retrieval'")),
    Fault("override without =", run(*FLICKR, "--set", "task.retrieval.chunk_size"), 2, ("expected KEY=VALUE",)),
    Fault("override scope typo", run(*FLICKR, "--set", "tsk.retrieval.chunk_size=3"), 2, ("'model.' or 'task.'",)),
    Fault(
        "nested task key typo",
        run(*FLICKR, "--set", "task.retrieval.chunk_sz=3"),
        2,
        ("flickr30k.yaml (with --set overrides): key 'retrieval.chunk_sz'", "did you mean 'retrieval.chunk_size'"),
    ),
    Fault(
        "nested model key typo",
        run(*FLICKR, "--set", "model.preprocess.image_sise=32"),
        2,
        ("clip-tiny.yaml", "key 'preprocess.image_sise'", "'preprocess.image_size'"),
    ),
    Fault("ill-typed override", run(*FLICKR, "--set", "task.retrieval.chunk_size=many"), 2, ("chunk_size", "'many'")),
    Fault(
        "zero chunk size",
        run(*FLICKR, "--set", "task.retrieval.chunk_size=0"),
        2,
        ("key 'retrieval.chunk_size': 0 is out of range (allowed: >= 1)",),
    ),
    Fault("k of 0", run(*FLICKR, "--set", "task.retrieval.ks=[0,5]"), 2, ("key 'retrieval.ks[0]'", ">= 1")),
    Fault(
        "hold-out fraction above 1",
        run(*FLOWERS, "--set", "task.linear_probe.holdout_fraction=1.5"),
        2,
        ("key 'linear_probe.holdout_fraction': 1.5 is out of range (allowed: in (0, 1))",),
    ),
    Fault("zero batch", run(*RTE, "--set", "task.finetune.batch_size=0"), 2, ("key 'finetune.batch_size'", ">= 1")),
    Fault(
        "unknown optimizer",
        run(*RTE, "--set", "task.finetune.optimizer=sgd"),
        2,
        ("key 'finetune.optimizer': 'sgd' is not one of adamw, adam",),
    ),
    Fault(
        "reader options for a format typo",
        run(*FLICKR, "--set", "task.data.options.wds_retreival.x=1"),
        2,
        ("key 'data.options.wds_retreival'", "did you mean 'data.options.wds_retrieval'"),
    ),
    Fault(
        "synthetic recipe key typo",
        run(*RTE, "--set", "task.data.synthetic.finetune.max_step=5"),
        2,
        ("key 'data.synthetic.finetune.max_step'", "'data.synthetic.finetune.max_steps'"),
    ),
    Fault(
        "synthetic writer option typo",
        run(*RTE, "--set", "task.data.synthetic.n_trian=5"),
        2,
        ("key 'data.synthetic.n_trian'", "'n_train'"),
    ),
    Fault(
        "preset finetune block typo",
        run("--model", "flamingo-tiny", "--task", "rte", "--set", "model.finetune.frozn=[model]"),
        2,
        ("flamingo-tiny.yaml", "key 'finetune.frozn'", "'finetune.frozen'"),
    ),
    Fault("zero --batch-size", run(*FLICKR, "--batch-size", "0"), 2, ("--batch-size 0",)),
    Fault(
        "YAML tag in a preset",
        run("--model", "evil", "--task", "flickr30k"),
        2,
        ("{w}/reg/models/evil.yaml:1: not valid YAML",),
        make=_write("reg/models/evil.yaml", "wrapper: !!python/object/apply:os.system ['touch pwned']\n"),
        check=_no_file("pwned"),
        env=(("MMBENCH_REGISTRY", "{w}/reg"),),
    ),
    Fault(
        "malformed YAML preset",
        run("--model", "broken", "--task", "flickr30k"),
        2,
        ("{w}/reg/models/broken.yaml:", "not valid YAML"),
        make=_write("reg/models/broken.yaml", "wrapper: a:B\npreprocess: {image_size: [32\n"),
        env=(("MMBENCH_REGISTRY", "{w}/reg"),),
    ),
    Fault("synth in an unknown format", cmd("data", "synth", "--task", "coco", "--out", "{w}/c", "--format", "x"), 2),
    # -- missing, corrupt or malformed data and result files: exit 3 ----------------------------------------------
    Fault(
        "missing dataset",
        run(*FLICKR, "--data-root", "{w}/nothing"),
        3,
        ("dataset not found at {w}/nothing/flickr30k", "nshards.txt", "--data-root"),
    ),
    Fault(
        "corrupt image in a shard",
        run("--model", "clip-tiny", "--task", "coco", "--data-root", "{w}/data"),
        3,
        ("{w}/data/coco/test/0.tar:s0000000.webp: cannot decode image",),
        make=_corrupt_coco,
        check=_no_file("out/runs/clip-tiny/coco.json"),
    ),
    Fault(
        "wrong nshards.txt",
        run(*FLICKR),
        3,
        ("{w}/data/flickr30k/test/nshards.txt: says 3 shards", "1.tar, 2.tar missing"),
        make=_write("data/flickr30k/test/nshards.txt", "3\n"),
    ),
    Fault(
        "empty split",
        run(*FLICKR),
        3,
        ("the 'test' split of {w}/data/flickr30k has no samples",),
        make=_empty_split,
    ),
    Fault(
        "malformed annotation JSON",
        run(*FLICKR, "--data-root", "{w}/k"),
        3,
        ("{w}/k/flickr30k/dataset_flickr30k.json: not valid JSON",),
        make=_karpathy_with_bad_json,
    ),
    Fault(
        "malformed parquet",
        run("--model", "clip-tiny", "--task", "rte", "--data-root", "{w}/g", "--limit", "16"),
        3,
        ("{w}/g/glue/rte/validation-00000-of-00001.parquet: not a readable parquet file",),
        make=_glue_with_bad_parquet,
    ),
    Fault(
        "corrupt result file in the table",
        cmd(*TABLE),
        3,
        ("{w}/out/runs/clip-tiny/flickr30k.json: not valid JSON",),
        make=_write("out/runs/clip-tiny/flickr30k.json", '{"schema_version": 2, "model": '),
    ),
    Fault(
        "wrong-typed result in the table",
        cmd(*TABLE),
        3,
        ("{w}/out/runs/clip-tiny/flowers102.json: key 'n_samples': '40' is not a count",),
        make=_edit_result("clip-tiny/flowers102.json", n_samples="40"),
    ),
    # -- checkpoints: exit 4 ---------------------------------------------------------------------------------------
    Fault(
        "malicious pickle as checkpoint",
        run(
            "--model",
            "beit3-tiny",
            "--task",
            "flickr30k",
            "--data-root",
            "{w}/data",
            "--set",
            "model.random_init=false",
            "--set",
            "model.checkpoint={w}/evil.pth",
        ),  # fmt: skip
        4,
        ("cannot read checkpoint {w}/evil.pth", "Weights only load failed"),
        make=_malicious_checkpoint,
        check=_no_file("pwned"),
    ),
    Fault(
        "missing checkpoint file",
        run(
            "--model",
            "beit3-tiny",
            "--task",
            "flickr30k",
            "--data-root",
            "{w}/data",
            "--set",
            "model.random_init=false",
            "--set",
            "model.checkpoint={w}/no.pth",
        ),  # fmt: skip
        4,
        ("{w}/no.pth does not exist",),
    ),
    # -- output that cannot be written: exit 5, named, found before the work, nothing left behind ------------------
    Fault(
        "--output is a file",
        run(*FLICKR, "--output", "{w}/afile"),
        5,
        ("cannot write result {w}/afile/runs/clip-tiny/flickr30k.json: {w}/afile is a file, not a folder",),
        make=_write("afile", "not a folder"),
    ),
    Fault(
        "read-only results folder",
        run(*FLICKR, "--redo"),
        5,
        ("cannot write result {w}/out/runs/clip-tiny/flickr30k.json",),
        during=lambda w: _read_only(w, "out/runs/clip-tiny"),
        check=_no_temporaries,
    ),
    Fault(
        "disk full when writing a result",
        run(*FLICKR, "--redo"),
        5,
        ("cannot write {w}/out/runs/clip-tiny/flickr30k.json: File too large",),
        file_size_limit=2048,  # the result is ~3 KB
        check=_no_temporaries,
    ),
    Fault(
        "disk full when writing the leaderboard",
        cmd(*TABLE, "--out", "{w}/out/LEADERBOARD.md"),
        5,
        ("cannot write {w}/out/LEADERBOARD.md: File too large",),
        file_size_limit=2048,
        check=_no_temporaries,
    ),
    Fault(
        "disk full when writing a synthetic dataset",
        cmd("data", "synth", "--task", "flickr30k", "--out", "{w}/new", "--n", "4"),
        5,
        ("cannot write synthetic dataset {w}/new: File too large",),
        file_size_limit=2048,
        check=_no_dataset_nor_temporaries,
    ),
    Fault(
        "synth over a user's folder",
        cmd("data", "synth", "--task", "flickr30k", "--out", "{w}/mine", "--n", "3"),
        5,
        ("refusing to replace {w}/mine", "not a synthetic dataset written by mmbench"),
        make=_users_folder,
    ),
    Fault(
        "synth over a file",
        cmd("data", "synth", "--task", "flickr30k", "--out", "{w}/afile", "--n", "3"),
        5,
        ("refusing to replace {w}/afile: it is a file",),
        make=_write("afile", "keep me"),
    ),
    # -- recoveries: exit 0 ------------------------------------------------------------------------------------------
    Fault("same data: up to date", run(*FLICKR), 0, ("flickr30k: up to date",)),
    Fault(
        "corrupt result file is re-run",
        run(*FLICKR),
        0,
        ("{w}/out/runs/clip-tiny/flickr30k.json: not valid JSON", "running the task again"),
        make=_write("out/runs/clip-tiny/flickr30k.json", "{"),
        check=_valid_result("clip-tiny/flickr30k.json"),
        rewrites=True,
    ),
    Fault(
        "wrong-typed result is re-run",
        run(*FLOWERS),
        0,
        ("flowers102.json: key 'scores.mean_per_class': '87.5' is not a finite number", "running the task again"),
        make=_edit_result("clip-tiny/flowers102.json", **{"scores.mean_per_class": "87.5"}),
        check=_valid_result("clip-tiny/flowers102.json"),
        rewrites=True,
    ),
    Fault(
        "replaced data is re-run",
        run(*FLICKR),
        0,
        ("computed on other data",),
        make=_replace_data,
        check=_recomputed_on_new_data,
        rewrites=True,
    ),
    Fault(
        "run folder from other data is cleared",
        run(*RTE, "--redo"),
        0,
        (),
        make=_stale_run_folder,
        check=_run_folder_cleared,
        rewrites=True,
    ),
    Fault(
        "synth over its own dataset",
        cmd("data", "synth", "--task", "flickr30k", "--out", "{w}/data/flickr30k", "--n", "3"),
        0,
        (),
        check=_replaced_synthetic,
        rewrites=True,
    ),
]


# --- the world and the runner ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Results of the three protocols with their caches (synthetic data, features, a fine-tuning run folder)."""
    w = tmp_path_factory.mktemp("world") / "w"
    assert main(["data", "synth", "--task", "flickr30k", "--out", str(w / "data" / "flickr30k"), "--n", "12"]) == 0
    for args in (FLICKR, FLOWERS, RTE):
        assert main(run(*args)(w)) == 0
    WORLD_FINGERPRINTS["flickr30k"] = read(result_path(w / "out", "clip-tiny", "flickr30k")).data_fingerprint
    return w


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _limit_file_size(n: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process (inherited by exec)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def _command(fault: Fault, w: Path, capsys, caplog) -> tuple[int, str, str]:
    """(exit status, error lines, log) of the fault's command."""
    argv = fault.argv(w)
    if fault.file_size_limit is not None:
        proc = subprocess.run(
            [sys.executable, "-m", "mmbench", *argv],
            preexec_fn=lambda: _limit_file_size(fault.file_size_limit),
            capture_output=True,
            text=True,
            timeout=600,
        )
        return proc.returncode, proc.stderr, proc.stderr
    with fault.during(w) if fault.during else nullcontext():
        rc = main(argv)
    err = capsys.readouterr().err
    return rc, err, err + caplog.text


@pytest.mark.parametrize("fault", CATALOGUE, ids=[f.name for f in CATALOGUE])
def test_fault(fault: Fault, world: Path, tmp_path: Path, monkeypatch, capsys, caplog):
    w = shutil.copytree(world, tmp_path / "w", symlinks=True)
    monkeypatch.chdir(tmp_path)  # nothing a command writes by accident lands in the checkout
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))  # subprocesses import this mmbench
    for key, value in fault.env:
        monkeypatch.setenv(key, value.format(w=w))
    if fault.make is not None:
        fault.make(w)
    before = _digest(w)
    capsys.readouterr()
    caplog.set_level("INFO", logger="mmbench")

    rc, err, log = _command(fault, w, capsys, caplog)

    assert rc == fault.code, f"exit {rc} ({EXIT_CODES.get(rc)}), expected {fault.code}:\n{err[-3000:]}"
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("mmbench: error:")]
    assert len(errors) == (1 if fault.code else 0), err[-3000:]
    text = errors[0] if fault.code else log
    for word in fault.words:
        assert word.format(w=w) in text, f"{word.format(w=w)!r} not in {text[-2000:]!r}"
    if not fault.rewrites:  # what was there is untouched; only a cache may gain entries (e.g. a tokenizer)
        after = _digest(w)
        assert {k: after.get(k) for k in before} == before, "the command changed the world it failed in"
        assert all(k.startswith("cache/") for k in set(after) - set(before)), sorted(set(after) - set(before))
    if fault.check is not None:
        fault.check(w)
