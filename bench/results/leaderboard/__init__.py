"""The leaderboard: ``leaderboard.md`` and its figures, rendered from a run directory's records."""

from bench.results.leaderboard.write import (
    leaderboard_text,
    render_leaderboard,
    write_report,
)

__all__ = ["leaderboard_text", "render_leaderboard", "write_report"]
