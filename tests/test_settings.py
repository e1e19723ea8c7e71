"""Settings: precedence defaults < preset < config < flags, validation messages, written settings."""

import json

import pytest

from iclevr.errors import UserError
from iclevr.settings import TrainSettings, deep_merge, read_config, resolve, unflatten, write_settings


def test_precedence(tmp_path):
    default = resolve(TrainSettings)
    assert default.train.lr == 1e-5 and default.model.sample_size == 64
    tiny = resolve(TrainSettings, preset="tiny")
    assert tiny.preset == "tiny" and tiny.model.sample_size == 32 and tiny.train.lr == 2e-3
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nlr = 0.005\nbatch_size = 8\n')
    from_file = resolve(TrainSettings, preset="tiny", config=cfg)
    assert from_file.train.lr == 0.005 and from_file.train.batch_size == 8 and from_file.model.sample_size == 32
    flags = resolve(TrainSettings, preset="tiny", config=cfg, overrides={"train.lr": 0.1, "train.seed": None})
    assert flags.train.lr == 0.1 and flags.train.batch_size == 8 and flags.train.seed == 0


def test_json_config_and_preset_from_file(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"preset": "small", "train": {"epochs": 3}}))
    s = resolve(TrainSettings, config=cfg)
    assert s.preset == "small" and s.train.epochs == 3 and s.model.block_out_channels[0] == 64


def test_readable_validation_errors(tmp_path):
    with pytest.raises(UserError) as e:
        resolve(TrainSettings, overrides={"train.batch_size": 0, "train.bogus": 1})
    msg = str(e.value)
    assert "settings.train.batch_size: Input should be greater than 0" in msg
    assert "settings.train.bogus: unknown setting" in msg
    assert "\n" not in msg
    with pytest.raises(UserError, match='unknown preset "huge"'):
        resolve(TrainSettings, preset="huge")


def test_bad_config_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        read_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="is not valid JSON"):
        read_config(bad)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[train\n")
    with pytest.raises(UserError, match="is not valid TOML"):
        read_config(bad_toml)


def test_every_field_has_a_description():
    from pydantic import BaseModel

    def walk(cls):
        for name, field in cls.model_fields.items():
            assert field.description, f"{cls.__name__}.{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann)

    walk(TrainSettings)


def test_written_settings_round_trip(tmp_path):
    s = resolve(TrainSettings, preset="tiny", overrides={"train.max_steps": 7})
    path = write_settings(s, tmp_path)
    again = TrainSettings.model_validate_json(path.read_text())
    assert again == s


def test_merge_helpers():
    assert unflatten({"a.b": 1, "c": None, "d": 2}) == {"a": {"b": 1}, "d": 2}
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
