"""An installed mmbench works like the checkout: the wheel carries the presets, tasks, groups, the Table-4 layout and
the paper's numbers, and finds them from outside the checkout.

Builds the wheel offline from a copy of the sources the build needs (so the checkout's build/ never leaks stale files
into it), installs it with `pip install --target`, and runs the installed `mmbench` with `python -S` and PYTHONPATH =
the target + the environment's site-packages: no .pth file (an editable install's points at the checkout) and no
checkout `src/` can be imported by mistake.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "src", "models", "tasks", "results/reported")
TINY = ("clip-tiny", "flava-tiny", "beit3-tiny", "flamingo-tiny")


def _pip(*args: str, cwd: Path) -> None:
    cmd = [sys.executable, "-m", "pip", *args, "--no-deps", "--no-index", "--quiet", "--disable-pip-version-check"]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The target folder the wheel was installed into."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    for name in BUILD_INPUTS:
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=ignore)
        else:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    _pip("wheel", "--no-build-isolation", "--wheel-dir", str(base / "dist"), str(source), cwd=base)
    (wheel,) = (base / "dist").glob("mmbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mmbench/registry/tasks/groups.yaml" in names and "mmbench/registry/reported/table4.yaml" in names
    target = base / "target"
    _pip("install", "--target", str(target), str(wheel), cwd=base)
    return target


def _mmbench(target: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    site = sysconfig.get_paths()["purelib"]
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MMBENCH_REGISTRY")}
    environ.update(PYTHONPATH=os.pathsep.join([str(target), site]), **env)
    # -S: no site-packages .pth files (the editable install's would put the checkout's src/ on the path)
    cmd = [sys.executable, "-S", str(target / "bin" / "mmbench"), *args]
    return subprocess.run(cmd, cwd=cwd, env=environ, capture_output=True, text=True, timeout=300)


def _outside(tmp_path: Path) -> Path:
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    return cwd


def test_installed_wheel_imports_from_the_target_and_ships_the_registry(installed, tmp_path):
    code = "import mmbench, mmbench.config as c; r = c.builtin_registry(); print(mmbench.__file__, r.root, r.packaged)"
    done = _mmbench(installed, cwd=_outside(tmp_path))  # the script itself with no arguments: usage, exit 2
    assert done.returncode == 2 and "usage: mmbench" in done.stderr
    site = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), site])}
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    module, root, packaged = out.stdout.split()
    assert Path(module).is_relative_to(installed) and not Path(module).is_relative_to(REPO)
    assert Path(root) == installed / "mmbench" / "registry" and packaged == "True"


def _presets(listing: str) -> list[str]:
    """The preset lines of `mmbench list models`: up to the blank line before its "Any model by id" part."""
    lines = listing.splitlines()
    assert "" in lines and lines[lines.index("") + 1].startswith("Any model by id"), listing
    return lines[: lines.index("")]


def test_installed_mmbench_lists_every_preset_and_task_from_outside_the_checkout(installed, tmp_path):
    cwd = _outside(tmp_path)
    models = _mmbench(installed, "list", "models", cwd=cwd)
    assert models.returncode == 0, models.stderr
    listed = sorted(line.split()[0] for line in _presets(models.stdout))
    assert listed == sorted(p.stem for p in (REPO / "models").glob("*.yaml"))
    tasks = _mmbench(installed, "list", "tasks", cwd=cwd)
    assert tasks.returncode == 0, tasks.stderr
    listed = sorted(line.split()[0] for line in tasks.stdout.splitlines())
    assert listed == sorted(p.stem for p in (REPO / "tasks").glob("*/*.yaml") if not p.stem.startswith("_"))
    groups = _mmbench(installed, "list", "groups", cwd=cwd)
    assert "flava35       35 tasks" in groups.stdout


def test_installed_mmbench_runs_a_synthetic_task_and_renders_its_table(installed, tmp_path):
    cwd = _outside(tmp_path)
    cache = str(tmp_path / "cache")
    run = _mmbench(
        installed, "run", "--model", "clip-tiny", "--task", "flickr30k", "--data", "synthetic", "--limit", "16",
        "--output", "out", "--no-progress", cwd=cwd, MMBENCH_CACHE=cache,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads((cwd / "out" / "runs" / "clip-tiny" / "flickr30k.json").read_text())
    assert result["status"] == "ok" and result["n_samples"] == 16 and result["data_source"] == "synthetic"
    # the table of a fresh results folder, with the paper's columns from the installed package
    table = _mmbench(installed, "table", "--results", "out", cwd=cwd)
    assert table.returncode == 0, table.stderr
    board = (cwd / "out" / "LEADERBOARD.md").read_text()
    assert "| FLAVA (paper) |" in board and "clip-tiny (synthetic, limit 16, random init)" in board


def test_mmbench_registry_adds_a_users_preset_to_the_installed_ones(installed, tmp_path):
    user = tmp_path / "mine"
    (user / "models").mkdir(parents=True)
    base = (REPO / "models" / "clip-tiny.yaml").read_text()
    (user / "models" / "my-clip.yaml").write_text(base)
    cwd = _outside(tmp_path)
    listed = _mmbench(installed, "list", "models", cwd=cwd, MMBENCH_REGISTRY=str(user))
    assert listed.returncode == 0, listed.stderr
    names = {line.split()[0] for line in _presets(listed.stdout)}
    assert names == {"my-clip", *(p.stem for p in (REPO / "models").glob("*.yaml"))}
    typo = _mmbench(installed, "list", "models", cwd=cwd, MMBENCH_REGISTRY=str(tmp_path / "mnie"))
    assert typo.returncode == 2 and f"MMBENCH_REGISTRY: {tmp_path / 'mnie'} is not a folder" in typo.stderr
    assert set(TINY) <= names
