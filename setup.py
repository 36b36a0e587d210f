"""Build hook: the wheel carries the registry as package data, `mmbench/registry/{models,tasks,reported}`.

The checkout keeps presets, tasks and the paper's numbers in the top-level folders the design names (`models/`,
`tasks/`, `results/reported/`); copying them into the package at build time ships them without a second committed
copy. `mmbench.config.builtin_registry` finds them through `importlib.resources` once installed, and in the
checkout when running from it (an editable install reads the checkout in place, so nothing is copied then).
Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# folder inside mmbench/registry/ -> (checkout folder, globs of the files to ship)
REGISTRY = {
    "models": ("models", ("*.yaml",)),
    "tasks": ("tasks", ("*.yaml", "*/*.yaml", "*/zeroshot/*.yaml")),  # zeroshot/: prompt files tasks include
    "reported": ("results/reported", ("*.yaml", "*.json")),
}


class BuildPyWithRegistry(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "mmbench" / "registry"
        shutil.rmtree(target, ignore_errors=True)  # a file deleted from the checkout must not linger in build/
        for name, (folder, patterns) in REGISTRY.items():
            source = HERE / folder
            files = sorted({p for pattern in patterns for p in source.glob(pattern)})
            if not files:
                raise SystemExit(f"setup.py: no registry files in {source} (the sdist must include {folder}/)")
            for path in files:
                dest = target / name / path.relative_to(source)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)


setup(cmdclass={"build_py": BuildPyWithRegistry})
