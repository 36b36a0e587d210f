"""The identity of a preset's weights, computed WITHOUT building the model: what feature caches are keyed by.

- Random-init presets: (wrapper, arch, init_seed, tokenizer, image size) and the torch / transformers versions.
  The weights are a pure function of these: the seeded init code of the libraries, run over an architecture whose
  text embedding size comes from the tokenizer (so the tokenizer moves the RNG stream the vision tower draws from).
- Real presets: the wrapper and arch (they decide how a checkpoint becomes features) plus the content identity of
  every weight source the preset names -- `checkpoint`, and `arch` values that are hub ids (Flamingo's vision
  encoder):
  * a Hugging Face hub id: the commit sha of the locally cached snapshot of `revision`. Hub snapshots are
    content-addressed (a commit pins the bytes of every file), so this is exact and costs one small file read.
  * a local file or directory: sha256 of the content of every file. Exact, unlike (name, size, header), which
    would miss a checkpoint re-saved in place by further training with the same shapes. Reading gigabytes on
    every run would be slow, so digests are memoised by (path, size, mtime_ns) in `<cache>/fingerprints.json`.
  * a release URL (BEiT-3): the content of the downloaded copy in `$MMBENCH_CACHE/checkpoints/` (the place
    `beit3_checkpoint.resolve_file` downloads to), hashed as a local file.
  A source that is not on this machine yet (hub snapshot not cached, URL not downloaded) gives `None`: the weights
  are unknown until the model is built (which downloads them), so no cache may be consulted before that.
- Preprocessing: feature keys hold the preset's `preprocess` block, but a checkpoint that carries a
  `preprocessor_config.json` replaces it (`models.preprocess.resolve_preprocess`). The file's content is part of
  the source identity above (a directory's digest covers every file; a hub commit pins every file), and whether
  it is used at all is recorded here; when that cannot be known without fetching (a hub snapshot whose processor
  file is neither cached nor known to be absent), the fingerprint is `None`, as for weights not yet on disk.
- Wrappers around other model libraries (timm, open_clip) list them in `libraries`: those versions join the identity,
  random-init or not (the library's code builds the model and, from its own pretrained config, the preprocessing).
  Their `weight_sources(cfg, memo_dir)` names weights the library's way (a timm name's hub repo, an open_clip tag's,
  an `hf-hub:` id, a local file) with the same identities as above, and replaces the processor-file check.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mmbench.models.preprocess import PROCESSOR_FILE, UNKNOWN, processor_file
from mmbench.paths import atomic_write_text, checkpoint_download_dir
from mmbench.schema import ModelConfig

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_CHUNK = 1 << 22


def weights_fingerprint(cfg: ModelConfig, memo_dir: Path | None = None) -> str | None:
    """`sha256:...` identifying the weights `build_model(cfg)` would produce, or None when they are not on disk."""
    ident: dict[str, Any] = {"wrapper": cfg.wrapper, "arch": cfg.arch, "random_init": cfg.random_init}
    wrapper = _wrapper_class(cfg)
    # Wrappers around other model libraries (timm, open_clip) name them: their code builds the model and decides
    # the preprocessing, so a new version is new features.
    libraries = tuple(getattr(wrapper, "libraries", ()))
    if libraries:
        ident["libraries"] = {lib: _version(lib) for lib in libraries}
    own_sources = getattr(wrapper, "weight_sources", None)
    if cfg.random_init:
        ident.update(
            init_seed=cfg.init_seed,
            tokenizer=cfg.tokenizer,
            image_size=cfg.preprocess.image_size,  # random-init vision towers are built at the preset's size
            versions={lib: _version(lib) for lib in ("torch", "transformers")},
        )
    elif own_sources is not None:  # weights named the library's way (timm names, open_clip tags, hf-hub: ids)
        sources = own_sources(cfg, memo_dir)
        if any(v is None for v in sources.values()):
            return None
        ident["sources"] = sources
    else:
        sources: dict[str, Any] = {"checkpoint": source_identity(cfg.checkpoint or "", cfg.revision, memo_dir)}
        for key, value in sorted(cfg.arch.items()):
            if isinstance(value, str) and _HUB_ID.fullmatch(value) and not Path(value).exists():
                sources[f"arch.{key}"] = source_identity(value, cfg.arch.get(f"{key}_revision"), memo_dir)
        if any(v is None for v in sources.values()):
            return None
        ident["sources"] = sources
        # The checkpoint's preprocessor_config.json replaces the preset's preprocessing (`preprocess`): whether it
        # has one must be known now, as the build will decide it. Its content is already in the source identity.
        found = processor_file(cfg, fetch=False)
        if found is UNKNOWN:
            return None
        ident["preprocess"] = PROCESSOR_FILE if found else "preset"
    blob = json.dumps(ident, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def _wrapper_class(cfg: ModelConfig) -> type | None:
    from mmbench.errors import ConfigError
    from mmbench.models import wrapper_class

    try:
        return wrapper_class(cfg)
    except ConfigError:  # an unimportable wrapper fails the build with its own message
        return None


def source_identity(source: str, revision: str | None, memo_dir: Path | None = None) -> str | None:
    """Content identity of one weight source (see the module docstring); None when it is not available locally."""
    if not source:
        return None
    if "://" in source:
        path = checkpoint_download_dir() / Path(urlparse(source).path).name
        return content_digest(path, memo_dir) if path.is_file() else None
    path = Path(source).expanduser()
    if source.startswith((".", "/", "~")) or path.exists():
        return content_digest(path, memo_dir) if path.exists() else None
    return hub_commit(source, revision)


def hub_commit(repo_id: str, revision: str | None) -> str | None:
    """`hf:<repo>@<commit>` of the cached snapshot for `revision` (default branch when None), without network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return f"hf:{repo_id}@{Path(folder).name}"  # snapshots/<commit sha>


def content_digest(path: Path, memo_dir: Path | None = None) -> str:
    """sha256 of a file, or of a directory's files (relative names + contents), memoised by stat."""
    path = path.resolve()
    if path.is_file():
        files = [path]
    else:  # hidden files (.git, .cache locks) are not weights
        files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
    memo = _Memo(memo_dir)
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(path).as_posix() if f != path else f.name}\0{memo.digest(f)}\n".encode())
    memo.save()
    return "sha256:" + h.hexdigest()


class _Memo:
    """(path, size, mtime_ns) -> sha256, so a multi-gigabyte checkpoint is read once, not on every run."""

    def __init__(self, folder: Path | None):
        self.path = Path(folder) / "fingerprints.json" if folder is not None else None
        self.entries: dict[str, str] = {}
        self.dirty = False
        if self.path is not None and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except (json.JSONDecodeError, OSError):
                self.entries = {}  # a damaged memo only costs re-hashing

    def digest(self, f: Path) -> str:
        st = f.stat()
        key = f"{f}\0{st.st_size}\0{st.st_mtime_ns}"
        if key not in self.entries:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
            self.entries[key] = h.hexdigest()
            self.dirty = True
        return self.entries[key]

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        # concurrent writers (DDP ranks) may each lose the other's entries: harmless
        atomic_write_text(self.path, json.dumps(self.entries))


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _version(lib: str) -> str:
    try:
        return metadata.version(lib)
    except metadata.PackageNotFoundError:
        return "absent"
