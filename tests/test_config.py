"""The registries: every YAML validates, names suggest close matches, bad keys name the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmbench.config import Registry, config_hash, parse_overrides
from mmbench.errors import ConfigError, UnknownNameError
from mmbench.schema import ModelConfig, TaskConfig


def test_every_model_preset_validates(registry):
    assert {"clip", "clip-tiny", "flava", "flava-tiny"} <= set(registry.model_files)
    for name in registry.model_files:
        cfg = registry.model(name)
        assert isinstance(cfg, ModelConfig) and cfg.name == name
        assert cfg.random_init or cfg.checkpoint, f"{name}: a real preset must name its checkpoint"
        assert cfg.random_init == name.endswith("-tiny"), f"{name}: only -tiny presets may be random"


def test_every_task_validates_and_groups_resolve(registry):
    assert {"flickr30k", "coco"} <= set(registry.task_files)
    for name in registry.task_files:
        cfg = registry.task(name)
        assert isinstance(cfg, TaskConfig) and cfg.name == name
        assert cfg.domain == registry.task_files[name].parent.name
        assert set(cfg.scores) <= set(cfg.metrics) and cfg.primary in cfg.metrics
    for group, members in registry.groups.items():
        assert registry.expand(groups=[group]) == list(dict.fromkeys(members))


def test_include_merges_the_base(registry):
    coco = registry.task("coco")
    assert coco.protocol == "retrieval"  # from _retrieval.yaml
    assert coco.scores == ["tr_r1", "tr_r5", "ir_r1", "ir_r5"]
    assert coco.data.options["karpathy"]["annotation"] == "dataset_coco.json"  # its own


def test_unknown_names_suggest_close_matches(registry):
    with pytest.raises(UnknownNameError, match=r"unknown model 'flava-tinny'.*'flava-tiny'"):
        registry.model("flava-tinny")
    with pytest.raises(UnknownNameError, match=r"unknown task 'flicker30k'.*'flickr30k'"):
        registry.expand(["flicker30k"])
    with pytest.raises(UnknownNameError, match=r"unknown group 'retreival'.*'retrieval'"):
        registry.expand(groups=["retreival"])


def _tmp_registry(tmp_path: Path, model_yaml: str | None = None, task_yaml: str | None = None) -> Registry:
    (tmp_path / "models").mkdir()
    (tmp_path / "tasks" / "multimodal").mkdir(parents=True)
    if model_yaml is not None:
        (tmp_path / "models" / "m.yaml").write_text(model_yaml)
    if task_yaml is not None:
        (tmp_path / "tasks" / "multimodal" / "t.yaml").write_text(task_yaml)
    return Registry([tmp_path])


def test_unknown_key_names_file_and_key(tmp_path):
    reg = _tmp_registry(tmp_path, "wrapper: a:B\ncheckpoint: x\nmax_txt_length: 3\n")
    with pytest.raises(ConfigError, match=r"models/m.yaml: key 'max_txt_length'"):
        reg.model("m")


def test_ill_typed_key_names_file_and_key(tmp_path):
    reg = _tmp_registry(tmp_path, "wrapper: a:B\ncheckpoint: x\npreprocess: {image_size: big}\n")
    with pytest.raises(ConfigError, match=r"models/m.yaml: key 'preprocess.image_size'.*big"):
        reg.model("m")


def test_task_checks_protocol_and_metrics(tmp_path):
    base = "protocol: retrieval\ndata: {format: wds_retrieval}\nmetrics: [tr_r1]\n"
    reg = _tmp_registry(tmp_path, task_yaml=base + "primary: tr_r5\n")
    with pytest.raises(ConfigError, match=r"t.yaml: key 'primary': 'tr_r5' is not among metrics"):
        reg.task("t")
    (tmp_path / "tasks" / "multimodal" / "t.yaml").write_text(
        base.replace("retrieval\n", "segmentation\n", 1) + "primary: tr_r1\n"
    )
    with pytest.raises(ConfigError, match=r"key 'protocol': 'segmentation'"):
        Registry([tmp_path]).task("t")


def test_task_in_wrong_domain_folder(tmp_path):
    reg = _tmp_registry(tmp_path, task_yaml="domain: vision\nprotocol: retrieval\n")
    with pytest.raises(ConfigError, match=r"key 'domain': 'vision' but the file lives in tasks/multimodal/"):
        reg.task("t")


def test_invalid_yaml_names_line(tmp_path):
    reg = _tmp_registry(tmp_path, "wrapper: [unclosed\n")
    with pytest.raises(ConfigError, match=r"m.yaml:\d+: not valid YAML"):
        reg.model("m")


def test_overrides_reach_any_field_and_change_the_hash(registry):
    ov = parse_overrides(["model.max_text_length=64", "task.retrieval.chunk_size=7", "task.data.split=val"])
    model = registry.model("clip-tiny", ov["model"])
    task = registry.task("coco", ov["task"])
    assert model.max_text_length == 64 and task.retrieval.chunk_size == 7 and task.data.split == "val"
    run = {"seed": 0, "limit": None, "data_source": "real", "precision": None}
    base = config_hash(registry.model("clip-tiny"), registry.task("coco"), run)
    assert config_hash(model, task, run) != base
    assert config_hash(registry.model("clip-tiny"), registry.task("coco"), run) == base  # deterministic
    assert config_hash(registry.model("clip-tiny"), registry.task("coco"), {**run, "seed": 1}) != base


def test_data_root_does_not_change_the_hash(registry):
    run = {"seed": 0, "limit": None, "data_source": "real", "precision": None}
    moved = registry.task("coco", parse_overrides(["task.data.root=/elsewhere"])["task"])
    assert config_hash(registry.model("clip"), moved, run) == config_hash(
        registry.model("clip"), registry.task("coco"), run
    )


@pytest.mark.parametrize(
    "item, message",
    [
        ("model.max_text_length", r"expected KEY=VALUE"),
        ("max_text_length=3", r"must start with 'model.' or 'task.'"),
    ],
)
def test_bad_override_syntax(item, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides([item])


def test_bad_override_key_names_key(registry):
    with pytest.raises(ConfigError, match=r"key 'retrieval.chunksize'"):
        registry.task("coco", parse_overrides(["task.retrieval.chunksize=3"])["task"])
    with pytest.raises(ConfigError, match=r"key 'retrieval.chunk_size'.*'many'"):
        registry.task("coco", parse_overrides(["task.retrieval.chunk_size=many"])["task"])
