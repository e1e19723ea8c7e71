"""What the page may ask for: one scene (up to the kit's 3 objects), guidance, steps, seed and image count.

`parse_request` turns the JSON body the page posts into a GenerateRequest, or raises a UserError whose one
line the page shows as it is (never a stack trace).
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from iclevr import labels as L
from iclevr.errors import UserError

MAX_OBJECTS = 3  # objects per image in the course kit (data/plan.py DEFAULT_KIT max_objects)
MAX_IMAGES = 8  # images per request: one UNet batch on a CPU stays a few seconds
MAX_STEPS = 200  # sampler steps a request may ask for
MAX_SEED = 2**31 - 1
MAX_BODY = 4096  # bytes of JSON a request may send
FIELD_NAMES = {
    "objects": "objects",
    "guidance_scale": "guidance",
    "steps": "steps",
    "seed": "seed",
    "num": "number of images",
}


class GenerateRequest(BaseModel):
    """One request of the page: what to draw and how."""

    model_config = ConfigDict(extra="forbid")

    objects: list[str] = Field(
        min_length=1,
        max_length=MAX_OBJECTS,
        description='Label names, e.g. ["red sphere", "cyan cube"] (1 to 3 distinct objects).',
    )
    guidance_scale: float = Field(ge=0.0, le=20.0, description="Classifier-free guidance scale.")
    steps: int = Field(ge=1, le=MAX_STEPS, description="Sampler steps.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Base seed; image i uses generator seed (seed, i).")
    num: int = Field(1, ge=1, le=MAX_IMAGES, description="Images to draw for the scene.")

    @field_validator("objects")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        """Canonical label names; unknown or repeated ones are errors (labels.parse_names' messages)."""
        try:
            return [L.LABELS[i] for i in L.parse_names(names)]
        except UserError as e:
            raise ValueError(str(e)) from None


def readable(err: ValidationError) -> str:
    """A pydantic error as the page shows it: 'steps: input should be ...; seed: ...'."""
    lines = []
    for e in err.errors():
        field = str(e["loc"][0]) if e.get("loc") else ""
        msg = e.get("msg", "invalid value")
        if e.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif e.get("type") == "too_long" and field == "objects":
            msg = f"at most {MAX_OBJECTS} objects per image (the kit's limit)"
        elif e.get("type") == "too_short" and field == "objects":
            msg = "pick at least one object"
        msg = msg.removeprefix("Value error, ")
        name = FIELD_NAMES.get(field, field)
        lines.append(f"{name}: {msg[:1].lower() + msg[1:]}" if name else msg)
    return "; ".join(lines)


def parse_request(body: bytes | str, defaults: dict) -> GenerateRequest:
    """The page's JSON body -> GenerateRequest (missing steps/guidance from `defaults`), else a UserError."""
    if len(body) > MAX_BODY:
        raise UserError(f"request too large ({len(body)} bytes; at most {MAX_BODY})")
    try:
        data = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError("the request is not valid JSON") from None
    if not isinstance(data, dict):
        raise UserError("the request must be a JSON object")
    data = {
        **{k: v for k, v in defaults.items() if k in ("guidance_scale", "steps")},
        **{k: v for k, v in data.items() if v is not None and v != ""},
    }
    try:
        return GenerateRequest.model_validate(data)
    except ValidationError as e:
        raise UserError(readable(e)) from None
