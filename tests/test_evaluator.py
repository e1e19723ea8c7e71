"""Evaluator files: the course checkpoint.pth (safe loading, key checks), our safetensors, tiny training."""

from __future__ import annotations

import pytest
import torch

from iclevr.errors import UserError
from iclevr.evaluation.evaluator import (build_evaluator, export_course, forward_logits, load_course, load_file, load_own,
                              own_default_path, save_own)
from iclevr.evaluation.fit import EvaluatorTrainSettings, augment, ensure_own_evaluator, preprocess


def _course_file(path, net=None):
    net = net or build_evaluator()
    torch.save({"model": net.state_dict()}, path)
    return net.eval()


def test_course_checkpoint_loads_and_scores(tmp_path):
    torch.manual_seed(0)
    net = _course_file(tmp_path / "checkpoint.pth")
    ev = load_course(tmp_path / "checkpoint.pth", device="cpu")
    x = torch.rand(3, 3, 64, 64) * 2 - 1  # (B, 3, 64, 64) in [-1, 1]
    s = ev.scores(x)
    assert ev.kind == "course" and s.shape == (3, 24) and ((s >= 0) & (s <= 1)).all()
    with torch.no_grad():
        torch.testing.assert_close(s, net(x))
        torch.testing.assert_close(torch.sigmoid(forward_logits(ev.net, x)), s)
    with pytest.raises(ValueError):
        ev.scores(torch.zeros(1, 3, 32, 32))  # the evaluator does no resizing itself


class _Evil:
    """A pickle payload: unpickling it would create a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker, path = tmp_path / "pwned.txt", tmp_path / "checkpoint.pth"
    torch.save({"model": _Evil(marker)}, path)
    with pytest.raises(UserError, match="refused"):
        load_course(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: an unsafe load would have run it
    assert marker.exists()


def test_wrong_keys_shapes_and_formats_are_clear_errors(tmp_path):
    bad_keys = tmp_path / "keys.pth"
    torch.save({"model": {"conv.weight": torch.zeros(1)}}, bad_keys)
    with pytest.raises(UserError, match="missing"):
        load_course(bad_keys)
    state = build_evaluator().state_dict()
    state["fc.0.weight"], state["fc.0.bias"] = torch.zeros(10, 512), torch.zeros(10)
    bad_shape = tmp_path / "shape.pth"
    torch.save({"model": state}, bad_shape)
    with pytest.raises(UserError, match="shape"):
        load_course(bad_shape)
    no_model = tmp_path / "nomodel.pth"
    torch.save({"state_dict": {}}, no_model)
    with pytest.raises(UserError, match='key "model"'):
        load_course(no_model)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="not a readable"):
        load_course(junk)
    with pytest.raises(UserError, match="not found"):
        load_file(tmp_path / "missing.pth")


def test_own_format_round_trip_and_course_export(tmp_path):
    torch.manual_seed(1)
    net = build_evaluator().eval()
    info = {"heldout": {"a": 0.5}}
    save_own(net, tmp_path / "ev.safetensors", info)
    ev = load_file(tmp_path / "ev.safetensors")
    assert ev.kind == "own" and ev.info == info and ev.describe()["heldout"] == {"a": 0.5}
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    export_course(ev, tmp_path / "checkpoint.pth")
    course = load_file(tmp_path / "checkpoint.pth")
    assert course.kind == "course"
    torch.testing.assert_close(course.scores(x), ev.scores(x))
    raw = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert list(raw) == ["model"] and "fc.0.weight" in raw["model"]
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(UserError, match="not an iclevr evaluator"):
        load_own(tmp_path / "foreign.safetensors")


def test_preprocess_and_augment_keep_shape_and_range():
    frames = torch.randint(0, 256, (4, 3, 48, 64), dtype=torch.uint8)
    low = torch.tensor([True, False, True, False])
    x = preprocess(frames, low)
    assert x.shape == (4, 3, 64, 64) and x.min() >= -1.01 and x.max() <= 1.01
    full = preprocess(frames, torch.zeros(4, dtype=torch.bool))
    assert torch.allclose(x[1], full[1]) and not torch.allclose(x[0], full[0])  # the 32x32 path blurs
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1


TINY = {"pool": 24, "max_steps": 2, "minutes": None, "heldout": 6, "batch_size": 8, "workers": 1}


def test_first_use_training_saves_heldout_metadata_and_caches():
    from rich.console import Console

    console = Console(record=True, width=200)
    ev = ensure_own_evaluator(console=console, settings=EvaluatorTrainSettings(**TINY))
    assert ev.path == own_default_path() and own_default_path().is_file() and ev.kind == "own"
    assert "training the project's own evaluator" in console.export_text()
    assert len(ev.info["heldout"]) == 4 and all(0 <= a <= 1 for a in ev.info["heldout"].values())
    assert ev.info["train"]["steps"] == 2 and ev.info["train"]["pool"] == 24
    mtime = own_default_path().stat().st_mtime_ns
    again = ensure_own_evaluator(console=console, settings=EvaluatorTrainSettings(**TINY))
    assert own_default_path().stat().st_mtime_ns == mtime and again.info == ev.info  # cached, not retrained


def test_training_pool_mixes_small_renders_deterministically():
    from iclevr.data.world.render import render_examples
    from iclevr.evaluation.fit import training_pool

    settings = EvaluatorTrainSettings(pool=8, small_render_fraction=0.25, workers=1, max_objects=2)
    frames, y = training_pool(settings)
    assert frames.shape == (8, 3, 48, 64) and frames.dtype == torch.uint8 and y.shape == (8, 24)
    assert torch.equal(frames, training_pool(settings)[0])  # same seed, same pool
    full, _ = render_examples(6, seed=0, max_objects=2)  # the first 6 are ordinary 64x48 renders
    assert torch.equal(frames[:6], torch.from_numpy(full).permute(0, 3, 1, 2))
    assert y[6:].sum(1).min() >= 1 and not torch.equal(frames[6:], frames[:2])  # 2 small, upsampled scenes
    small, _ = training_pool(settings.model_copy(update={"small_render_fraction": 1.0}))
    sharp = (frames[:6].float().diff(dim=-1).abs().mean(), small.float().diff(dim=-1).abs().mean())
    assert sharp[1] < sharp[0]  # drawn at 32x24 and upsampled: smoother than native 64x48 renders


def test_fine_tuning_starts_from_the_init_weights(tmp_path):
    from iclevr.evaluation.fit import fit

    start = build_evaluator()
    save_own(start, tmp_path / "start.safetensors", {"heldout": {}})
    frames, y = torch.randint(0, 256, (8, 3, 48, 64), dtype=torch.uint8), torch.zeros(8, 24)
    settings = EvaluatorTrainSettings(init=tmp_path / "start.safetensors", max_steps=1, minutes=None,
                                      batch_size=4, lr=1e-9, warmup_steps=0)
    net, stats = fit(settings, frames, y, "cpu")
    assert stats["steps"] == 1
    tuned = net.state_dict()
    for key, value in start.state_dict().items():  # a 1e-9 step away from the init, far from a fresh init
        if value.is_floating_point() and "running" not in key:
            assert torch.allclose(tuned[key], value, atol=1e-5), key
    without_init, _ = fit(settings.model_copy(update={"init": None}), frames, y, "cpu")
    assert not torch.allclose(without_init.state_dict()["conv1.weight"], tuned["conv1.weight"])
