#!/usr/bin/env bash
# Everything the GPU machine has to do, in one call (device time is scarce):
#   bash benchmarks/gpu_run.sh [tests] [ops] [transformer] [e2e]    (default: all)
#   other steps: transformer-1.3b, transformer-14b, tune, diag, diag-attention, serve
# Installs the wheels carried in .whl (diffusers and what it needs), checks the GPU-marked
# tests, runs the benchmarks and writes JSON and logs under $OUT (or ./out/gpu).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-out/gpu}"
mkdir -p "$OUT"
STEPS="${*:-tests ops transformer e2e}"
BENCH_ARGS="${BENCH_ARGS:-}"  # extra arguments for the ops, transformer and e2e steps, e.g. "--batches 1"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD/src:$PWD"
else
  export PYTHONPATH="$PWD/src:$PWD"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, diffusers, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'cudnn', torch.backends.cudnn.version())" | tee -a "$OUT/gpu.txt"
python3 -m fastdit ops | tee "$OUT/ops-table.txt"

for step in $STEPS; do
  case "$step" in
    tests)
      python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tail -25 | tee "$OUT/gpu-tests.log" ;;
    ops)
      python3 benchmarks/ops.py --out "$OUT/ops.json" $BENCH_ARGS 2>&1 | tee "$OUT/ops.log" ;;
    transformer)
      python3 benchmarks/transformer.py --out "$OUT/transformer.json" $BENCH_ARGS 2>&1 | tee "$OUT/transformer.log" ;;
    diag)
      python3 benchmarks/diag_diffusers.py 2>&1 | tee "$OUT/diag.log" ;;
    diag-attention)
      python3 benchmarks/diag_attention.py --out "$OUT/diag_attention.json" 2>&1 | tee "$OUT/diag_attention.log" ;;
    tune)
      python3 benchmarks/tune_triton.py --out "$OUT/tune.json" 2>&1 | grep -E "BEST|error" | tee "$OUT/tune.log" ;;
    transformer-14b)
      python3 benchmarks/transformer.py --models Wan2.1-T2V-14B --out "$OUT/transformer-14b.json" $BENCH_ARGS 2>&1 | tee "$OUT/transformer-14b.log" ;;
    transformer-1.3b)
      python3 benchmarks/transformer.py --models Wan2.1-T2V-1.3B --out "$OUT/transformer.json" $BENCH_ARGS 2>&1 | tee "$OUT/transformer.log" ;;
    serve)
      python3 benchmarks/serve.py --out "$OUT/serve.json" 2>&1 | grep -v "^\[fastdit\|^[0-9:]* \[fastdit" | tee "$OUT/serve.log" ;;
    e2e)
      python3 benchmarks/e2e.py --out "$OUT/e2e.json" $BENCH_ARGS 2>&1 | tee "$OUT/e2e.log" ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
