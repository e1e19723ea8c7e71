"""The evaluator network, its two file formats, and the one place that decides which evaluator file is used.

Architecture: torchvision resnet18(weights=None) with fc = Sequential(Linear(512, 24), Sigmoid()); input
(B, 3, 64, 64) already in [-1, 1]; output (B, 24) per-class probabilities in the order of iclevr.labels.

Files:
  course  `checkpoint.pth`: a torch pickle of {"model": state_dict}, read with torch.load(weights_only=True)
          so a file holding anything but tensors and plain containers is refused without running it.
  own     `*.safetensors`: the same state_dict, metadata `format` = "iclevr-evaluator" plus a JSON `info`
          (held-out accuracies, how it was trained). `export_course` writes it back in the course format.

Which evaluator (`choose_evaluator_file`): --evaluator PATH, else `checkpoint.pth` in the data folder, else
the project's own: the one cached in $ICLEVR_HOME (trained by `iclevr evaluator train` or on first use),
else the one shipped in iclevr/assets. None of them: the own one is trained on first use (evaluation/fit.py).
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

from iclevr.errors import UserError
from iclevr.fileio import file_sha256
from iclevr.labels import NUM_CLASSES

FORMAT = "iclevr-evaluator"
FORMAT_VERSION = "1"
INPUT_SIZE = 64
COURSE_FILE = "checkpoint.pth"  # the course evaluator's name inside a data folder
PACKAGED = Path(__file__).resolve().parents[1] / "assets" / "own-evaluator-v2.safetensors"


def build_evaluator():
    """A fresh evaluator network: resnet18 with fc = Linear(512, 24) + Sigmoid (random weights)."""
    import torch.nn as nn
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Sequential(nn.Linear(512, NUM_CLASSES), nn.Sigmoid())
    return net


def forward_logits(net, x):
    """The evaluator's pre-sigmoid outputs (B, 24) for x (B, 3, 64, 64) in [-1, 1] (for BCE-with-logits)."""
    h = net.maxpool(net.relu(net.bn1(net.conv1(x))))  # (B, 64, 16, 16)
    h = net.layer4(net.layer3(net.layer2(net.layer1(h))))  # (B, 512, 2, 2)
    return net.fc[0](net.avgpool(h).flatten(1))  # (B, 24)


@dataclass
class Evaluator:
    """A loaded evaluator network and where it came from."""

    net: object
    path: Path | None
    kind: str  # "course" | "own" | "random"
    info: dict = field(default_factory=dict)

    @property
    def device(self):
        """The device the network lives on."""
        return next(self.net.parameters()).device

    def describe(self) -> dict:
        """A JSON-able description (for reports)."""
        out = {"kind": self.kind, "path": str(self.path) if self.path else None}
        if self.path is not None and Path(self.path).is_file():
            out["sha256"] = file_sha256(Path(self.path))
        if self.info.get("heldout"):
            out["heldout"] = self.info["heldout"]
        return out

    def scores(self, x, batch_size: int = 128):
        """Per-class probabilities (N, 24) on the CPU for images x (N, 3, 64, 64) in [-1, 1]."""
        import torch

        if x.ndim != 4 or x.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"evaluator input must be (N, 3, 64, 64), got {tuple(x.shape)}")
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                out.append(self.net(x[i : i + batch_size].to(self.device, torch.float32)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, NUM_CLASSES)


def check_state_dict(state, path: Path) -> dict:
    """Validate a state_dict against the evaluator architecture (keys and shapes); clear UserError otherwise."""
    import torch

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: the evaluator weights must be a dict of tensors (a resnet18 state_dict)")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    expected = build_evaluator().state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise UserError(
            f"{path} is not a resnet18 evaluator with fc = Linear(512, 24) + Sigmoid: keys {'; '.join(parts)}"
        )
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise UserError(
                f"{path}: tensor {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)} "
                "(the evaluator has 24 output classes)"
            )
    return state


def _to_net(state: dict, device):
    net = build_evaluator()
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return net.to(device).eval()


def load_course(path: Path, device="cpu") -> Evaluator:
    """Load a course `checkpoint.pth` ({"model": state_dict}) safely (weights_only=True) on any device."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"evaluator file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _unpickler_detail(str(e))
        if "global" in detail.lower() or "class" in detail.lower():
            raise UserError(
                f"{path} holds Python objects other than tensors (unpickling it could run code), so "
                f"it was refused without loading it; expected the course checkpoint.pth "
                f"({detail})"
            ) from None
        raise UserError(f"{path} is not a readable torch checkpoint ({detail})") from None
    except Exception as e:  # noqa: BLE001 - RuntimeError, EOFError, KeyError (junk bytes read as a pickle), ...
        detail = (
            str(e).split(". ")[0][:160]
            if isinstance(e, (RuntimeError, OSError, ValueError)) and str(e)
            else type(e).__name__
        )
        raise UserError(f"{path} is not a readable torch checkpoint (truncated or another format: {detail})") from None
    if isinstance(obj, dict) and "model" in obj:
        state = obj["model"]
    elif isinstance(obj, dict) and "conv1.weight" in obj:
        state = obj  # a bare state_dict: same weights, no wrapper
    else:
        keys = ", ".join(list(obj)[:5]) if isinstance(obj, dict) else type(obj).__name__
        raise UserError(
            f'{path} is not a course evaluator checkpoint: expected a dict with key "model" holding '
            f"the resnet18 state_dict, found {keys or 'an empty dict'}"
        )
    return Evaluator(_to_net(check_state_dict(state, path), device), path, "course")


def _unpickler_detail(message: str) -> str:
    """The useful line of torch's weights_only error, e.g. 'Unsupported global: GLOBAL builtins.open ...'."""
    text = message.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[0].split(" Please")[0] if lines else "unpickling failed")[:200]


def save_own(net, path: Path, info: dict) -> Path:
    """Save an evaluator as safetensors with metadata (format, version, JSON info), atomically."""
    from safetensors.torch import save_file

    from iclevr.fileio import atomic_path

    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "info": json.dumps(info)}
    with atomic_path(Path(path)) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def load_own(path: Path, device="cpu") -> Evaluator:
    """Load one of our safetensors evaluators (metadata format "iclevr-evaluator")."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"evaluator file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path), device="cpu")
    except Exception:  # noqa: BLE001 - safetensors raises several types for foreign or truncated files
        raise UserError(f"{path} is not a readable safetensors file (truncated or another format)") from None
    if meta.get("format") != FORMAT:
        raise UserError(
            f"{path} is not an iclevr evaluator (its metadata format is "
            f"{meta.get('format', 'missing')!r}); train one with `iclevr evaluator train`"
        )
    try:
        info = json.loads(meta.get("info", "{}"))
    except json.JSONDecodeError:
        info = {}
    return Evaluator(_to_net(check_state_dict(state, path), device), path, "own", info)


def load_file(path: Path, device="cpu") -> Evaluator:
    """Load an evaluator file of either format: `.safetensors` = ours, anything else = a course pickle."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass the evaluator file (checkpoint.pth or .safetensors)")
    return load_own(path, device) if path.suffix == ".safetensors" else load_course(path, device)


def export_course(evaluator: Evaluator, path: Path, overwrite: bool = False) -> Path:
    """Write an evaluator in the course format: torch.save({"model": state_dict}) (atomic); an existing file
    only with `overwrite`."""
    import torch

    from iclevr.fileio import atomic_path, check_output_file

    check_output_file(path, "checkpoint.pth")
    if Path(path).exists() and not overwrite:
        raise UserError(f"{path} exists; choose another --out or pass --overwrite to replace it")

    state = {k: v.detach().to("cpu").contiguous() for k, v in evaluator.net.state_dict().items()}
    with atomic_path(Path(path)) as tmp:
        torch.save({"model": state}, tmp)
    return Path(path)


def own_default_path() -> Path:
    """Where the project's own evaluator is cached: $ICLEVR_HOME/evaluator/own-v1.safetensors."""
    from iclevr.paths import iclevr_home

    return iclevr_home() / "evaluator" / "own-v1.safetensors"


def packaged_evaluator_path() -> Path | None:
    """The own evaluator shipped in iclevr/assets, unless ICLEVR_NO_PACKAGED_EVALUATOR is set (tests train one)."""
    return PACKAGED if PACKAGED.is_file() and not os.environ.get("ICLEVR_NO_PACKAGED_EVALUATOR") else None


def choose_evaluator_file(path: Path | None, data_dir: Path | None) -> Path | None:
    """THE evaluator choice: path, data_dir/checkpoint.pth, the cached own one, the packaged one, or None."""
    if path is not None:
        return Path(path)
    if data_dir is not None and (Path(data_dir) / COURSE_FILE).is_file():
        return Path(data_dir) / COURSE_FILE
    if own_default_path().is_file():
        return own_default_path()
    return packaged_evaluator_path()
