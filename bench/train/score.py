"""A tuning run's validation score, released as a noisy count: what leaves the run is DP."""

from __future__ import annotations

import torch

from bench.config import Cell
from bench.errors import PrivacyError
from bench.seeds import run_stream


def score_generator(cell: Cell) -> torch.Generator:
    """The score noise's generator: the cell's own secret stream ``noise.score``
    (`bench.seeds.run_stream`: seed, purpose and run key, or the operating system's entropy
    under ``privacy.secure_noise``), so that two tuning cells (candidates of one seed) never
    share their noise: shared noise would cancel in the difference of two published scores,
    which no composition bound covers."""
    return run_stream(
        cell.seed, "noise.score", cell_key=cell.run_key, secure=cell.privacy.secure_noise
    )


def noisy_score(correct: int, n: int, cell: Cell) -> float:
    """``(correct + N(0, score_noise^2)) / n``, clipped to [0, 1] (post-processing): the one
    validation figure a tuning run publishes. The exact count never leaves this function.

    Raises:
        PrivacyError: The cell has no ``score_noise`` (a validation score would be exact).
    """
    sigma = cell.score_noise
    if sigma is None or not sigma > 0:
        raise PrivacyError(
            f"a tuning run's validation score must be noised, but the cell's score_noise is "
            f"{sigma!r}; allowed: tune.score_noise > 0"
        )
    noise = float(torch.randn((), generator=score_generator(cell), dtype=torch.float64)) * sigma
    return min(max((correct + noise) / n, 0.0), 1.0)
