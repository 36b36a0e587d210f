"""Unknown keys anywhere in a preset's `arch` block are errors, with close matches.

A wrapper validates `arch` against its own dataclass (`parse_arch`), but some of its fields are free-form kwargs
for Hugging Face config classes (`vision:` -> `CLIPVisionConfig`, `lm:` -> the LM's config), and those classes
keep unknown kwargs as attributes: `--set model.arch.vision.hidden_sz=3` would build the default model and only
change the config hash. `check_arch_keys` walks the block, dataclass fields and nested dataclasses by their
schema and HF kwargs blocks by what their config class reads, when the preset is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

from mmbench.errors import ConfigError

_KWARG_READ = re.compile(r"""kwargs\.(?:pop|get)\(\s*["'](\w+)["']""")


def check_arch_keys(arch: dict[str, Any], schema: type, hf_class: Callable[[str, dict[str, Any]], type | None]) -> None:
    """Raise `ConfigError` for the first key of `arch` (at any depth) that nothing reads. `hf_class(field, arch)`
    names the HF config class of a kwargs field, or None for a field that is not one (imported only when such a
    block is non-empty)."""
    _walk(arch, schema, "arch", hf_class, arch)


def _walk(data: dict[str, Any], schema: type, prefix: str, hf_class: Callable, arch: dict) -> None:
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in data.items():
        path = f"{prefix}.{key}"
        f = fields.get(key)
        if f is None:
            raise ConfigError(f"key {path!r} is not a {schema.__name__} field{did_you_mean(key, fields)}")
        nested = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if isinstance(value, dict) and nested is not None and dataclasses.is_dataclass(nested):
            _walk(value, nested, path, hf_class, arch)
        elif isinstance(value, dict) and value and prefix == "arch":
            config_class = hf_class(key, arch)
            if config_class is not None:
                known = hf_config_keys(config_class)
                for sub in value:
                    if sub not in known:
                        what = f"a {config_class.__name__} setting{did_you_mean(sub, known)}"
                        raise ConfigError(f"key '{path}.{sub}' is not {what}")


def did_you_mean(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, sorted(known), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


@cache
def hf_config_keys(config_class: type) -> frozenset[str]:
    """Every kwarg an HF config class reads: its dataclass fields (transformers 5 configs are strict
    dataclasses), its `attribute_map` aliases (GPT-2's `n_embd` <- `hidden_size`), and the legacy kwargs its
    `__post_init__`s pop (GPT-NeoX's `rotary_pct`, the base class's `torch_dtype`, legacy `rope_theta`)."""
    if dataclasses.is_dataclass(config_class):
        keys = {f.name for f in dataclasses.fields(config_class)}
    else:  # a config written in the pre-dataclass style
        keys = set(inspect.signature(config_class.__init__).parameters) - {"self", "args", "kwargs"}
    for klass in config_class.__mro__:
        keys |= set(getattr(klass, "attribute_map", None) or {})
        keys |= _kwargs_read(klass)
    return frozenset(keys)


def _kwargs_read(klass: type) -> set[str]:
    """Names that `klass`'s own kwargs-consuming methods pop or get (legacy spellings they convert)."""
    names: set[str] = set()
    for method in ("__post_init__", "__init__", "convert_rope_params_to_dict"):
        function = klass.__dict__.get(method)
        if function is None:
            continue
        try:
            names |= set(_KWARG_READ.findall(inspect.getsource(function)))
        except (OSError, TypeError):  # no source (a frozen install): fields and aliases only
            pass
    return names
