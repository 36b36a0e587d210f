"""Where mmbench keeps things on disk. One place, so that every part agrees (and tests can redirect it all)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mmbench.errors import MMBenchError, OutputError


def cache_dir() -> Path:
    """Features, synthetic datasets, fine-tuning run folders, downloaded checkpoints and generated tokenizers:
    `$MMBENCH_CACHE`, default `~/.cache/mmbench` (`mmbench run --cache-dir` sets the variable)."""
    return Path(os.environ.get("MMBENCH_CACHE") or "~/.cache/mmbench").expanduser()


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._]|-(?!-))*")  # a preset's name: no '--', no '~'
_SPEC_NAME = re.compile(r"([A-Za-z][A-Za-z0-9_.]*):([A-Za-z0-9._@+=/-]+)")  # <family>:<ident>
_MAX_FOLDER = 160


def model_folder(name: str) -> str:
    """The folder name a model's results and caches live under, safe on any file system. A preset's name is its
    own folder (`clip-tiny`), as before specs existed. A spec's ':' and each '/' become `--` (`hf:org/model` ->
    `hf--org--model`), reversibly (`spec_name`), since hub ids never hold `--`; a name that would not come back
    unchanged (other characters, a `--` of its own, too long) is `<readable part>~<digest>`. The three kinds never
    meet (plain names have neither `--` nor `~`, reversible slugs always `--` and never `~`), so no two models
    share a folder. Nothing reads a model's name from its folder: results carry their `model`."""
    import hashlib

    if _PLAIN_NAME.fullmatch(name) and len(name) <= _MAX_FOLDER:
        return name
    match = _SPEC_NAME.fullmatch(name)
    if match:
        slug = f"{match[1]}--{match[2].replace('/', '--')}"
        if len(slug) <= _MAX_FOLDER and spec_name(slug) == name:
            return slug
    readable = re.sub(r"[^A-Za-z0-9._@+=-]", "-", name.replace(":", "--", 1).replace("/", "--"))
    return f"{readable[:80]}~{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def spec_name(folder: str) -> str | None:
    """The spec a reversible `model_folder` slug stands for (`hf--org--model` -> `hf:org/model`); None otherwise."""
    prefix, sep, rest = folder.partition("--")
    if not sep or "~" in folder or not _SPEC_NAME.fullmatch(f"{prefix}:x"):
        return None
    return f"{prefix}:{rest.replace('--', '/')}"


def checkpoint_download_dir() -> Path:
    """Release-URL checkpoints (BEiT-3), downloaded once."""
    return cache_dir() / "checkpoints"


def data_dir() -> Path:
    """Real datasets, one folder per task: `$MMBENCH_DATA`, default `~/.cache/mmbench/data`."""
    return Path(os.environ.get("MMBENCH_DATA") or "~/.cache/mmbench/data").expanduser()


@contextmanager
def cache_override(path: str | Path | None) -> Iterator[None]:
    """Point `cache_dir()` at `path` while the block runs (nothing changes when `path` is None)."""
    if path is None:
        yield
        return
    saved = os.environ.get("MMBENCH_CACHE")
    os.environ["MMBENCH_CACHE"] = str(Path(path).expanduser().resolve())
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MMBENCH_CACHE", None)
        else:
            os.environ["MMBENCH_CACHE"] = saved


# A temporary name is `.<name>.<host>.<pid>.<random>.tmp`: hidden, recognisably ours, and it says which process
# owns it, so that leftovers of a killed writer can be removed without touching a live writer's file.
_TEMP = r"\.{name}\.(?P<host>[^/]+)\.(?P<pid>\d+)\.[0-9a-f]{{8}}\.tmp"
# A temporary left by another host (a shared file system) cannot be checked by pid: removed only once this old.
STALE_AFTER_S = 24 * 3600


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside `path`, owned by this process (see `remove_stale_temps`)."""
    path = Path(path)
    return path.parent / f".{path.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files or folders for `path` that a killed writer left beside it: those of this host
    whose process is gone, and any older than `STALE_AFTER_S`. Never a live writer's, never a name not ours."""
    path = Path(path)
    pattern = re.compile(_TEMP.format(name=re.escape(path.name)))
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    host, now = socket.gethostname(), time.time()
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None:
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue  # removed meanwhile by its writer
        dead = m["host"] == host and not _pid_alive(int(m["pid"]))
        if dead or age > STALE_AFTER_S:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def os_reason(exc: BaseException) -> str | None:
    """The OS's reason ("No space left on device", "Read-only file system") for `exc` or the OSError behind it
    (torch's file writer re-raises a failed write as a RuntimeError); None when no OS error is involved."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc.strerror or str(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def make_folder(folder: Path, purpose: str | None = None) -> Path:
    """`mkdir -p`; on failure an `OutputError` "<purpose>: <why>" (default purpose: creating `folder`), the why
    naming the file that stands where a folder should be."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker is not None else (e.strerror or str(e))
        raise OutputError(f"{purpose or f'cannot create folder {folder}'}: {why}", path=folder, reason=why) from None
    return folder


def check_writable(path: Path, what: str = "file") -> Path:
    """Fail now, naming `path`, when a file could not be written there later: its folder cannot be made, is
    read-only, or `path` is a folder. Called before long work, so that nothing is computed only to be lost."""
    path = Path(path)
    make_folder(path.parent, f"cannot write {what} {path}")
    if path.is_dir():
        raise OutputError(f"cannot write {what} {path}: it is a folder")
    probe = temp_path(path)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        probe.unlink()
    except OSError as e:
        raise OutputError(f"cannot write {what} {path}: {e.strerror or e}") from None
    return path


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Produce `path` by `write(tmp)` on a hidden temporary file in the same folder, then `os.replace`: a reader
    (another rank, a later run) never sees half a file, and a write that fails leaves nothing behind and raises
    `OutputError` naming `path` (a full disk, a read-only folder). The file gets the mode a plain `open` would give
    (0666 less the umask: colleagues sharing a results folder can read it), not mkstemp's 0600. Temporaries of
    writers killed earlier are removed first. A writer that saves with `torch.save` should pass it an open file
    (see `atomic_save`): given a path, torch reports a full disk without the OS error."""
    path = Path(path)
    make_folder(path.parent, f"cannot write {path}")
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the kernel applies the umask
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        reason = os_reason(e)
        if reason is None or isinstance(e, MMBenchError):
            raise
        raise OutputError(f"cannot write {path}: {reason}", path=path, reason=reason) from None
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write` of text, with "\\n" line ends on every platform (committed files diff cleanly)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, newline=""))


def atomic_save(path: str | Path, obj: object) -> Path:
    """`atomic_write` of `torch.save(obj)`, through an open file so that a failed write names its OS reason."""
    import torch

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, save)
