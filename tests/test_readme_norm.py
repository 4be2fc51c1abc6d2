"""The README's "Adding a norm" example works as written, brought by another package."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import torch
import norms
from bench.backbones import create_backbone
from bkclip import DPSGDStep, check_coverage, make_optimizer, rule_for

assert "pixel_rms" in norms.list_norms(), norms.list_norms()
model = create_backbone("resnet9", norm="pixel_rms", width=0.125)
check_coverage(model)
layers = [m for m in model.modules() if type(m).__name__ == "PixelRMSNorm"]
assert layers and all(rule_for(m) == "bk" for m in layers)
gains = [m.gain.detach().clone() for m in layers]
step = DPSGDStep(
    model, make_optimizer(model.parameters(), lr=1.0), noise_multiplier=0.0, max_grad_norm=1.0,
    expected_batch_size=4, max_physical_batch=4, mode="bk",
)
loss = step(torch.randn(4, 1, 3, 16, 16), torch.randint(0, 10, (4,)))
assert loss == loss and any(not torch.equal(g, m.gain) for g, m in zip(gains, layers))
print("ok", len(layers))
"""


def readme_norm_example() -> str:
    section = (ROOT / "README.md").read_text().split("## Adding a norm", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_norm_example_registers_from_another_package(tmp_path: Path):
    """Written verbatim as another package's module, named by the entry-point group the README
    gives, the example's norm is listed, builds in a backbone, gets its book-keeping rule and
    trains a DP step through it."""
    (tmp_path / "readme_pixel_rms.py").write_text(readme_norm_example())
    info = tmp_path / "readme_pixel_rms-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: readme-pixel-rms\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dp_norm_bench.norms]\npixel_rms = readme_pixel_rms\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok ")
