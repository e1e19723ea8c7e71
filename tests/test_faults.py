"""The faults a careless user found (issue 30): each ends in one `error:` line naming the problem, exit code 2,
and every file of the user's left as it was."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL
from evaluator_standin import colour_reader
from typer.testing import CliRunner

from iclevr.cli.app import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def one_error(r, *needles: str) -> str:
    """Exit 2 and exactly one stderr line, `error: ...`, holding every needle; returns that line."""
    out = r.output + r.stderr
    assert r.exit_code == 2, f"exit {r.exit_code}\n{out}"
    assert "Traceback" not in out and "unexpected" not in out, out
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file() and p.name != "train.lock"
    }


@pytest.fixture
def weights(tmp_path, tiny_model_cfg) -> Path:
    """One tiny weights file of the test UNet."""
    from iclevr.model import build_model
    from iclevr.settings import SamplerSettings, ScheduleSettings
    from iclevr.weights import save_weights

    torch.manual_seed(0)
    return save_weights(
        build_model(tiny_model_cfg),
        tmp_path / "tiny.safetensors",
        model_cfg=tiny_model_cfg,
        schedule_cfg=ScheduleSettings(),
        sampler_cfg=SamplerSettings(steps=2),
        preset="tiny",
    )


def tiny_run(course_kit: Path, tmp_path: Path, steps: int = 2, **train) -> tuple[Path, list[str]]:
    """Train the tiny test UNet for `steps` steps through the CLI; returns (run folder, the train arguments)."""
    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps(
            {
                "preset": "tiny",
                "model": TINY_MODEL,
                "sampler": {"sampler": "ddim", "steps": 2},
                "train": {"log_every": 1, "lr": 1e-3, "device": "cpu", "batch_size": 4, "sample_grids": "off", **train},
            }
        )
    )
    run = tmp_path / "run"
    args = ["train", "--config", str(cfg), "--data-dir", str(course_kit), "--out", str(run)]
    r = runner.invoke(app, [*args, "--max-steps", str(steps)])
    assert r.exit_code == 0, r.output + r.stderr
    return run, args


# 1. compare-schedules --plot-only on a finished study
def test_plot_only_never_rewrites_a_finished_study(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    (study / "report.json").write_text(
        json.dumps(
            {
                "settings": {"schedules": ["linear"]},
                "table": [],
                "runs": [{"name": "linear"}],
                "choose_on": "val",
                "best": "linear",
            }
        )
    )
    (study / "schedules.png").write_bytes(b"the study's own figure")
    before = digest(study)
    r = runner.invoke(app, ["compare-schedules", "--plot-only", "--out", str(study)])
    one_error(r, str(study), "finished study", "new --out")
    assert digest(study) == before
    r = runner.invoke(app, ["compare-schedules", "--plot-only", "--out", str(tmp_path / "fresh")])
    assert r.exit_code == 0 and "runs" not in json.loads((tmp_path / "fresh" / "report.json").read_text())


# 2, 4, 6. evaluator export: an existing file, a folder, a junk evaluator
def test_evaluator_export_protects_its_out_and_refuses_junk(tmp_path):
    source = colour_reader(tmp_path / "checkpoint.pth")
    target = tmp_path / "copy.pth"
    target.write_text("precious")
    args = ["evaluator", "export", "--evaluator", str(source), "--out"]
    one_error(runner.invoke(app, [*args, str(target)]), f"{target} exists", "--overwrite")
    assert target.read_text() == "precious"
    one_error(
        runner.invoke(app, [*args, str(tmp_path)]), f"--out {tmp_path} is a folder", str(tmp_path / "checkpoint.pth")
    )
    r = runner.invoke(app, [*args, str(target), "--overwrite"])
    assert r.exit_code == 0, r.output + r.stderr
    assert torch.load(target, weights_only=True)["model"]["fc.0.weight"].shape == (24, 512)
    (tmp_path / "junk.pth").write_text("junk\n")
    one_error(
        runner.invoke(
            app, ["evaluator", "export", "--evaluator", str(tmp_path / "junk.pth"), "--out", str(tmp_path / "x.pth")]
        ),
        "junk.pth is not a readable torch checkpoint",
    )


def test_eval_refuses_a_junk_evaluator(tmp_path, course_kit, weights):
    (tmp_path / "junk.pth").write_text("junk\n")
    r = runner.invoke(
        app,
        [
            "eval",
            "--checkpoint",
            str(weights),
            "--data-dir",
            str(course_kit),
            "--evaluator",
            str(tmp_path / "junk.pth"),
            "--seeds",
            "0",
            "--out",
            str(tmp_path / "ev"),
        ],
    )
    one_error(r, "junk.pth is not a readable torch checkpoint")


# 4. --out naming an existing folder, for the commands that write one file
@pytest.mark.parametrize(
    "args,example",
    [
        (["sample", "--checkpoint", "{w}", "--labels", "red cube"], "samples.png"),
        (["denoise-trace", "--checkpoint", "{w}"], "trace.png"),
        (["data", "preview", "--data-dir", "{kit}"], "contact_sheet.png"),
    ],
)
def test_out_naming_a_folder_is_refused_before_any_work(tmp_path, course_kit, weights, args, example):
    folder = tmp_path / "existing"
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    args = [a.format(w=weights, kit=course_kit) for a in args]
    one_error(runner.invoke(app, [*args, "--out", str(folder)]), f"--out {folder} is a folder", str(folder / example))
    assert digest(folder) == {"keep.txt": hashlib.sha256(b"precious").hexdigest()}


def test_a_file_writer_refuses_a_folder_in_place_of_its_file(tmp_path):
    from iclevr.errors import UserError
    from iclevr.fileio import atomic_write_text

    (tmp_path / "report.json").mkdir()
    with pytest.raises(UserError, match="report.json: it is a folder, not a file"):
        atomic_write_text(tmp_path / "report.json", "{}")


# 5. export --out naming an existing file; and folder-writing commands given a file
@pytest.mark.parametrize("extra", [[], ["--overwrite"]])
def test_export_to_an_existing_file_is_refused(tmp_path, weights, extra):
    target = tmp_path / "afile.txt"
    target.write_text("precious")
    r = runner.invoke(app, ["export", "--checkpoint", str(weights), "--out", str(target), *extra])
    one_error(r, f"--out {target} is a file", "folder")
    assert target.read_text() == "precious"


@pytest.mark.parametrize(
    "args", [["data", "synth", "--scenes", "1"], ["eval", "--checkpoint", "{w}", "--data-dir", "{kit}", "--seeds", "0"]]
)
def test_a_folder_out_naming_a_file_is_refused(tmp_path, course_kit, weights, args):
    target = tmp_path / "afile.txt"
    target.write_text("precious")
    args = [a.format(w=weights, kit=course_kit) for a in args]
    one_error(runner.invoke(app, [*args, "--out", str(target)]), str(target), "is a file, not a folder")
    assert target.read_text() == "precious"


# 7. a weights file with one tensor of the wrong shape
def test_weights_with_a_wrong_shape_name_the_tensor(tmp_path, weights):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(weights))
    key = next(k for k, v in state.items() if v.ndim == 4)
    state[key] = torch.zeros(1, *state[key].shape[1:])
    save_file(state, str(tmp_path / "reshaped.safetensors"), metadata=meta)
    r = runner.invoke(
        app,
        [
            "sample",
            "--checkpoint",
            str(tmp_path / "reshaped.safetensors"),
            "--labels",
            "red cube",
            "--out",
            str(tmp_path / "grid.png"),
        ],
    )
    one_error(r, f"tensor {key} has shape (1, ", "re-export")
    assert not (tmp_path / "grid.png").exists()


# 8. an empty condition list
@pytest.mark.parametrize("split", ["test", "new_test"])
def test_an_empty_condition_list_is_refused(tmp_path, course_kit, weights, split):
    (course_kit / f"{split}.json").write_text("[]")
    one_error(runner.invoke(app, ["data", "check", "--data-dir", str(course_kit)]), f"{split}.json lists no conditions")
    r = runner.invoke(
        app,
        [
            "eval",
            "--checkpoint",
            str(weights),
            "--data-dir",
            str(course_kit),
            "--split",
            split,
            "--seeds",
            "0",
            "--out",
            str(tmp_path / "ev"),
        ],
    )
    one_error(r, f"{split}.json lists no conditions")


# 9. an infinite learning rate, and weights that became non-finite
@pytest.mark.parametrize(
    "args",
    [
        ["train", "--preset", "tiny", "--lr", "inf"],
        ["train", "--preset", "tiny", "--lr", "inf", "--dry-run"],
        ["sample", "--labels", "red cube", "--guidance-scale", "inf"],
        ["compare-schedules", "--max-steps", "1", "--guidance-scale", "nan"],
    ],
)
def test_non_finite_numbers_are_refused(args):
    one_error(runner.invoke(app, args), "finite number")


def test_non_finite_weights_are_never_saved(course_kit, tmp_path):
    """lr 1e39 (float32 overflows): the first step's loss is finite, its weights are inf; nothing is saved."""
    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps(
            {
                "preset": "tiny",
                "model": TINY_MODEL,
                "train": {
                    "device": "cpu",
                    "batch_size": 4,
                    "sample_grids": "off",
                    "grad_clip": None,
                    "lr_schedule": "constant",
                    "warmup_steps": 0,
                },
            }
        )
    )
    run = tmp_path / "run"
    r = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(cfg),
            "--data-dir",
            str(course_kit),
            "--out",
            str(run),
            "--max-steps",
            "1",
            "--lr",
            "1e39",
        ],
    )
    one_error(r, "non-finite", "no state was saved", "lower --lr (now 1e+39)", f"--resume {run}")
    assert not list((run / "state").glob("*.pt")) and not (run / "weights").exists()


def test_a_non_finite_snapshot_keeps_the_last_good_state(course_kit, tmp_path):
    from iclevr.ema import EMA
    from iclevr.errors import TrainingInterrupted
    from iclevr.model import build_model
    from iclevr.settings import TrainSettings, resolve
    from iclevr.training.run_folder import save_snapshot

    settings = resolve(TrainSettings, preset="tiny", overrides={"model": TINY_MODEL, "out": str(tmp_path)})
    model = build_model(settings.model)
    ema = EMA(model, 0.9, True)
    opt = torch.optim.Adam(model.parameters())
    save = dict(model=model, ema=ema, optimizer=opt, scaler=None, wall_s=1.0, steps_per_epoch=3)
    save_snapshot(tmp_path, settings, step=1, **save)
    good = digest(tmp_path)
    with torch.no_grad():
        next(ema.model.parameters())[0].fill_(float("nan"))  # only the EMA copy: still refused
    with pytest.raises(TrainingInterrupted, match="the last good state step-00000001.pt is kept"):
        save_snapshot(tmp_path, settings, step=2, **save)
    assert digest(tmp_path) == good


# 3. every state unreadable, weights intact; the damaged-state warning is one line
def test_resume_with_only_damaged_states_keeps_the_weights(course_kit, tmp_path):
    run, args = tiny_run(course_kit, tmp_path, steps=3, checkpoint_every_steps=1, keep_states=2)
    for state in (run / "state").glob("*.pt"):
        state.write_bytes(b"")
    before = digest(run / "weights")
    r = runner.invoke(app, ["train", "--resume", str(run), "--max-steps", "6"])
    one_error(r, f"cannot resume {run}", "none of its 2 training states can be read", "weights/ are left")
    assert digest(run / "weights") == before
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("cannot be read" in w and "older state" in w for w in warnings), r.stderr
    assert "UserWarning" not in r.stderr and ".py:" not in r.stderr
    for state in (run / "state").glob("*.pt"):
        state.unlink()  # no state at all, weights still there: a new run would replace them
    one_error(
        runner.invoke(app, ["train", "--resume", str(run), "--max-steps", "6"]), "holds weights but no training state"
    )
    assert digest(run / "weights") == before


# 10. --resume with another preset; 11. --resume of nothing
def test_resume_refuses_another_preset_and_a_missing_or_empty_folder(course_kit, tmp_path):
    run, _ = tiny_run(course_kit, tmp_path, steps=2)
    before = digest(run)
    one_error(
        runner.invoke(app, ["train", "--resume", str(run), "--preset", "small", "--max-steps", "4"]),
        "trained with preset tiny, not small",
        "leave out --preset",
    )
    assert digest(run) == before
    typo = tmp_path / "rnu"
    one_error(
        runner.invoke(app, ["train", "--resume", str(typo), "--max-steps", "4"]),
        f"--resume {typo}: no such folder",
        "--out",
    )
    assert not typo.exists()
    (tmp_path / "empty").mkdir()
    one_error(
        runner.invoke(app, ["train", "--resume", str(tmp_path / "empty"), "--max-steps", "4"]), "is not a run folder"
    )
    assert list((tmp_path / "empty").iterdir()) == []
    r = runner.invoke(app, ["train", "--resume", str(run), "--preset", "tiny", "--max-steps", "4"])
    assert r.exit_code == 0 and "done: max_steps=4 reached at step 4" in " ".join(r.output.split()), r.output
    new = tmp_path / "requeued"  # --out and --resume of one folder: started when not there (docs/slurm-train.sbatch)
    r = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(tmp_path / "cfg.json"),
            "--data-dir",
            str(course_kit),
            "--out",
            str(new),
            "--resume",
            str(new),
            "--max-steps",
            "1",
        ],
    )
    assert r.exit_code == 0 and (new / "weights" / "ema.safetensors").is_file(), r.output + r.stderr
