"""Which torch device this process computes on: the one place that decides it.

``train``, ``study run``, ``ablate`` and ``evaluate`` all read a device name from a config or a
``--device`` flag, and all may run under ``torchrun``. The rules are written once here:

* ``auto`` (or None) is CUDA when this machine has it, else the CPU;
* a CUDA device without an index gets one: under ``torchrun`` (``WORLD_SIZE`` > 1) the
  process's own GPU, ``cuda:LOCAL_RANK`` — DistributedDataParallel needs it and every rank on a
  node would otherwise pile onto GPU 0 — and in a plain process the current CUDA device;
* a name torch does not know, or a device this machine does not have, is a `ConfigError` that
  names it, before any work.

Resolving has no side effects (no ``torch.cuda.set_device``); a caller that wants the device
current sets it.
"""

from __future__ import annotations

import os

import torch

from attrimp.errors import ConfigError

#: the device names accepted besides torch's own (``cpu``, ``cuda``, ``cuda:N``, ``mps``)
AUTO = "auto"


def is_distributed() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK`` under ``torchrun``; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(
    name: str | torch.device | None = AUTO, *, distributed: bool | None = None
) -> torch.device:
    """The device ``name`` means for this process (see the module docstring for the rules).

    ``distributed`` says whether this process runs under ``torchrun``; None reads it from the
    environment (`is_distributed`).
    """
    if distributed is None:
        distributed = is_distributed()
    device = _parse(name)
    if device.type == "cuda":
        return _cuda_device(device, distributed)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"device {str(device)!r} was asked for, but this machine has no MPS device."
        )
    return device


def _parse(name: str | torch.device | None) -> torch.device:
    """``name`` as a torch device; ``auto`` chooses CUDA when there is one."""
    if isinstance(name, torch.device):
        return name
    if name is None or name.strip().lower() == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name.strip())
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"device {name!r} is not a device name; use auto, cpu, cuda or cuda:N."
        ) from None


def _cuda_device(device: torch.device, distributed: bool) -> torch.device:
    """A CUDA device with its index filled in and checked against this machine's GPUs."""
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {str(device)!r} was asked for, but this machine has no CUDA device."
        )
    if device.index is None:
        index = local_rank() if distributed else torch.cuda.current_device()
        device = torch.device("cuda", index)
    count = torch.cuda.device_count()
    if device.index >= count:
        raise ConfigError(
            f"device {str(device)!r} was asked for, but this machine has {count} CUDA device(s)."
        )
    return device
