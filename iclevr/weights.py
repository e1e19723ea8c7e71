"""Inference weights (the safetensors file format) and the run finder (which weights --checkpoint means).

Inference weights are safetensors files whose metadata carries everything needed to rebuild the model
and its noise schedule (`format`, `model`, `schedule`, `sampler`, `preset`, `step`), so
`load_weights(path)` needs nothing else. Resumable training state lives elsewhere (see iclevr.training.state).

Run folder layout (`checkpoints/<run-name>/`):
  settings.json              resolved settings
  metrics.jsonl              one JSON object per log line
  weights/ema.safetensors    EMA weights (used for sampling)
  weights/model.safetensors  raw weights
  state/step-XXXXXXXX.pt     resumable training states (newest K kept)
  samples/                   progress grids
  tb/                        TensorBoard logs
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from iclevr.errors import UserError
from iclevr.paths import checkpoints_root

FORMAT = "iclevr-unet"
FORMAT_VERSION = "1"


@dataclass
class WeightsInfo:
    """What a weights file says about itself."""

    path: Path
    model: "ModelSettings"  # noqa: F821
    schedule: "ScheduleSettings"  # noqa: F821
    sampler: "SamplerSettings"  # noqa: F821
    preset: str
    step: int


def save_weights(model, path: Path, *, model_cfg, schedule_cfg, sampler_cfg=None, preset: str = "",
                 step: int = 0) -> Path:
    """Save a ConditionalUNet's state_dict as safetensors with our settings in the metadata (atomic)."""
    from safetensors.torch import save_file

    from iclevr.fileio import atomic_path
    from iclevr.model import unwrap
    from iclevr.settings import SamplerSettings

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model_cfg.model_dump_json(),
        "schedule": schedule_cfg.model_dump_json(),
        "sampler": (sampler_cfg or SamplerSettings()).model_dump_json(),
        "preset": preset,
        "step": str(step),
    }
    state = {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}
    with atomic_path(Path(path), size=sum(v.nbytes for v in state.values()), what="weights") as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def read_info(path: Path) -> WeightsInfo:
    """Read and validate the metadata of one of our safetensors weights files."""
    from pydantic import ValidationError
    from safetensors import safe_open

    from iclevr.settings import ModelSettings, SamplerSettings, ScheduleSettings

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - safetensors raises several types for foreign/truncated files
        raise UserError(f"{path} is not a readable safetensors file (truncated, or another format such as a "
                        "pickle); pass a run folder or an iclevr .safetensors weights file") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is a safetensors file without iclevr metadata (from another program?); "
                        "expected weights written by `iclevr train`")
    try:
        return WeightsInfo(path=path, model=ModelSettings.model_validate_json(meta["model"]),
                           schedule=ScheduleSettings.model_validate_json(meta["schedule"]),
                           sampler=SamplerSettings.model_validate_json(meta.get("sampler", "{}")),
                           preset=meta.get("preset", ""), step=int(meta.get("step", 0)))
    except (KeyError, ValueError, ValidationError) as e:
        raise UserError(f"{path} has damaged iclevr metadata ({type(e).__name__}); re-export it") from None


def load_weights(path: Path, device="cpu"):
    """Rebuild the model from one of our safetensors files; returns (model in eval mode, WeightsInfo)."""
    from safetensors.torch import load_file

    from iclevr.model import build_model

    info = read_info(path)
    model = build_model(info.model)
    try:
        state = load_file(str(info.path), device="cpu")
    except Exception:  # noqa: BLE001
        raise UserError(f"{path} is truncated or damaged (its tensors cannot be read)") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{path} does not match its own model settings ({len(missing)} missing, "
                        f"{len(unexpected)} unexpected tensors)")
    return model.to(device).eval(), info


def newest_run(root: Path | None = None) -> Path | None:
    """The most recently updated run folder (one holding weights/ema.safetensors) under `root`."""
    root = Path(root) if root else checkpoints_root()
    if not root.is_dir():
        return None
    runs = [p for p in root.iterdir() if (p / "weights" / "ema.safetensors").is_file()]
    return max(runs, key=lambda p: (p / "weights" / "ema.safetensors").stat().st_mtime, default=None)


def resolve_checkpoint(path: Path | None) -> Path:
    """Map --checkpoint (run folder, .safetensors file, or nothing) to a weights file, with clear errors."""
    if path is None:
        run = newest_run()
        if run is None:
            raise UserError(f"no trained model found under {checkpoints_root()}/; train one with "
                            "`iclevr train` (or `iclevr demo`), or pass --checkpoint PATH")
        return run / "weights" / "ema.safetensors"
    path = Path(path)
    if path.is_dir():
        for name in ("ema.safetensors", "model.safetensors"):
            if (path / "weights" / name).is_file():
                return path / "weights" / name
        from iclevr.training.lock import no_weights_line

        raise UserError(no_weights_line(path) or f"{path} is not a run folder with weights (no "
                        "weights/ema.safetensors); pass a run folder or an iclevr .safetensors weights file")
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if path.suffix != ".safetensors":
        raise UserError(f"{path} is not a .safetensors file; pass a run folder or iclevr weights "
                        "(training states and .pth pickles are not loaded for sampling)")
    return path
