"""Weights fingerprints name the weights a preset would build -- without building it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import huggingface_hub.constants
import pytest

from mmbench.models.beit3_checkpoint import resolve_file
from mmbench.models.fingerprint import weights_fingerprint
from mmbench.paths import checkpoint_download_dir


def test_random_init_presets_are_named_by_what_seeds_them(registry):
    cfg = registry.model("clip-tiny")
    fp = weights_fingerprint(cfg)
    assert fp.startswith("sha256:") and weights_fingerprint(registry.model("clip-tiny")) == fp
    same = dataclasses.replace(cfg, name="renamed", description="other words")
    assert weights_fingerprint(same) == fp  # content, not names
    changed = [
        dataclasses.replace(cfg, init_seed=1),
        dataclasses.replace(cfg, arch={**cfg.arch, "projection_dim": 8}),
        dataclasses.replace(cfg, tokenizer="mmbench:tiny-wordpiece"),
        dataclasses.replace(cfg, wrapper="mmbench.models.flava:FlavaWrapper"),
    ]
    assert len({fp, *(weights_fingerprint(c) for c in changed)}) == 5
    assert weights_fingerprint(registry.model("flava-tiny")) != fp


def test_local_checkpoint_file_is_named_by_content(registry, tmp_path):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"\x00" * 1000)
    cfg = dataclasses.replace(registry.model("clip"), checkpoint=str(ckpt))
    memo = tmp_path / "memo"
    fp = weights_fingerprint(cfg, memo)
    entries = json.loads((memo / "fingerprints.json").read_text())
    assert list(entries.values()) == [hashlib.sha256(ckpt.read_bytes()).hexdigest()]  # the content, memoised
    os.utime(ckpt, ns=(10**18, 10**18))  # touched, same bytes: same weights
    assert weights_fingerprint(cfg, memo) == fp
    ckpt.write_bytes(b"\x01" + b"\x00" * 999)  # re-saved in place, same size: different weights
    assert weights_fingerprint(cfg, memo) != fp
    assert weights_fingerprint(dataclasses.replace(cfg, checkpoint=str(tmp_path / "absent.pt"))) is None


def test_local_checkpoint_folder(registry, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    cfg = dataclasses.replace(registry.model("flava"), checkpoint=str(folder))
    fp = weights_fingerprint(cfg)
    (folder / ".lock").write_text("hidden files are not weights")
    assert weights_fingerprint(cfg) == fp
    (folder / "model.safetensors").write_bytes(b"other weights")
    assert weights_fingerprint(cfg) != fp


def _fake_hub_snapshot(cache, repo, commit, ref="main"):
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "snapshots" / commit / "config.json").write_text("{}")
    # as `hf download` leaves it: whether the checkpoint has a processor config must be known (models.preprocess)
    (folder / "snapshots" / commit / "preprocessor_config.json").write_text("{}")
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / ref).write_text(commit)


def test_hub_checkpoints_are_named_by_their_cached_commit(registry, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    cfg = registry.model("clip")
    assert weights_fingerprint(cfg) is None  # not on this machine: unknown until the build downloads it
    _fake_hub_snapshot(tmp_path, cfg.checkpoint, "a" * 40)
    fp = weights_fingerprint(cfg)
    assert fp is not None and weights_fingerprint(cfg) == fp
    _fake_hub_snapshot(tmp_path, cfg.checkpoint, "b" * 40, ref="v2")
    assert weights_fingerprint(dataclasses.replace(cfg, revision="v2")) not in (fp, None)
    # Flamingo's image features come from its arch.vision_encoder: that repo must be on disk too
    flamingo = registry.model("flamingo")
    _fake_hub_snapshot(tmp_path, flamingo.checkpoint, "c" * 40)
    assert weights_fingerprint(flamingo) is None
    for repo in (flamingo.arch["vision_encoder"], flamingo.arch["lang_encoder"]):
        _fake_hub_snapshot(tmp_path, repo, "d" * 40)
    assert weights_fingerprint(flamingo) is not None


def test_release_url_checkpoints_are_read_where_beit3_downloads_them(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("MMBENCH_CACHE", str(tmp_path))
    cfg = registry.model("beit3-base")
    assert weights_fingerprint(cfg) is None
    target = checkpoint_download_dir() / "beit3_base_itc_patch16_224.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"checkpoint bytes")
    # the loader finds the file at the same place, without downloading
    assert resolve_file(cfg.checkpoint, cfg.name, "checkpoint", "checkpoint") == target
    fp = weights_fingerprint(cfg)
    target.write_bytes(b"other bytes")
    assert weights_fingerprint(cfg) not in (fp, None)


@pytest.mark.parametrize("name", ["clip-tiny", "flava-tiny", "beit3-tiny", "flamingo-tiny", "idefics-tiny"])
def test_every_tiny_preset_has_a_fingerprint_without_being_built(registry, name):
    assert weights_fingerprint(registry.model(name)).startswith("sha256:")
