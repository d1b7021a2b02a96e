#!/usr/bin/env bash
# Every GPU check of BENCHMARKS.md in one call, sized for one short device session
# (stages 1-3 about 8 minutes on an H200; stage 4 up to its own REF_BUDGET):
#   1. the CUDA tests (-m gpu), among them the compiled CUDA-graph training step against the
#      eager one (tests/test_training.py::test_cuda_graph_step_trains_like_the_eager_step);
#   2. the model benchmark at batch 64, eager: 5 alternating plain/MoSAIC pairs of 40 steps,
#      the median pair ratio as headline, with the per-step profile (ops, kernels, GPU time);
#   3. the same with CUDA graphs (torch.compile mode reduce-overhead, whole model), inference
#      and training: the graph step's img/s (goal >= 3.5k on an H200 for the reference batch)
#      and MoSAIC / plain in that mode (goal >= 0.97); inference used to crash here.
#
#     OUT=gpu_results bash benchmarks/gpu_check.sh          # results land in $OUT
#
# Run it from the repository root with attrimp importable (an installed environment, or
# PYTHONPATH pointing at the checkout and its dependencies). Each stage has its own time
# budget, so a slow stage leaves the later ones their time; partial JSON survives a timeout.
#
# SMOKE=1 runs the same commands on the CPU with a tiny model and one step per run (no CUDA
# tests): a check of the script itself on a machine without a GPU.
set -u
out="${OUT:-gpu_results}"
mkdir -p "$out"
if [ "${SMOKE:-0}" = "1" ]; then
    dev=(--device cpu --tiny --iters 1 --warmup 1 --repeats 2)
    python -c "import torch; print(torch.__version__, 'CPU smoke run')" | tee "$out/device.txt"
else
    dev=(--device cuda)
    python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$out/device.txt"
    timeout 180 python -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tail -n 15 | tee "$out/gpu_tests.txt"
fi
python benchmarks/bench_model.py "${dev[@]}" --compile eager --profile --budget 90 \
    --json "$out/bench_model_eager.json" | tee "$out/bench_model_eager.md"
python benchmarks/bench_model.py "${dev[@]}" --compile compiled \
    --compile-mode reduce-overhead --compile-scope model --budget 240 \
    --json "$out/bench_model_cudagraphs.json" | tee "$out/bench_model_cudagraphs.md"
# 4. the reference study end to end at Market-1501 size (issue 9): the synthetic preset world
#    (drawn on every CPU), CLIP ViT-B/16 at 256x128, bf16, the compiled step, every default
#    design, the battery and the report; a stage table (training img/s, prefix cache, seconds
#    per condition, each battery). REF_EPOCHS=60 is the full reference recipe (goal: the whole
#    study <= 20 min); REFERENCE=0 skips it. On SMOKE=1 the tiny size runs on the CPU instead.
if [ "${REFERENCE:-1}" = "1" ]; then
    if [ "${SMOKE:-0}" = "1" ]; then ref=(--size tiny); else ref=(--size gpu --epochs "${REF_EPOCHS:-2}"); fi
    timeout "${REF_BUDGET:-480}" python benchmarks/bench_reference_study.py "${ref[@]}" \
        --out "$out/reference_study" --work "${TMPDIR:-/tmp}/attrimp_reference_study" 2>&1 \
        | tee "$out/reference_study.md"
fi
