"""Load, merge and validate the registries: `models/*.yaml`, `tasks/**/*.yaml` and `tasks/groups.yaml`.

Registries are data discovered by glob. A model's name is its file stem; a task's name is its file stem and its
domain is its folder. Files whose name starts with `_` are bases for `include:` and not entries themselves.
Every error names the file and the key.

Where the registries are found (`default_registry_roots`): the folders of `$MMBENCH_REGISTRY`, then the built-in
registry, which an installed wheel carries as package data (`mmbench/registry/`, built from the checkout's top-level
folders by setup.py) and a source checkout holds at its top level.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from mmbench.errors import ConfigError, UnknownNameError
from mmbench.schema import DOMAINS, PROTOCOLS, RERANK_OFF, FinetuneParams, ModelConfig, TaskConfig, out_of_range

_HASH_EXCLUDED_MODEL_KEYS = ("description",)
_SPEC_ONLY_MODEL_KEYS = ("source_id",)  # recorded (and hashed) only when a model spec set them (see models/specs.py)
# What a task asks a scheduler for (`resources`) is not what it computes: a longer time limit keeps its results.
_HASH_EXCLUDED_TASK_KEYS = ("description", "display_name", "score_labels", "resources")
MODEL_FINETUNE_KEYS = ("frozen",)  # the keys of a preset's free-form `finetune` block (see models.base)


@dataclass(frozen=True)
class BuiltinRegistry:
    """The registry that comes with mmbench: presets and tasks under `root` (`models/`, `tasks/`) and the
    leaderboard's Table-4 layout and the paper's numbers in `reported`."""

    root: Path
    reported: Path
    packaged: bool  # True: shipped inside the installed package; False: the source checkout's folders


def builtin_registry() -> BuiltinRegistry | None:
    """Where the built-in registry lives: inside the installed package (`mmbench/registry/`, copied there from the
    checkout's top-level `models/`, `tasks/` and `results/reported/` when a wheel is built, see setup.py), or, when
    running from a source checkout (editable install or PYTHONPATH=src), the checkout's own folders. None: neither."""
    packaged = resources.files("mmbench") / "registry"
    # pip installs a wheel as files on disk; a registry inside a zip archive is not supported (globs need folders).
    if isinstance(packaged, Path) and (packaged / "models").is_dir() and (packaged / "tasks").is_dir():
        return BuiltinRegistry(packaged, packaged / "reported", packaged=True)
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "models").is_dir() and (checkout / "tasks").is_dir():
        return BuiltinRegistry(checkout, checkout / "results" / "reported", packaged=False)
    return None


def default_registry_roots() -> list[Path]:
    """The folders of `$MMBENCH_REGISTRY` (os.pathsep-separated; each holds `models/` and/or `tasks/`), then the
    built-in registry. Earlier roots shadow later ones, so a user's `clip.yaml` replaces the shipped preset."""
    roots: list[Path] = []
    for entry in os.environ.get("MMBENCH_REGISTRY", "").split(os.pathsep):
        if not entry:
            continue
        root = Path(entry).expanduser()
        if not root.is_dir():
            raise ConfigError(f"MMBENCH_REGISTRY: {root} is not a folder")
        if not (root / "models").is_dir() and not (root / "tasks").is_dir():
            raise ConfigError(
                f"MMBENCH_REGISTRY: {root} holds neither models/ nor tasks/ (expected models/*.yaml, "
                "tasks/<domain>/*.yaml)"
            )
        roots.append(root)
    builtin = builtin_registry()
    if builtin is not None:
        roots.append(builtin.root)
    return roots


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _with_includes(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's mapping merged over the files it names in `include:` (a path or a list, relative to it)."""
    if path in seen:
        raise ConfigError(f"{path}: include cycle through {' -> '.join(str(p) for p in seen)}")
    data = _read_yaml(path)
    includes = data.pop("include", [])
    includes = [includes] if isinstance(includes, str) else includes
    merged: dict[str, Any] = {}
    for inc in includes:
        inc_path = (path.parent / inc).resolve()
        if not inc_path.is_file():
            raise ConfigError(f"{path}: key 'include': no such file {inc_path}")
        merged = _deep_merge(merged, _with_includes(inc_path, seen + (path,)))
    return _deep_merge(merged, data)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _validate(schema: type, data: dict[str, Any], where: str, prefix: str = "") -> Any:
    """Merge `data` into the structured config `schema`; any unknown, ill-typed or out-of-range key names `where`
    and the full key, `prefix` + its path in `schema` (unknown keys with their close matches)."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), data)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"{where}: missing required key {missing[0]!r}")
        obj = OmegaConf.to_object(cfg)
    except ConfigKeyError as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{where}: {_unknown_key(prefix + key, _schema_fields(schema, key))}") from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        reason = str(e).splitlines()[0]
        raise ConfigError(f"{where}: key {prefix + key!r}: {reason}") from None
    bad = out_of_range(obj)
    if bad:
        raise ConfigError(f"{where}: key {prefix + bad[0]!r}: {bad[1]}")
    if isinstance(obj, ModelConfig):
        _check_free_keys(obj.finetune, "finetune", list(MODEL_FINETUNE_KEYS), where)
    elif isinstance(obj, TaskConfig):
        _check_task_blocks(obj, where)
    return obj


def _schema_fields(schema: type, full_key: str) -> list[str]:
    """The field names of the (nested) dataclass that holds `full_key`, e.g. RetrievalParams' for
    'retrieval.chunk_sz'; [] when the path leaves the typed part."""
    cls: Any = schema
    for part in full_key.split(".")[:-1]:
        cls = typing.get_type_hints(cls).get(part) if dataclasses.is_dataclass(cls) else None
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def _unknown_key(full_key: str, known: list[str]) -> str:
    """ "key 'a.b_typo': unknown; did you mean 'a.b'?" (close matches by difflib, with their full key)."""
    parent, _, leaf = full_key.rpartition(".")
    close = difflib.get_close_matches(leaf, known, n=3, cutoff=0.6)
    full = [f"{parent}.{c}" if parent else c for c in close]
    hint = f"; did you mean {', '.join(repr(c) for c in full)}?" if close else f" (known: {', '.join(known)})"
    return f"key {full_key!r}: unknown{hint}"


def parse_overrides(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """`["model.max_text_length=64", "task.retrieval.chunk_size=256"]` -> {"model": {...}, "task": {...}}."""
    out: dict[str, dict[str, Any]] = {"model": {}, "task": {}}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. task.retrieval.chunk_size=256")
        key, value = item.split("=", 1)
        scope, _, rest = key.strip().partition(".")
        if scope not in out or not rest:
            raise ConfigError(f"override {item!r}: the key must start with 'model.' or 'task.'")
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"{rest}={value}"]))
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {item!r}: {str(e).splitlines()[0]}") from None
        out[scope] = _deep_merge(out[scope], parsed)
    return out


@dataclass
class Registry:
    """Every model preset, task and group found under the registry roots."""

    roots: list[Path] = field(default_factory=default_registry_roots)

    @cached_property
    def model_files(self) -> dict[str, Path]:
        return self._discover("models", "*.yaml")

    @cached_property
    def task_files(self) -> dict[str, Path]:
        found = self._discover("tasks", "*/*.yaml")
        for path in found.values():
            if path.parent.name not in DOMAINS:
                raise ConfigError(f"{path}: tasks live in tasks/<domain>/ with domain one of {', '.join(DOMAINS)}")
        return found

    @cached_property
    def groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for root in self.roots:
            path = root / "tasks" / "groups.yaml"
            if not path.is_file():
                continue
            for name, members in _read_yaml(path).items():
                if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
                    raise ConfigError(f"{path}: key {name!r}: expected a list of task names")
                groups.setdefault(str(name), members)
        return groups

    def _discover(self, folder: str, pattern: str) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for root in self.roots:
            for path in sorted((root / folder).glob(pattern)):
                if not path.name.startswith("_"):
                    found.setdefault(path.stem, path)  # earlier roots shadow later ones
        return found

    def model(self, name: str, overrides: dict[str, Any] | None = None, *, check: bool = True) -> ModelConfig:
        """The validated preset, or what a model spec resolves to when `name` is no preset: `hf:<id|dir>[@rev]`,
        `timm:<name>`, `open_clip:<arch>[/<tag>]`, a YAML file outside the registry or a plug-in's entry point
        (`models.specs`). `check=False` skips the wrapper's own checks of `arch` (they import torch and the model
        library: seconds), for listings of the committed presets, which tests check in full."""
        path = self.model_files.get(name)
        if path is not None:
            data, where = _with_includes(path), str(path)
        else:
            from mmbench.models.specs import resolve_spec

            spec = resolve_spec(name, self.model_files, overrides or {})
            data, where, name = spec.data, spec.where, spec.name
            overrides = {k: v for k, v in (overrides or {}).items() if k not in spec.consumed}
        data["name"] = name
        cfg = _validate(ModelConfig, data, where)
        if overrides:
            cfg = _validate(ModelConfig, _deep_merge(to_dict(cfg), overrides), f"{where} (with --set overrides)")
        if not check:
            return cfg
        from mmbench.models import wrapper_class  # the wrapper checks what the schema cannot (keys inside `arch`)

        try:
            wrapper_class(cfg).check_config(cfg)
        except ConfigError as e:
            raise ConfigError(f"{where}{' (with --set overrides)' if overrides else ''}: {e}") from None
        return cfg

    def task(self, name: str, overrides: dict[str, Any] | None = None) -> TaskConfig:
        path = self.task_files.get(name)
        if path is None:
            raise UnknownNameError("task", name, self.task_files)
        data = _with_includes(path)
        domain = path.parent.name
        if data.setdefault("domain", domain) != domain:
            raise ConfigError(f"{path}: key 'domain': {data['domain']!r} but the file lives in tasks/{domain}/")
        data["name"] = name
        cfg = _validate(TaskConfig, data, str(path))
        if overrides:
            cfg = _validate(TaskConfig, _deep_merge(to_dict(cfg), overrides), f"{path} (with --set overrides)")
        _check_task(cfg, str(path))
        return cfg

    def expand(self, tasks: list[str] = (), groups: list[str] = ()) -> list[str]:
        """Task names in the order given, groups expanded, duplicates dropped; unknown names raise."""
        names: list[str] = []
        for g in groups:
            if g not in self.groups:
                raise UnknownNameError("group", g, self.groups)
            names.extend(self.groups[g])
        names.extend(tasks)
        for n in names:
            if n not in self.task_files:
                raise UnknownNameError("task", n, self.task_files)
        return list(dict.fromkeys(names))


def _check_free_keys(block: dict[str, Any], prefix: str, known: list[str], where: str) -> None:
    """A free-form mapping (its keys are not fields) whose keys must still be among `known`."""
    for key in block:
        if key not in known:
            raise ConfigError(f"{where}: {_unknown_key(f'{prefix}.{key}', known)}")


def _check_task_blocks(cfg: TaskConfig, where: str) -> None:
    """The free-form blocks whose keys mmbench knows: reader options per format, synthetic sub-blocks per format
    and the synthetic fine-tuning recipe (a FinetuneParams override). The options inside a reader's block are the
    reader's to check, a writer's the writer's (`synthetic.check_options`); score labels may outlive an override
    of `metrics`, so they are not checked."""
    formats = [cfg.data.format, *cfg.data.alt_formats]
    _check_free_keys(cfg.data.options, "data.options", formats, where)
    for key, value in cfg.data.synthetic.items():
        if isinstance(value, dict):
            _check_free_keys({key: value}, "data.synthetic", [*formats, "finetune"], where)
    recipe = cfg.data.synthetic.get("finetune")
    if isinstance(recipe, dict):
        _validate(FinetuneParams, _deep_merge(to_dict(cfg.finetune), recipe), where, "data.synthetic.finetune.")


def _check_task(cfg: TaskConfig, where: str) -> None:
    if cfg.protocol not in PROTOCOLS:
        raise ConfigError(f"{where}: key 'protocol': {cfg.protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if cfg.primary not in cfg.metrics:
        raise ConfigError(f"{where}: key 'primary': {cfg.primary!r} is not among metrics {cfg.metrics}")
    for s in cfg.scores:
        if s not in cfg.metrics:
            raise ConfigError(f"{where}: key 'scores': {s!r} is not among metrics {cfg.metrics}")
    if cfg.protocol == "incontext":
        for key in ("demonstration", "query"):
            if not getattr(cfg.incontext, key):
                raise ConfigError(f"{where}: key 'incontext.{key}': empty (the prompt format is required)")


def to_dict(cfg: Any) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg)) if not isinstance(cfg, DictConfig) else dict(cfg)


def resolved_task_dict(task: TaskConfig) -> dict[str, Any]:
    """The task as recorded in results: only the settings block of its own protocol."""
    d = to_dict(task)
    for p in PROTOCOLS:
        if p != task.protocol:
            d.pop(p, None)
    retrieval = d.get("retrieval")
    if isinstance(retrieval, dict):  # re-ranking switched off is not recorded: earlier results keep their hash
        for key, off in RERANK_OFF.items():
            if retrieval.get(key) == off:
                retrieval.pop(key)
    return d


def resolved_model_dict(model: ModelConfig) -> dict[str, Any]:
    """The model as recorded in results: the spec-only keys (`source_id`) only when a spec set them."""
    d = to_dict(model)
    for key in _SPEC_ONLY_MODEL_KEYS:
        if d.get(key) is None:
            d.pop(key, None)
    return d


def config_hash(model: ModelConfig, task: TaskConfig, run: dict[str, Any]) -> str:
    """Identity of everything that moves the numbers: model, task (own protocol block), seed, limit, data source."""
    m = {k: v for k, v in resolved_model_dict(model).items() if k not in _HASH_EXCLUDED_MODEL_KEYS}
    t = {k: v for k, v in resolved_task_dict(task).items() if k not in _HASH_EXCLUDED_TASK_KEYS}
    t["data"] = {k: v for k, v in t["data"].items() if k != "root"}  # where the data lies is not what it is
    blob = json.dumps({"model": m, "task": t, "run": run}, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()[:16]
