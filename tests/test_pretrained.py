"""The pretrained model shipped inside the package (iclevr/assets/pretrained.safetensors): size, metadata, and a
small real check of its quality that random weights of the same design fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

SHIPPED = Path(__file__).resolve().parents[1] / "iclevr" / "assets" / "pretrained.safetensors"
CHECK_CONDITIONS = 8  # the first val conditions: never test or new_test ones (tests/test_val.py)


def test_the_shipped_file_is_small_float16_and_fully_described():
    from iclevr.autoencoder import PACKAGED as AUTOENCODER
    from iclevr.evaluation.evaluator import PACKAGED, file_sha256
    from iclevr.settings import TrainSettings
    from iclevr.weights import read_info

    assert SHIPPED.is_file(), "iclevr/assets/pretrained.safetensors is missing"
    # weights + the autoencoder they decode with: benchmarks/package_model.py MAX_MB (issue 26)
    assert SHIPPED.stat().st_size + AUTOENCODER.stat().st_size <= 20e6
    from safetensors import safe_open

    with safe_open(str(SHIPPED), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    info = read_info(SHIPPED)
    record = info.packaged
    settings = TrainSettings.model_validate(record["settings"])
    assert settings.model == info.model and settings.model.condition == "tokens"
    assert info.model.design == "latent" and info.model.autoencoder_sha256 == file_sha256(AUTOENCODER)  # native 64x64
    assert record["steps"] == info.step == sum(s["steps"] for s in record["stages"]) > 0
    assert record["images_seen"] >= record["steps"] * settings.train.batch_size
    assert record["wall_s"] > 0 and "iclevr train --preset tiny-latent" in record["command"] and record["machine"]
    assert record["evaluator"]["sha256"] == file_sha256(PACKAGED)  # scored by the evaluator that ships beside it
    for split in ("val", "test", "new_test"):
        assert 0 < record["accuracy"][split]["mean"] <= 1 and len(record["accuracy"][split]["per_seed"]) == 3


def _accuracy(model, info, conditions, evaluator) -> float:
    """Course accuracy of one sampling seed of `conditions` drawn by `model` with its stored sampler."""
    from iclevr.evaluation.run import generate, score_split

    runs = generate(model, info, info.sampler.model_copy(update={"batch_size": len(conditions)}), conditions, [0])
    return score_split(evaluator, runs, conditions)["mean"]


@pytest.mark.slow
def test_the_shipped_model_draws_what_is_asked_and_random_weights_do_not(one_thread):
    from iclevr.data.course import load_conditions
    from iclevr.evaluation.evaluator import PACKAGED, load_own
    from iclevr.model import build_model
    from iclevr.weights import attach_autoencoder, load_weights

    conditions = load_conditions(None, ("val",))["val"][:CHECK_CONDITIONS]
    evaluator = load_own(PACKAGED)
    model, info = load_weights(SHIPPED, torch.device("cpu"))
    shipped = _accuracy(model, info, conditions, evaluator)
    torch.manual_seed(0)
    random_model = build_model(info.model).eval()
    attach_autoencoder(random_model, info)  # the same decoder: only the diffusion weights are random
    random = _accuracy(random_model, info, conditions, evaluator)
    recorded = json.dumps(info.packaged["accuracy"]["val"]["mean"])
    assert shipped >= 0.5, (
        f"the shipped model scored {shipped:.3f} on {CHECK_CONDITIONS} val conditions (its record says val {recorded})"
    )
    assert random <= 0.3 < shipped
