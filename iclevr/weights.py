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

Which weights a command uses (`resolve_model`, the same for sample, denoise-trace, eval and export):
--checkpoint, else the newest finished run under checkpoints/, else the packaged pretrained model
(paths.packaged_model_path), else the "no trained model" error. A run that has not finished (progress.json
says so: interrupted, killed, or still training) is used only when named, or when nothing else exists; a
newer unfinished run that was passed over is named in the line. `model_line` is the one line naming it.

Tensor dtypes: a run's files hold float32; a packaged file holds float16 (half the size) plus the JSON
`packaged` metadata (how it was trained and scored, written by benchmarks/package_model.py). Loading always
yields a float32 model (`_for_model`), so every device runs packaged weights like a run's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from iclevr.errors import UserError
from iclevr.paths import checkpoints_root, packaged_model_path
from iclevr.runinfo import no_weights_line, unfinished_step

FORMAT = "iclevr-unet"
FORMAT_VERSION = "1"


@dataclass
class WeightsInfo:
    """What a weights file says about itself."""

    path: Path
    model: ModelSettings  # noqa: F821
    schedule: ScheduleSettings  # noqa: F821
    sampler: SamplerSettings  # noqa: F821
    preset: str
    step: int
    packaged: dict | None = None  # the packaging record of a packaged model; None for a run's weights


def _for_file(tensor, half: bool):
    """A tensor as stored: on the CPU, contiguous, floating point as float16 when `half` (packaged files)."""
    import torch

    tensor = tensor.detach().to("cpu")
    if half and tensor.is_floating_point():
        tensor = tensor.to(torch.float16)
    return tensor.contiguous()


def _for_model(state: dict) -> dict:
    """Stored tensors as the model runs them: floating point as float32, whatever the file stored."""
    import torch

    return {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}


def save_weights(
    model,
    path: Path,
    *,
    model_cfg,
    schedule_cfg,
    sampler_cfg=None,
    preset: str = "",
    step: int = 0,
    half: bool = False,
    packaged: dict | None = None,
) -> Path:
    """Save a ConditionalUNet's state_dict as safetensors with our settings in the metadata (atomic); `half`
    stores float16 tensors and `packaged` adds the packaging record (both for the packaged model)."""
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
    if packaged is not None:
        meta["packaged"] = json.dumps(packaged)
    state = {k: _for_file(v, half) for k, v in unwrap(model).state_dict().items()}
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
        raise UserError(
            f"{path} is not a readable safetensors file (truncated, or another format such as a "
            "pickle); pass a run folder or an iclevr .safetensors weights file"
        ) from None
    if meta.get("format") != FORMAT:
        raise UserError(
            f"{path} is a safetensors file without iclevr metadata (from another program?); "
            "expected weights written by `iclevr train`"
        )
    try:
        return WeightsInfo(
            path=path,
            model=ModelSettings.model_validate_json(meta["model"]),
            schedule=ScheduleSettings.model_validate_json(meta["schedule"]),
            sampler=SamplerSettings.model_validate_json(meta.get("sampler", "{}")),
            preset=meta.get("preset", ""),
            step=int(meta.get("step", 0)),
            packaged=json.loads(meta["packaged"]) if "packaged" in meta else None,
        )
    except (KeyError, ValueError, ValidationError) as e:
        raise UserError(f"{path} has damaged iclevr metadata ({type(e).__name__}); re-export it") from None


def load_weights(path: Path, device="cpu"):
    """Rebuild the model from one of our safetensors files; returns (model in eval mode, WeightsInfo)."""
    from safetensors.torch import load_file

    from iclevr.model import build_model

    info = read_info(path)
    model = build_model(info.model)
    try:
        state = _for_model(load_file(str(info.path), device="cpu"))
    except Exception:  # noqa: BLE001
        raise UserError(f"{path} is truncated or damaged (its tensors cannot be read)") from None
    expected = model.state_dict()
    wrong = [k for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:  # load_state_dict would raise a RuntimeError listing every mismatch
        k = wrong[0]
        raise UserError(
            f"{path} does not match its own model settings: tensor {k} has shape "
            f"{tuple(state[k].shape)}, the model needs {tuple(expected[k].shape)}"
            f"{f' ({len(wrong)} tensors differ)' if len(wrong) > 1 else ''}; re-export it"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"{path} does not match its own model settings ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors)"
        )
    if info.model.design == "latent":
        attach_autoencoder(model, info, device)
    return model.to(device).eval(), info


def attach_autoencoder(model, info: WeightsInfo, device="cpu") -> None:
    """Give a latent model the autoencoder it was trained with (found by its SHA-256, checked against the
    model's latent grid), or one clear error."""
    from iclevr.autoencoder import find_autoencoder

    if not info.model.autoencoder_sha256:
        raise UserError(f"{info.path} is a latent model without the hash of its autoencoder (damaged metadata)")
    ae = find_autoencoder(info.path, info.model.autoencoder_sha256, device)
    if (ae.cfg.latent_size, ae.cfg.latent_channels) != (info.model.sample_size, info.model.latent_channels):
        raise UserError(
            f"{ae.path} encodes {ae.cfg.latent_channels}x{ae.cfg.latent_size}x{ae.cfg.latent_size} "
            f"latents, but {info.path} denoises {info.model.latent_channels}x{info.model.sample_size}"
            f"x{info.model.sample_size}"
        )
    model.attach_autoencoder(ae)


def runs_newest_first(root: Path | None = None) -> list[Path]:
    """The run folders holding weights/ema.safetensors under `root`, the most recently updated first."""
    root = Path(root) if root else checkpoints_root()
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if (p / "weights" / "ema.safetensors").is_file()]
    return sorted(runs, key=lambda p: (p / "weights" / "ema.safetensors").stat().st_mtime, reverse=True)


def newest_run(root: Path | None = None) -> Path | None:
    """The most recently updated run folder (one holding weights/ema.safetensors) under `root`."""
    runs = runs_newest_first(root)
    return runs[0] if runs else None


@dataclass(frozen=True)
class ModelSource:
    """Which weights a command uses and why."""

    path: Path  # the weights file
    kind: str  # "checkpoint" (--checkpoint), "run" (the newest finished run) or "packaged" (the packaged model)
    named: Path | None = None  # what --checkpoint said, or the run's folder
    unfinished: int | None = None  # the step of the chosen weights when their run has not finished
    passed_over: Path | None = None  # a newer run that was not used because it has not finished
    passed_over_step: int = 0


def resolve_model(checkpoint: Path | None) -> ModelSource:
    """THE model choice: --checkpoint, else the newest finished run under checkpoints/, else the packaged model.

    A run that has not finished (interrupted, killed, still training) is used when named with --checkpoint,
    or when nothing else exists; otherwise it is passed over and `model_line` says so and how to use it."""
    if checkpoint is not None:
        named = Path(checkpoint)
        path = _checkpoint_file(named)
        return ModelSource(
            path,
            "checkpoint",
            named,
            unfinished=unfinished_step(path.parent.parent) if path.parent.name == "weights" else None,
        )
    runs = runs_newest_first()
    skipped = runs[0] if runs and unfinished_step(runs[0]) is not None else None
    extra = {"passed_over": skipped, "passed_over_step": unfinished_step(skipped)} if skipped else {}
    finished = [r for r in runs if unfinished_step(r) is None]
    if finished:
        return ModelSource(finished[0] / "weights" / "ema.safetensors", "run", finished[0], **extra)
    packaged = packaged_model_path()
    if packaged.is_file():
        return ModelSource(packaged, "packaged", **extra)
    if runs:  # only unfinished runs and no packaged model: the newest, said plainly
        return ModelSource(runs[0] / "weights" / "ema.safetensors", "run", runs[0], unfinished=unfinished_step(runs[0]))
    raise UserError(
        f"no trained model found under {checkpoints_root()}/; train one with "
        "`iclevr train` (or `iclevr demo`), or pass --checkpoint PATH"
    )


def resolve_checkpoint(path: Path | None) -> Path:
    """The weights file `resolve_model` chooses for --checkpoint (run folder, .safetensors file, or nothing)."""
    return resolve_model(path).path


def _checkpoint_file(path: Path) -> Path:
    """Map --checkpoint (a run folder or a .safetensors file) to a weights file, with clear errors."""
    if path.is_dir():
        for name in ("ema.safetensors", "model.safetensors"):
            if (path / "weights" / name).is_file():
                return path / "weights" / name
        raise UserError(
            no_weights_line(path)
            or f"{path} is not a run folder with weights (no "
            "weights/ema.safetensors); pass a run folder or an iclevr .safetensors weights file"
        )
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if path.suffix != ".safetensors":
        raise UserError(
            f"{path} is not a .safetensors file; pass a run folder or iclevr weights "
            "(training states and .pth pickles are not loaded for sampling)"
        )
    return path


def packaged_accuracy(info: WeightsInfo) -> dict[str, float]:
    """Mean accuracy per split as measured when the model was packaged ({} for weights that were not)."""
    scores = (info.packaged or {}).get("accuracy", {})
    return {split: float(a["mean"]) for split, a in scores.items() if isinstance(a, dict) and "mean" in a}


MODEL_CARD = "docs/model-card.md"  # what the packaged model is, how it was trained and scored, its limits


def model_line(source: ModelSource, info: WeightsInfo) -> str:
    """The one line sample, denoise-trace, eval and export print: which weights they use and why."""
    if source.kind == "packaged":
        acc = packaged_accuracy(info)
        scored = (
            f"test/new_test {acc['test']:.3f}/{acc['new_test']:.3f}"
            if {"test", "new_test"} <= set(acc)
            else "not scored"
        )
        line = (
            f"model: packaged pretrained model {source.path} ({info.model.condition}, {info.step:,} steps, "
            f"{scored}; model card: {MODEL_CARD})"
        )
    elif source.kind == "run":
        line = f"model: newest run {source.named} (step {info.step:,}{_unfinished(source)})"
    else:
        line = f"model: --checkpoint {source.named} (step {info.step:,}{_unfinished(source)})"
    if source.passed_over:
        line += (
            f"; not the newer run {source.passed_over}, which has not finished (step "
            f"{source.passed_over_step:,}): name it with --checkpoint to use it"
        )
    return line


def _unfinished(source: ModelSource) -> str:
    """', unfinished: ...' for weights whose run has not finished, else ''."""
    if source.unfinished is None:
        return ""
    return ", unfinished: its training stopped before its budget or is still going"
