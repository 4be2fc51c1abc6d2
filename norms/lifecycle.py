"""What a norm may need from a run, declared by the norm: data before and during training, charges.

A norm whose layers read data (statistics from public data, or from private data with a DP
mechanism) registers hooks with `norms.register_norm`:

* ``charge(model, norm, n_private) -> PrivacyCharge | None``: the privacy cost its
  preparation will spend, known from the configuration and the private set's size alone
  before any data is read (DP-SGD's noise is calibrated for what remains of the budget);
* ``prepare(model, norm, data) -> None``: fill the layers' state from `RunData` before
  training;
* ``on_step(model, norm, data, step) -> None``: update the layers' state before training step
  ``step`` (0-based, as the training loop counts), inside the timed step so its cost is part
  of the measured throughput (the non-private reference calls it too). It may read only what
  ``charge`` paid for: in practice public data, which costs nothing. State it changes must
  live in the model's ``state_dict`` (buffers), so that a resumed run restores it.

The run calls them generically (`ResolvedNorm.charge`, `ResolvedNorm.prepare`,
`ResolvedNorm.on_step`); it never names a norm. Randomness comes from
``data.generator(purpose)``, one named stream per purpose, so a norm never shares a stream with
sampling, noise or augmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PrivacyCharge:
    """A privacy cost that the accountant must be charged, in Opacus' history format.

    Attributes:
        noise_multiplier: Gaussian noise std divided by the L2 sensitivity.
        sample_rate: Probability that an example takes part in one release (1.0: every one).
        steps: How many such releases were made.
        description: What was released, for the record.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    description: str

    def history_entry(self) -> tuple[float, float, int]:
        """The ``(noise_multiplier, sample_rate, steps)`` triple Opacus accountants store."""
        return (self.noise_multiplier, self.sample_rate, self.steps)

    def as_record(self) -> dict[str, object]:
        """The charge as a record's ``privacy_charges`` entry."""
        return {
            "description": self.description,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
        }


@dataclass(frozen=True)
class RunData:
    """The data a norm's ``prepare`` and ``on_step`` hooks may read, on the run's device.

    Attributes:
        private_x: The private training examples (stored form, e.g. uint8 images). Reading
            them must be paid for by the norm's ``charge``.
        public_x: Examples the suite declares public (held out of the private set), or None.
        to_input: Turns a slice of stored examples into model inputs (scaling, standardising).
        batch_size: Examples per forward pass while preparing.
        generator: ``generator(purpose)``: this run's random stream for that purpose.
    """

    private_x: torch.Tensor
    public_x: torch.Tensor | None
    to_input: Callable[[torch.Tensor], torch.Tensor]
    batch_size: int
    generator: Callable[[str], torch.Generator]

    @property
    def num_private(self) -> int:
        return self.private_x.shape[0]

    def batches(self, examples: torch.Tensor) -> Callable[[], Iterator[torch.Tensor]]:
        """A re-iterable source of model-input batches over ``examples``."""
        return lambda: (self.to_input(x) for x in examples.split(self.batch_size))


def synthetic_run_data(
    shape: tuple[int, ...],
    *,
    examples: int = 64,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> RunData:
    """Random inputs standing in for both the private and the public data, for tests and
    benchmarks that need a prepared model but measure nothing about its statistics."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(examples, *shape, generator=g, device=device, dtype=dtype)
    return RunData(
        private_x=x,
        public_x=x,
        to_input=lambda t: t,
        batch_size=examples,
        generator=lambda purpose: torch.Generator(device=device).manual_seed(seed),
    )
