"""What a figure shows, read from its records: suite, privacy target, budget and chance level."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class FigureContext:
    """The setting a figure's runs share, for its title and its chance line.

    Each tuple holds the distinct values over the figure's ok runs, sorted; a figure whose panels
    differ in a value (two step budgets, a swept epsilon) names every value.

    Attributes:
        suite: The suite's name; None when no record names one.
        backbones: Backbone spec strings.
        epsilons: Target epsilons.
        deltas: Target deltas.
        steps: Training steps per run.
        num_classes: Number of classes of the test set, when every run agrees on one.
        simulated: The runs are TAN simulations (not DP at the target): the title says so.
    """

    suite: str | None = None
    backbones: tuple[str, ...] = ()
    epsilons: tuple[float, ...] = ()
    deltas: tuple[float, ...] = ()
    steps: tuple[int, ...] = ()
    num_classes: int | None = None
    simulated: bool = False

    @property
    def chance_pct(self) -> float | None:
        """Accuracy of guessing one class (100 / classes), in percent; None when unknown."""
        return 100.0 / self.num_classes if self.num_classes else None

    def title(self) -> str:
        """One line naming the suite, backbone, budget and privacy target.

        For example ``cifar10_cpu_eps8 — resnet9[width=0.125] at 40 or 120 steps, (8, 1e-5)-DP``;
        a swept epsilon reads ``(ε, 1e-5)-DP, ε in 1, 2, 4, 8``.
        """
        return " ".join(self.title_parts())

    def title_parts(self) -> list[str]:
        """The title's pieces, each to be kept on one line when the title is wrapped."""
        what = " or ".join(self.backbones) or "runs"
        if self.steps:
            what += f" at {_alternatives(self.steps)} steps"
        privacy = _privacy_text(self.epsilons, self.deltas)
        if self.simulated:
            privacy = f"TAN simulation, not DP (target {privacy} at the simulated batch)"
        parts = [f"{self.suite} —"] if self.suite else []
        return [*parts, what + ("," if privacy else ""), *([privacy] if privacy else [])]


def _number(value: float) -> str:
    """A number as a paper writes it: ``8``, ``0.5``, ``1e-5`` (not ``1e-05``)."""
    text = f"{value:g}"
    mantissa, e, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if e else text


def _alternatives(values: Iterable[float]) -> str:
    """``40 or 120``; ``1, 2, 4 or 8``."""
    texts = [_number(v) for v in values]
    return texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " or " + texts[-1]


def _privacy_text(epsilons: tuple[float, ...], deltas: tuple[float, ...]) -> str:
    """``(8, 1e-5)-DP``; ``(ε, 1e-5)-DP, ε in 1, 2, 4, 8`` for several epsilons."""
    if not epsilons:
        return ""
    delta = _alternatives(deltas) if deltas else "δ"
    if len(epsilons) == 1:
        return f"({_number(epsilons[0])}, {delta})-DP"
    return f"(ε, {delta})-DP, ε in " + ", ".join(_number(e) for e in epsilons)


def _numbers(records: Iterable[Mapping], field: str) -> tuple[float, ...]:
    """The distinct finite numbers of ``field`` over the records, sorted."""
    values = {r.get(field) for r in records}
    return tuple(
        sorted(
            float(v)
            for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        )
    )


def _texts(records: Iterable[Mapping], field: str) -> tuple[str, ...]:
    """The distinct strings of ``field`` over the records, sorted."""
    return tuple(sorted({v for r in records if isinstance(v := r.get(field), str)}))


def _classes(record: Mapping) -> int | None:
    """A record's number of classes: its own field, else its resolved config's (older records);
    None when neither holds a positive whole number."""
    classes = record.get("num_classes")
    if classes is None:
        config = record.get("config")
        data = config.get("data") if isinstance(config, Mapping) else None
        classes = data.get("num_classes") if isinstance(data, Mapping) else None
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        return None
    return classes


def figure_context(records: Iterable[Mapping], *, simulated: bool = False) -> FigureContext:
    """The setting of the ok final-stage runs a figure draws.

    Args:
        records: Records of a run directory (any status and stage: only ok final runs count).
        simulated: Describe the TAN simulations (``dp_valid: false``) instead of the DP runs, as
            their own figures do.

    Returns:
        The context; its tuples are empty when no run qualifies.
    """
    runs = [
        r
        for r in records
        if r.get("status") == "ok"
        and r.get("stage") != "tune"
        and (r.get("dp_valid") is False) == simulated
    ]
    classes = {_classes(r) for r in runs} - {None}
    return FigureContext(
        suite=" + ".join(_texts(runs, "suite")) or None,
        backbones=_texts(runs, "backbone"),
        epsilons=_numbers(runs, "epsilon_target"),
        deltas=_numbers(runs, "delta"),
        steps=tuple(int(s) for s in _numbers(runs, "steps")),
        num_classes=next(iter(classes)) if len(classes) == 1 else None,
        simulated=simulated,
    )
