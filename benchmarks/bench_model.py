"""MoSAIC-ReID with each expert bank against the plain backbone: throughput and peak memory.

    python benchmarks/bench_model.py                       # CPU: batch 2, few iterations
    python benchmarks/bench_model.py --device cuda         # GPU: bf16 autocast, batch 64
    python benchmarks/bench_model.py --device cuda --json out.json --budget 170
    python benchmarks/bench_model.py --device cuda --compile-scope model     # whole-model compile
    python benchmarks/bench_model.py --device cuda --profile   # + where MoSAIC's extra time goes

Both models are CLIP ViT-B/16 at 256x128 (open_clip's architecture, random init, nothing
downloaded) with the same BNNeck + identity classifier (751 identities, as Market-1501's
training set); MoSAIC adds the Market-1501 schema's 35 LoRA experts at rank 8 in the last
blocks (default 2) and routes every sample with the oracle router. One MoSAIC model per expert
bank (``--banks``, default both): ``adapter`` (a gated LoRA branch beside the MLP) and ``lora``
(gated LoRA updates of the MLP's own two linears), each on its own copy of the same backbone.
All get the same batch of images (and MoSAIC its attribute multi-hot, ~12 experts on per sample).

- ``infer``: eval mode, no grad, one forward.
- ``train``: train mode, forward + identity cross-entropy + backward + AdamW step. The
  optimiser is created inside the measurement, so its state counts towards peak memory.
- ``compiled``: ``torch.compile`` (default inductor) of the whole model, or with
  ``--compile-scope blocks`` of each transformer block (regional compilation: a fraction of the
  cold compile time); the first call's time (compilation and warm-up) is shown apart and is
  not in the throughput.

Throughput is the best of ``--repeats`` timed runs, plain and the MoSAIC models alternating
(and their order reversed every other repeat) so that drift of a shared machine hits all. The
headline ratio of a bank is the median (and range) of the ratios to the plain run of the same
repeat, which a noisy machine moves less than the ratio of the bests, shown beside it. With ``--compile-mode reduce-overhead``
every step marks a new CUDA-graph step and clones what it returns (see `make_step`).

``--profile`` adds a table of what one step costs each model: dispatched ATen operations (views
and allocations left out: roughly one kernel launch each in eager mode) and, on CUDA, the
kernels the profiler saw and their summed GPU time against the wall time. It says whether a
throughput gap is host overhead (more operations, same GPU time) or GPU work, and lists the
kernels that account for MoSAIC's extra GPU time. Peak memory is the peak during the timed steps above what was
allocated before the run's warm-up, i.e. above the resident weights (activations, gradients,
optimiser state): on CUDA from ``max_memory_allocated``; on CPU from the peak resident set
(Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) after ``malloc_trim`` — approximate,
allocator caching blurs it.
"""

from __future__ import annotations

import argparse
import collections
import copy
import ctypes
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import backbones
from attrimp.model.mosaic import MoSAICConfig, MoSAICReID
from attrimp.model.schema import load_schema

NUM_CLASSES = 751


class PlainReID(nn.Module):
    """The baseline: the same backbone and BNNeck head, no experts, no router."""

    def __init__(self, backbone: nn.Module, width: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = nn.BatchNorm1d(width)
        self.neck.bias.requires_grad_(False)
        self.classifier = nn.Linear(width, num_classes, bias=False)

    def forward(self, images: torch.Tensor, attributes: torch.Tensor | None = None):
        g = self.backbone(images)
        f = self.neck(g.float())
        return f, g, self.classifier(f)


# --------------------------------------------------------------------------------- memory
class Memory:
    """Peak memory a run adds above what is allocated before it (CUDA exact, CPU approximate)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._libc = None
        if device.type == "cpu":
            try:
                self._libc = ctypes.CDLL("libc.so.6")
            except OSError:
                self._libc = None

    def start(self) -> None:
        """Record the allocation before a run (its warm-up included)."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            self._base = torch.cuda.memory_allocated()
        else:
            if self._libc is not None:
                self._libc.malloc_trim(0)
            try:
                self._base = _status_kb("VmRSS") * 1024
            except OSError:
                self._base = None
        self.reset_peak()

    def reset_peak(self) -> None:
        """Forget the peak so far (after the warm-up: compilation is not the model's memory)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif self._base is not None:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset VmHWM (the peak resident set) to the current RSS
            except OSError:
                self._base = None

    def peak_mb(self) -> float | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self._base) / 2**20
        if self._base is None:
            return None
        return max(0.0, _status_kb("VmHWM") * 1024 - self._base) / 2**20


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(key)


# --------------------------------------------------------------------------------- runs
@dataclass
class Run:
    model: str
    mode: str
    compiled: bool
    images_per_s: float = float("nan")
    peak_mb: float | None = None
    first_call_s: float = float("nan")
    times: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    skipped: str = ""


def random_attributes(schema, n: int, g: torch.Generator) -> torch.Tensor:
    """One value per group (1 in 10 missing), like an annotated identity."""
    attrs = torch.zeros(n, schema.n_slots)
    for grp in schema.groups:
        slots = torch.tensor(schema.group_slots(grp.name))
        pick = torch.randint(len(slots), (n,), generator=g)
        keep = torch.rand(n, generator=g) > 0.1
        attrs[torch.arange(n)[keep], slots[pick[keep]]] = 1.0
    return attrs


def make_step(
    model: nn.Module, mode: str, x, attrs, labels, device, amp, graphs: bool = False
) -> Callable[[], torch.Tensor]:
    """One step of ``mode``; it returns the logits (inference) or the loss (training).

    ``graphs``: the model runs as CUDA graphs (``--compile-mode reduce-overhead``). A graph's
    outputs live in memory that its next replay overwrites, so each step first tells the
    graph trees that a new step begins (in training they can infer it from the backward, in
    inference they cannot: without it the second inference call found the first's outputs
    still alive and failed with "accessing tensor output of CUDAGraphs that has been
    overwritten by a subsequent run"), and a returned output is cloned out of the graph's
    memory, so a caller may keep it.
    """
    is_mosaic = isinstance(_inner(model), MoSAICReID)

    def forward():
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x, attrs) if is_mosaic else model(x)
        return out[2]  # logits

    if mode == "infer":

        def step():
            with torch.no_grad():
                logits = forward()
                return logits.clone() if graphs else logits

        return step

    # foreach on every device (the CUDA default), so CPU operation counts mirror a GPU step
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-5, foreach=True
    )

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward().float(), labels)
        loss.backward()
        opt.step()
        return loss.detach()

    step.optimizer = opt  # type: ignore[attr-defined]
    return step


def _graphs(run, args) -> bool:
    """Whether ``run``'s model is replayed as CUDA graphs."""
    return bool(run.compiled and args.compile_mode == "reduce-overhead")


def _inner(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)


def measure(run: Run, model, args, device, x, attrs, labels, memory: Memory, first: bool) -> None:
    model.train(run.mode == "train")
    memory.start()
    step = make_step(model, run.mode, x, attrs, labels, device, args.amp, _graphs(run, args))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    if first:
        run.first_call_s = time.perf_counter() - t0
    memory.reset_peak()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync()
    elapsed = time.perf_counter() - t0
    run.times.append(elapsed)
    run.rates.append(args.batch * args.iters / elapsed)
    run.images_per_s = max(
        run.images_per_s if run.images_per_s == run.images_per_s else 0.0,
        args.batch * args.iters / elapsed,
    )
    peak = memory.peak_mb()
    run.peak_mb = peak if run.peak_mb is None or peak is None else max(run.peak_mb, peak)
    opt = getattr(step, "optimizer", None)
    if opt is not None:
        opt.zero_grad(set_to_none=True)
        del opt
    del step
    model.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------------- profile
#: dispatched operations that launch no kernel of their own
_NO_KERNEL = {
    "detach", "empty", "new_empty", "empty_strided", "lift_fresh", "_unsafe_view",
    "_local_scalar_dense",  # .item() of a CPU step counter in AdamW: no launch
}  # fmt: skip


class OpCounter(TorchDispatchMode):
    """Counts the ATen operations that reach a backend, backward included, views and bare
    allocations left out: in eager mode each is about one kernel launch on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in _NO_KERNEL:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


@dataclass
class StepProfile:
    model: str
    mode: str
    compiled: bool
    wall_ms: float = float("nan")
    #: eager only: kernel-launching ATen operations per step
    ops: float | None = None
    #: CUDA only: kernels per step, their summed GPU time, and that time per kernel name
    kernels: float | None = None
    gpu_ms: float | None = None
    kernel_ms: dict[str, float] = field(default_factory=dict)
    #: CUDA only: host-side waits for the GPU per step (stream/device/event synchronisations;
    #: the harness's one at the end of the profiled steps is not counted)
    syncs: float | None = None
    skipped: str = ""


def profile_step(prof_run: StepProfile, timed: Run, model, args, device, x, attrs, labels) -> None:
    """Fill ``prof_run`` from ``args.profile_steps`` steps after two warm-up steps; its wall
    time per step is that of the timed run ``timed`` (the best of its repeats)."""
    model.train(prof_run.mode == "train")
    step = make_step(
        model, prof_run.mode, x, attrs, labels, device, args.amp, _graphs(prof_run, args)
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n = args.profile_steps
    for _ in range(2):  # a fresh optimiser's state is created here, not in the counts
        step()
    sync()
    prof_run.wall_ms = 1e3 * args.batch / timed.images_per_s
    if not prof_run.compiled:  # a dispatch mode sees compiled graphs only in part
        with OpCounter() as counter:
            for _ in range(n):
                step()
        sync()
        prof_run.ops = sum(counter.ops.values()) / n
    if device.type == "cuda":
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                step()
            sync()
        per_name: collections.Counter[str] = collections.Counter()
        count = syncs = 0
        for event in prof.events():
            if event.device_type == DeviceType.CUDA:
                count += 1
                per_name[event.name] += event.time_range.elapsed_us() / 1e3 / n
            elif "Synchronize" in event.name and event.name.startswith("cuda"):
                syncs += 1
        prof_run.kernels = count / n
        prof_run.syncs = max(0, syncs - 1) / n
        prof_run.gpu_ms = sum(per_name.values())
        prof_run.kernel_ms = dict(per_name)


def profile_report(profiles: list[StepProfile], top: int = 8) -> str:
    """The per-step cost table, and the kernels behind MoSAIC's extra GPU time."""

    def fmt(v, spec=".1f"):
        return "n/a" if v is None or v != v else format(v, spec)

    lines = [
        "Per step (`--profile`): ATen operations that launch work (views and allocations left "
        "out; eager rows only), CUDA kernels and their summed GPU time, and the wall time of the timed run.",
        "",
        "| mode | torch.compile | bank | plain ops | MoSAIC ops | extra ops | plain kernels | "
        "MoSAIC kernels | plain GPU ms | MoSAIC GPU ms | plain wall ms | MoSAIC wall ms | "
        "syncs (plain / MoSAIC) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    by = {(p.model, p.mode, p.compiled): p for p in profiles}
    extra_kernels = []
    for (bank, mode, compiled), b in by.items():
        if bank == "plain" or (a := by.get(("plain", mode, compiled))) is None:
            continue
        if a.skipped or b.skipped:
            lines.append(
                f"| {mode} | {'yes' if compiled else 'no'} | {bank} | skipped: "
                f"{a.skipped or b.skipped} ||||||||||"
            )
            continue
        extra = None if a.ops is None or b.ops is None else b.ops - a.ops
        lines.append(
            f"| {mode} | {'yes' if compiled else 'no'} | {bank} | {fmt(a.ops, '.0f')} | "
            f"{fmt(b.ops, '.0f')} | {fmt(extra, '+.0f')} | {fmt(a.kernels, '.0f')} | "
            f"{fmt(b.kernels, '.0f')} | {fmt(a.gpu_ms, '.2f')} | {fmt(b.gpu_ms, '.2f')} | "
            f"{fmt(a.wall_ms, '.2f')} | {fmt(b.wall_ms, '.2f')} | "
            f"{fmt(a.syncs, '.1f')} / {fmt(b.syncs, '.1f')} |"
        )
        if a.kernel_ms or b.kernel_ms:
            diff = {
                k: b.kernel_ms.get(k, 0.0) - a.kernel_ms.get(k, 0.0)
                for k in set(a.kernel_ms) | set(b.kernel_ms)
            }
            worst = sorted(diff.items(), key=lambda kv: -kv[1])[:top]
            extra_kernels.append((bank, mode, compiled, worst))
    for bank, mode, compiled, worst in extra_kernels:
        lines += [
            "",
            f"Kernels with the most extra GPU time in MoSAIC ({bank} bank), {mode}, "
            f"{'compiled' if compiled else 'eager'} (ms per step, MoSAIC minus plain):",
            "",
        ]
        lines += [f"- {ms:+.3f}  {name[:110]}" for name, ms in worst]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=None, help="default: 2 on CPU, 64 on CUDA")
    p.add_argument("--iters", type=int, default=None, help="timed steps (default 2 CPU, 20 CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 1 CPU, 3 CUDA)")
    p.add_argument(
        "--repeats", type=int, default=None, help="timed runs per model (default 1 CPU, 3 CUDA)"
    )
    p.add_argument("--modes", default="infer,train")
    p.add_argument("--compile", default="eager,compiled", help="eager, compiled or both")
    p.add_argument(
        "--compile-scope",
        default=None,
        choices=["model", "blocks"],
        help="torch.compile the whole model, or each transformer block (regional compilation: "
        "identical blocks share one compiled graph, a fraction of the cold compile time); "
        "default: model on CPU, blocks on CUDA (to finish in ~2-3 minutes)",
    )
    p.add_argument(
        "--banks", default="adapter,lora", help="expert banks to measure, each its own model"
    )
    p.add_argument("--blocks", type=int, default=None, help="expert blocks (default: the model's)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--pooling", default="mean")
    p.add_argument("--schema", default="market1501")
    p.add_argument(
        "--budget", type=float, default=None, help="seconds; later runs are skipped past it"
    )
    p.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode, e.g. reduce-overhead (CUDA graphs) or max-autotune; "
        "default: inductor's default",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also count operations, kernels and GPU time per step (see the module docstring)",
    )
    p.add_argument("--profile-steps", type=int, default=None, help="default 2 CPU, 5 CUDA")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="a tiny random ViT (width 48, 12 blocks) instead of ViT-B/16: a smoke test of the "
        "script, or the host-overhead share on a CPU where arithmetic is nearly free",
    )
    p.add_argument(
        "--amp",
        action="store_true",
        help="bf16 autocast on the CPU too (always on with CUDA): CPU operation counts then "
        "include the weight casts a GPU step makes",
    )
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    gpu = args.device == "cuda"
    args.banks = [b.strip() for b in args.banks.split(",") if b.strip()]
    args.batch = args.batch or (64 if gpu else 2)
    # launch-bound eager steps at batch 64 are noisy (pair ratios 0.86-1.02 in one run with 3
    # x 20 steps): 5 alternating pairs of 40 steps each, and the median pair ratio as headline
    args.iters = args.iters or (40 if gpu else 2)
    args.warmup = args.warmup or (3 if gpu else 1)
    args.repeats = args.repeats or (5 if gpu else 1)
    args.amp = gpu or args.amp  # bf16 autocast on the GPU; float32 on the CPU unless --amp
    args.compile_scope = args.compile_scope or ("blocks" if gpu else "model")
    args.profile_steps = args.profile_steps or (5 if gpu else 2)
    return args


def build_models(args, schema, size: tuple[int, int]) -> dict[str, nn.Module]:
    """``{"plain": PlainReID, <bank>: MoSAICReID with that bank, ...}``, each on its own copy
    of one randomly initialised backbone."""
    torch.manual_seed(0)
    tiny = {"tiny": True, "layers": 12} if args.tiny else {}
    bb = backbones.build("clip:ViT-B-16", pretrained=None, img_size=size, **tiny)
    models: dict[str, nn.Module] = {"plain": PlainReID(copy.deepcopy(bb), bb.width, NUM_CLASSES)}
    for bank in args.banks:
        options = dict(
            pretrained=None,
            num_classes=NUM_CLASSES,
            bank=bank,
            rank=args.rank,
            pooling=args.pooling,
            schema=args.schema,
            img_size=size,
            backbone_kwargs=tiny,
        )
        if args.blocks is not None:
            options["blocks"] = args.blocks
        torch.manual_seed(1)  # the same experts' initialisation whatever the order
        models[bank] = MoSAICReID(
            MoSAICConfig(**options), backbone=copy.deepcopy(bb), schema=schema
        )
    return models


def main(argv: list[str] | None = None) -> list[Run]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda was asked for but torch sees no CUDA device.")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    started = time.perf_counter()

    schema = load_schema(args.schema)
    size = (32, 16) if args.tiny else (256, 128)
    models = build_models(args, schema, size)
    for model in models.values():
        model.to(device)
    shares = {bank: models[bank].expert_parameter_share() for bank in args.banks}

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, *size, generator=g).to(device)
    attrs = random_attributes(schema, args.batch, g).to(device)
    labels = torch.randint(NUM_CLASSES, (args.batch,), generator=g).to(device)
    bench = Bench(args, device, models, (x, attrs, labels), shares, started)
    for compiled in [c == "compiled" for c in args.compile.split(",")]:
        for mode in args.modes.split(","):
            group = bench.time_group(mode, compiled)
            if args.profile:  # here, before a later compiled pass compiles the blocks in place
                bench.profile_group(group, mode, compiled)

    text = report(bench.runs, args, device, models, time.perf_counter() - started)
    if bench.profiles:
        text += "\n\n" + profile_report(bench.profiles)
    print(text)
    bench.write()
    return bench.runs


@dataclass
class Bench:
    """The models, the batch and the results of one benchmark invocation."""

    args: argparse.Namespace
    device: torch.device
    models: dict[str, nn.Module]
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    shares: dict[str, float]
    started: float
    runs: list[Run] = field(default_factory=list)
    profiles: list[StepProfile] = field(default_factory=list)
    compiled_models: dict[str, nn.Module] = field(default_factory=dict)

    def model(self, name: str, compiled: bool) -> nn.Module:
        if not compiled:
            return self.models[name]
        if name not in self.compiled_models:
            self.compiled_models[name] = compile_model(
                self.models[name], self.args.compile_scope, self.args.compile_mode
            )
        return self.compiled_models[name]

    def time_group(self, mode: str, compiled: bool) -> list[Run]:
        """Time plain and every bank in ``mode``, alternating within each repeat."""
        args, memory = self.args, Memory(self.device)
        group = [Run(name, mode, compiled) for name in self.models]
        self.runs += group
        for rep in range(args.repeats):
            # reverse the order every other repeat: a drift (clocks, another job) within a
            # repeat then favours each model equally often
            for run in group if rep % 2 == 0 else group[::-1]:
                if args.budget and time.perf_counter() - self.started > args.budget:
                    run.skipped = run.skipped or "time budget"
                    continue
                try:
                    model = self.model(run.model, compiled)
                    measure(run, model, args, self.device, *self.batch, memory, first=rep == 0)
                except Exception as e:  # keep going unattended; report what failed
                    run.skipped = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
                print(_progress(run), file=sys.stderr, flush=True)
                self.write()  # partial results survive a timeout
        return group

    def profile_group(self, group: list[Run], mode: str, compiled: bool) -> None:
        for run in group:
            prof_run = StepProfile(run.model, mode, compiled)
            self.profiles.append(prof_run)
            if run.skipped:
                prof_run.skipped = run.skipped
                continue
            model = self.model(run.model, compiled)
            try:
                profile_step(prof_run, run, model, self.args, self.device, *self.batch)
            except Exception as e:  # the timings above stay valid
                prof_run.skipped = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        self.write()

    def write(self) -> None:
        write_json(self.args, self.device, self.shares, self.runs, self.profiles)


def compile_model(model: nn.Module, scope: str, mode: str | None = None) -> nn.Module:
    """``torch.compile`` the whole model, or each transformer block in place (eager runs come
    first, so compiling the blocks in place does not leak into them)."""
    if scope == "model":
        return torch.compile(model, mode=mode)
    for block in model.backbone.blocks:
        block.compile(mode=mode)
    return model


def write_json(
    args, device, shares: dict[str, float], runs: list[Run], profiles: list[StepProfile] = ()
) -> None:
    if not args.json:
        return
    with open(args.json, "w") as f:
        json.dump(
            {
                "machine": machine(device),
                "torch": torch.__version__,
                "args": dict(vars(args)),
                "expert_share": shares,
                "runs": [asdict(r) for r in runs],
                "profiles": [asdict(p) for p in profiles],
            },
            f,
            indent=2,
        )


def _progress(run: Run) -> str:
    what = f"{run.model:6s} {run.mode:5s} {'compiled' if run.compiled else 'eager':8s}"
    if run.skipped:
        return f"  {what} skipped: {run.skipped}"
    return f"  {what} {run.images_per_s:8.1f} img/s  first call {run.first_call_s:6.1f} s"


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line
        )
    except (OSError, StopIteration, subprocess.CalledProcessError):
        name = platform.processor() or "unknown CPU"
    return f"{name}, {torch.get_num_threads()} threads"


def report(runs: list[Run], args, device, models: dict[str, nn.Module], total_s: float) -> str:
    lines = [
        f"Machine: {machine(device)}; torch {torch.__version__}; "
        f"{'bf16 autocast' if args.amp else 'float32'}; batch {args.batch}, "
        f"torch.compile scope: {args.compile_scope}; "
        f"{args.iters} timed steps after {args.warmup} warm-up, {args.repeats} alternating "
        f"repeats{'; torch.compile mode ' + args.compile_mode if args.compile_mode else ''}.",
    ]
    for bank in args.banks:
        mosaic = models[bank]
        lines.append(
            f"Experts ({bank} bank): {mosaic.schema.name} schema, {mosaic.schema.n_experts} "
            f"experts, rank {args.rank}, blocks {list(mosaic.experts.block_indices)}, pooling "
            f"{args.pooling}: {mosaic.expert_parameter_count():,} parameters = "
            f"{100 * mosaic.expert_parameter_share():.2f} % of the backbone's "
            f"{mosaic.backbone_parameter_count():,}."
        )
    lines += [
        "",
        "MoSAIC / plain throughput per bank: the headline is the median of the ratios to the "
        "plain run of the same repeat (timed back to back, which a drifting machine moves "
        "least); the ratio of the best runs is beside it.",
        "",
        "| mode | torch.compile | bank | plain img/s (best) | MoSAIC img/s (best) | pair ratios: median [min, max] | ratio of bests | plain peak MB | MoSAIC peak MB | ratio | first call s (plain / MoSAIC) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    by = {(r.model, r.mode, r.compiled): r for r in runs}
    for compiled in [c == "compiled" for c in args.compile.split(",")]:
        for mode in args.modes.split(","):
            for bank in args.banks:
                a, b = by[("plain", mode, compiled)], by[(bank, mode, compiled)]
                lines.append(_report_row(a, b, mode, compiled, bank))
    lines.append("")
    lines.append(f"Total wall time {total_s:.0f} s.")
    return "\n".join(lines)


def _report_row(a: Run, b: Run, mode: str, compiled: bool, bank: str) -> str:
    """One table row: bank run ``b`` against the plain run ``a``."""

    def fmt(v, spec=".1f"):
        return "n/a" if v is None or v != v else format(v, spec)

    head = f"| {mode} | {'yes' if compiled else 'no'} | {bank} |"
    if a.skipped or b.skipped:
        return f"{head} skipped: {a.skipped or b.skipped} ||||||||"
    ratio = b.images_per_s / a.images_per_s
    pairs = sorted(rb / ra for ra, rb in zip(a.rates, b.rates, strict=False))
    spread = f"{statistics.median(pairs):.3f} [{pairs[0]:.3f}, {pairs[-1]:.3f}]" if pairs else "n/a"
    mratio = b.peak_mb / a.peak_mb if a.peak_mb and b.peak_mb is not None else None
    return (
        f"{head} {fmt(a.images_per_s, '.3g')} | {fmt(b.images_per_s, '.3g')} | **{spread}** | "
        f"{fmt(ratio, '.3f')} | {fmt(a.peak_mb, '.0f')} | {fmt(b.peak_mb, '.0f')} | "
        f"{fmt(mratio, '.3f')} | {fmt(a.first_call_s)} / {fmt(b.first_call_s)} |"
    )


if __name__ == "__main__":
    main()
