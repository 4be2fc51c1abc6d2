"""What made a result: package versions, commit, platform, host and device, captured once."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]

#: Distributions that can change a result: every record names their versions (provenance key
#: = lower-case name) and a constraints file pins them, in this order.
RESULT_PACKAGES = ("torch", "torchvision", "opacus", "timm", "numpy", "scipy", "pillow")
#: The project's other runtime dependencies and tools, reported in ``environment.txt`` only.
TOOL_PACKAGES = ("PyYAML", "matplotlib", "submitit", "tqdm", "tabulate")
#: Every dependency ``environment.txt`` reports by its installed version.
PACKAGES = RESULT_PACKAGES + TOOL_PACKAGES
#: Where there is no git repository (a copy of the work tree on a device machine), the commit
#: is taken from this variable, which ``python -m bench.perf gpu-window --commit`` sets.
COMMIT_ENV = "DP_NORM_BENCH_COMMIT"


def package_version(package: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The repository's commit, with ``-dirty`` when the work tree has uncommitted changes.

    Changes under ``reports/`` do not count: a sweep resumed into a committed report folder
    appends to its tracked ``records.jsonl`` and rewrites its leaderboard, which change no
    result, and would otherwise mark every record it adds as made from uncommitted code.
    Without a repository (a copied work tree), the commit `COMMIT_ENV` names, if any.
    """

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout

    try:
        commit = git("rev-parse", "--short=12", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)reports")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get(COMMIT_ENV) or None
    return commit + ("-dirty" if dirty.strip() else "")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows of it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """What a record calls the hardware: the GPU's name, or the CPU with its thread count."""
    import torch  # only when capturing: the report commands read PACKAGES without torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"cpu {cpu} ({torch.get_num_threads()} threads)"


def _torch_build() -> dict[str, str | None]:
    """torch's version with its build tag (``+cu130``), its CUDA, and cuDNN where a GPU is."""
    import torch  # only when capturing: the report commands read PACKAGES without torch

    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if torch.cuda.is_available() else None,
    }


def record_provenance(device: torch.device) -> dict[str, str | None]:
    """Versions, commit and hardware, stored in every record."""
    versions = {p.lower(): package_version(p) for p in RESULT_PACKAGES}
    return {
        "git_commit": git_commit(),
        **versions,
        **_torch_build(),
        "python": platform.python_version(),
        "device_name": device_name(device),
        "hostname": platform.node(),
        # The OS and kernel build: two parts of one sweep can run on different hosts, and
        # their floating-point results (and so a DP-SGD trajectory) need not agree.
        "platform": platform.platform(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def environment_facts() -> dict[str, str | None]:
    """This process's environment for ``environment.txt``, in the provenance vocabulary of
    records: Python, every `PACKAGES` version, CUDA, cuDNN, CPU, GPUs and platform."""
    import torch  # only when capturing: the report commands read PACKAGES without torch

    facts: dict[str, str | None] = {"python": platform.python_version()}
    facts.update({p.lower(): package_version(p) for p in PACKAGES})
    build = _torch_build()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    facts.update(
        torch=build["torch"],
        cuda=build["cuda"],
        cudnn=build["cudnn"],
        cpu=f"{cpu_model()} ({os.cpu_count()} logical cores)",
        gpus=", ".join(gpus) or None,
        platform=platform.platform(),
    )
    return facts
