#!/usr/bin/env bash
# One GPU window on a bare device machine (README, "GPU window"): install the carried wheels
# (.whl/), then run `python -m bench.perf gpu-window` over the carried CIFAR-10 tarball
# (.data/cifar10-jpeg.tar.gz) with the carried commit (.data/COMMIT), writing into $OUT.
#
#   OUT=/path/to/results scripts/gpu_window.sh [BUDGET_S] [more gpu-window flags]
set -uo pipefail
budget="${1:-420}"
shift || true
out="${OUT:?set OUT to the folder the results go to}"
py="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
flags=(--budget-s "$budget" --out "$out")
if [ -f .data/cifar10-jpeg.tar.gz ]; then
  flags+=(--cifar-tar .data/cifar10-jpeg.tar.gz)
fi
if [ -s .data/COMMIT ]; then
  flags+=(--commit "$(cat .data/COMMIT)")
fi
exec "$py" -m bench.perf gpu-window "${flags[@]}" "$@"
