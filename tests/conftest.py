"""Shared fixtures: a small hand-made course-layout folder (no renderer needed) and a tiny model config."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from iclevr import labels as L

TINY_MODEL = {  # a UNet small enough that a CPU step takes milliseconds
    "sample_size": 16,
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}


def write_course_kit(
    root: Path, scenes: int = 4, size=(40, 30), rgba: bool = True, seed: int = 0, extra_png: bool = True
) -> Path:
    """Write a minimal course kit: `_0/_1/_2` scenes of coloured boxes, objects/test/new_test JSON."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    images = root / "iclevr"
    images.mkdir(parents=True, exist_ok=True)
    train: dict[str, list[str]] = {}
    for s in range(scenes):
        objs = rng.sample(L.LABELS, 3)
        for k in range(3):
            name = f"CLEVR_train_{s:06d}_{k}.png"
            img = Image.new("RGBA" if rgba else "RGB", size, (128, 128, 128, 255) if rgba else (128, 128, 128))
            draw = ImageDraw.Draw(img)
            for j, obj in enumerate(objs[: k + 1]):
                c = L.COLOURS.index(obj.split()[0])
                draw.rectangle([4 + 11 * j, 8, 12 + 11 * j, 20], fill=(30 * c, 255 - 30 * c, 90, 255))
            img.save(images / name)
            train[name] = objs[: k + 1]
    if extra_png:
        Image.new("RGB", size).save(images / "not_in_train.png")
    (root / "train.json").write_text(json.dumps(train))
    (root / "objects.json").write_text(json.dumps(L.LABEL_TO_INDEX))
    tests = [rng.sample(L.LABELS, 1 + i % 3) for i in range(32)]
    new_tests = [rng.sample(L.LABELS, 2 + i % 2) for i in range(32)]
    (root / "test.json").write_text(json.dumps(tests))
    (root / "new_test.json").write_text(json.dumps(new_tests))
    return root


@pytest.fixture
def course_kit(tmp_path: Path) -> Path:
    """A small course-layout folder with RGBA PNGs, `_0/_1/_2` naming and an extra PNG."""
    return write_course_kit(tmp_path / "kit")


def benchmark_module(name: str):
    """benchmarks/<name>.py, imported from its file (benchmarks/ is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_model_cfg():
    """ModelSettings of a very small UNet (16x16)."""
    from iclevr.settings import ModelSettings

    return ModelSettings(**TINY_MODEL)


@pytest.fixture
def tiny_run(tiny_model_cfg) -> Path:
    """A run folder under $ICLEVR_CHECKPOINTS holding a tiny random-weight UNet."""
    import os

    import torch

    from iclevr.model import build_model
    from iclevr.settings import SamplerSettings, ScheduleSettings
    from iclevr.weights import save_weights

    torch.manual_seed(0)
    run = Path(os.environ["ICLEVR_CHECKPOINTS"]) / "tiny-run"
    save_weights(
        build_model(tiny_model_cfg),
        run / "weights" / "ema.safetensors",
        model_cfg=tiny_model_cfg,
        schedule_cfg=ScheduleSettings(),
        sampler_cfg=SamplerSettings(sampler="ddim", steps=2),
        preset="tiny",
        step=1,
    )
    return run


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine, 2 spinning threads per process are 20x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep caches, the default checkpoints folder and any relative output path (./eval, ./demo, ...) inside
    the test's temporary area, so no test writes into the repository it runs from."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    home = tmp_path_factory.mktemp("iclevr-home")
    monkeypatch.setenv("ICLEVR_HOME", str(home))
    monkeypatch.setenv("ICLEVR_CHECKPOINTS", str(home / "checkpoints"))
    monkeypatch.setenv("ICLEVR_NO_PACKAGED_EVALUATOR", "1")  # tests exercise first-use training
    monkeypatch.setenv("ICLEVR_PACKAGED_MODEL", str(home / "no-packaged-model.safetensors"))  # tests opt in
