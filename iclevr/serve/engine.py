"""What the page's server does with a request: draw the images with the one sampling loop
(iclevr.sampling.sample), streaming a frame of x_t and of the predicted x0 from its callback at every step
(the callback `denoise-trace` records too), then judge each final image with the evaluator.

The model is chosen like every other command's (weights.resolve_model: --checkpoint, else the newest run,
else the packaged model) and its stored sampler settings are the page's defaults. The evaluator is the one
`iclevr eval` would use without a data folder (--evaluator, else the cached own one, else the packaged one);
where there is none the page shows the images without verdicts rather than training one for minutes.

Nothing of a request is kept once its terminal event is sent: frames, PNGs and GIFs travel as data URLs.
"""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import torch

from iclevr import labels as L
from iclevr.errors import UserError
from iclevr.serve.jobs import Cancelled, Job
from iclevr.serve.request import MAX_IMAGES, MAX_OBJECTS, MAX_SEED, MAX_STEPS, GenerateRequest

FRAME_SIZE = 64  # pixels per image in the live frames and the GIF (the course's output size)


def data_url(data: bytes, mime: str) -> str:
    """Bytes as a data: URL (what the page shows and downloads)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_url(x: torch.Tensor, nrow: int | None = None) -> str:
    """Images (B, 3, S, S) in [-1, 1] as one PNG row (or a single image) at FRAME_SIZE, as a data URL."""
    from torchvision.utils import make_grid

    from iclevr.images import to_output_size, to_pil

    x = to_output_size(x.float().clamp(-1, 1), FRAME_SIZE)  # (B, 3, 64, 64)
    image = to_pil(x[0] if len(x) == 1 else make_grid(x, nrow=nrow or len(x), padding=2, pad_value=1.0))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return data_url(buf.getvalue(), "image/png")


class LiveTrace:
    """sample() callback: stops a cancelled job, streams a frame per step (a few KiB of PNG per image, so
    every step is sent), keeps the GIF's states."""

    def __init__(self, job: Job, steps: int, decode=None):
        from iclevr.trace import GIF_FRAMES, frame_states

        self.job, self.steps = job, steps
        self.decode = decode  # latent models: states -> images (iclevr.trace.step_decoder); None for pixels
        self.keep = set(frame_states(min(GIF_FRAMES, steps + 1), steps))
        self.x_t: list[torch.Tensor] = []  # (B, 3, 64, 64) uint8 per kept state
        self.x0_pred: list[torch.Tensor] = []

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        """A step's state as images (B, 3, H, W): decoded for a latent model, as is for a pixel model."""
        return self.decode(x) if self.decode is not None else x

    def _keep(self, x_t: torch.Tensor, x0_pred: torch.Tensor) -> None:
        from iclevr.images import to_output_size, to_uint8

        self.x_t.append(to_uint8(to_output_size(x_t.float().clamp(-1, 1).cpu(), FRAME_SIZE)))
        self.x0_pred.append(to_uint8(to_output_size(x0_pred.float().clamp(-1, 1).cpu(), FRAME_SIZE)))

    def __call__(self, step: dict) -> None:
        """Check the cancel flag, record this step's state if kept, and send the page its frame."""
        if self.job.cancelled():
            raise Cancelled()
        i = step["i"]
        x_t, x0_pred = self._image(step["x_t"]), self._image(step["x0_pred"])  # (B, 3, H, W)
        if i in self.keep:
            self._keep(x_t, x0_pred)
        if i == self.steps - 1 and self.steps in self.keep:
            final = self._image(step["x_prev"])
            self._keep(final, final)  # the final image
        self.job.emit(
            {
                "type": "frame",
                "i": i + 1,
                "steps": self.steps,
                "t": step["t"],
                "x_t": png_url(x_t),
                "x0": png_url(x0_pred),
            }
        )

    def gif(self, k: int) -> bytes:
        """Image k's animation: x_t beside the predicted x0, from noise to the final image."""
        from iclevr.trace import gif_bytes

        def states(kept: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack([x[k] for x in kept]).float() / 127.5 - 1  # (G, 3, 64, 64) in [-1, 1]

        return gif_bytes(states(self.x_t), states(self.x0_pred))


class Engine:
    """The loaded model (and evaluator) and the one function the queue's worker runs for a request."""

    def __init__(self, checkpoint: Path | None = None, evaluator: Path | None = None, device: str = "cpu"):
        from iclevr.device import pick_device
        from iclevr.generate import with_weights_defaults
        from iclevr.sampling import resolve_steps
        from iclevr.settings import SamplerSettings
        from iclevr.weights import load_weights, model_line, resolve_model

        source = resolve_model(checkpoint)
        self.device = pick_device(device)
        self.model, self.info = load_weights(source.path, self.device)
        self.model_line = model_line(source, self.info)
        self.sampler = with_weights_defaults(SamplerSettings(), self.info.sampler)
        self.default_steps = resolve_steps(self.sampler, self.info.schedule)
        self.evaluator, self.evaluator_line = self._load_evaluator(evaluator)

    def _load_evaluator(self, path: Path | None):
        """The evaluator `iclevr eval` would choose without a data folder, or (None, why not)."""
        from iclevr.evaluation.evaluator import choose_evaluator_file, load_file

        chosen = choose_evaluator_file(path, None)
        if chosen is None:
            return None, (
                "no evaluator found, so no verdicts: `iclevr evaluator train` makes one "
                "(or pass --evaluator checkpoint.pth)"
            )
        if not chosen.is_file():
            raise UserError(f"evaluator file not found: {chosen}")
        evaluator = load_file(chosen, self.device)
        return evaluator, f"evaluator: {evaluator.kind} ({chosen.name})"

    def options(self) -> dict:
        """What the page needs to draw its form: the objects, limits, defaults, model and evaluator lines."""
        return {
            "shapes": list(L.SHAPES),
            "colours": list(L.COLOURS),
            "max_objects": MAX_OBJECTS,
            "max_images": MAX_IMAGES,
            "max_steps": min(MAX_STEPS, self.info.schedule.num_train_timesteps),
            "max_seed": MAX_SEED,
            "defaults": self.defaults(),
            "sampler": self.sampler.sampler,
            "model": self.model_line,
            "evaluator": self.evaluator_line,
            "labels": list(L.TRACE_LABELS),
        }

    def defaults(self) -> dict:
        """The page's starting values: the weights' stored guidance and steps."""
        return {"guidance_scale": self.sampler.guidance_scale, "steps": self.default_steps, "seed": 0, "num": 1}

    def check(self, request: GenerateRequest) -> GenerateRequest:
        """Checks that need the model (steps within its training timesteps); returns the request."""
        T = self.info.schedule.num_train_timesteps
        if request.steps > T:
            raise UserError(f"steps: at most {T} for this model (its training timesteps)")
        return request

    def run(self, job: Job) -> dict:
        """Draw the job's images with a live trace, judge them; returns the terminal "done" event."""
        from iclevr.images import to_output_size
        from iclevr.sampling import sample

        r: GenerateRequest = job.request
        sampler = self.sampler.model_copy(
            update={"guidance_scale": r.guidance_scale, "steps": r.steps, "seed": r.seed, "batch_size": r.num}
        )  # one batch
        y = L.encode(r.objects)[None].repeat(r.num, 1)  # (n, 24)
        job.emit({"type": "started", "steps": r.steps, "images": r.num})
        began = time.perf_counter()
        from iclevr.trace import step_decoder

        trace = LiveTrace(job, r.steps, decode=step_decoder(self.model))
        x0 = sample(
            self.model, y, schedule=self.info.schedule, sampler=sampler, callback=trace, device=self.device
        )  # (n, 3, S, S)
        x64 = to_output_size(x0)  # (n, 3, 64, 64): what the evaluator judges and the page shows
        verdicts = self.verdicts(x64, r.objects)
        seconds = time.perf_counter() - began
        images = [
            {
                "png": png_url(x64[k : k + 1]),
                "gif": data_url(trace.gif(k), "image/gif"),
                "seed": r.seed,
                "index": k,
                **(verdicts[k] if verdicts else {}),
            }
            for k in range(r.num)
        ]
        return {
            "type": "done",
            "images": images,
            "seconds": round(seconds, 2),
            "per_image": round(seconds / r.num, 2),
            "model": self.model_line,
            "sampler": sampler.sampler,
            "steps": r.steps,
            "guidance_scale": r.guidance_scale,
            "objects": r.objects,
            "evaluator": self.evaluator_line,
        }

    def verdicts(self, x64: torch.Tensor, objects: list[str]) -> list[dict] | None:
        """Per image: each requested object found/missed and the wrong predictions, as the annotated grid
        marks them (evaluation.annotate.hits_from on the course metric's top-k); None without an evaluator."""
        from iclevr.evaluation.annotate import hits_from
        from iclevr.evaluation.metric import topk_predictions

        if self.evaluator is None:
            return None
        y = L.encode(objects)[None].repeat(len(x64), 1)  # (n, 24)
        predicted = topk_predictions(self.evaluator.scores(x64), y)
        out = []
        for pred in predicted:
            found, wrong = hits_from(objects, pred)
            out.append(
                {
                    "verdicts": [{"label": o, "found": f} for o, f in zip(objects, found)],
                    "wrong": wrong,
                    "hits": sum(found),
                    "k": len(objects),
                }
            )
        return out
