"""The fault catalogue: bad input and failing machines, and what mmbench must do about each.

Every `Fault` is made in a fresh copy of a small world (datasets, results of the three protocols, their feature,
synthetic-data and fine-tuning caches; built once per session, `world`), then one command runs through
`mmbench.cli.main` in-process, and `check_fault` checks
- the exit status: one per error class (`mmbench.errors.EXIT_CODES`);
- one error line, no traceback, holding the expected words (the file or key at fault; on success, the log's);
- that the world -- results and caches included -- is byte-for-byte unchanged (a cache may only gain entries),
  except the paths a recovery rewrites on purpose (`rewrites`; its `check` says what they must hold).
Adding a fault is one entry: the command, the exit status, the words, and a `make` function if the fault needs
setting up. A full disk is a real file-size limit (RLIMIT_FSIZE, which binds root too) around the command. An entry
whose `defect` is set states what mmbench should do and does not yet: it runs as a strict xfail.

The catalogue is in three tables: bad names, keys, values, presets and registries, missing results folders and
preset checkpoints, unwritable output (this file: exit 2, 3, 4 and 5, before any work); damaged and missing data and
fine-tuning checkpoints (`test_faults_data.py`: exit 3, 4, 5); the recoveries (`test_faults_recovery.py`: exit 0).
Faults that need a real process -- kill -9, a dead writer's temporaries -- and the umask are in
`test_faults_processes.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mmbench.cli import main
from mmbench.errors import EXIT_CODES
from mmbench.results.schema import TaskResult
from mmbench.results.store import read, result_path

# The three protocols on tiny data: zero-shot retrieval, a linear probe and a 2-step fine-tuning. The probe's
# feature-cache entries (60-100 samples: 10-16 KB) are bigger than its result (~8 KB): a file-size limit between
# the two fails the cache and not the result.
FLICKR = ("--model", "clip-tiny", "--task", "flickr30k", "--data-root", "{w}/data")
FLOWERS = ("--model", "clip-tiny", "--task", "flowers102", "--data", "synthetic", "--limit", "100")
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
    check: Callable[[Path, str], None] | None = None  # (world, log): anything else that must hold afterwards
    rewrites: tuple[str, ...] = ()  # world paths (a trailing / for a folder) a recovery may rewrite or remove
    absent: tuple[str, ...] = ()  # words that must not be in the output
    env: tuple[tuple[str, str], ...] = ()  # environment for the command ("{w}" formatted)
    during: Callable[[Path], object] | None = None  # a context manager around the command
    file_size_limit: int | None = None  # no file can grow past this many bytes during the command (a full disk)
    defect: str | None = None  # what mmbench does instead today (see `KnownDefect`)


class KnownDefect(AssertionError):
    """What an entry with a `defect` finds wrong: its entry is a strict xfail that only this error satisfies, so
    every other expectation of the entry still has to hold (a wrong exit status is raised last, after them), and
    the entry fails once the defect is fixed, until its `defect` is removed."""


def params(catalogue: list[Fault]) -> list:
    """The entries as pytest parameters: named, and a known defect as a strict xfail."""
    return [
        pytest.param(
            f,
            id=f.name,
            marks=[pytest.mark.xfail(strict=True, raises=KnownDefect, reason=f.defect)] if f.defect else [],
        )
        for f in catalogue
    ]


# --- making faults ---------------------------------------------------------------------------------------------------


def write(rel: str, content: str | bytes) -> Callable[[Path], None]:
    def make(w: Path) -> None:
        path = w / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return make


def edit_result(rel: str, **changes: object) -> Callable[[Path], None]:
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


class Evil:
    """Unpickled, it would create `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_checkpoint(w: Path) -> None:
    torch.save({"model": Evil(w / "pwned")}, w / "evil.pth")


def _users_folder(w: Path) -> None:
    (w / "mine").mkdir()
    (w / "mine" / "thesis.tex").write_text("years of work")


def _registry_without_presets(w: Path) -> None:
    (w / "reg" / "notes").mkdir(parents=True)


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


@contextmanager
def file_size_limit(n: int) -> Iterator[None]:
    """No file of this process can grow past `n` bytes: the kernel refuses the bytes (EFBIG), as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def _limit_file_size(n: int) -> None:
    """`file_size_limit` for a subprocess about to start (a preexec_fn)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # inherited by exec
    resource.setrlimit(resource.RLIMIT_FSIZE, (n, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


# --- what must hold afterwards ---------------------------------------------------------------------------------------


def no_file(*rels: str) -> Callable[[Path, str], None]:
    def check(w: Path, log: str) -> None:
        for rel in rels:
            assert not (w / rel).exists(), f"{rel} exists"

    return check


def no_temporaries(w: Path, log: str = "") -> None:
    left = [p for p in w.rglob("*") if p.name.endswith(".tmp")]
    assert not left, f"temporary files left behind: {left}"


def _no_dataset_nor_temporaries(w: Path, log: str) -> None:
    assert not (w / "new").exists()
    no_temporaries(w)


# --- the world and the runner ----------------------------------------------------------------------------------------

WORLD: list[Path] = []


def build_world(tmp_path_factory) -> Path:
    """Results of the three protocols with their caches (synthetic data, features, a fine-tuning run folder), and a
    Karpathy-format Flickr30K; built once for every catalogue file (they only ever change copies)."""
    if not WORLD:
        w = tmp_path_factory.mktemp("world") / "w"
        synth = ("data", "synth", "--task", "flickr30k", "--out")
        assert main([*synth, str(w / "data" / "flickr30k"), "--n", "12"]) == 0
        assert main([*synth, str(w / "k" / "flickr30k"), "--n", "6", "--format", "karpathy"]) == 0
        for args in (FLICKR, FLOWERS, RTE):
            assert main(run(*args)(w)) == 0
        WORLD.append(w)
    return WORLD[0]


def world_result(model: str, task: str) -> TaskResult:
    """A result as the world holds it (before any fault)."""
    return read(result_path(WORLD[0] / "out", model, task))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_world(tmp_path_factory)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _under(rel: str, prefixes: tuple[str, ...]) -> bool:
    return any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in prefixes)


def check_fault(fault: Fault, world: Path, tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    w = shutil.copytree(world, tmp_path / "w", symlinks=True)
    monkeypatch.chdir(tmp_path)  # nothing a command writes by accident lands in the checkout
    for key, value in fault.env:
        monkeypatch.setenv(key, value.format(w=w))
    if fault.make is not None:
        fault.make(w)
    before = _digest(w)
    capsys.readouterr()
    caplog.clear()
    caplog.set_level("INFO", logger="mmbench")

    with ExitStack() as around:
        if fault.during is not None:
            around.enter_context(fault.during(w))
        if fault.file_size_limit is not None:
            around.enter_context(file_size_limit(fault.file_size_limit))
        rc = main(fault.argv(w))
    err = capsys.readouterr().err
    log = err + caplog.text

    wrong_code = f"exit {rc} ({EXIT_CODES.get(rc)}), expected {fault.code}:\n{err[-3000:]}"
    assert rc == fault.code or (fault.defect and bool(rc) == bool(fault.code)), wrong_code
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("mmbench: error:")]
    assert len(errors) == (1 if fault.code else 0), err[-3000:]
    text = errors[0] if fault.code else log
    for word in fault.words:
        assert word.format(w=w) in text, f"{word.format(w=w)!r} not in {text[-2000:]!r}"
    for word in fault.absent:
        assert word.format(w=w) not in log, f"{word.format(w=w)!r} in {log[-2000:]!r}"
    after = _digest(w)  # what was there is untouched but for the rewrites; only a cache may gain entries
    changed = sorted(k for k in before if after.get(k) != before[k] and not _under(k, fault.rewrites))
    assert not changed, f"the command changed the world it ran in: {changed}"
    gained = sorted(k for k in set(after) - set(before) if not (k.startswith("cache/") or _under(k, fault.rewrites)))
    assert not gained, f"the command left new files outside the cache: {gained}"
    if fault.check is not None:
        fault.check(w, log)
    if rc != fault.code:
        raise KnownDefect(wrong_code)


MMBENCH_REGISTRY = (("MMBENCH_REGISTRY", "{w}/reg"),)
BEIT3_FROM = (
    "--model",
    "beit3-tiny",
    "--task",
    "flickr30k",
    "--data-root",
    "{w}/data",
    "--set",
    "model.random_init=false",
)

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
    Fault(
        "typo inside a model arch block",
        run(*FLICKR, "--set", "model.arch.vision.hidden_sz=3"),
        2,
        ("clip-tiny.yaml", "'arch.vision.hidden_sz'", "'hidden_size'"),
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
        make=write("reg/models/evil.yaml", "wrapper: !!python/object/apply:os.system ['touch pwned']\n"),
        check=no_file("pwned"),
        env=MMBENCH_REGISTRY,
    ),
    Fault(
        "malformed YAML preset",
        run("--model", "broken", "--task", "flickr30k"),
        2,
        ("{w}/reg/models/broken.yaml:", "not valid YAML"),
        make=write("reg/models/broken.yaml", "wrapper: a:B\npreprocess: {image_size: [32\n"),
        env=MMBENCH_REGISTRY,
    ),
    Fault(
        "MMBENCH_REGISTRY folder missing",
        run(*FLICKR),
        2,
        ("MMBENCH_REGISTRY: {w}/reg is not a folder",),
        env=MMBENCH_REGISTRY,
    ),
    Fault(
        "MMBENCH_REGISTRY folder without presets",
        run(*FLICKR),
        2,
        ("MMBENCH_REGISTRY: {w}/reg holds neither models/ nor tasks/",),
        make=_registry_without_presets,
        env=MMBENCH_REGISTRY,
    ),
    Fault("synth in an unknown format", cmd("data", "synth", "--task", "coco", "--out", "{w}/c", "--format", "x"), 2),
    # -- results folders that are not there: exit 3 ------------------------------------------------------------------
    Fault(
        "table on a missing results folder",
        cmd("table", "--results", "{w}/nonexistent"),
        3,
        ("--results {w}/nonexistent: no such folder",),
        check=no_file("nonexistent"),
    ),
    Fault(
        "compare with a missing results folder",
        cmd("compare", "{w}/out", "{w}/nonexistent"),
        3,
        ("{w}/nonexistent: no such results folder",),
    ),
    # -- checkpoints given in a preset: exit 4 -----------------------------------------------------------------------
    Fault(
        "malicious pickle as checkpoint",
        run(*BEIT3_FROM, "--set", "model.checkpoint={w}/evil.pth"),
        4,
        ("cannot read checkpoint {w}/evil.pth", "Weights only load failed"),
        make=_malicious_checkpoint,
        check=no_file("pwned"),
    ),
    Fault(
        "missing checkpoint file",
        run(*BEIT3_FROM, "--set", "model.checkpoint={w}/no.pth"),
        4,
        ("{w}/no.pth does not exist",),
    ),
    Fault(
        "missing hub checkpoint offline",
        run(*FLICKR, "--set", "model.random_init=false", "--set", "model.checkpoint=nobody/not-a-real-clip"),
        4,
        ("nobody/not-a-real-clip", "HF_HUB_OFFLINE", "--set model.checkpoint="),
    ),
    # -- output that cannot be written: exit 5, named, found before the work, nothing left behind ------------------
    Fault(
        "--output is a file",
        run(*FLICKR, "--output", "{w}/afile"),
        5,
        ("cannot write result {w}/afile/runs/clip-tiny/flickr30k.json: {w}/afile is a file, not a folder",),
        make=write("afile", "not a folder"),
    ),
    Fault(
        "read-only results folder",
        run(*FLICKR, "--redo"),
        5,
        ("cannot write result {w}/out/runs/clip-tiny/flickr30k.json",),
        during=lambda w: _read_only(w, "out/runs/clip-tiny"),
        check=no_temporaries,
    ),
    Fault(
        "disk full when writing a result",
        run(*FLICKR, "--redo"),
        5,
        ("cannot write {w}/out/runs/clip-tiny/flickr30k.json: File too large",),
        file_size_limit=2048,  # the result is ~4 KB
        check=no_temporaries,
    ),
    Fault(
        "disk full when writing the leaderboard",
        cmd(*TABLE, "--out", "{w}/out/LEADERBOARD.md"),
        5,
        ("cannot write {w}/out/LEADERBOARD.md: File too large",),
        file_size_limit=2048,
        check=no_temporaries,
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
        make=write("afile", "keep me"),
    ),
]


@pytest.mark.parametrize("fault", params(CATALOGUE))
def test_fault(fault: Fault, world: Path, tmp_path: Path, monkeypatch, capsys, caplog):
    check_fault(fault, world, tmp_path, monkeypatch, capsys, caplog)
