"""attrimp.devices.resolve_device: the one rule for which device a process computes on.

CUDA is simulated (monkeypatched availability, count and current device), so every branch runs
on a CPU-only machine; no tensor is ever put on the simulated device.
"""

from __future__ import annotations

import pytest
import torch

from attrimp.devices import is_distributed, local_rank, resolve_device
from attrimp.errors import ConfigError


@pytest.fixture
def no_torchrun(monkeypatch):
    for var in ("WORLD_SIZE", "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def cuda(monkeypatch):
    """A machine with 4 GPUs, GPU 2 current."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def torchrun(monkeypatch, local: int, world: int = 4) -> None:
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", str(local))


@pytest.mark.parametrize("name", ["auto", "AUTO", None])
def test_auto_is_the_cpu_without_cuda(no_torchrun, no_cuda, name):
    assert resolve_device(name) == torch.device("cpu")


def test_auto_is_the_current_gpu_with_cuda(no_torchrun, cuda):
    assert resolve_device("auto") == torch.device("cuda", 2)
    assert resolve_device() == torch.device("cuda", 2)


def test_auto_and_bare_cuda_under_torchrun_are_the_local_rank_gpu(monkeypatch, cuda):
    torchrun(monkeypatch, local=3)
    assert is_distributed() and local_rank() == 3
    assert resolve_device("auto") == torch.device("cuda", 3)
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device(torch.device("cuda")) == torch.device("cuda", 3)


def test_an_explicit_index_is_kept_under_torchrun(monkeypatch, cuda):
    torchrun(monkeypatch, local=3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_the_distributed_argument_overrides_the_environment(no_torchrun, cuda, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda", 2)  # WORLD_SIZE unset: current GPU
    assert resolve_device("cuda", distributed=True) == torch.device("cuda", 1)
    torchrun(monkeypatch, local=1)
    assert resolve_device("cuda", distributed=False) == torch.device("cuda", 2)


def test_a_single_process_world_is_not_distributed(monkeypatch, cuda):
    torchrun(monkeypatch, local=1, world=1)
    assert not is_distributed()
    assert resolve_device("cuda") == torch.device("cuda", 2)


def test_cpu_stays_cpu_under_torchrun(monkeypatch, cuda):
    torchrun(monkeypatch, local=3)
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_cuda_names_the_device(no_torchrun, no_cuda, name):
    with pytest.raises(
        ConfigError, match=f"device '{name}' was asked for, but this machine has no CUDA"
    ):
        resolve_device(name)


def test_a_gpu_index_past_the_machines_count_names_it(no_torchrun, cuda):
    with pytest.raises(
        ConfigError, match=r"device 'cuda:7' was asked for, but this machine has 4 CUDA"
    ):
        resolve_device("cuda:7")


def test_a_local_rank_past_the_machines_gpus_is_an_error(monkeypatch, cuda):
    torchrun(monkeypatch, local=5, world=8)
    with pytest.raises(ConfigError, match=r"'cuda:5'.*has 4 CUDA device"):
        resolve_device("auto")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "", "tpu:0:1"])
def test_an_unknown_name_is_one_sentence_naming_it(no_torchrun, name):
    with pytest.raises(ConfigError, match=f"device {name!r} is not a device name"):
        resolve_device(name)


def test_a_torch_device_is_accepted_as_is(no_torchrun, no_cuda):
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
