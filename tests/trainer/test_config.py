from __future__ import annotations

import pytest

from quad_doctor.trainer.config import Config, load_config, parse_override, save_config, valid_keys
from quad_doctor.trainer.errors import ConfigError


def test_defaults_match_the_design():
    config = load_config()
    assert config.train.batch_size == 32
    assert config.train.learning_rate == 1e-4
    assert config.train.sampler == "stratified"
    assert config.model.fusion.dim == 512
    assert config.data.path == ""
    assert config.dist.nproc_per_node == 1


def test_overrides_use_toml_values_and_later_wins():
    config = load_config(
        overrides=[
            "train.learning_rate=1e-6",
            "train.sampler=sequential",
            'train.sampler="random"',
            "data.synthetic.class_weights=[1, 1, 1, 1, 1, 20]",
            "model.video.freeze_backbone=true",
        ]
    )
    assert config.train.learning_rate == 1e-6
    assert config.train.sampler == "random"
    assert config.data.synthetic.class_weights == [1.0] * 5 + [20.0]
    assert config.model.video.freeze_backbone is True


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nbatch_size = 64\nsampler = "random"\n')
    config = load_config(path, ["train.batch_size=16"])
    assert config.train.batch_size == 16
    assert config.train.sampler == "random"


def test_int_is_accepted_where_a_float_is_expected():
    assert load_config(overrides=["train.learning_rate=1"]).train.learning_rate == 1.0


def test_resolved_config_round_trips_through_toml(tmp_path):
    config = load_config(overrides=["train.sampler=sequential", "data.synthetic.label_noise=0.1"])
    save_config(config, tmp_path / "config.toml")
    assert load_config(tmp_path / "config.toml") == config


def test_every_key_is_settable():
    for key in valid_keys():
        section = Config()
        for part in key.split(".")[:-1]:
            section = getattr(section, part)
        value = getattr(section, key.split(".")[-1])
        text = {bool: "true", int: "100", float: "0.5", str: '""', list: "[]"}[type(value)]
        if key.endswith(("lr_scheduler", "sampler", "device", "optimizer")):
            text = value
        loaded = load_config(overrides=[f"{key}={text}"])
        for part in key.split("."):
            loaded = getattr(loaded, part)
        expected = {"true": True, "100": 100, "0.5": 0.5, '""': "", "[]": []}.get(text, text)
        assert loaded == expected, key


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batchsize=3", "unknown key 'train.batchsize'; did you mean 'train.batch_size'?"),
        ("trian.batch_size=3", "did you mean 'train.batch_size'?"),
        ("train.batch_size=1", "train.batch_size must be >= 2"),
        ("train.batch_size=abc", "train.batch_size: expected an integer, got 'abc'"),
        ("train.batch_size=2.5", "train.batch_size: expected an integer"),
        ("train.learning_rate=0", "train.learning_rate must be > 0"),
        ("train.learning_rate=-1e-3", "train.learning_rate must be > 0"),
        ("train.warmup_start_lr=0", "train.warmup_start_lr must be > 0"),
        ("train.min_lr=0", "train.min_lr must be > 0"),
        ("train.temperature=0", "train.temperature must be > 0"),
        ("train.sampler=shuffled", "train.sampler must be one of stratified, random, sequential"),
        ("train.lr_scheduler=step", "train.lr_scheduler must be one of"),
        ("train.device=tpu", "train.device must be one of auto, cpu, cuda"),
        ("data.synthetic.label_noise=1.5", "data.synthetic.label_noise must be in [0, 1]"),
        ("data.synthetic.nan_fraction=-0.1", "data.synthetic.nan_fraction must be in [0, 1]"),
        ("data.synthetic.class_weights=[1, 2]", "must be empty or 6 non-negative numbers"),
        ("data.synthetic.class_weights=[0, 0, 0, 0, 0, 0]", "not all zero"),
        ("data.synthetic.class_weights=[1, 1, 1, 1, 1, -1]", "non-negative"),
        ("data.synthetic.dead_modality=smell", "must be one of , video, audio, sensor, text"),
        ("model.video.freeze_backbone=yes", "model.video.freeze_backbone: expected true or false"),
        ("train=3", "train must be a table"),
        ("train.batch_size", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    assert text.startswith("--set")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train\nbatch_size = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "not valid TOML" in str(info.value)


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nlearning_rat = 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: unknown key 'train.learning_rat'; did you mean 'train.learning_rate'?"
    )


def test_parse_override_reads_toml_values():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("a.b=plain") == ("a.b", "plain")
