"""Course data layer: loading, preprocessing, validation errors and the uint8 cache."""

import json

import pytest
import torch
from PIL import Image

from iclevr.data.course import (
    cache_dir_for,
    check_images,
    load_conditions,
    load_image,
    load_kit,
    load_train_tensors,
    summarise,
    to_model_range,
)
from iclevr.errors import UserError


def test_fixture_loads_with_right_tensors_and_labels(course_kit):
    kit = load_kit(course_kit)
    assert len(kit.train) == 12 and len(kit.splits["test"]) == 32 and len(kit.splits["new_test"]) == 32
    images, y = load_train_tensors(kit, 64, cache=False)
    assert images.shape == (12, 3, 64, 64) and images.dtype == torch.uint8
    assert y.shape == (12, 24)
    names = list(kit.train)
    # _k holds k+1 objects, and the labels of _k are a prefix of those of _k+1
    assert y.sum(1).tolist() == [1, 2, 3] * 4
    assert kit.train[names[0]] == kit.train[names[1]][:1]
    x = to_model_range(images)
    assert x.min() >= -1 and x.max() <= 1
    # the RGBA grey floor (128) maps to 128/127.5 - 1 in every channel
    assert abs(x[0, :, 0, 0] - (128 / 127.5 - 1)).max() < 1e-6
    assert summarise(kit)["extra_pngs"] == 1


def test_preprocessing_matches_reference_resize(course_kit):
    from torchvision import transforms

    path = next((course_kit / "iclevr").glob("CLEVR_*.png"))
    ours = to_model_range(load_image(path, 64)[None])[0]
    ref = transforms.Compose(
        [transforms.Resize((64, 64)), transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)]
    )(Image.open(path).convert("RGB"))
    assert torch.allclose(ours, ref, atol=1e-6)


def test_missing_and_corrupt_images(course_kit):
    names = sorted((course_kit / "iclevr").glob("CLEVR_*.png"))
    names[0].unlink()
    names[1].write_bytes(b"\x89PNG not really")
    kit = load_kit(course_kit)
    missing, corrupt = check_images(kit)
    assert missing == [names[0].name] and corrupt == [names[1].name]
    with pytest.raises(UserError, match="1 missing .*1 corrupt"):
        load_train_tensors(kit, 32, cache=False)


@pytest.mark.parametrize(
    "filename,content,match",
    [
        ("train.json", "{bad", "train.json is not valid JSON"),
        ("train.json", "[1, 2]", "must be an object mapping"),
        ("train.json", '{"a.png": ["pink sphere"]}', 'did you mean "purple sphere"'),
        ("train.json", '{"../evil.png": ["red sphere"]}', "not a plain file name"),
        ("test.json", '[["red sphere"], "cyan cube"]', "test.json must be a list of lists"),
        ("new_test.json", '[["red sphere", "red sphere"]]', "duplicate label"),
        ("val.json", '[["red sphere", "red sphere"]]', "val.json condition 0: duplicate label"),
        ("val.json", '{"a": 1}', "val.json must be a list of lists"),
        ("objects.json", json.dumps({"gray cube": 1, "red cube": 0}), "disagrees with the built-in"),
    ],
)
def test_bad_json_gives_clear_errors(course_kit, filename, content, match):
    (course_kit / filename).write_text(content)
    with pytest.raises(UserError, match=match):
        load_kit(course_kit)


def test_missing_folder_and_files(tmp_path, course_kit):
    with pytest.raises(UserError, match="data folder not found"):
        load_kit(tmp_path / "nope")
    (course_kit / "test.json").unlink()
    with pytest.raises(UserError, match="test.json not found"):
        load_kit(course_kit)


def test_cache_is_reused_and_rebuilt_when_files_change(course_kit):
    kit = load_kit(course_kit)
    a, _ = load_train_tensors(kit, 16)
    cached = list(cache_dir_for(kit).glob("train-16px-*.safetensors"))
    assert len(cached) == 1
    # a cached entry is served as stored: poison it and check we get the poisoned copy back
    from safetensors.torch import load_file, save_file

    t = load_file(str(cached[0]))
    save_file({"images": torch.zeros_like(t["images"]), "labels": t["labels"]}, str(cached[0]))
    b, _ = load_train_tensors(load_kit(course_kit), 16)
    assert b.sum() == 0
    # dropping one image from train.json changes the key: a fresh cache is built, never the stale one
    train = json.loads((course_kit / "train.json").read_text())
    train.pop(sorted(train)[0])
    (course_kit / "train.json").write_text(json.dumps(train))
    c, y = load_train_tensors(load_kit(course_kit), 16)
    assert c.shape[0] == 11 and c.sum() > 0 and y.shape == (11, 24)
    assert len(list(cache_dir_for(kit).glob("train-16px-*.safetensors"))) == 2


def test_load_conditions_reads_and_checks_the_split_lists(course_kit, tmp_path):
    assert load_conditions(course_kit) == load_kit(course_kit).splits
    assert list(load_conditions(course_kit, ("new_test",))) == ["new_test"]
    (course_kit / "iclevr").rename(tmp_path / "elsewhere")  # the lists need no training images
    assert len(load_conditions(course_kit)["test"]) == 32
    (course_kit / "objects.json").write_text(json.dumps({"gray cube": 1, "red cube": 0}))
    with pytest.raises(UserError, match="disagrees with the built-in"):
        load_conditions(course_kit)
    with pytest.raises(UserError, match="data folder not found"):
        load_conditions(tmp_path / "nope")


def test_an_empty_iclevr_home_means_unset(monkeypatch, tmp_path):
    from pathlib import Path

    from iclevr.paths import checkpoints_root, iclevr_home

    monkeypatch.setenv("ICLEVR_HOME", str(tmp_path))
    assert iclevr_home() == tmp_path
    monkeypatch.setenv("ICLEVR_HOME", "")
    monkeypatch.setenv("ICLEVR_CHECKPOINTS", "")
    assert iclevr_home() == Path.home() / ".cache" / "iclevr" and checkpoints_root() == Path("checkpoints")
