"""The fault catalogue, the faults that need real processes (the tables are `test_faults*.py`): a kill -9 in the
middle of writing, the temporaries a dead writer leaves, a file-size limit on a process of its own (a full disk,
which binds root too) -- and the permissions of what mmbench writes under a given umask.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_faults import _limit_file_size, run

from mmbench import paths
from mmbench.cli import main
from mmbench.errors import EXIT_CODES
from mmbench.results.store import read, result_path


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_removed_only_when_their_writer_is_gone(tmp_path):
    target, host, dead = tmp_path / "x.json", socket.gethostname(), _dead_pid()
    names = {
        "dead writer here": f".x.json.{host}.{dead}.0123abcd.tmp",
        "old, elsewhere": f".x.json.elsewhere.{dead}.89abcdef.tmp",
        "live writer (this process)": paths.temp_path(target).name,
        "recent, elsewhere": f".x.json.elsewhere.{dead}.0123abcd.tmp",
        "a user's backup": ".x.json.bak",
        "a user's .tmp": "x.json.tmp",
        "another file's": f".y.json.{host}.{dead}.0123abcd.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_text("x")
    two_days = time.time() - 2 * 24 * 3600
    os.utime(tmp_path / names["old, elsewhere"], (two_days, two_days))

    paths.atomic_write_text(target, "{}")

    gone = {what for what, name in names.items() if not (tmp_path / name).exists()}
    assert gone == {"dead writer here", "old, elsewhere"}
    assert target.read_text() == "{}"


def test_kill_during_synthetic_generation_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    out = tmp_path / "coco"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmbench", "data", "synth", "--task", "coco", "--out", str(out), "--n", "3000"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not any(p.is_file() for p in tmp_path.glob(".coco.*/*/*")):  # shards are being written
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no shard written in 300 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (killed,) = tmp_path.glob(".coco.*")
    assert not out.exists()

    live = paths.temp_path(out)  # a writer still at work (this process): not touched
    live.mkdir()
    assert main(["data", "synth", "--task", "coco", "--out", str(out), "--n", "4"]) == 0
    assert not killed.exists() and live.is_dir()
    assert json.loads((out / "SYNTHETIC.json").read_text())["n"] == 4


def test_kill_then_resume_of_a_synthetic_finetune_run(tmp_path):
    """kill -9 once the first checkpoint is written; the same command resumes from it and finishes."""
    steps = (
        "--set",
        "task.data.synthetic.finetune.max_steps=20",
        "--set",
        "task.data.synthetic.finetune.val_every_steps=10",
    )
    argv = run("--model", "clip-tiny", "--task", "rte", "--data", "synthetic", "--limit", "64", *steps)(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmbench", *argv],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stderr=subprocess.PIPE,
        text=True,
    )
    folder = tmp_path / "cache" / "finetune" / "clip-tiny" / "rte"
    deadline = time.monotonic() + 300
    while not list(folder.glob("*/last.ckpt")):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint written in 300 s"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not result_path(tmp_path / "out", "clip-tiny", "rte").exists()

    assert main(argv) == 0
    res = read(result_path(tmp_path / "out", "clip-tiny", "rte"))
    assert res.details["resumed_from_step"] >= 10 and res.details["val_history"][-1]["step"] == 20


def test_disk_full_names_the_file_and_leaves_no_temporary(tmp_path):
    """A real failed write (RLIMIT_FSIZE, which binds root too): text, and torch.save through `atomic_save`."""
    script = (
        "import sys, torch\n"
        "from mmbench import paths\n"
        "from mmbench.errors import OutputError\n"
        "for write in (lambda p: paths.atomic_write_text(p, 'x' * 10000),\n"
        "              lambda p: paths.atomic_save(p, {'w': torch.zeros(10000)})):\n"
        "    try:\n"
        "        write(sys.argv[1])\n"
        "    except OutputError as e:\n"
        "        print(e)\n"
    )
    target = tmp_path / "r" / "result.json"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(target)],
        preexec_fn=lambda: _limit_file_size(4096),
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [f"cannot write {target}: File too large"] * 2
    assert list(target.parent.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_and_folders_respect_the_umask(tmp_path, registry, umask):
    """Results, caches and datasets get 0666/0777 less the umask, as any program's files (not mkstemp's 0600)."""
    from mmbench.data import synthetic

    saved = os.umask(umask)
    try:
        synthetic.write(registry.task("flickr30k"), tmp_path / "data", n=3)
        paths.atomic_write_text(tmp_path / "out" / "runs" / "m" / "t.json", "{}")
        paths.atomic_save(tmp_path / "cache" / "features" / "e.pt", {"w": torch.zeros(2)})
    finally:
        os.umask(saved)
    made = [p for p in tmp_path.rglob("*")]
    assert len(made) > 8
    for p in made:
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert p.stat().st_mode & 0o777 == want, f"{p}: {oct(p.stat().st_mode & 0o777)}, expected {oct(want)}"


def test_exit_codes_are_documented(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    usage = capsys.readouterr().out
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for code in EXIT_CODES:
        assert f"  {code:>3}  " in usage and f"| {code} |" in readme
