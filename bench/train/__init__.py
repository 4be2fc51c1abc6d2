"""DP-SGD training of one grid cell: data and augmentation on the device, Opacus clipping and noise.

The loop is written out rather than taken from ``PrivacyEngine.make_private`` because the
benchmark needs three things that path does not give: Poisson sampling on the device with
q = B/N handed to the accountant (Opacus' DPDataLoader uses q = 1/len(loader) and a CPU
loader), augmentation multiplicity (the K views of an example share one clipped gradient), and
privacy costs other than DP-SGD composed into one budget. The parts that are Opacus' own are
used as they are: `DPOptimizer` for noise and the update, its accountants for the epsilon, and
`GradSampleModule` for per-sample gradients in the ``hooks``/``functorch`` modes; the default
``bk`` mode clips with `bkclip` (one backward pass). The step itself is `bkclip.steps`.

Modules, one job each: `cell` (`train_cell`, the orchestrator), `setup` (a resolved cell's
data, model, streams and its DP step: `build_dp_step`, the one builder that training, timing
and the perf checks share), `loop` (the DP-SGD loop, checkpoints and resume), `record` (the
record's sections), `reference` (the non-private throughput reference), `evaluate`, `views`,
`schedule`, `ema`, `paths` (grad-sample paths), `data_cache` and `ghost` (Opacus' fast
gradient clipping, the perf checks' comparison point).
"""
