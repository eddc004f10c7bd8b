#!/usr/bin/env bash
# Every GPU figure in one run, in under 8 minutes on one H100/H200: the CUDA-only tests, `cogvlm bench` of
# both full-size architectures (bf16 against int8 and int4, random weights) and benchmarks/memory.py (peak
# device and host memory while loading and generating, full widths at reduced depth, bf16/int8/int4).
# Writes JSON and logs to $OUT (default /tmp/cogvlm-gpu-figures); needs torch, sentencepiece, safetensors,
# pillow, filelock, tqdm and pytest, nothing else. The variables below make a CPU dry run of the same steps possible
# (tests/test_gpu_figures_script.py): DEVICE=cpu DTYPE=float32 BENCH_CONFIGS=tiny MEMORY_MODELS=tiny.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/cogvlm-gpu-figures}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
BENCH_CONFIGS=${BENCH_CONFIGS:-cogvlm-17b-490 cogagent-18b}
BENCH_FLAGS=${BENCH_FLAGS-}  # e.g. --compare_quant (three models: minutes longer)
MEMORY_MODELS=${MEMORY_MODELS:-cogvlm-17b-490:6:8 cogagent-18b:6:8}
STEP_TIMEOUT=${STEP_TIMEOUT:-150}
MEMORY_TIMEOUT=${MEMORY_TIMEOUT:-330}  # writes two ~10 GB checkpoints, then 6 loads
MEMORY_FLAGS=${MEMORY_FLAGS-}  # e.g. --trace_peak (the allocations alive at each load peak)
REPEATS=${REPEATS:-3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
assets=(--image cogvlm/embedded/example.png --tokenizer cogvlm/embedded/model/tokenizer.model)
failed=0

step() {  # step NAME SECONDS COMMAND...: stdout to NAME.json, stderr to NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    local started=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.json" 2>"$OUT/$name.log"
    local status=$?
    echo "   exit $status after $((SECONDS - started)) s"
    if [ $status -ne 0 ]; then
        failed=1
        tail -n 5 "$OUT/$name.log"
    fi
}

if [[ $DEVICE == cuda* ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
    echo "== CUDA-only tests (the int4 kernel layout)"
    if ! timeout 120 python3 -m pytest -q -p no:cacheprovider tests/nn/test_quantized_kernels_cuda.py \
        >"$OUT/cuda-tests.log" 2>&1; then
        failed=1
        tail -n 5 "$OUT/cuda-tests.log"
    fi
fi
# shellcheck disable=SC2086 # BENCH_FLAGS: words
for config in $BENCH_CONFIGS; do
    step "bench-$config" "$STEP_TIMEOUT" python3 -m cogvlm.cli bench "$config" --device "$DEVICE" --dtype "$DTYPE" \
        $BENCH_FLAGS --repeats "$REPEATS" "${assets[@]}"
done
# shellcheck disable=SC2086 # one word per model
step memory "$MEMORY_TIMEOUT" python3 benchmarks/memory.py --device "$DEVICE" --dtypes "$DTYPE" --quants none 8 4 \
    --workdir "${TMPDIR:-/tmp}/cogvlm-memory-bench" --models $MEMORY_MODELS $MEMORY_FLAGS
exit $failed
