"""The interface every executor implements: run a list of cells, each recording itself."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from bench.config import Cell
from bench.sweep.options import RunOptions
from bench.sweep.outputs import records_path


class Executor(ABC):
    """Runs cells; every cell appends its own record to the sweep's records file.

    Attributes:
        options: The sweep's options.
        out_dir: The sweep's output folder.
        records_path: Its records file.
        recorded: Each run key's number of records when the sweep chose the cells to run
            (`bench.sweep.run.run_suite` sets it): a cell with more records by the time it
            would start was run by another process, and is skipped. None: not checked.
    """

    def __init__(self, options: RunOptions, out_dir: Path) -> None:
        self.options = options
        self.out_dir = out_dir
        self.records_path = records_path(out_dir)
        self.recorded: dict[str, int] | None = None

    def recorded_before(self, cell: Cell) -> int | None:
        """``cell``'s number of records when the sweep chose it (None: not checked)."""
        return None if self.recorded is None else self.recorded.get(cell.run_key, 0)

    def check(self) -> None:  # noqa: B027 - most executors run anywhere: nothing to refuse
        """Refuse to run where this executor cannot, before anything is written or submitted.

        Raises:
            ExecutorError: Naming what is missing here.
        """

    @abstractmethod
    def run(self, cells: Sequence[Cell]) -> list[str]:
        """Run ``cells`` until each has a record.

        Returns:
            The status of each cell's record.
        """
