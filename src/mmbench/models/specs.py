"""Model specs beside the presets: any model by id, and third-party wrappers without forking.

`Registry.model(name)` looks `name` up among the presets (`models/*.yaml`) first; what is not a preset comes here:

- a spec family, `<prefix>:<ident>` (`FAMILIES`): `hf:<hub id or local dir>[@<revision>]`, `timm:<name>`,
  `open_clip:<arch>[/<pretrained tag>]`. Each family is one resolver function, named here by string and imported
  only when used: `resolve_spec(ident) -> preset mapping` (wrapper, checkpoint, preprocess, ... without `name`),
  built from the checkpoint itself without building the model;
- a preset YAML outside the registry: `--model ./my_model.yaml` (`wrapper: my_pkg.module:Class`, ...), named by its
  file stem. A stem that is also a preset's name is refused: both would write `runs/<name>/`;
- a plug-in: an entry point named `name` in the group `mmbench.models` (`ENTRY_POINT_GROUP`) of any installed
  package. Its object is a `ModelWrapper` subclass (the preset is then `{wrapper: <module:Class>}` with every other
  key at its default, `--set model.KEY=...` on top), or a callable taking no arguments that returns a preset mapping
  or the path of a preset YAML. Presets shadow plug-ins of the same name.

A spec's name is the spec as given, normalised (no surrounding blanks, no trailing `/`): results say exactly what
ran, and `results.store.model_folder` turns it into a folder name. Its weights are pinned in the config, so that
two runs at different revisions never share a result or a cache entry: a spec whose checkpoint is a local folder or
file records its content digest, a hub id the commit of its cached snapshot (`source_id`, see `schema.ModelConfig`).
"""

from __future__ import annotations

import copy
import difflib
import importlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from mmbench.errors import ConfigError, UnknownNameError
from mmbench.schema import ModelConfig

ENTRY_POINT_GROUP = "mmbench.models"
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Family:
    prefix: str  # what comes before the ':' of a spec
    resolver: str  # "module:function", (ident: str) -> preset mapping without `name`
    library: str  # the distribution that runs the model: results record its version
    example: str
    about: str  # one line for `mmbench list models`
    # A spec may end in `@<revision>`, and `--set model.revision=R` is the same as writing `@R` (the resolver reads
    # the checkpoint at R and pins what it found, which the override must not then replace).
    takes_revision: bool = False


FAMILIES: dict[str, Family] = {
    f.prefix: f
    for f in (
        Family(
            "hf",
            "mmbench.models.hf_spec:resolve_spec",
            "transformers",
            "hf:openai/clip-vit-base-patch16",
            "Hugging Face hub id or save_pretrained folder [@revision]: CLIP, SigLIP, FLAVA, text and vision encoders",
            takes_revision=True,
        ),
        Family(
            "timm",
            "mmbench.models.timm_model:resolve_spec",
            "timm",
            "timm:vit_base_patch16_224.augreg_in21k",
            "timm image model: pooled features (num_classes=0), its pretrained_cfg's preprocessing",
        ),
        Family(
            "open_clip",
            "mmbench.models.open_clip_model:resolve_spec",
            "open_clip_torch",
            "open_clip:ViT-B-32/laion2b_s34b_b79k",
            "open_clip model, <arch>[/<pretrained tag>]: its own tokenizer and transforms",
        ),
    )
}


@dataclass(frozen=True)
class ResolvedSpec:
    name: str  # the model's name in results
    data: dict[str, Any]  # the preset mapping, without `name`
    where: str  # what errors name: the spec, the YAML file or the entry point
    consumed: tuple[str, ...] = ()  # `--set model.*` keys the resolution already applied


def resolve_spec(name: str, presets: Mapping[str, Path], overrides: Mapping[str, Any]) -> ResolvedSpec:
    """What a model name that is not a preset stands for (see the module docstring); one-line errors otherwise."""
    if name.endswith(YAML_SUFFIXES):
        return _from_yaml(Path(name).expanduser(), presets)
    prefix, sep, ident = name.partition(":")
    if sep and prefix in FAMILIES:
        return _from_family(FAMILIES[prefix], ident, overrides)
    entry = plugins().get(name)
    if entry is not None:
        return _from_entry_point(entry)
    if sep and re.fullmatch(r"[A-Za-z][\w.-]*", prefix):
        close = difflib.get_close_matches(prefix, list(FAMILIES), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}:'?" if close else ""
        known = ", ".join(f"{p}:" for p in FAMILIES)
        raise ConfigError(f"model {name!r}: unknown spec family '{prefix}:' (known: {known}){hint}")
    raise UnknownNameError("model", name, [*presets, *plugins()])


def normalise(ident: str) -> str:
    """`org/model/` and ` org/model` name what `org/model` names."""
    ident = ident.strip()
    return ident.rstrip("/") or ident


def _from_family(family: Family, ident: str, overrides: Mapping[str, Any]) -> ResolvedSpec:
    ident = normalise(ident)
    consumed: tuple[str, ...] = ()
    if family.takes_revision and overrides.get("revision") is not None:
        ident, consumed = f"{_without_revision(ident)}@{overrides['revision']}", ("revision",)
    name = f"{family.prefix}:{ident}"
    if not ident:
        raise ConfigError(f"model {name!r}: nothing after '{family.prefix}:' (e.g. {family.example})")
    resolver = _import(family.resolver, f"model {name!r}: the {family.prefix}: family")
    data = dict(resolver(ident))
    data.pop("name", None)
    if "source_id" not in data:
        data["source_id"] = _source_id(data)
    return ResolvedSpec(name, data, f"model spec {name!r}", consumed)


def _without_revision(ident: str) -> str:
    """`org/model@v1` -> `org/model`; an existing local path keeps any '@' it has."""
    if "@" not in ident or Path(ident).expanduser().exists():
        return ident
    return ident.rpartition("@")[0] or ident


def _source_id(data: Mapping[str, Any]) -> str | None:
    """The content identity of the spec's weights (`models.fingerprint.source_identity`: a local folder's digest,
    memoised in the cache; a hub id's cached commit), None for random init or when it is not on this machine."""
    checkpoint = data.get("checkpoint")
    if data.get("random_init") or not isinstance(checkpoint, str) or not checkpoint:
        return None
    from mmbench.models.fingerprint import source_identity
    from mmbench.paths import cache_dir

    return source_identity(checkpoint, data.get("revision"), cache_dir())


def _from_yaml(path: Path, presets: Mapping[str, Path]) -> ResolvedSpec:
    from mmbench.config import _with_includes

    if not path.is_file():
        raise ConfigError(f"--model {path}: no such file (a model name ending in .yaml is a preset file's path)")
    name = path.stem
    if name in presets:
        raise ConfigError(
            f"{path}: its name {name!r} (the file stem) is also the preset {presets[name]}, and both would write "
            f"runs/{name}/; rename the file"
        )
    return ResolvedSpec(name, _with_includes(path.resolve()), str(path))


def plugins() -> dict[str, metadata.EntryPoint]:
    """The installed plug-ins: entry points of the group `mmbench.models`, by name (the first of a name wins)."""
    found: dict[str, metadata.EntryPoint] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry)
    return found


def _from_entry_point(entry: metadata.EntryPoint) -> ResolvedSpec:
    from mmbench.config import _with_includes
    from mmbench.models.base import ModelWrapper

    dist = f" of {entry.dist.name}" if getattr(entry, "dist", None) is not None else ""
    where = f"plug-in {entry.name!r} (entry point {entry.value!r} in group {ENTRY_POINT_GROUP}{dist})"
    try:
        obj = entry.load()
    except Exception as e:  # third-party code: whatever it raises, say which plug-in and what
        raise ConfigError(f"{where}: cannot load it: {_one_line(e)}") from e
    if isinstance(obj, type):
        if not issubclass(obj, ModelWrapper):
            raise ConfigError(f"{where}: {obj.__qualname__} is a class but not a mmbench ModelWrapper subclass")
        return ResolvedSpec(entry.name, {"wrapper": f"{obj.__module__}:{obj.__qualname__}"}, where)
    if not callable(obj):
        raise ConfigError(f"{where}: expected a ModelWrapper subclass or a function, got {type(obj).__name__}")
    try:
        made = obj()
    except Exception as e:
        raise ConfigError(f"{where}: calling it failed: {_one_line(e)}") from e
    if isinstance(made, str | os.PathLike):
        path = Path(made).expanduser()
        if not path.is_file():
            raise ConfigError(f"{where}: returned {str(path)!r}, which is not a file")
        return ResolvedSpec(entry.name, _with_includes(path.resolve()), f"{where} -> {path}")
    if isinstance(made, Mapping):
        return ResolvedSpec(entry.name, copy.deepcopy(dict(made)), where)
    raise ConfigError(f"{where}: returned a {type(made).__name__}; expected a preset mapping or a preset YAML's path")


def _import(path: str, what: str) -> Callable[..., Any]:
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{what} needs {path}, which cannot be imported ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def model_library(cfg: ModelConfig) -> dict[str, str] | None:
    """The library that runs the model and its version, for results' provenance: a spec family's library, or the
    distribution that ships a plug-in's wrapper; None for mmbench's own presets (provenance has their libraries)."""
    prefix, sep, _ = cfg.name.partition(":")
    if sep and prefix in FAMILIES:
        dist = FAMILIES[prefix].library
    else:
        top = cfg.wrapper.partition(":")[0].split(".")[0]
        dists = metadata.packages_distributions().get(top, []) if top != "mmbench" else []
        if not dists:
            return None
        dist = dists[0]
    try:
        version = metadata.version(dist)
    except metadata.PackageNotFoundError:
        version = "absent"
    return {"name": dist, "version": version}


def listing() -> list[str]:
    """Lines for `mmbench list models`: each spec family with an example, then the plug-ins found."""
    lines = ["", "Any model by id (--model <spec>):"]
    lines += [f"  {f.prefix + ':':<11} e.g. {f.example:<40} {f.about}" for f in FAMILIES.values()]
    lines += [f"  {'a file':<11} e.g. {'./my_model.yaml':<40} a preset YAML outside the registry, named by its stem"]
    found = plugins()
    names = ", ".join(f"{n} ({e.value})" for n, e in sorted(found.items())) if found else "none installed"
    lines += [f"  plug-ins: entry point group {ENTRY_POINT_GROUP}: {names}"]
    return lines
