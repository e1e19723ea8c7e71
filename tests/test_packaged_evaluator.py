"""The own evaluator shipped in iclevr/assets: it is the default choice, and it really recognises freshly
rendered scenes."""

import torch

from iclevr.evaluation.evaluator import packaged_evaluator_path
from iclevr.evaluation.fit import load_evaluator, preprocess


def test_packaged_evaluator_is_used_and_recognises_fresh_scenes(monkeypatch):
    from iclevr.data.world.scene import render_examples
    from iclevr.evaluation.metric import accuracy
    from iclevr.labels import encode_many

    monkeypatch.delenv("ICLEVR_NO_PACKAGED_EVALUATOR")
    path = packaged_evaluator_path()
    assert path is not None and path.is_file(), "iclevr/assets/own-evaluator-v2.safetensors is missing"
    evaluator = load_evaluator(device="cpu")  # no --evaluator, no data folder, nothing cached
    assert evaluator.path == path and evaluator.kind == "own"
    heldout = evaluator.info["heldout"]
    assert min(heldout.values()) >= 0.9, heldout
    assert all(acc >= 0.97 for name, acc in heldout.items() if name.startswith("1-3")), heldout
    # fresh kit-like scenes (a seed far from the training and held-out pools), squashed to 64x64
    frames, names = render_examples(48, seed=424242, min_objects=1, max_objects=3, size=(128, 96))
    x = preprocess(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(), torch.zeros(48, dtype=torch.bool))
    hits, total = accuracy(evaluator.scores(x), encode_many(names))
    assert hits / total >= 0.9, (hits, total)


def test_evaluator_export_defaults_to_the_evaluator_eval_would_use(monkeypatch, tmp_path):
    """No --evaluator and nothing cached: `evaluator export` writes the packaged evaluator in the course format."""
    from typer.testing import CliRunner

    from iclevr.cli.app import app
    from iclevr.evaluation.evaluator import load_file

    monkeypatch.delenv("ICLEVR_NO_PACKAGED_EVALUATOR")
    result = CliRunner().invoke(app, ["evaluator", "export", "--out", str(tmp_path / "checkpoint.pth")])
    assert result.exit_code == 0, result.output
    assert str(packaged_evaluator_path()) in result.output.replace("\n", "")
    exported = torch.load(tmp_path / "checkpoint.pth", weights_only=True)["model"]
    packaged = load_file(packaged_evaluator_path()).net.state_dict()
    assert exported.keys() == packaged.keys()
    assert all(torch.equal(exported[k], packaged[k]) for k in packaged)
