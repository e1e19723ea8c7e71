"""Seed mixing: the one way iclevr turns several integers into one generator seed.

Training reseeds from (seed, tag, step, rank) and sampling seeds every image from (seed, image index), so a
resumed run follows the same path and an image does not depend on the batch it was drawn in.
"""

from __future__ import annotations


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy SeedSequence), e.g. (seed, tag, step, rank)."""
    import numpy as np

    # >> 1: torch.Generator.manual_seed accepts any 64-bit value, but a non-negative int64 is safe everywhere
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)
