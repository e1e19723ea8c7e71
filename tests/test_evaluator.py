"""Evaluator files: the course checkpoint.pth (safe loading, key checks), our safetensors, which evaluator is
chosen, and tiny training."""

from __future__ import annotations

import pytest
import torch

from iclevr.errors import UserError
from iclevr.evaluation.evaluator import (
    PACKAGED,
    build_evaluator,
    choose_evaluator_file,
    export_course,
    forward_logits,
    load_course,
    load_file,
    load_own,
    own_default_path,
    save_own,
)
from iclevr.evaluation.fit import EvaluatorTrainSettings, augment, load_evaluator, preprocess


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


def test_preprocess_maps_uint8_to_the_model_range():
    frames = torch.randint(0, 256, (4, 3, 48, 64), dtype=torch.uint8)
    frames[2], frames[3] = 0, 255
    low = torch.tensor([True, False, True, False])
    x = preprocess(frames, low)
    assert x.shape == (4, 3, 64, 64)
    assert torch.equal(x[2], torch.full_like(x[2], -1.0)) and torch.equal(x[3], torch.full_like(x[3], 1.0))
    assert x.min() >= -1 and x.max() <= 1  # bilinear weights are non-negative: no overshoot, no clamp needed
    full = preprocess(frames, torch.zeros(4, dtype=torch.bool))
    assert torch.allclose(x[1], full[1]) and not torch.allclose(x[0], full[0])  # the 32x32 path blurs


def test_augment_stays_in_range_keeps_hues_and_moves_objects_little():
    gen = torch.Generator().manual_seed(0)
    # saturated inputs: contrast, brightness and noise push them past +-1, so only the final clamp keeps them in
    x = torch.where(torch.rand(8, 1, 64, 64, generator=gen) < 0.5, 1.0, -1.0).expand(8, 3, 64, 64)
    y = augment(x, gen)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    red = torch.tensor([0.8, -0.8, -0.8])[None, :, None, None].expand(8, 3, 64, 64)
    y = augment(red, gen)  # (8, 3, 64, 64): brightness/contrast act on all channels alike, so red stays red
    assert (y[:, 0] > y[:, 1] + 1).all() and (y[:, 0] > y[:, 2] + 1).all()
    dot = torch.full((8, 3, 64, 64), -1.0)
    dot[:, :, 31:34, 19:22] = 1.0  # a 3x3 object centred at row 32, column 20
    y = augment(dot, gen).mean(1)  # (8, 64, 64)
    for image in y:
        row, col = divmod(int(image.argmax()), 64)
        assert abs(row - 32) <= 4 and min(abs(col - 20), abs(col - 43)) <= 4  # shift <= 3 px, maybe mirrored


def test_the_evaluator_choice_and_its_order(tmp_path, monkeypatch):
    data = tmp_path / "kit"
    data.mkdir()
    assert choose_evaluator_file(None, data) is None  # nothing anywhere (packaged one disabled): train one
    assert choose_evaluator_file(tmp_path / "mine.pth", data) == tmp_path / "mine.pth"  # named: used, even unmade
    monkeypatch.delenv("ICLEVR_NO_PACKAGED_EVALUATOR")
    assert PACKAGED.is_file() and choose_evaluator_file(None, None) == PACKAGED  # shipped in iclevr/assets
    save_own(build_evaluator(), own_default_path(), {"heldout": {}})
    assert choose_evaluator_file(None, data) == own_default_path()  # the cached own one beats the packaged
    _course_file(data / "checkpoint.pth")
    assert choose_evaluator_file(None, data) == data / "checkpoint.pth"  # the course's beats the own
    assert choose_evaluator_file(None, None) == own_default_path()
    assert choose_evaluator_file(tmp_path / "mine.pth", data) == tmp_path / "mine.pth"


def test_a_damaged_cached_evaluator_is_removed_and_the_next_choice_used(monkeypatch):
    from rich.console import Console

    monkeypatch.delenv("ICLEVR_NO_PACKAGED_EVALUATOR")
    own_default_path().parent.mkdir(parents=True)
    own_default_path().write_bytes(b"half a file")
    console = Console(record=True, width=200)
    ev = load_evaluator(console=console)
    assert ev.path == PACKAGED and ev.kind == "own" and not own_default_path().exists()
    assert "unusable" in console.export_text()


TINY = {"pool": 24, "max_steps": 2, "minutes": None, "heldout": 6, "batch_size": 8, "workers": 1}


@pytest.mark.slow
def test_first_use_training_saves_heldout_metadata_and_caches():
    from rich.console import Console

    console = Console(record=True, width=200)
    ev = load_evaluator(console=console, own=EvaluatorTrainSettings(**TINY))
    assert ev.path == own_default_path() and own_default_path().is_file() and ev.kind == "own"
    assert "training the project's own evaluator" in console.export_text()
    assert len(ev.info["heldout"]) == 4 and all(0 <= a <= 1 for a in ev.info["heldout"].values())
    assert ev.info["train"]["steps"] == 2 and ev.info["train"]["pool"] == 24
    mtime = own_default_path().stat().st_mtime_ns
    again = load_evaluator(console=console, own=EvaluatorTrainSettings(**TINY))
    assert own_default_path().stat().st_mtime_ns == mtime and again.info == ev.info  # cached, not retrained


def test_training_pool_mixes_small_renders_deterministically():
    from iclevr.data.world.scene import render_examples
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


@pytest.mark.slow
def test_fine_tuning_starts_from_the_init_weights(tmp_path):
    from iclevr.evaluation.fit import fit

    start = build_evaluator()
    save_own(start, tmp_path / "start.safetensors", {"heldout": {}})
    frames, y = torch.randint(0, 256, (8, 3, 48, 64), dtype=torch.uint8), torch.zeros(8, 24)
    settings = EvaluatorTrainSettings(
        init=tmp_path / "start.safetensors", max_steps=1, minutes=None, batch_size=4, lr=1e-9, warmup_steps=0
    )
    net, stats = fit(settings, frames, y, "cpu")
    assert stats["steps"] == 1
    tuned = net.state_dict()
    for key, value in start.state_dict().items():  # a 1e-9 step away from the init, far from a fresh init
        if value.is_floating_point() and "running" not in key:
            assert torch.allclose(tuned[key], value, atol=1e-5), key
    without_init, _ = fit(settings.model_copy(update={"init": None}), frames, y, "cpu")
    assert not torch.allclose(without_init.state_dict()["conv1.weight"], tuned["conv1.weight"])
