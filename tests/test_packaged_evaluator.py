"""The own evaluator shipped in iclevr/assets: it loads, and it really recognises freshly rendered scenes."""

import torch

from iclevr.evaluation.fit import ensure_own_evaluator, packaged_evaluator_path, preprocess


def test_packaged_evaluator_is_used_and_recognises_fresh_scenes(monkeypatch):
    from iclevr.data.world.render import render_examples
    from iclevr.evaluation.run import accuracy

    monkeypatch.delenv("ICLEVR_NO_PACKAGED_EVALUATOR")
    path = packaged_evaluator_path()
    assert path is not None and path.is_file(), "iclevr/assets/own-evaluator-v2.safetensors is missing"
    evaluator = ensure_own_evaluator("cpu")
    assert evaluator.path == path and evaluator.kind == "own"
    heldout = evaluator.info["heldout"]
    assert min(heldout.values()) >= 0.9, heldout
    assert all(acc >= 0.97 for name, acc in heldout.items() if name.startswith("1-3")), heldout
    # fresh kit-like scenes (a seed far from the training and held-out pools), squashed to 64x64
    frames, names = render_examples(48, seed=424242, min_objects=1, max_objects=3, size=(128, 96))
    x = preprocess(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(), torch.zeros(48, dtype=torch.bool))
    from iclevr.labels import encode_many

    hits, total = accuracy(evaluator.scores(x), encode_many(names))
    assert hits / total >= 0.9, (hits, total)
