"""Every input a user gives is checked before anything runs: one line, exit code 2."""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_backbone_of_width_zero_is_refused_at_load_naming_the_key(capsys, tiny, tmp_path):
    out = tmp_path / "out"
    for width in ("0", "-1"):
        spec = f"resnet9[width={width}]"
        code = main(["run", str(tiny), "--set", f"grid.backbone=['{spec}']", "--out", str(out)])
        assert code == 2
        err = _one_line_error(capsys)
        assert f"{tiny}: grid.backbone[0] (from --set): backbone 'resnet9': width=" in err
        assert "allowed: a finite number > 0" in err
    assert not out.exists()


def test_an_unknown_device_or_cuda_without_a_gpu_is_one_line_and_nothing_runs(
    capsys, tiny, tmp_path, monkeypatch
):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    out = tmp_path / "out"
    for device, says in (("foo", "unknown device 'foo'"), ("cuda", "no CUDA GPU is visible")):
        assert main(["run", str(tiny), "--device", device, "--out", str(out)]) == 2
        assert says in _one_line_error(capsys)
    assert not out.exists()


def test_a_mistyped_baseline_names_the_closest_recorded_norm_and_overwrites_nothing(
    capsys, tmp_path
):
    for name in ("records.jsonl", "leaderboard.md"):
        shutil.copy(ROOT / "reports" / "smoke" / name, tmp_path / name)
    before = (tmp_path / "leaderboard.md").read_bytes()
    assert main(["report", str(tmp_path), "--baseline", "batch_norm"]) == 2
    err = _one_line_error(capsys)
    assert err.startswith("error: --baseline: the baseline matches no norm of the records")
    assert err.endswith("(did you mean 'dp_batch_norm[stats=public]'?)")
    assert (tmp_path / "leaderboard.md").read_bytes() == before


def test_a_set_list_with_an_unquoted_bracketed_spec_says_to_quote_it(capsys, tiny):
    override = "grid.norm=[group_norm[num_groups=8], layer_norm]"
    assert main(["run", str(tiny), "--set", override, "--dry-run"]) == 2
    err = _one_line_error(capsys)
    assert f"{tiny}: grid.norm: cannot parse the value as YAML" in err
    assert err.endswith(
        "allowed: quote each bracketed spec inside a list, and the whole override for the "
        "shell: --set \"grid.norm=['group_norm[num_groups=8]', layer_norm]\""
    )
