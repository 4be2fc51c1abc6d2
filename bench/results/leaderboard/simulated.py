"""The TAN simulations' part of a leaderboard: one heading above everything simulated."""

from __future__ import annotations

from collections.abc import Sequence

#: The heading every TAN simulation's result sits under, and nothing else.
SIMULATED_HEADING = "## TAN simulation, not DP"


def simulated_section(lines: Sequence[str]) -> list[str]:
    """``lines`` (sections of TAN simulations' results, headed ``##`` and below) under
    `SIMULATED_HEADING`, each of their headings one level down; empty without lines.

    A TAN simulation (``dp_valid: false``, ``privacy.simulate_batch_size``) runs at a small
    batch with the noise scaled down to predict a large batch's accuracy (Sander et al. 2023):
    its epsilon spent is far above the target, so its accuracy must never read as a DP result.
    """
    if not lines:
        return []
    intro = (
        "Everything in this part comes from TAN simulations (`dp_valid: false`): runs at a "
        "small batch whose noise is scaled by b/B to predict the accuracy of the target batch "
        "B. They spent far more than the target ε (see the ε column), so none of these numbers "
        "is a DP result, and no table, sweep, ranking or figure here or above mixes them with "
        "DP runs."
    )
    demoted = [f"#{line}" if line.startswith("#") else line for line in lines]
    return [SIMULATED_HEADING, "", intro, "", *demoted]
