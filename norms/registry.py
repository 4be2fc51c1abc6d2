"""The norms registry: register a norm factory by name, parse spec strings, build norm layers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from norms.errors import DuplicateNormError, NormPluginError, NormSpecError, UnknownNormError
from norms.lifecycle import PrivacyCharge, RunData
from specs import (
    ResolvedSpec,
    keyword_defaults,
    load_entry_points,
    parse_spec,
    resolve_params,
    summary,
)

#: Per-sample-gradient paths a layer can take, as recorded in results.
GRAD_SAMPLERS = ("opacus", "custom", "functorch", "none")

_RESERVED = ("device", "dtype")

BoolOrFn = bool | Callable[[Mapping[str, Any]], bool]
PrepareHook = Callable[[nn.Module, "ResolvedNorm", RunData], None]
ChargeHook = Callable[[nn.Module, "ResolvedNorm", int], "PrivacyCharge | None"]
StepHook = Callable[[nn.Module, "ResolvedNorm", RunData, int], None]
DPNote = Callable[[Mapping[str, Any]], str]

#: What each DP status means, for a record's ``norm_dp_note`` when the norm says nothing more.
_DP_NOTES = {
    "not DP": "not DP: mixes examples without accounting",
    "budget-charged": "reads private data; its cost is charged to the budget (privacy_charges)",
    "public data": "reads only public data: no privacy cost",
    "per-sample": "per-sample: reads nothing across examples, no privacy cost",
}


@dataclass(frozen=True)
class NormSpec:
    """How a registered norm is built and how a backbone must use it.

    Attributes:
        name: Stable identifier used in YAML, records and reports.
        factory: ``factory(num_channels, *, device=None, dtype=None, **params) -> nn.Module``.
        description: One line for ``bench list`` (the factory's docstring summary).
        defaults: Keyword parameters the factory takes, with their defaults.
        choices: Allowed values for string parameters, where they are a closed set.
        post_residual: The backbone adds a separate norm after every residual addition.
        fused_conv: The backbone replaces every conv+norm pair by the norm's fused convolution
            (``fused_conv_factory``) and uses ``factory`` only where a norm stands alone.
        fused_conv_factory: ``(in_ch, out_ch, kernel_size, *, stride, padding, **params)``.
        grad_sampler: Which per-sample-gradient path Opacus takes for this norm's parameters:
            ``opacus`` (a sampler shipped by Opacus), ``custom`` (registered by this project),
            ``functorch`` (Opacus' generic vmap path) or ``none`` (no trainable parameters).
        grad_sample_modes: Opacus ``grad_sample_mode`` values proven against the oracle; a run
            in another Opacus mode is refused. The book-keeping mode ``bk`` is open to every
            norm: its clipper refuses any trainable layer without a rule (or an opted-in
            fallback) before the first step.
        needs_public_data: Whether building the norm's statistics reads public data.
        privacy_cost: Whether building the norm's statistics spends privacy budget, which the
            accountant must be charged.
        dp_safe: Whether the norm keeps DP-SGD's per-sample guarantee (all registered norms do;
            the flag exists so that a non-DP variant could never reach a DP leaderboard).
        always_shown: Parameters printed in the spec string even at their default, because a
            reader must see them (``dp_batch_norm[stats=public]``).
        conv_bias: A convolution followed by this norm keeps its bias (true only where the
            norm has no shift of its own to replace it, e.g. the identity).
        prepare: ``prepare(model, norm, data)``: fills the norm's layers from
            `norms.lifecycle.RunData` before training (statistics); None when nothing is read.
        charge: ``charge(model, norm, n_private) -> PrivacyCharge | None``: the privacy cost
            ``prepare`` will spend on a private set of ``n_private`` examples, known before any
            data is read.
        on_step: ``on_step(model, norm, data, step)``: called before every training step
            (``step`` counts from 0), inside the timed step, to update the layers' state
            during training (e.g. statistics recomputed from public data); None: nothing.
        dp_note: ``dp_note(params) -> str``: one line saying what the norm reads across
            examples and what it costs, for records; None: the line of its `dp_status`.
        reads_across_examples: The norm's forward pass reads other examples of the batch (a
            statistic across it) and ``charge`` says what that costs the budget, or
            ``dp_safe`` is False. Any other norm must pass the batch-independence check
            before a sweep runs (`batch_dependence`): one example's output may not change
            when the other examples of its batch do.
        test_variants: Parameter settings (``"group_size=8"``) whose layers differ enough from
            the default to be tested too; the tests take every norm and these from here.
        oracle_params: Parameters that make the forward pass deterministic (no dropout), which
            the per-sample-gradient oracles need.
    """

    name: str
    factory: Callable[..., nn.Module]
    description: str
    defaults: Mapping[str, Any]
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    post_residual: bool = False
    fused_conv: bool = False
    fused_conv_factory: Callable[..., nn.Module] | None = None
    grad_sampler: str = "opacus"
    grad_sample_modes: tuple[str, ...] = ("hooks", "functorch")
    needs_public_data: BoolOrFn = False
    privacy_cost: BoolOrFn = False
    dp_safe: bool = True
    always_shown: tuple[str, ...] = ()
    conv_bias: bool = False
    prepare: PrepareHook | None = None
    charge: ChargeHook | None = None
    on_step: StepHook | None = None
    dp_note: DPNote | None = None
    reads_across_examples: BoolOrFn = False
    test_variants: tuple[str, ...] = ()
    oracle_params: Mapping[str, Any] = field(default_factory=dict)

    def resolve(self, params: Mapping[str, Any] | None = None) -> ResolvedNorm:
        """Check ``params`` against the factory's signature and return the concrete norm.

        Raises:
            NormSpecError: An unknown parameter, a value of the wrong type or one outside its
                choices.
        """
        full, explicit = resolve_params(
            "norm",
            self.name,
            self.defaults,
            params or {},
            self.choices,
            self.always_shown,
            error=NormSpecError,
        )
        return ResolvedNorm(spec=self, params=full, explicit=explicit)


@dataclass(frozen=True)
class ResolvedNorm(ResolvedSpec[NormSpec]):
    """A norm with its parameters fixed: what a backbone builds and what a record names."""

    @property
    def post_residual(self) -> bool:
        return self.spec.post_residual

    @property
    def fused_conv(self) -> bool:
        return self.spec.fused_conv

    @property
    def needs_public_data(self) -> bool:
        flag = self.spec.needs_public_data
        return bool(flag(self.params) if callable(flag) else flag)

    @property
    def privacy_cost(self) -> bool:
        flag = self.spec.privacy_cost
        return bool(flag(self.params) if callable(flag) else flag)

    @property
    def conv_bias(self) -> bool:
        return self.spec.conv_bias

    @property
    def reads_across_examples(self) -> bool:
        """Whether the norm declares that its forward pass reads across the batch (and what
        that costs): the batch-independence check does not apply to it."""
        flag = self.spec.reads_across_examples
        return bool(flag(self.params) if callable(flag) else flag)

    @property
    def dp_status(self) -> str:
        """``budget-charged`` (reads private data, charged to the budget), ``public data``
        (reads only public data) or ``per-sample`` (reads nothing across examples)."""
        if not self.spec.dp_safe:
            return "not DP"
        if self.privacy_cost:
            return "budget-charged"
        return "public data" if self.needs_public_data else "per-sample"

    @property
    def dp_note(self) -> str:
        """One line for a record: what the norm reads across examples and what it costs."""
        if self.spec.dp_note is not None:
            return self.spec.dp_note(self.params)
        return _DP_NOTES[self.dp_status]

    def charge(self, model: nn.Module, n_private: int) -> PrivacyCharge | None:
        """The privacy cost `prepare` will spend on ``model`` with ``n_private`` private
        examples (a sampling rate may depend on N, which is public), before any data is read."""
        return self.spec.charge(model, self, n_private) if self.spec.charge else None

    def prepare(self, model: nn.Module, data: RunData) -> None:
        """Fill the norm's layers in ``model`` from ``data`` before training (a no-op for
        norms that read no data)."""
        if self.spec.prepare:
            self.spec.prepare(model, self, data)

    def on_step(self, model: nn.Module, data: RunData, step: int) -> None:
        """Update the norm's layers in ``model`` before training step ``step`` (0-based); a
        no-op for norms without an ``on_step`` hook."""
        if self.spec.on_step:
            self.spec.on_step(model, self, data, step)

    def variant(self, **params: Any) -> ResolvedNorm:
        """This norm with some parameters changed."""
        return self.spec.resolve({**self.explicit, **params})

    def layer(self, num_channels: int, *, device=None, dtype=None) -> nn.Module:
        """Build the norm for ``num_channels`` channels (the call shape timm's blocks use)."""
        return self.spec.factory(num_channels, device=device, dtype=dtype, **self.params)

    def fused_conv_layer(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int | None = None,
    ) -> nn.Module:
        """Build the fused conv+norm layer of a ``fused_conv`` norm."""
        if self.spec.fused_conv_factory is None:
            raise NormSpecError(f"norm {self.name!r} has no fused convolution")
        if padding is None:
            padding = kernel_size // 2
        return self.spec.fused_conv_factory(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, **self.params
        )


_REGISTRY: dict[str, NormSpec] = {}


def register_norm(
    name: str,
    *,
    choices: Mapping[str, tuple[Any, ...]] | None = None,
    post_residual: bool = False,
    fused_conv_factory: Callable[..., nn.Module] | None = None,
    grad_sampler: str = "opacus",
    grad_sample_modes: tuple[str, ...] = ("hooks", "functorch"),
    needs_public_data: BoolOrFn = False,
    privacy_cost: BoolOrFn = False,
    dp_safe: bool = True,
    always_shown: tuple[str, ...] = (),
    conv_bias: bool = False,
    prepare: PrepareHook | None = None,
    charge: ChargeHook | None = None,
    on_step: StepHook | None = None,
    dp_note: DPNote | None = None,
    reads_across_examples: BoolOrFn = False,
    test_variants: tuple[str, ...] = (),
    oracle_params: Mapping[str, Any] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a norm factory under ``name``; see `NormSpec` for the meaning of each flag.

    Raises:
        DuplicateNormError: When ``name`` is already registered.
        NormSpecError: An unknown ``grad_sampler``, or ``reads_across_examples`` declared
            without ``charge`` on a norm that claims to be DP (``dp_safe``).
    """
    if grad_sampler not in GRAD_SAMPLERS:
        raise NormSpecError(f"grad_sampler must be one of {GRAD_SAMPLERS}, got {grad_sampler!r}")
    if reads_across_examples is not False and dp_safe and charge is None:
        raise NormSpecError(
            f"norm {name!r} declares reads_across_examples but not what it charges: give "
            "charge= (its PrivacyCharge, as dp_batch_norm does for its statistics) or "
            "dp_safe=False"
        )

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise DuplicateNormError(f"norm {name!r} is already registered")
        _REGISTRY[name] = NormSpec(
            name=name,
            factory=factory,
            description=summary(factory),
            defaults=keyword_defaults(factory, _RESERVED, NormSpecError),
            choices=dict(choices or {}),
            post_residual=post_residual,
            fused_conv=fused_conv_factory is not None,
            fused_conv_factory=fused_conv_factory,
            grad_sampler=grad_sampler,
            grad_sample_modes=tuple(grad_sample_modes),
            needs_public_data=needs_public_data,
            privacy_cost=privacy_cost,
            dp_safe=dp_safe,
            always_shown=tuple(always_shown),
            conv_bias=conv_bias,
            prepare=prepare,
            charge=charge,
            on_step=on_step,
            dp_note=dp_note,
            reads_across_examples=reads_across_examples,
            test_variants=tuple(test_variants),
            oracle_params=dict(oracle_params or {}),
        )
        return factory

    return decorator


#: The entry-point group through which other packages add norms: each entry point names a
#: module (``my_package.my_norm``) that registers its norms with `register_norm` on import.
ENTRY_POINT_GROUP = "dp_norm_bench.norms"
_PLUGINS_LOADED: set[str] = set()


def load_plugins() -> list[str]:
    """Import every module declared in the `ENTRY_POINT_GROUP` of an installed distribution
    that has not been imported yet; returns the entry points loaded now.

    Called by `list_norms`, by `get_norm` before it reports a name as unknown, and by suite
    loading before any suite is validated, so a plugin's norms are everywhere a built-in is.

    Raises:
        NormPluginError: An entry point fails to import (names it and the error).
    """
    return load_entry_points(ENTRY_POINT_GROUP, _PLUGINS_LOADED, "norm", NormPluginError)


def get_norm(name: str) -> NormSpec:
    """The spec registered under ``name`` (by this package or by a plugin).

    Raises:
        UnknownNormError: Listing the registered names and the closest match.
    """
    if name not in _REGISTRY:
        load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNormError(name, _REGISTRY) from None


def list_norms() -> list[str]:
    """Registered norm names, built-in ones in registration order, then the plugins'."""
    load_plugins()
    return list(_REGISTRY)


def resolve_norm(name_or_spec: str | ResolvedNorm, **params: Any) -> ResolvedNorm:
    """Resolve a name or spec string (plus extra keyword parameters) to a `ResolvedNorm`."""
    if isinstance(name_or_spec, ResolvedNorm):
        if not params:
            return name_or_spec
        merged = {**name_or_spec.explicit, **params}
        return name_or_spec.spec.resolve(merged)
    name, spec_params = parse_spec(name_or_spec, "norm", NormSpecError)
    overlap = set(spec_params) & set(params)
    if overlap:
        raise NormSpecError(
            f"parameter {sorted(overlap)[0]!r} given both in the spec and as a "
            f"keyword for norm {name!r}"
        )
    return get_norm(name).resolve({**spec_params, **params})


def create_norm(
    name_or_spec: str | ResolvedNorm, num_channels: int, *, device=None, dtype=None, **params: Any
) -> nn.Module:
    """Build the norm layer named by ``name_or_spec`` for ``num_channels`` channels."""
    return resolve_norm(name_or_spec, **params).layer(num_channels, device=device, dtype=dtype)
