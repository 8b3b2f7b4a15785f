#!/usr/bin/env bash
# The GPU measurements of the 2026-12-01 issues (13, 14, 15, 16, 17) on one GPU, step by step; each step's
# log and files are archived into $OUT as soon as it ends, so a step that runs out of time loses only itself.
# Each step leaves at most two files in $OUT (its log and one .tgz): the device tool brings back 8 files a call,
# and a call with more loses the rest.
#   GPU=h200 OUT=/tmp/out bash scripts/gpu_round.sh STEP...
# Steps: kerneltests, enginetests (pytest on the GPU), power (profile --quick --power-only),
# readme (README's run command, 1,000 ShareGPT requests, with the power-aware bound), bound (power_bound.py),
# tma (decode_tma_check.py), gap (model_gap.py: engine against model on ShareGPT), fp8profile (profile --quick --kv-cache-dtype fp8), host (host_time.py), tp1 (tp_bench.py at --tp 1), serve (serve_vs_inprocess.py);
# on two GPUs: tp2tests (TP2 = TP1 tokens and exact sums for every all-reduce implementation), tp2 (tp_bench.py,
# Llama-3-70B TP2, plans x traces x TP2_ALLREDUCE implementations, N_TP2 requests each).
set -u
# NVLink multicast stays off on the lent machines, in this shell and every process it starts
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
GPU=${GPU:-h200}
OUT=${OUT:-/tmp/gpu-round}
N_BOUND=${N_BOUND:-200}
KV_DTYPES=${KV_DTYPES:-bf16}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
REF=results/reference/$GPU
POWER=$REF/profile-llama-3-8b-tp1-power.json
for step in "$@"; do
  start=$(date +%s)
  log="$OUT/$step.log"
  case $step in
    kerneltests)  # kernels against their torch references, compiled for this GPU (marked and unmarked tests)
      python -m pytest -q -p no:cacheprovider -m "gpu or not gpu" tests/test_kernels_window.py \
        tests/test_kernels_activations.py tests/test_kernels_attention.py tests/test_kernels_fp8_tma.py \
        tests/test_kernels_ops.py > "$log" 2>&1; rc=$? ;;
    finaltests)  # the engine's GPU tests after the observer merge (runner and step plumbing changed)
      python -m pytest -q -p no:cacheprovider -m gpu tests/test_observe.py tests/test_engine_gpu.py \
        tests/test_engine_window_gpu.py tests/test_tp_gpu.py > "$log" 2>&1; rc=$? ;;
    enginetests)  # every gpu-marked engine and profile test
      python -m pytest -q -p no:cacheprovider -m gpu tests/test_engine_gpu.py tests/test_engine_window_gpu.py \
        tests/test_engine_fp8_kv.py tests/test_profile_gpu.py tests/test_profile_power.py tests/test_tp_gpu.py > "$log" 2>&1; rc=$? ;;
    power)
      python -m nanotune profile --model llama-3-8b --quick --power-only --out "$POWER" --no-progress \
        > "$log" 2>&1; rc=$?
      tar czf "$OUT/power.tgz" "$REF"/profile-llama-3-8b-tp1-power* ;;
    readme)
      python -m nanotune bench --trace sharegpt --results-dir "$OUT/readme" --no-progress > "$log" 2>&1; rc=$?
      tar czf "$OUT/readme.tgz" -C "$OUT" readme && rm -rf "$OUT/readme" ;;
    bound)
      python scripts/power_bound.py -n "$N_BOUND" --kv-dtypes "$KV_DTYPES" ${BOUND_ARGS:-} --profile "$POWER" \
        --out "$OUT/power-bound" > "$log" 2>&1; rc=$?
      tar czf "$OUT/bound.tgz" -C "$OUT" power-bound && rm -rf "$OUT/power-bound" ;;
    tma)
      python scripts/decode_tma_check.py --out "$OUT/decode_tma_check.json" > "$log" 2>&1; rc=$? ;;
    host)  # host time per step against GPU time, 1024/512 at 512 seqs and decode-only at 256 (issue 14)
      python scripts/host_time.py --n ${N_HOST:-900} --profile-steps 60 --out "$OUT/host-time.json" > "$log" 2>&1; rc=$? ;;
    tp1)  # TP1 through the tensor-parallel code: throughput on constant 1024/512 (issue 15)
      python scripts/tp_bench.py --model llama-3-8b --tp 1 --plans sequential --traces constant:1024:512 -n 900 \
        --op-requests 32 --collectives '' --out "$OUT/tp1" > "$log" 2>&1; rc=$?
      tar czf "$OUT/tp1.tgz" -C "$OUT" tp1 && rm -rf "$OUT/tp1" ;;
    serve)  # nanotune serve + bench --endpoint against the in-process bench, one rate sweep (issue 17)
      python scripts/serve_vs_inprocess.py ${SERVE_ARGS:-} --out "$OUT/serve" > "$log" 2>&1; rc=$?
      tar czf "$OUT/serve.tgz" -C "$OUT" serve && rm -rf "$OUT/serve" ;;
    regress)  # this tree against the session's starting commit (extracted into .old/, carried), same machine, same
      # call, interleaved old / new / old: constant 1024/512, 900 requests, sequential plan
      mkdir -p "$OUT/regress"
      for who in old new old2; do
        if [ "$who" = new ]; then dir=.; spec=(--trace constant:1024:512); else dir=.old; spec=(--trace constant --input-len 1024 --output-len 512); fi
        (cd "$dir" && PYTHONPATH=$PWD python -m nanotune bench "${spec[@]}" -n 900 --engine sequential --no-progress \
          --results-dir "$OUT/regress/$who") >> "$log" 2>&1; rc=$?
      done
      tar czf "$OUT/regress.tgz" -C "$OUT" regress && rm -rf "$OUT/regress" ;;
    tp2profile)  # the llama-3-70b TP2 shard's ops on one GPU (the performance model's input for issue 19)
      python -m nanotune profile --model llama-3-70b --tp 2 --quick --no-progress \
        --out "$REF/profile-llama-3-70b-tp2.json" > "$log" 2>&1; rc=$?
      tar czf "$OUT/tp2profile.tgz" "$REF"/profile-llama-3-70b-tp2* ;;
    fp8profile)  # the quick profile over the engine's fp8 KV cache (issue 16: the profile's fp8 path on a GPU)
      mkdir -p "$OUT/fp8profile"
      python -m nanotune profile --model llama-3-8b --quick --kv-cache-dtype fp8 --no-progress \
        --out "$OUT/fp8profile/profile-llama-3-8b-tp1-fp8.json" > "$log" 2>&1; rc=$?
      tar czf "$OUT/fp8profile.tgz" -C "$OUT" fp8profile && rm -rf "$OUT/fp8profile" ;;
    gap)  # issue 16: where the engine falls short of the performance model on ShareGPT (800 requests, whole run,
      # sequential plan): every iteration's GPU time, host time and wait against the model's prediction for its batch
      python scripts/model_gap.py --gpu "$GPU" --out "$OUT/gap" > "$log" 2>&1; rc=$?
      tar czf "$OUT/gap.tgz" -C "$OUT" gap && rm -rf "$OUT/gap" ;;
    tp2tests)  # two GPUs: TP2 tokens = TP1 per plan and all-reduce implementation; each implementation's sums
      python -m pytest -q -p no:cacheprovider -m gpu tests/test_tp_gpu.py > "$log" 2>&1; rc=$? ;;
    tp2)  # two GPUs: Llama-3-70B TP2, sequential against nb2-ar, each all-reduce implementation (issue 15's script)
      python scripts/tp_bench.py --model llama-3-70b --tp 2 --plans sequential,nb2-ar \
        --traces constant:1024:512,sharegpt -n ${N_TP2:-300} --allreduce ${TP2_ALLREDUCE:-nccl,symm-mem-one-shot,copy-engine,fused-rmsnorm} \
        --out "$OUT/tp2" > "$log" 2>&1; rc=$?
      tar czf "$OUT/tp2.tgz" -C "$OUT" tp2 && rm -rf "$OUT/tp2" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
  echo "$step: exit $rc after $(( $(date +%s) - start )) s"
  tail -n 6 "$log"
done
