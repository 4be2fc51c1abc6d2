"""``python -m bench eval``: score a finished run's saved weights again, beside its record."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.data import DeviceData, dataset_checksum
from bench.errors import SavedModelError
from bench.measure import resolve_device
from bench.plan import build_model
from bench.results.records import read_records
from bench.saved_model import load
from bench.suite import load_cell
from bench.train.data_cache import cached_dataset
from bench.train.evaluate import evaluate
from specs import closest


@dataclass(frozen=True)
class Evaluation:
    """A saved model scored again, beside what its record says.

    Attributes:
        run_key: The run.
        split: ``test`` or ``val`` (a tuning run), the split the record scored.
        accuracy: Top-1 accuracy of the saved weights now.
        recorded: The record's accuracy on that split.
        n: Images in the split.
        eval_weights: ``ema`` or ``final``.
        device: Where it was evaluated now.
        recorded_device: Where the run was measured.
    """

    run_key: str
    split: str
    accuracy: float
    recorded: float
    n: int
    eval_weights: str
    device: str
    recorded_device: str | None

    @property
    def matches(self) -> bool:
        """Equal to the record: exactly on the CPU, to the printed four decimals elsewhere
        (a GPU's reduction order may move an image across the decision boundary)."""
        if self.device == "cpu":
            return self.accuracy == self.recorded
        return f"{self.accuracy:.4f}" == f"{self.recorded:.4f}"


def _record(records_path: Path, run_key: str) -> dict[str, Any]:
    records = {r["run_key"]: r for r in read_records(records_path).records}
    if run_key not in records:
        hint = closest(run_key, list(records))
        raise SavedModelError(
            f"no record with run key {run_key!r} in {records_path} (run keys there: "
            f"{len(records)}" + (f"; did you mean {hint!r}?)" if hint else ")")
        )
    record = records[run_key]
    if record.get("status") != "ok":
        raise SavedModelError(
            f"run {run_key} in {records_path} is {record.get('status')}: it has no accuracy"
        )
    if record.get("stage") == "tune":
        raise SavedModelError(
            f"run {run_key} is a tuning run: its score is a noisy count over the private "
            "validation split (tune.score_noise), and scoring it again exactly would release "
            "what that noise protects; bench eval re-scores final runs (test set) only"
        )
    if not record.get("model_path"):
        raise SavedModelError(
            f"run {run_key} saved no model: re-run it with --save-models "
            "(and --force, since it has a record)"
        )
    return record


def evaluate_saved(
    out_dir: Path, run_key: str, device: str | None = None, data_root: str | None = None
) -> Evaluation:
    """Score run ``run_key``'s saved weights again, as the engine scored them.

    The model is rebuilt from the config in the run's record (`bench.suite.load_cell`,
    `bench.plan.build_model`), the weights the record's accuracy was measured with are loaded
    into it, and `bench.train.evaluate` scores them on the split the record scored, with the
    run's evaluation batch and precision. The data is checked against the record's
    ``dataset_sha256`` first.

    Args:
        out_dir: The suite's output folder (``records.jsonl`` and ``models/``).
        device: ``auto`` (default), ``cpu``, ``cuda``...
        data_root: Where the run's data lives, when the record's ``data.root`` (a public
            form of the path) does not lead to it from here.

    Raises:
        SavedModelError: No such run, no saved model, or a file that does not fit the run
            (`bench.saved_model.load`).
        RecordsError: No records file in ``out_dir``.
        ConfigError: The recorded config is not one this version can run.
        DataError: The data cannot be read.
    """
    out_dir = Path(out_dir)
    records_path = out_dir / "records.jsonl"
    record = _record(records_path, run_key)
    payload = load(out_dir / record["model_path"], run_key)
    cell = load_cell(record["config"], f"{records_path}: run {run_key}: config", data_root)
    dataset = cached_dataset(cell.data)
    recorded_sha = record.get("dataset_sha256")
    if recorded_sha is not None and dataset_checksum(dataset) != recorded_sha:
        raise SavedModelError(
            f"run {run_key}: the data at data.root={cell.data.root!r} is not the data it was "
            f"trained on (sha256 differs); pass --data-root"
        )
    dev = resolve_device(device)
    data = DeviceData(dataset, dev, normalize=cell.data.normalize, holdout=cell.stage == "tune")
    model = build_model(cell, dataset.num_classes, dev)
    which = payload["eval_weights"]
    weights = payload["weights"].get(which)
    if weights is None:
        raise SavedModelError(f"run {run_key}: the model file holds no {which} weights")
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise SavedModelError(
            f"run {run_key}: the saved weights do not fit its model ({first})"
        ) from None
    t = cell.training
    accuracy = evaluate(model, data, t.eval_batch_size, t.precision)
    split = data.eval_split
    return Evaluation(
        run_key=run_key,
        split=split,
        accuracy=accuracy,
        recorded=record[f"{split}_acc"],
        n=int(data.test_x.shape[0]),
        eval_weights=which,
        device=dev.type,
        recorded_device=record.get("device"),
    )
