"""One rank of a two-process gloo run for tests/test_gpu_path.py (started by `accelerate launch --multi_gpu
--num_processes 2` on the CPU): rank 1's loss turns NaN at its step 3, a state is saved every 2 steps; then the
loop's agreement helper on a stand-in accelerator whose device is `meta` (nothing may be read back from it).
Writes rank-<r>.json into the folder given as argv[2]; the kit is argv[1]."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))

from conftest import TINY_MODEL  # noqa: E402


def main(kit: str, out: str) -> None:
    import iclevr.training.loop as T
    from iclevr.settings import TrainSettings, resolve

    rank, report = int(os.environ["RANK"]), {}
    real, calls = T.diffusion_loss, {"n": 0}

    def poisoned(*args, **kwargs):  # rank 1 only: the NaN an fp16 overflow or a bad batch would give
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if rank == 1 and calls["n"] == 4 else loss

    T.diffusion_loss = poisoned
    loop = {
        "batch_size": 2,
        "lr": 1e-3,
        "max_steps": 8,
        "log_every": 100,
        "checkpoint_every": 0,
        "checkpoint_every_steps": 2,
        "device": "cpu",
        "sample_grids": "off",
    }
    settings = resolve(
        TrainSettings,
        overrides={"model": TINY_MODEL, "data.data_dir": kit, "out": str(Path(out) / "run"), "train": loop},
    )
    try:
        T.train(settings)
        report["train"] = "finished"
    except Exception as e:  # noqa: BLE001 - the message is what the test reads
        report["train"] = f"{type(e).__name__}: {e}"
    Path(out, f"rank-{rank}.json").write_text(json.dumps(report))  # before the collectives below, in case
    stand_in = SimpleNamespace(
        num_processes=2, device=torch.device("meta"), reduce=lambda t, op: (torch.distributed.all_reduce(t), t)[1]
    )
    try:
        report["agree"] = list(T.agree(stand_in, 10.0 + rank, rank == 1))
    except Exception as e:  # noqa: BLE001
        report["agree"] = f"{type(e).__name__}: {e}"
    Path(out, f"rank-{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
