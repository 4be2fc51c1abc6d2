"""A cell on two processes (gloo, CPU) computes what it computes on one: the same batches, the
same noise, the same epsilon and, with one thread per process as on the one, the same bits."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
import submitit
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bench.sweep.cost
import bench.sweep.processes
import bench.sweep.slurm
from bench import saved_model
from bench.cli import main
from bench.errors import ConfigError
from bench.perf.__main__ import main as perf_main
from bench.suite import load_suite
from bench.sweep.cell import ELSEWHERE, run_cell
from bench.sweep.cost import estimate
from bench.sweep.lock import cell_lock
from bench.sweep.options import RunOptions, SlurmOptions
from bench.sweep.processes import RankLost, check_nproc, start_method, train_cell_on
from bench.sweep.slurm import SlurmCellJob, slurm_time_limit_min
from bench.train.cell import train_cell
from bench.train.ranks import Ranks
from tests.resume_tools import Killed, cell, kill_at

CPU = torch.device("cpu")

#: A covering design: every grad-sample mode once, with DP statistics, gradient dropping,
#: augmentation multiplicity and odd logical batches spread over the three; logical batches of
#: several physical batches (``max_physical_batch=16``), whose sums the ranks must add in one
#: process's order (`Ranks.sum_in_order`), in every mode.
CASES = {
    "hooks-augmult": [
        "training.grad_sample_mode=hooks",
        "training.augmult=2",
        "training.max_physical_batch=16",
    ],
    "functorch-layer_norm": [
        "training.grad_sample_mode=functorch",
        "grid.norm=[layer_norm]",
        "training.max_physical_batch=16",
    ],
    "bk-private_stats-grad_drop": [
        "training.grad_sample_mode=bk",
        "grid.norm=['dp_batch_norm[stats=private_dp]']",
        "training.grad_drop={rate: 0.5, method: random}",
        "training.max_loss=1e30",  # noisy statistics of 224 examples: a large first loss
    ],
    # Dropout draws from the global generator, reseeded per physical batch by its place in
    # the logical batch (bench.seeds.seed_dropout): the same masks on 1 and 2 processes.
    "bk-kernel_norm-dropout": ["grid.norm=[kernel_norm]", "training.max_physical_batch=16"],
}


def _weights(model_dir, run_key: str) -> dict[str, torch.Tensor]:
    path = saved_model.model_path(model_dir, run_key)
    return saved_model.load(path, run_key)["weights"]["final"]


def _one_thread_train_cell(c, **kw) -> dict:
    """`train_cell` on one process of one intra-op thread (as each rank of
    ``train_cell_on(..., threads=1)``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_cell(c, CPU, **kw)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_two_processes_train_what_one_does_bit_for_bit(tmp_path, case):
    sets = ["training.save_model=true", "training.steps=3", "training.log_private_loss=true"]
    c = cell(tmp_path, *sets, *CASES[case])
    one = _one_thread_train_cell(c, model_dir=tmp_path / "one")
    two = train_cell_on(2, c, CPU, threads=1, model_dir=tmp_path / "two")
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert len(two["throughput_per_rank_img_s"]) == 2
    # The training loss too: each physical batch's mean loss added in one process's order.
    fields = ("epsilon_spent", "steps_done", "noise_multiplier", "sample_rate", "test_acc")
    for field in (*fields, "final_train_loss"):
        assert two[field] == one[field], field
    w1, w2 = _weights(tmp_path / "one", c.run_key), _weights(tmp_path / "two", c.run_key)
    assert w1.keys() == w2.keys()
    assert [name for name in w1 if not torch.equal(w1[name], w2[name])] == []


def test_a_shard_is_whole_blocks_contiguous_and_covers_the_batch_once():
    for n in (0, 1, 5, 64, 67):
        for world in (1, 2, 3):
            for block in (1, 16):
                parts = [Ranks(r, world).shard(n, block) for r in range(world)]
                covered = [i for p in parts for i in range(n)[p]]
                assert covered == list(range(n))
                assert all(p.start % block == 0 for p in parts)
                blocks = [-(-len(range(n)[p]) // block) for p in parts]
                assert max(blocks) - min(blocks) <= 1
    # The extra block goes to the last rank, with the short one: 16 | 16+3, not 16+16 | 3.
    assert [Ranks(r, 2).shard(35, 16) for r in range(2)] == [slice(0, 16), slice(16, 35)]


def _sum_in_order_rank(rank: int, world: int, store: str, parts: dict, out: str) -> None:
    """One rank of `test_the_ranks_add_the_physical_batches_in_one_process_order`."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        like = [torch.zeros(3), torch.zeros(2)]
        total = Ranks(rank, world).sum_in_order(parts[rank], like)
        torch.save(total, f"{out}{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_the_ranks_add_the_physical_batches_in_one_process_order(tmp_path):
    """Three ranks holding 1, 0 and 3 physical batches get the left-to-right sum one process
    accumulates, bit for bit, where another order of the same float32 additions differs."""
    big = torch.tensor([1e8, 3.0, 1.0], dtype=torch.float32)
    c = [
        [big, torch.tensor([0.1, 0.7])],
        [torch.tensor([1.0, 0.3, 1e-3]), torch.tensor([0.2, 0.1])],
        [-big, torch.tensor([0.3, 1e-8])],
        [torch.tensor([1.0, 0.1, 0.25]), None],  # a parameter the loss skipped: zeros
    ]
    parts = {0: c[:1], 1: [], 2: c[1:]}
    one = Ranks().sum_in_order(c, [torch.zeros(3), torch.zeros(2)])
    other_order = [c[0][0] + (c[1][0] + (c[2][0] + c[3][0])), c[0][1] + (c[1][1] + c[2][1])]
    assert not all(torch.equal(a, b) for a, b in zip(one, other_order, strict=True))
    args = (3, str(tmp_path / "store"), parts, str(tmp_path / "total"))
    how = start_method(CPU)  # forked from the ranks' fork server, as `train_cell_on` starts them
    mp.start_processes(_sum_in_order_rank, args=args, nprocs=3, join=True, start_method=how)
    for rank in range(3):
        total = torch.load(tmp_path / f"total{rank}.pt")
        assert all(torch.equal(a, b) for a, b in zip(total, one, strict=True)), rank
    assert torch.equal(one[0], ((c[0][0] + c[1][0]) + c[2][0]) + c[3][0])


def test_an_error_every_rank_raises_comes_back_as_itself(tmp_path):
    c = cell(tmp_path, "training.divergence_check=private_loss", "training.max_loss=1e-9")
    with pytest.raises(Exception) as raised:
        train_cell_on(2, c, CPU)
    assert type(raised.value).__name__ == "Diverged"
    assert not isinstance(raised.value, RankLost)


def test_secure_noise_on_two_processes_is_refused_as_itself(tmp_path):
    """Each rank would seed its secret streams from its own os.urandom: two Poisson samples
    and two noises for one step. Refused before any process starts (and on every rank of a
    launcher such as torchrun, before the data loads)."""
    c = cell(tmp_path, "privacy.secure_noise=true")
    with pytest.raises(ConfigError, match=r"secure_noise: true on 2 processes.*--nproc 1"):
        train_cell_on(2, c, CPU)


def test_more_processes_than_devices_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="--nproc 4096: only"):
        check_nproc(4096, CPU)
    with pytest.raises(ConfigError, match="at least 1"):
        check_nproc(0, CPU)


def test_a_cell_resumes_on_another_number_of_processes(tmp_path):
    """Killed after step 2 on one process, resumed on two: the weights of an uninterrupted run."""
    c = cell(tmp_path, "training.save_model=true", "training.steps=4")
    whole = train_cell(c, CPU, model_dir=tmp_path / "whole")
    ckpts = tmp_path / "checkpoints"
    with pytest.raises(Killed):
        train_cell(c, CPU, progress=kill_at(3), checkpoint_dir=ckpts)
    resumed = train_cell_on(2, c, CPU, checkpoint_dir=ckpts, model_dir=tmp_path / "resumed")
    assert resumed["resumed_from_step"] == 2
    assert resumed["epsilon_spent"] == whole["epsilon_spent"]
    w1, w2 = _weights(tmp_path / "whole", c.run_key), _weights(tmp_path / "resumed", c.run_key)
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-5, atol=1e-6, msg=name)


def test_bench_run_nproc_writes_one_record_per_cell(tiny, tmp_path):
    out = tmp_path / "out"
    args = ["run", str(tiny), "--out", str(out), "--nproc", "2", "--no-progress"]
    args += ["--set", "grid.seed=[0]", "--set", "grid.norm=[group_norm]"]
    assert main(args) == 0
    (record,) = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and record["world_size"] == 2


def test_a_lost_rank_makes_the_cell_interrupted(tmp_path, monkeypatch):
    def lost(*args, **kwargs):
        raise bench.sweep.processes.RankLost("a process of the cell ended abnormally: rank 1")

    monkeypatch.setattr(bench.sweep.processes, "train_cell_on", lost)
    record = run_cell(cell(tmp_path), tmp_path / "records.jsonl", "cpu", nproc=2)
    assert record["status"] == "interrupted"
    assert "rank 1" in record["error"]


def test_a_half_set_launcher_environment_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=r"half set: .*MASTER_ADDR, MASTER_PORT not"):
        bench.sweep.processes.launched_ranks()


def test_a_multi_node_slurm_job_asks_for_its_nodes_and_tasks():
    params = SlurmOptions(nodes=2, tasks_per_node=4, partition="gpu").submitit_parameters()
    assert params == {
        "slurm_partition": "gpu",
        "nodes": 2,
        "tasks_per_node": 4,
        "gpus_per_node": 4,
    }
    assert "nodes" not in SlurmOptions().submitit_parameters()


def test_a_slurm_task_of_a_multi_task_job_joins_through_submitit(monkeypatch, tmp_path):
    """Each task exports submitit's torch.distributed variables, then runs the cell."""
    calls = []

    class Job:
        num_tasks = 8

    class Env:
        def export(self, set_cuda_visible_devices=True):
            calls.append(("export", set_cuda_visible_devices))
            return self

    monkeypatch.setattr(submitit, "JobEnvironment", Job)
    monkeypatch.setattr(submitit.helpers, "TorchDistributedEnvironment", Env)
    monkeypatch.setattr(
        bench.sweep.slurm, "run_cell", lambda *a, **k: calls.append("run") or {"status": "ok"}
    )
    assert SlurmCellJob()(cell(tmp_path), str(tmp_path / "records.jsonl")) == "ok"
    assert calls == [("export", False), "run"]


def test_the_scaling_table_has_a_row_per_process_count(tiny, capsys):
    args = ["scaling", str(tiny), "--nproc", "1,2", "--device", "cpu"]
    assert perf_main([*args, "--set", "grid.seed=[0]", "--set", "training.steps=3"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "processes" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["1", "2"]
    assert "cross-rank sum share" in out and "%" in rows[1]


@pytest.mark.parametrize("given", ["1,two", "1,,2", "0,2", ""])
def test_a_bad_scaling_nproc_is_one_line_exit_2(tiny, capsys, given):
    assert perf_main(["scaling", str(tiny), "--nproc", given, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--nproc" in err[0] and "comma-separated" in err[0], err


@pytest.mark.parametrize(
    "flags",
    [["--nproc", "0"], ["--executor", "slurm", "--slurm-nodes", "0"]],
    ids=["nproc", "nodes"],
)
def test_no_process_per_cell_is_one_line_exit_2_before_the_estimate(tiny, tmp_path, capsys, flags):
    args = ["run", str(tiny), "--dry-run", "--out", str(tmp_path / "o"), *flags]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{flags[-2]}: must be at least 1" in err[0], err


def test_the_dry_run_says_how_many_processes_each_cell_takes(tiny, tmp_path, capsys):
    args = ["run", str(tiny), "--dry-run", "--out", str(tmp_path / "o"), "--set", "grid.seed=[0]"]
    assert main([*args, "--nproc", "2"]) == 0
    out = capsys.readouterr().out
    assert "processes per cell: 2" in out and "ideal scaling" in out
    assert (
        main([*args, "--executor", "slurm", "--slurm-nodes", "2", "--slurm-tasks-per-node", "4"])
        == 0
    )
    assert "processes per cell: 8" in capsys.readouterr().out


def test_the_slurm_time_limit_takes_the_busiest_rank_share_of_each_step(tiny):
    cells = load_suite(tiny).cells()  # 3 steps of 64 examples, in physical batches of 32
    assert slurm_time_limit_min(cells, 600.0) == math.ceil(1.5 * 3 * 600 / 60) + 10
    assert slurm_time_limit_min(cells, 600.0, world=2) == math.ceil(1.5 * 3 * 300 / 60) + 10
    # Two physical batches go no faster on four ranks than on two.
    assert slurm_time_limit_min(cells, 600.0, world=4) == slurm_time_limit_min(cells, 600.0, 2)


def test_the_estimate_of_a_cell_on_two_processes_halves_its_steps_only(tiny, monkeypatch):
    monkeypatch.setattr(bench.sweep.cost, "step_seconds", lambda cell, device: 2.0)
    cost = estimate(
        load_suite(tiny), Path("/nonexistent/records.jsonl"), options=RunOptions(nproc=2)
    )
    # 3 steps x 2 s / 2, + evaluation on rank 0 (2/3 s), no non-private reference.
    assert cost.cell_s == (3.0 + 2 / 3,) * 6
    assert any("ideal scaling over whole physical batches" in line for line in cost.lines())


def test_the_estimate_of_a_worker_pool_is_its_longest_worker(tiny, monkeypatch):
    """Six cells of 8 2/3 s dealt to 4 GPU workers: the first worker's two cells; on 2 CPU
    workers sharing the cores, each cell takes twice as long and nothing is gained."""
    monkeypatch.setattr(bench.sweep.cost, "step_seconds", lambda cell, device: 2.0)
    records, one_cell = Path("/nonexistent/records.jsonl"), 8 + 2 / 3
    cpu = estimate(load_suite(tiny), records, options=RunOptions(workers=2))
    assert (cpu.workers, cpu.shared_cores) == (2, True)
    assert cpu.total_s == pytest.approx(6 * one_cell)
    assert any("2 workers, sharing the CPU cores" in line for line in cpu.lines())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(bench.sweep.cost, "describe_device", lambda device: "cuda (4 GPUs)")
    gpus = estimate(load_suite(tiny), records, options=RunOptions())
    assert (gpus.workers, gpus.shared_cores) == (4, False)
    assert gpus.cell_s == (pytest.approx(one_cell),) * 6
    assert gpus.total_s == pytest.approx(2 * one_cell)
    assert any("4 workers, one GPU each" in line for line in gpus.lines())


def _launched_rank(rank: int, world: int, port: int, folder: str) -> None:
    """One rank of a torchrun-like launch (``env://``) running the tiny cell into ``folder``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    c = cell(Path(folder))
    record = run_cell(c, Path(folder) / "records.jsonl", "cpu")
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


def test_a_launched_sweep_skips_a_cell_another_process_holds(tmp_path):
    """Two launched ranks find the cell's lock taken (rank 0 looks, and tells rank 1): both
    skip it, and nothing is recorded."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = cell(tmp_path)
    with cell_lock(tmp_path / "records.jsonl", c.run_key) as holder:
        assert holder is None
        args = (2, port, str(tmp_path))
        how = start_method(CPU)
        mp.start_processes(_launched_rank, args=args, nprocs=2, join=True, start_method=how)
    for rank in range(2):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record["status"] == ELSEWHERE, rank
        assert f"pid {os.getpid()}" in record["error"]
    assert not (tmp_path / "records.jsonl").exists()
