"""Where a sweep writes: output folder, records file, checkpoints, suite.json, reproduce line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from bench import atomic
from bench.config import Cell, Suite, cell_to_dict, suite_to_dict

REPO = Path(__file__).resolve().parents[2]


def default_out_dir(suite: Suite) -> Path:
    """``runs/<suite name>`` in the repository, a folder git ignores: a plain run never
    touches the published reports under ``reports/``, which only an explicit ``--out``
    rewrites."""
    return REPO / "runs" / suite.name


def records_path(out_dir: Path) -> Path:
    """The records file of an output folder: ``<out_dir>/records.jsonl``."""
    return Path(out_dir) / "records.jsonl"


def checkpoint_dir(records: Path) -> Path:
    """Where the runs of a records file keep their checkpoints: ``<records folder>/checkpoints``."""
    return Path(records).parent / "checkpoints"


def write_suite_json(suite: Suite, out_dir: Path, cells: Sequence[Cell] | None = None) -> Path:
    """Write the resolved suite and its full list of cells (atomically) for the report.

    Args:
        suite: The suite swept.
        out_dir: The sweep's output folder.
        cells: The cells planned so far (default: the grid's); with a ``tune`` section, the
            tuning cells and the final cells whose selection is made.

    Returns:
        The path of ``suite.json``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = suite_to_dict(suite)
    payload["cells"] = [
        {
            "run_key": c.run_key,
            "backbone": c.backbone,
            "norm": c.norm,
            "seed": c.seed,
            "stage": c.stage,
            "dp_valid": c.privacy.simulate_batch_size is None,
            "overrides": cell_to_dict(c)["overrides"],
        }
        for c in (suite.cells() if cells is None else cells)
    ]
    path = out_dir / "suite.json"
    atomic.write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def reproduce_command(suite: Suite, out_dir: Path) -> str:
    """The command that re-runs this sweep: the suite file, its overrides, the output folder."""
    parts = ["python -m bench run", str(_relative(suite.path)) if suite.path else "<suite>"]
    parts += [f"--set '{item}'" for item in suite.overrides]
    parts += ["--out", str(_relative(out_dir))]
    return " ".join(parts)


def _relative(path: Path) -> Path:
    """``path`` relative to the repository when it is inside it."""
    try:
        return Path(path).resolve().relative_to(REPO)
    except ValueError:
        return Path(path)
