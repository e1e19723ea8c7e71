"""Stand-in evaluators whose answers are known: real course-format files (resnet18 + Linear(512, 24) +
Sigmoid) with hand-set weights, so `iclevr eval` loads and runs them exactly like the course's checkpoint.pth.

The network is wired to read an image's colour: conv1 copies the three input channels (centre tap only),
bn1 adds 1 so ReLU keeps them, every residual branch is zero (each block passes its input on) and the
downsampling shortcuts carry the first channels along, so the pooled features are (R + 1, G + 1, B + 1)
of the image in [-1, 1] (exactly, for a single-colour image). The last layer maps them to 24 logits:

- `colour_reader`: logit = -(distance from the image colour to the class's reference colour)^2, shapes
  ranked cube > sphere > cylinder within a colour. A single-colour image painted in reference colour c
  is judged "the first k shapes of colour c" for a condition of k objects (`colour_reader_topk`).
- `fixed_ranking`: the features are ignored; the classes are ranked by a fixed order, so every image with
  k requested objects gets the first k classes of that order (`fixed_topk`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from iclevr import labels as L

# one reference colour per colour word, in [-1, 1] (RGB / 127.5 - 1), far apart from each other
REFERENCE = {
    "gray": (128, 128, 128),
    "red": (220, 20, 20),
    "blue": (20, 20, 220),
    "green": (20, 200, 20),
    "brown": (130, 70, 10),
    "purple": (150, 20, 200),
    "cyan": (20, 210, 210),
    "yellow": (230, 220, 10),
}
SHAPE_BONUS = 0.05  # in logits: orders the shapes of one colour; far below the gap between two colours


def _reference(colour: str) -> torch.Tensor:
    return torch.tensor(REFERENCE[colour], dtype=torch.float32) / 127.5 - 1


def _colour_network(weight: torch.Tensor, bias: torch.Tensor) -> dict:
    """A resnet18 state_dict whose output is sigmoid(weight @ (R+1, G+1, B+1) + bias) for a plain image."""
    import torch.nn as nn

    from iclevr.evaluation.evaluator import build_evaluator

    net = build_evaluator()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):  # the identity in eval mode: (x - 0) / sqrt(1 - eps + eps) * 1 + 0
                m.weight.fill_(1.0), m.bias.zero_(), m.running_mean.zero_(), m.running_var.fill_(1.0 - m.eps)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.zero_()
        for c in range(3):
            net.conv1.weight[c, c, 3, 3] = 1.0  # centre tap of the 7x7 kernel: a copy of the channel
            net.bn1.bias[c] = 1.0  # [-1, 1] -> [0, 2], which ReLU and max-pool pass unchanged
            for layer in (net.layer2, net.layer3, net.layer4):
                layer[0].downsample[0].weight[c, c, 0, 0] = 1.0  # the shortcut carries the channel on
        net.fc[0].weight[:, :3] = weight
        net.fc[0].bias[:] = bias
    return net.state_dict()


def colour_reader(path: Path) -> Path:
    """Write the colour-reading evaluator (course format) to `path`."""
    weight, bias = torch.zeros(L.NUM_CLASSES, 3), torch.zeros(L.NUM_CLASSES)
    for index, name in enumerate(L.LABELS):
        colour, shape = name.split()
        r = _reference(colour) + 1  # in feature space (x + 1)
        # -|f - r|^2 = 2 f.r - |r|^2 - |f|^2, and |f|^2 is the same for every class: a linear layer suffices
        weight[index] = 2 * r
        bias[index] = -(r * r).sum() - SHAPE_BONUS * L.SHAPES.index(shape)
    torch.save({"model": _colour_network(weight, bias)}, path)
    return Path(path)


def colour_reader_topk(colour: str, k: int) -> list[str]:
    """What `colour_reader` predicts for an image painted in REFERENCE[colour] with k requested objects."""
    return [f"{colour} {shape}" for shape in L.SHAPES[:k]]


def fixed_ranking(path: Path, order: list[str]) -> Path:
    """Write an evaluator that ignores the image and ranks `order` first (in that order), then the rest."""
    ranked = list(order) + [n for n in L.LABELS if n not in order]
    bias = torch.zeros(L.NUM_CLASSES)
    for rank, name in enumerate(ranked):
        bias[L.LABEL_TO_INDEX[name]] = 4.0 - 0.25 * rank  # distinct logits, far from sigmoid's saturation
    torch.save({"model": _colour_network(torch.zeros(L.NUM_CLASSES, 3), bias)}, path)
    return Path(path)


def fixed_topk(order: list[str], condition: list[str]) -> list[str]:
    """What `fixed_ranking(order)` predicts for an image asking for `condition`."""
    ranked = list(order) + [n for n in L.LABELS if n not in order]
    return ranked[: len(condition)]


def expected_hits(conditions: list[list[str]], predicted: list[list[str]]) -> list[int]:
    """Hits per image by the course rule, from known predictions."""
    return [len(set(c) & set(p)) for c, p in zip(conditions, predicted)]


def paint(colour: str, size: tuple[int, int] = (128, 96)):
    """A PIL image of one reference colour."""
    from PIL import Image

    return Image.new("RGB", size, REFERENCE[colour])
