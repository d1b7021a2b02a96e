"""Run ``python -m attrimp`` unchanged under torchrun, recording what each rank did.

Used by tests/test_distributed.py as the torchrun entry point instead of ``-m attrimp``: it
records, for this rank, every PK batch the sampler handed out (indices into the training set,
per epoch) and, after training, digests of the rank's parameters and of its whole state
(parameters + buffers), into ``$ATTRIMP_PROBE_DIR/rank<R>.json``. Then it runs the real command
line exactly as ``python -m attrimp`` does (``runpy`` on the package's ``__main__``), so nothing
of the command under test is replaced, only observed.
"""

from __future__ import annotations

import hashlib
import json
import os
import runpy
from pathlib import Path


def digest(named_tensors) -> str:
    """SHA-256 over names and bytes, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def install(out: Path) -> None:
    """Wrap the PK sampler's iterator and `attrimp.train.training.train` with recorders."""
    import attrimp.train.training
    from attrimp.data.sampler import PKSampler

    rank = int(os.environ.get("RANK", "0"))
    record: dict = {"rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    record["batches"] = {}
    sampler_iter, train = PKSampler.__iter__, attrimp.train.training.train

    def recording_iter(self):
        for batch in sampler_iter(self):
            record["batches"].setdefault(str(self.epoch), []).append([int(i) for i in batch])
            yield batch

    def recording_train(model, *args, **kwargs):
        result = train(model, *args, **kwargs)
        record["parameters_sha256"] = digest(model.named_parameters())
        record["state_sha256"] = digest(model.state_dict().items())
        (out / f"rank{rank}.json").write_text(json.dumps(record), encoding="utf-8")
        return result

    PKSampler.__iter__ = recording_iter
    attrimp.train.training.train = recording_train


if __name__ == "__main__":
    install(Path(os.environ["ATTRIMP_PROBE_DIR"]))
    runpy.run_module("attrimp", run_name="__main__", alter_sys=True)
