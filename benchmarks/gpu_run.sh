#!/usr/bin/env bash
# Everything the GPU machine has to do, in one call (device time is scarce):
#   bash benchmarks/gpu_run.sh [tests] [ops] [transformer] [e2e]    (default: all)
#   other steps (tune: TUNE_ARGS="--only channel" for the VAE's channel-norm sweep alone, "--only quant" for the fp8 row quantisers): transformer-1.3b, transformer-14b, compile-block, tune, diag, diag-attention,
#   serve, quant-tests, quant, offload, cache, cache-fastdit-1..3, cache-diffusers, cache-dit-1..2, lora, lora-e2e, lora-bench
#   tests-distributed (LSE kernels, --gpus 1 / torchrun 1 == plain run; NCCL layouts with >= 2 GPUs),
#   parallel (benchmarks/parallel.py; BENCH_ARGS e.g. "--models Wan2.1-T2V-1.3B --resolutions 480p")
#   quant-attention, ncu-attention (Nsight Compute, PROFILE_ARGS), transformer-fp8, ti2v, e2e-fp8, e2e-all, e2e-ti2v (issue 10 phase 2), fa4-install, sage-build / sage-install (SageAttention 2 CUDA), vae (VAE decode)
#   offload-video (a whole 40-step Wan2.2-A14B video through fastdit.load at a 24 GB budget, fp8 experts, ~6 min;
#   first writes a 41 GB random model folder (2-3 min) unless OFFLOAD_VIDEO_ARGS' --work-dir holds it: --write-only)
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
if [ "${TABLES:-1}" != 0 ]; then  # TABLES=0 skips the two op tables
  python3 -m fastdit ops --shape 1,32760,1536 --heads 12 | tee "$OUT/ops-table.txt"
  python3 -m fastdit ops --shape 1,32760,1536 --heads 12 --quantize fp8 | tee "$OUT/ops-table-fp8.txt"
fi
# TIMEOUT_<step> (dashes and dots as underscores, e.g. TIMEOUT_e2e_all=380) caps a step's seconds
run() { if [ "${limit:-0}" != 0 ]; then timeout -k 10 "$limit" "$@"; else "$@"; fi; }
# install_sage DIR: the SageAttention 2 wheel in DIR into /tmp/site, then check its sm90 kernels import
install_sage() { python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site "$1"/*.whl \
  && python3 -c "import sageattention.sm90_compile; print('sageattention sm90 kernels importable')"; }

for step in $STEPS; do
  limit_var="TIMEOUT_${step//[-.]/_}"
  limit="${!limit_var:-0}"
  echo "== step $step (limit ${limit}s) $(date -u +%H:%M:%S)"
  case "$step" in
    tests)
      # TEST_K="offload or vae" selects by name (one argument, spaces kept); TEST_ARGS is split on spaces
      run python3 -m pytest -q -p no:cacheprovider -rfE ${TEST_PATHS:-tests/gpu} ${TEST_ARGS:-} \
        ${TEST_K:+-k "$TEST_K"} > "$OUT/gpu-tests-full.log" 2>&1
      tail -40 "$OUT/gpu-tests-full.log" | tee "$OUT/gpu-tests.log" ;;
    ops)
      run python3 benchmarks/ops.py --out "$OUT/ops.json" $BENCH_ARGS 2>&1 | tee "$OUT/ops.log" ;;
    transformer)
      run python3 benchmarks/transformer.py --out "$OUT/transformer.json" $BENCH_ARGS 2>&1 | tee "$OUT/transformer.log" ;;
    diag)
      run python3 benchmarks/diag_diffusers.py 2>&1 | tee "$OUT/diag.log" ;;
    diag-attention)
      run python3 benchmarks/diag_attention.py --out "$OUT/diag_attention.json" 2>&1 | tee "$OUT/diag_attention.log" ;;
    tune)
      run python3 benchmarks/tune_triton.py --out "$OUT/tune.json" ${TUNE_ARGS:-} 2>&1 | grep -E "BEST|error" | tee "$OUT/tune.log" ;;
    transformer-14b)
      run python3 benchmarks/transformer.py --models Wan2.1-T2V-14B --out "$OUT/transformer-14b.json" $BENCH_ARGS 2>&1 | tee "$OUT/transformer-14b.log" ;;
    transformer-1.3b)
      run python3 benchmarks/transformer.py --models Wan2.1-T2V-1.3B --out "$OUT/transformer.json" $BENCH_ARGS 2>&1 | tee "$OUT/transformer.log" ;;
    compile-block)
      run python3 benchmarks/compile_block.py --out "$OUT/compile-block.json" $BENCH_ARGS 2>&1 | tee "$OUT/compile-block.log" ;;
    lora)  # 14B: rank-64 LoRA load + merge, runtime-mode cost per forward (~2-3 min)
      run python3 benchmarks/lora.py --sections merge,runtime --out "$OUT/lora.json" 2>&1 | tee "$OUT/lora.log" ;;
    lora-e2e)  # 4-step 480x832x81 videos, 1.3B / 14B / A14B, fastdit vs diffusers (needs peft; ~4-6 min)
      run python3 benchmarks/lora.py --sections e2e --out "$OUT/lora-e2e.json" --markdown "$OUT/lora-e2e.md" \
        2>&1 | tee "$OUT/lora-e2e.log" ;;
    tests-distributed)
      run python3 -m pytest -q -p no:cacheprovider tests/gpu/test_distributed_gpu.py tests/gpu/test_parallel_pipeline_gpu.py 2>&1 | tail -25 | tee "$OUT/gpu-tests-distributed.log" ;;
    parallel)
      run python3 benchmarks/parallel.py --out "$OUT/parallel.json" $BENCH_ARGS 2>&1 | tee "$OUT/parallel.log" ;;
    serve)
      run python3 benchmarks/serve.py --out "$OUT/serve.json" ${SERVE_ARGS:-} 2>&1 | grep --line-buffered -v "^\[fastdit\|^[0-9:]* \[fastdit" | tee "$OUT/serve.log" ;;
    e2e)
      run python3 benchmarks/e2e.py --out "$OUT/e2e.json" $BENCH_ARGS 2>&1 | tee "$OUT/e2e.log" ;;
    quant-tests)
      run python3 -m pytest -q -p no:cacheprovider tests/gpu/test_quant_gpu.py tests/gpu/test_ops_gpu.py -k "fp8 or int8 or quant" 2>&1 | tail -25 | tee "$OUT/quant-tests.log" ;;
    quant)
      run python3 benchmarks/quant.py --out "$OUT/quant.json" ${QUANT_ARGS:-} 2>&1 | tee "$OUT/quant.log" ;;
    lora-bench)  # LORA_ARGS="--sections merge,e2e --e2e-models Wan2.1-T2V-1.3B" for a subset
      run python3 benchmarks/lora.py --out "$OUT/lora.json" ${LORA_ARGS:-} 2>&1 | tee "$OUT/lora.log" ;;
    cache)  # CACHE_ARGS="--impls fastdit --policies teacache --threshold-index 1" for a subset
      run python3 benchmarks/cache.py --out "$OUT/cache.json" ${CACHE_ARGS:-} 2>&1 | tee "$OUT/cache.log" ;;
    offload)  # OFFLOAD_ARGS="--variants resident,stream-24gb" to run a subset
      run python3 benchmarks/offload.py --out "$OUT/offload.json" ${OFFLOAD_ARGS:-} 2>&1 | tee "$OUT/offload.log" ;;
    offload-video)  # OFFLOAD_VIDEO_ARGS="--weights dense --budget 24GB --work-dir DIR" (the folder is reused when there)
      run python3 benchmarks/offload_video.py --out "$OUT/offload-video.json" ${OFFLOAD_VIDEO_ARGS:-} 2>&1 | tee "$OUT/offload-video.log" ;;
    cache-fastdit-1)  # each cache step: one 50-step 480p video uncached, then 3-6 cached (< 8 min on an H200)
      run python3 benchmarks/cache.py --impls fastdit --policies teacache,magcache --out "$OUT/cache-fastdit-1.json" 2>&1 | tee "$OUT/cache-fastdit-1.log" ;;
    cache-fastdit-2)
      run python3 benchmarks/cache.py --impls fastdit --policies fbcache,dbcache --out "$OUT/cache-fastdit-2.json" 2>&1 | tee "$OUT/cache-fastdit-2.log" ;;
    cache-fastdit-3)
      run python3 benchmarks/cache.py --impls fastdit --policies dbcache+taylorseer --out "$OUT/cache-fastdit-3.json" 2>&1 | tee "$OUT/cache-fastdit-3.log" ;;
    cache-diffusers)
      run python3 benchmarks/cache.py --impls diffusers,diffusers-fbcache --out "$OUT/cache-diffusers.json" 2>&1 | tee "$OUT/cache-diffusers.log" ;;
    cache-dit-1)
      run python3 benchmarks/cache.py --impls diffusers,cache-dit --policies dbcache --out "$OUT/cache-dit-1.json" 2>&1 | tee "$OUT/cache-dit-1.log" ;;
    cache-dit-2)
      run python3 benchmarks/cache.py --impls diffusers,cache-dit --policies dbcache+taylorseer --out "$OUT/cache-dit-2.json" 2>&1 | tee "$OUT/cache-dit-2.log" ;;
    vae)  # VAE decode at 480x832x81 (Wan2.1 VAE, bf16): eager, cudnn.benchmark, channels-last, compile, and a profile (~2-3 min)
      run python3 benchmarks/vae.py --out "$OUT/vae.json" ${VAE_ARGS:-} 2>&1 | tee "$OUT/vae.log" ;;
    fa4-install)  # FlashAttention-4 (CuTe DSL) and its wheels, 102 MB: .fa4p1 and .fa4p2 (a split tar) carried in two calls
      { cat .fa4p1/fa4.tar.part-* .fa4p2/fa4.tar.part-* > /tmp/fa4.tar && mkdir -p /tmp/fa4 && tar -xf /tmp/fa4.tar -C /tmp/fa4 \
        && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/fa4/*.whl \
        ; } 2>&1 | tee "$OUT/fa4-install.log"
      # the cutlass package sits in nvidia_cutlass_dsl/dsl_packages, put on sys.path by a .pth
      # file that --target installs do not run
      export PYTHONPATH="/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PYTHONPATH"
      python3 -c "from flash_attn.cute import flash_attn_func; print('flash-attn-4 importable')" 2>&1 | tee -a "$OUT/fa4-install.log" ;;
    ncu-attention)  # Nsight Compute on one launch per candidate (PROFILE_ARGS="--configs a,b --heads 12")
      run ncu --clock-control none --profile-from-start off --section SpeedOfLight --section ComputeWorkloadAnalysis \
        --section SchedulerStats --section WarpStateStats --section Occupancy --section InstructionStats \
        --metrics "regex:sm__inst_executed_pipe_.*\.avg\.pct_of_peak_sustained_active,regex:sm__pipe_.*_cycles_active\.avg\.pct_of_peak_sustained_active" \
        python3 benchmarks/profile_attention.py ${PROFILE_ARGS:-} > "$OUT/ncu-attention.txt" 2>&1
      tail -c 6000 "$OUT/ncu-attention.txt" ;;
    sage-build)  # SageAttention 2 (CUDA; the sm90 kernels and the quantisers only) built from .sage/SageAttention.tar.gz
      # (git archive of thu-ml/SageAttention: benchmarks/README.md); the wheel comes back in $OUT/sage
      { rm -rf /tmp/sage && mkdir -p /tmp/sage "$OUT/sage" && tar -xzf .sage/SageAttention.tar.gz -C /tmp/sage \
        && python3 -c "import re, sys; p = sys.argv[1]; s = open(p).read(); s = re.sub(r'\n    if HAS_SM8[09] or [^\n]*:', '\n    if False:', s); open(p, 'w').write(s)" /tmp/sage/SageAttention/setup.py \
        && (cd /tmp/sage/SageAttention && TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 EXT_PARALLEL=2 NVCC_APPEND_FLAGS="--threads=4" \
            run python3 -m pip wheel -v --no-build-isolation --no-deps -w "$OUT/sage" .) > "$OUT/sage-build.log" 2>&1 \
        && install_sage "$OUT/sage"; } 2>&1 | tee -a "$OUT/sage-build.log" | tail -5 ;;
    sage-install)  # a SageAttention 2 wheel built by sage-build, carried in .sage/
      install_sage .sage ;;
    quant-attention)  # the attention candidates only (~2.5 min)
      run python3 benchmarks/quant.py --parts attention --out "$OUT/quant-attention.json" ${QUANT_ARGS:-} 2>&1 | tee "$OUT/quant-attention.log" ;;
    transformer-fp8)  # 1.3B and 14B at B=1: fastdit, fastdit-fp8, diffusers eager and compiled
      run python3 benchmarks/transformer.py --models Wan2.1-T2V-1.3B,Wan2.1-T2V-14B --batches 1 --variants "" --no-profile \
        --out "$OUT/transformer-fp8.json" $BENCH_ARGS 2>&1 | tee "$OUT/transformer-fp8.log" ;;
    ti2v)  # TI2V-5B at 704x1280x121 (per-frame timesteps): fastdit exact and fp8 (TI2V_ARGS="--impls fastdit,fastdit-fp8,diffusers-compiled" adds the peer)
      run python3 benchmarks/transformer.py --models Wan2.2-TI2V-5B --height 704 --width 1280 --frames 121 \
        --batches 1 --variants "" --no-profile --impls fastdit,fastdit-fp8 --out "$OUT/transformer-ti2v.json" ${TI2V_ARGS:-} 2>&1 | tee "$OUT/transformer-ti2v.log" ;;
    e2e-all)  # 1.3B, 50 steps: fastdit, fastdit-fp8, diffusers eager and compiled (~6 min)
      run python3 benchmarks/e2e.py --impls fastdit,fastdit-fp8,diffusers-eager,diffusers-compiled \
        --out "$OUT/e2e-all.json" --markdown "$OUT/e2e-all.md" $BENCH_ARGS 2>&1 | tee "$OUT/e2e-all.log" ;;
    e2e-ti2v)  # TI2V-5B, 704x1280x121, 50 steps, guidance 5: fastdit, fastdit-fp8 (compared with exact), diffusers eager (~5 min)
      # E2E_TI2V_ARGS="--steps 20" for fewer steps
      run python3 benchmarks/e2e.py --model Wan2.2-TI2V-5B --height 704 --width 1280 --frames 121 --flow-shift 5 \
        --impls ${E2E_TI2V_IMPLS:-fastdit,fastdit-fp8,diffusers-eager} ${E2E_TI2V_ARGS:-} --out "$OUT/e2e-ti2v.json" \
        --markdown "$OUT/e2e-ti2v.md" 2>&1 | tee "$OUT/e2e-ti2v.log" ;;
    e2e-fp8)  # 1.3B, 50 steps: fastdit, fastdit-fp8 (with PSNR/SSIM against fastdit's video), diffusers compiled; E2E_FP8_ARGS (e.g. "--quantize fp8:attention=sage") before BENCH_ARGS
      run python3 benchmarks/e2e.py --impls fastdit,fastdit-fp8,diffusers-compiled --out "$OUT/e2e-fp8.json" ${E2E_FP8_ARGS:-} \
        --markdown "$OUT/e2e-fp8.md" $BENCH_ARGS 2>&1 | tee "$OUT/e2e-fp8.log" ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
