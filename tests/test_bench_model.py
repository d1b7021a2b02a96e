"""The model benchmark runs end to end on a tiny model, and its profile table reads right.

The GPU rows of BENCHMARKS.md come from a device session that runs this script once; these
tests keep the script working between such sessions, including the CUDA-only report path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench_model = pytest.importorskip("bench_model")


def test_tiny_run_times_plain_and_both_banks_and_counts_their_operations(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--tiny", "--profile", "--compile", "eager", "--iters", "1", "--repeats", "2"]
    runs = bench_model.main([*argv, "--json", str(out)])  # no --threads: it is process-wide
    assert {(r.model, r.mode) for r in runs} == {
        (m, mode) for m in ("plain", "adapter", "lora") for mode in ("infer", "train")
    }
    assert all(len(r.rates) == 2 and min(r.rates) > 0 and not r.skipped for r in runs)
    data = json.loads(out.read_text())
    ops = {(p["model"], p["mode"]): p["ops"] for p in data["profiles"]}
    # each bank adds work to every step, and training does more than inference
    for bank in ("adapter", "lora"):
        assert ops[bank, "infer"] > ops["plain", "infer"] > 0
        assert ops[bank, "train"] > ops["plain", "train"] > ops["plain", "infer"]
    # the lora bank wraps two linears per block where the adapter wraps one sub-layer
    assert ops["lora", "infer"] > ops["adapter", "infer"]
    assert data["expert_share"]["lora"] > data["expert_share"]["adapter"] > 0
    text = capsys.readouterr().out
    assert "pair ratios: median" in text
    assert "| infer | no | adapter |" in text and "| train | no | lora |" in text


def test_profile_report_ranks_the_kernels_a_bank_adds():
    plain = bench_model.StepProfile(
        "plain", "train", False, wall_ms=30.0, ops=1000, kernels=900, gpu_ms=20.0,
        kernel_ms={"gemm_big": 15.0, "layernorm": 5.0},
    )  # fmt: skip
    mosaic = bench_model.StepProfile(
        "lora", "train", False, wall_ms=33.0, ops=1040, kernels=930, gpu_ms=22.5,
        kernel_ms={"gemm_big": 15.1, "layernorm": 5.0, "gemm_thin": 2.0, "mul": 0.4},
    )  # fmt: skip
    text = bench_model.profile_report([plain, mosaic])
    row = (
        "| train | no | lora | 1000 | 1040 | +40 | 900 | 930 | 20.00 | 22.50 | 30.00 | 33.00 | "
        "n/a / n/a |"
    )
    assert row in text
    listed = [line for line in text.splitlines() if line.startswith("- ")]
    assert listed[0].split() == ["-", "+2.000", "gemm_thin"]
    assert listed[1].split() == ["-", "+0.400", "mul"]


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_cuda_graph_steps_mark_each_step_and_return_a_copy(monkeypatch, mode):
    """The reduce-overhead crash in inference ("accessing tensor output of CUDAGraphs that has
    been overwritten by a subsequent run"): every step must tell the CUDA-graph trees that a
    new step begins, and what a step hands back must not be the graph's own output memory."""
    import torch

    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    returned = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            out = self.lin(x)
            returned.append(out)
            return out, out, out

    x, labels = torch.randn(2, 4), torch.tensor([0, 2])
    cpu = torch.device("cpu")
    step = bench_model.make_step(Net(), mode, x, None, labels, cpu, False, graphs=True)
    outs = [step() for _ in range(3)]
    assert len(marks) == 3
    if mode == "infer":  # a copy, not the (graph-owned) output itself
        assert all(o.data_ptr() != r.data_ptr() for o, r in zip(outs, returned))
    plain = bench_model.make_step(Net(), mode, x, None, labels, cpu, False)
    plain()
    assert len(marks) == 3  # eager steps mark nothing
