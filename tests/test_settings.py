"""Settings: precedence defaults < preset < config < flags, validation messages, written settings."""

import json

import pytest

from iclevr.errors import UserError
from iclevr.settings import UNSET, TrainSettings, deep_merge, read_config, resolve, unflatten, write_settings

# The settings model of every command; the discovery below must find at least these.
COMMAND_MODELS = {
    "TrainSettings",
    "SampleSettings",
    "TraceSettings",
    "EvalSettings",
    "EvaluatorTrainSettings",
    "CompareSettings",
    "DemoSettings",
    "ExportSettings",
    "SynthSettings",
}
SECTIONS = {"DataSettings", "ModelSettings", "ScheduleSettings", "SamplerSettings", "TrainLoopSettings"}


def test_precedence(tmp_path):
    default = resolve(TrainSettings)
    assert default.train.lr == 1e-5 and default.model.sample_size == 64
    tiny = resolve(TrainSettings, preset="tiny")
    assert tiny.preset == "tiny" and tiny.model.sample_size == 32 and tiny.train.lr == 2e-3
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nlr = 0.005\nbatch_size = 8\n")
    from_file = resolve(TrainSettings, preset="tiny", config=cfg)
    assert from_file.train.lr == 0.005 and from_file.train.batch_size == 8 and from_file.model.sample_size == 32
    flags = resolve(TrainSettings, preset="tiny", config=cfg, overrides={"train.lr": 0.1, "train.seed": UNSET})
    assert flags.train.lr == 0.1 and flags.train.batch_size == 8 and flags.train.seed == 0


def test_none_is_a_value_and_unset_is_not_given(tmp_path):
    assert resolve(TrainSettings, preset="tiny").train.max_minutes == 30  # the preset's budget
    s = resolve(TrainSettings, preset="tiny", overrides={"train.max_minutes": None, "train.snr_gamma": None})
    assert s.train.max_minutes is None and s.train.snr_gamma is None
    assert resolve(TrainSettings, preset="tiny", overrides={"train.max_minutes": UNSET}).train.max_minutes == 30
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"train": {"max_minutes": None, "grad_clip": None}}))  # JSON null
    from_file = resolve(TrainSettings, preset="tiny", config=cfg)
    assert from_file.train.max_minutes is None and from_file.train.grad_clip is None
    assert (
        resolve(TrainSettings, preset="tiny", config=cfg, overrides={"train.max_minutes": 5.0}).train.max_minutes == 5.0
    )  # flags still win


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


def settings_models() -> dict[str, type]:
    """Every settings model in iclevr, found by importing each module: Section subclasses and *Settings models."""
    import importlib
    import inspect
    import pkgutil

    from pydantic import BaseModel

    import iclevr
    from iclevr.settings import Section

    found = {}
    for info in pkgutil.walk_packages(iclevr.__path__, "iclevr."):
        if info.name.endswith("__main__"):  # running it would start the CLI
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseModel)
                and obj.__module__ == module.__name__
                and obj is not Section
                and (issubclass(obj, Section) or obj.__name__.endswith("Settings"))
            ):
                found[obj.__name__] = obj
    return found


def test_every_settings_model_forbids_unknown_keys_and_describes_every_field():
    models = settings_models()
    assert COMMAND_MODELS | SECTIONS <= set(models), sorted(COMMAND_MODELS | SECTIONS - set(models))
    for name, cls in models.items():
        assert cls.model_config.get("extra") == "forbid", f"{name} accepts unknown keys"
        for field_name, field in cls.model_fields.items():
            assert (field.description or "").strip(), f"{name}.{field_name} has no description"


def test_written_settings_round_trip(tmp_path):
    s = resolve(TrainSettings, preset="tiny", overrides={"train.max_steps": 7})
    path = write_settings(s, tmp_path)
    again = TrainSettings.model_validate_json(path.read_text())
    assert again == s


def test_merge_helpers():
    assert unflatten({"a.b": 1, "c": None, "d": 2, "e": UNSET}) == {"a": {"b": 1}, "c": None, "d": 2}
    section = {"b": 1}
    assert unflatten({"a": section, "a.c": 2}) == {"a": {"b": 1, "c": 2}}
    assert section == {"b": 1}  # the caller's dict is not written into
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
