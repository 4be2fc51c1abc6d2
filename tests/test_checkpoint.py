"""Checkpoint files: atomic, tied to their config, refused when truncated, corrupt or foreign."""

from __future__ import annotations

import subprocess

import torch

from bench import checkpoint
from bench.config import config_hash
from tests.resume_tools import overwrite_mid_tensor


def test_round_trip_and_refusals(tmp_path):
    g = torch.Generator().manual_seed(3)
    torch.rand(4, generator=g)
    state = {"step": 7, "w": torch.arange(3.0), "rng": checkpoint.generator_states({"s": g})}
    path = checkpoint.checkpoint_path(tmp_path, "abc")
    checkpoint.save(path, state, "hash-1")
    loaded = checkpoint.load(path, "hash-1")
    assert loaded.reason is None and loaded.state["step"] == 7
    assert torch.equal(loaded.state["w"], torch.arange(3.0))
    h = torch.Generator()
    checkpoint.restore_generators({"s": h}, loaded.state["rng"])
    assert torch.equal(torch.rand(5, generator=h), torch.rand(5, generator=g))
    assert not list(path.parent.glob(".checkpoint.*"))  # no temporary file left behind

    other = checkpoint.load(path, "hash-2")
    assert other.state is None and "another configuration" in other.reason
    assert not path.exists()  # discarded: a later save must not keep it as the previous one
    checkpoint.save(path, state, "hash-1")
    path.write_bytes(path.read_bytes()[:50])  # truncated by a kill mid-copy
    cut = checkpoint.load(path, "hash-1")
    assert cut.state is None and "unreadable" in cut.reason
    assert checkpoint.load(tmp_path / "missing.pt", "hash-1") == checkpoint.Loaded(None, None)


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_checkpoint_holding_code_is_refused_not_run(tmp_path, capsys):
    path = tmp_path / "k" / checkpoint.FILE
    path.parent.mkdir()
    torch.save({"format": checkpoint.FORMAT, "config_hash": "h", "state": _Evil()}, path)
    loaded = checkpoint.load(path, "h")
    assert loaded.state is None and "unreadable" in loaded.reason
    assert "code ran" not in capsys.readouterr().out


def test_config_hash_is_order_independent():
    assert config_hash({"a": 1, "b": [2]}) == config_hash({"b": [2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_git_never_picks_up_a_checkpoint_wherever_it_is_written(tmp_path):
    """A checkpoint holds the un-noised loss and, under secure noise, the secret streams'
    states: the checkpoints folder ignores itself, inside ``reports/`` or any other repository."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    out = tmp_path / "reports" / "my_suite"
    path = checkpoint.checkpoint_path(out / "checkpoints", "abc")
    checkpoint.save(path, {"step": 1}, "hash-1")
    (out / "records.jsonl").write_text("{}\n")
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    assert [line for line in status if line] == ["?? reports/my_suite/records.jsonl"]


def test_bytes_overwritten_inside_a_tensor_fail_the_checksum_and_are_discarded(tmp_path):
    """Such a checkpoint once loaded; the resumed run diverged and was recorded failed."""
    path = checkpoint.checkpoint_path(tmp_path, "abc")
    state = {"step": 4, "w": torch.linspace(-1, 1, 4096)}
    checkpoint.save(path, state, "h")
    overwrite_mid_tensor(path, state)
    loaded = checkpoint.load(path, "h")
    assert loaded.state is None
    assert loaded.reason == f"checkpoint {path} fails its checksum (corrupted); discarded, " + (
        "starting over"
    )
    assert not path.exists()


def test_a_corrupted_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    path = checkpoint.checkpoint_path(tmp_path, "abc")
    for step in (2, 4):
        checkpoint.save(path, {"step": step, "w": torch.full((4096,), float(step))}, "h")
    overwrite_mid_tensor(path, {"w": torch.full((4096,), 4.0)})
    loaded = checkpoint.load(path, "h")
    assert loaded.state["step"] == 2 and torch.equal(loaded.state["w"], torch.full((4096,), 2.0))
    assert "fails its checksum" in loaded.reason
    assert loaded.reason.endswith("discarded, resuming from the previous checkpoint")
    checkpoint.save(path, {"step": 4, "w": torch.zeros(3)}, "h")  # the run goes on from step 2
    assert checkpoint.load(checkpoint.previous_path(path), "h").state["step"] == 2
    checkpoint.remove(path)
    assert not path.parent.exists()
