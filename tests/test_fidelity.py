"""Fidelity (iclevr.evaluation.fidelity): KID/FD in the evaluator's first-stage statistics, the reference renders,
and `iclevr eval --kid`."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from iclevr.cli.app import app
from iclevr.errors import UserError

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def _scenes(n: int, seed: int) -> torch.Tensor:
    """Smooth synthetic scenes in [-1, 1]: a grey floor and two flat-coloured boxes at random places."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, 3, 64, 64), 0.0)
    for i in range(n):
        for _ in range(2):
            r, c = torch.randint(0, 48, (2,), generator=g).tolist()
            x[i, :, r : r + 14, c : c + 14] = torch.rand(3, 1, 1, generator=g) * 2 - 1
    return x


@pytest.fixture(scope="module")
def net():
    from iclevr.evaluation.evaluator import build_evaluator

    torch.manual_seed(0)
    return build_evaluator().eval()


def test_texture_features_are_per_channel_mean_and_std_of_the_first_stage(net):
    from iclevr.evaluation.fidelity import TextureFeatures

    x = _scenes(3, 0)
    f = TextureFeatures(net)((x + 1) / 2)
    h = net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))
    assert f.shape == (3, 128)
    assert torch.allclose(f[:, :64], h.mean((2, 3)), atol=1e-6) and torch.allclose(f[:, 64:], h.std((2, 3)), atol=1e-6)


def test_kid_is_near_zero_for_the_same_distribution_and_far_above_it_for_blur_and_speckle(net):
    import torch.nn.functional as F

    from iclevr.evaluation.fidelity import kid_fd

    a, b = _scenes(100, 1), _scenes(100, 2)
    same = kid_fd(net, b, a, subset_size=50, subsets=50)
    blur = F.interpolate(F.interpolate(b, size=16, mode="bilinear", antialias=True), size=64, mode="bilinear")
    blurred = kid_fd(net, blur, a, subset_size=50, subsets=50)
    noisy = kid_fd(
        net,
        (b + 0.2 * torch.randn(b.shape, generator=torch.Generator().manual_seed(3))).clamp(-1, 1),
        a,
        subset_size=50,
        subsets=50,
    )
    assert abs(same["kid"]) < 3 * same["kid_std"] + 1e-4
    for worse in (blurred, noisy):
        assert worse["kid"] > same["kid"] + 5 * max(same["kid_std"], worse["kid_std"] / 5)
        assert worse["fd"] > 2 * max(same["fd"], 1e-6)  # FD of 100 images in 128 dimensions has a large bias
    assert same["n_generated"] == same["n_reference"] == 100 and same["subset_size"] == 50
    # the same inputs and seed give the same numbers
    assert kid_fd(net, b, a, subset_size=50, subsets=50) == same


def test_too_few_images_is_one_clear_error(net):
    from iclevr.evaluation.fidelity import kid_fd

    with pytest.raises(UserError, match="KID needs at least 50 images per set; the generated set has 20"):
        kid_fd(net, _scenes(20, 0), _scenes(60, 1), subset_size=50)


def test_reference_renders_follow_their_conditions_and_seed():
    from iclevr.evaluation.fidelity import render_reference

    conds = [["red sphere"], ["cyan cube", "gray cylinder"]]
    a = render_reference(conds, seed=1, per_condition=2)
    assert a.shape == (4, 3, 64, 64) and a.dtype == torch.uint8
    assert torch.equal(a, render_reference(conds, seed=1, per_condition=2))
    assert not torch.equal(a, render_reference(conds, seed=2, per_condition=2))
    red = a[0].float()
    assert (red[0] - red[1]).max() > 60  # a red object is in the picture: some pixel far redder than green


def test_eval_kid_request_with_too_few_images_writes_nothing(tiny_run, tmp_path):
    from evaluator_standin import colour_reader

    evaluator = colour_reader(tmp_path / "reader.pth")
    out = tmp_path / "out"
    r = runner.invoke(
        app,
        [
            "eval",
            "--split",
            "test",
            "--seeds",
            "0",
            "--kid",
            "--evaluator",
            str(evaluator),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "error: KID needs at least 50 images per set; test (32 conditions x 1 seed(s)) has 32" in text
    assert r.output.count("error:") == 1 and "Traceback" not in r.output
    assert not out.exists()


def test_eval_reports_fidelity_against_embedded_renders(tiny_run, tmp_path):
    from evaluator_standin import colour_reader

    evaluator = colour_reader(tmp_path / "reader.pth")
    out = tmp_path / "out"
    r = runner.invoke(
        app,
        [
            "eval",
            "--split",
            "test",
            "--seeds",
            "0,1",
            "--evaluator",
            str(evaluator),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    f = json.loads((out / "report.json").read_text())["splits"]["test"]["fidelity"]
    assert f["generated"]["n_generated"] == 64 and f["generated"]["n_reference"] == 96
    assert f["floor"]["n_generated"] == 96 and "embedded renders" in f["reference"]
    # a random UNet's noise is nothing like the renders; two render sets are alike
    assert f["generated"]["kid"] > f["floor"]["kid"] + 5 * f["generated"]["kid_std"]
    text = " ".join(r.output.split())
    assert f"KID x10^3 {1e3 * f['generated']['kid']:.1f}" in text
    assert 'data-key="splits/test/fidelity/generated/kid"' in (out / "report.html").read_text()


def test_the_embedded_kit_named_by_its_path_is_compared_with_renders_not_taken_for_a_course_kit(tmp_path):
    """`iclevr demo` passes the embedded kit's folder as data_dir: its reference is the renders of the same
    conditions (a demo once compared its images with random training images, as for a course kit)."""
    from iclevr.data.synth import embedded_kit_dir
    from iclevr.evaluation.fidelity import PER_CONDITION, reference_sets

    conditions = [["red sphere"], ["cyan cube", "gray cylinder"]]
    a, b, what = reference_sets(conditions, embedded_kit_dir("default-v1"), 6)
    assert what.startswith("embedded renders of the same conditions")
    assert a.shape == b.shape == (len(conditions) * PER_CONDITION, 3, 64, 64) and not torch.equal(a, b)
    none_a, _, _ = reference_sets(conditions, None, 6)
    assert torch.equal(a, none_a)
