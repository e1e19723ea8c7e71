"""A --config value survives every command unless the user types the flag; None can be set on purpose.

Each command runs with --print-config, so nothing heavy runs: the printed JSON is the settings the command
would use. The config values are chosen to differ from every default and from every flag's default.
"""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from iclevr.cli.app import app

runner = CliRunner()

SAMPLER = {"device": "cpu", "sampler": "dpmpp", "steps": 7, "guidance_scale": 3.5}
SAMPLER_EXPECTED = {
    "sampler.device": "cpu",
    "sampler.sampler": "dpmpp",
    "sampler.steps": 7,
    "sampler.guidance_scale": 3.5,
}

# command: (arguments, config file, expected from the config, a typed flag, expected from the flag)
CASES = {
    "train": (
        ["train"],
        {"preset": "tiny", "train": {"device": "cpu", "lr": 0.003}, "sampler": SAMPLER},
        {"train.device": "cpu", "train.lr": 0.003, **SAMPLER_EXPECTED},
        ["--device", "auto", "--lr", "0.01"],
        {"train.device": "auto", "train.lr": 0.01},
    ),
    "sample": (
        ["sample", "--checkpoint", "{w}", "--labels", "red cube"],
        {"sampler": SAMPLER, "num": 4},
        {"num": 4, **SAMPLER_EXPECTED},
        ["--device", "auto", "--steps", "3"],
        {"sampler.device": "auto", "sampler.steps": 3},
    ),
    "denoise-trace": (
        ["denoise-trace", "--checkpoint", "{w}"],
        {"sampler": SAMPLER, "frames": 9},
        {"frames": 9, **SAMPLER_EXPECTED},
        ["--device", "auto", "--sampler", "ddim"],
        {"sampler.device": "auto", "sampler.sampler": "ddim"},
    ),
    "eval": (
        ["eval"],
        {"sampler": SAMPLER, "seeds": [4, 5]},
        {"seeds": [4, 5], **SAMPLER_EXPECTED},
        ["--device", "auto", "--seeds", "1"],
        {"sampler.device": "auto", "seeds": [1]},
    ),
    "evaluator train": (
        ["evaluator", "train"],
        {"device": "cpu", "pool": 123, "lr": 0.01},
        {"device": "cpu", "pool": 123, "lr": 0.01},
        ["--device", "auto", "--pool", "16000"],
        {"device": "auto", "pool": 16000},
    ),
    "data synth": (
        ["data", "synth"],
        {"scenes": 7, "seed": 3, "size": [64, 48]},
        {"scenes": 7, "seed": 3, "size": [64, 48]},
        ["--scenes", "6003", "--size", "128x96"],
        {"scenes": 6003, "size": [128, 96]},
    ),
    "compare-schedules": (
        ["compare-schedules"],
        {"sampler": SAMPLER, "max_steps": 5, "eval_seeds": [3]},
        {"max_steps": 5, "eval_seeds": [3], **SAMPLER_EXPECTED},
        ["--steps", "4", "--eval-seeds", "0,1"],
        {"sampler.steps": 4, "eval_seeds": [0, 1]},
    ),
    "demo": (
        ["demo"],
        {"device": "cpu", "minutes": 3, "eval_seeds": [7]},
        {"device": "cpu", "minutes": 3},
        ["--device", "auto", "--minutes", "10"],
        {"device": "auto", "minutes": 10},
    ),
}


@pytest.fixture
def weights(tmp_path, tiny_model_cfg):
    """Tiny random weights whose metadata stores another sampler (ddim, 6 steps, guidance 2)."""
    from iclevr.model import build_model
    from iclevr.settings import SamplerSettings, ScheduleSettings
    from iclevr.weights import save_weights

    torch.manual_seed(0)
    return save_weights(
        build_model(tiny_model_cfg),
        tmp_path / "w.safetensors",
        model_cfg=tiny_model_cfg,
        schedule_cfg=ScheduleSettings(),
        sampler_cfg=SamplerSettings(sampler="ddim", steps=6),
    )


def printed(args: list, config: dict, tmp_path, weights) -> dict:
    """The settings a command prints with --print-config and this config file."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    args = [str(a).format(w=weights) for a in args]
    r = runner.invoke(app, [*args, "--config", str(path), "--print-config"])
    assert r.exit_code == 0, r.output + r.stderr
    return json.loads(r.stdout)


def get(settings: dict, dotted: str):
    for part in dotted.split("."):
        settings = settings[part]
    return settings


@pytest.mark.parametrize("command", list(CASES))
def test_config_values_survive_each_command(command, tmp_path, weights):
    args, config, expected, _, _ = CASES[command]
    settings = printed(args, config, tmp_path, weights)
    assert {key: get(settings, key) for key in expected} == expected


@pytest.mark.parametrize("command", list(CASES))
def test_a_typed_flag_wins_over_the_config(command, tmp_path, weights):
    args, config, expected, flags, from_flags = CASES[command]
    settings = printed([*args, *flags], config, tmp_path, weights)
    assert {key: get(settings, key) for key in from_flags} == from_flags  # even where it equals the default
    untouched = {key: value for key, value in expected.items() if key not in from_flags}
    assert {key: get(settings, key) for key in untouched} == untouched


def test_none_can_be_set_on_purpose(tmp_path, weights):
    # tiny's preset has a 30-minute budget; a config's null and a typed `none` both remove it
    assert get(printed(["train", "--preset", "tiny"], {}, tmp_path, weights), "train.max_minutes") == 30
    s = printed(["train", "--preset", "tiny"], {"train": {"max_minutes": None, "max_steps": 5}}, tmp_path, weights)
    assert s["train"]["max_minutes"] is None and s["train"]["max_steps"] == 5
    s = printed(["train", "--preset", "tiny", "--max-minutes", "none", "--max-steps", "5"], {}, tmp_path, weights)
    assert s["train"]["max_minutes"] is None
    # `--steps none`: the sampler's own default, neither the config's 7 nor the weights' stored 6
    s = printed(
        ["sample", "--checkpoint", "{w}", "--labels", "red cube", "--steps", "none"],
        {"sampler": {"sampler": "ddim", "steps": 7}},
        tmp_path,
        weights,
    )
    assert s["sampler"]["sampler"] == "ddim" and s["sampler"]["steps"] is None
    s = printed(["evaluator", "train", "--minutes", "None", "--steps", "4"], {}, tmp_path, weights)
    assert s["minutes"] is None and s["max_steps"] == 4


def test_weights_fill_only_what_neither_config_nor_flags_set(tmp_path, weights):
    s = printed(
        ["sample", "--checkpoint", "{w}", "--labels", "red cube"], {"sampler": {"device": "cpu"}}, tmp_path, weights
    )
    assert s["sampler"]["sampler"] == "ddim" and s["sampler"]["steps"] == 6 and s["sampler"]["device"] == "cpu"


def test_booleans_have_an_off_switch(tmp_path, weights):
    on = {"x0_row": True, "gif": True}
    s = printed(["denoise-trace", "--checkpoint", "{w}"], on, tmp_path, weights)
    assert s["x0_row"] is True and s["gif"] is True
    s = printed(["denoise-trace", "--checkpoint", "{w}", "--no-x0-row", "--no-gif"], on, tmp_path, weights)
    assert s["x0_row"] is False and s["gif"] is False
    s = printed(
        ["sample", "--checkpoint", "{w}", "--labels", "red cube", "--no-save-individual"],
        {"save_individual": True},
        tmp_path,
        weights,
    )
    assert s["save_individual"] is False
    s = printed(["train", "--preset", "tiny", "--no-compile"], {"train": {"compile": True}}, tmp_path, weights)
    assert s["train"]["compile"] is False


def test_bad_none_and_bad_numbers_are_one_clear_error(tmp_path, weights):
    r = runner.invoke(app, ["train", "--preset", "tiny", "--max-steps", "many", "--print-config"])
    assert r.exit_code == 2 and "--max-steps" in r.output + r.stderr and "Traceback" not in r.output + r.stderr
    r = runner.invoke(app, ["data", "synth", "--size", "none", "--print-config"])
    assert r.exit_code == 2 and "WIDTHxHEIGHT" in r.stderr


def test_typed_overrides_reads_only_typed_options():
    from iclevr.cli.common import typed_overrides

    seen = {}
    demo = typer.Typer()

    @demo.command()
    def cmd(
        ctx: typer.Context, device: str = "auto", seeds: str = "0", flag: bool = typer.Option(False, "--flag/--no-flag")
    ):
        seen.update(
            typed_overrides(
                ctx, {"device": "sampler.device", "seeds": ("seeds", lambda t: t.split(",")), "flag": "flag"}
            )
        )

    assert runner.invoke(demo, []).exit_code == 0 and seen == {}
    assert runner.invoke(demo, ["--device", "auto", "--seeds", "1,2", "--no-flag"]).exit_code == 0
    assert seen == {"sampler.device": "auto", "seeds": ["1", "2"], "flag": False}


@pytest.mark.parametrize("text, values", [("0,1,2", [0, 1, 2]), (" 3 ", [3]), ("4,,5,", [4, 5])])
def test_parse_int_list(text, values):
    from iclevr.cli.common import parse_int_list

    assert parse_int_list(text, "--seeds") == values


@pytest.mark.parametrize(
    "text, message",
    [
        ("a,b", "--eval-seeds must be comma-separated integers"),
        ("", "--eval-seeds needs at least one"),
        ("1,-2", "--eval-seeds needs at least one non-negative"),
    ],
)
def test_parse_int_list_errors_name_the_option(text, message):
    from iclevr.cli.common import parse_int_list
    from iclevr.errors import UserError

    with pytest.raises(UserError, match=message):
        parse_int_list(text, "--eval-seeds")
