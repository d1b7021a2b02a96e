#!/usr/bin/env bash
# Every GPU check of BENCHMARKS.md in one call, sized for one short device session
# (about 7 minutes on an H200): the CUDA tests, then the model benchmark (eager and regionally
# compiled, with the per-step profile that says where MoSAIC's extra time goes).
#
#     OUT=gpu_results bash benchmarks/gpu_check.sh          # results land in $OUT
#
# Run it from the repository root with attrimp importable (an installed environment, or
# PYTHONPATH pointing at the checkout and its dependencies).
set -u
out="${OUT:-gpu_results}"
mkdir -p "$out"
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$out/device.txt"
python -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tail -n 15 | tee "$out/gpu_tests.txt"
python benchmarks/bench_model.py --device cuda --profile --budget 300 \
    --json "$out/bench_model.json" | tee "$out/bench_model.md"
# Optional (CUDA_GRAPHS=1): the compiled rows again with CUDA graphs, where neither model pays
# per-kernel launch costs and the ratio approaches the FLOP ratio (about two more minutes).
if [ "${CUDA_GRAPHS:-0}" = "1" ]; then
    python benchmarks/bench_model.py --device cuda --compile compiled \
        --compile-mode reduce-overhead --repeats 2 --budget 150 \
        --json "$out/bench_model_cudagraphs.json" | tee "$out/bench_model_cudagraphs.md"
fi
