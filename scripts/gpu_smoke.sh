#!/usr/bin/env bash
# hf_foco's GPU smoke test, for anyone with one CUDA GPU (offline, no dataset download; meant to take at most
# about 8 minutes on one H100):
#   1. bench: optimizer steps on gpt2-small shapes on the GPU against torch's fused AdamW (scripts/bench_optim.py)
#   2. foco, 3. adamw: 100 steps of gpt2-small (124M, 16 x 1024 tokens per step) in bf16 with torch_compile,
#      through FocoTrainer on synthetic tokens (scripts/gpu_smoke.py): tokens/s of each, then their ratio
#   4. fop: 20 steps of FOP (K-FAC factors, half-batch step) in bf16 with torch_compile
#   5. fsdp: 20 steps of foco under recipes/accelerate_configs/fsdp.yaml on one GPU (FSDP2 DTensor parameters)
# Every training part also checks that its loss falls and that torch.compile builds no graph after the
# warm-up steps (the learning rate changes every step). A summary lists each part's exit status and time;
# the script exits 1 if any part failed. Logs and results: OUT_DIR (default runs/gpu_smoke)/<part>/.
#
#   scripts/gpu_smoke.sh [OUT_DIR]             # on a machine with a CUDA GPU
#   scripts/gpu_smoke.sh --dry-run [OUT_DIR]   # the same parts on the CPU with a tiny model, uncompiled
#                                              # (tests/test_gpu_smoke.py runs it, so the script cannot rot)
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT="${1:-runs/gpu_smoke}"
mkdir -p "$OUT"

if (( DRY )); then
  # gpt2-nano with one layer, 4 x 64 tokens per step of 4 distinct sequences, in fp32 on the CPU (bf16 matrix
  # products are emulated there, ~100x slower), without torch_compile (a compilation costs tens of seconds on
  # a CPU; tests/test_ddp_launch.py trains compiled models on the CPU).
  TRAIN=(--model gpt2-nano --config_overrides n_layer=1 --block_size 64 --per_device_train_batch_size 4
         --distinct_sequences 4 --use_cpu true --bf16 false --logging_steps 1 --warmup_steps 0 --timing_warmup 2)
  LONG=6; SHORT=4; COMPILE=false; LR=(--learning_rate 3e-3)
  BENCH=(--device cpu --preset gpt2-nano --rounds 1 --only "foco (fused)")  # the C++ kernel: nothing to compile
  SHARDED=false; LIMIT=300
else
  if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_smoke: error: no CUDA GPU is visible to torch; run 'scripts/gpu_smoke.sh --dry-run' on a CPU." >&2
    exit 2
  fi
  TRAIN=(--model gpt2-small --block_size 1024 --per_device_train_batch_size 16 --bf16 true --timing_warmup 10)
  LONG=100; SHORT=20; COMPILE=true; LR=(--learning_rate 6e-4)
  BENCH=(--device cuda --rounds 5 --only foco)  # one compiled step: each optimizer compiles its own on first use
  SHARDED=true; LIMIT=240
fi

declare -a SUMMARY=()
part() {  # part NAME COMMAND...: run it with a time limit, log it, record its exit status and time
  local name=$1; shift
  mkdir -p "$OUT/$name"
  echo; echo "=== $name: $*"
  local start=$SECONDS
  timeout "$LIMIT" "$@" 2>&1 | tee "$OUT/$name/log.txt"
  local status=${PIPESTATUS[0]}
  SUMMARY+=("$(printf '%-6s exit %3d  %4ds' "$name" "$status" $((SECONDS - start)))")
}

part bench python scripts/bench_optim.py "${BENCH[@]}"
part foco python scripts/gpu_smoke.py "${TRAIN[@]}" "${LR[@]}" --optim foco --max_steps "$LONG" \
  --torch_compile "$COMPILE" --output_dir "$OUT/foco"
part adamw python scripts/gpu_smoke.py "${TRAIN[@]}" "${LR[@]}" --optim adamw_torch_fused --max_steps "$LONG" \
  --torch_compile "$COMPILE" --output_dir "$OUT/adamw"
part fop python scripts/gpu_smoke.py "${TRAIN[@]}" --optim fop --max_steps "$SHORT" --torch_compile "$COMPILE" \
  --output_dir "$OUT/fop"
part fsdp python -m accelerate.commands.launch --config_file recipes/accelerate_configs/fsdp.yaml --num_processes 1 \
  scripts/gpu_smoke.py "${TRAIN[@]}" "${LR[@]}" --optim foco --max_steps "$SHORT" --torch_compile "$COMPILE" \
  --expect_sharded "$SHARDED" --output_dir "$OUT/fsdp"

echo; echo "=== summary ($OUT)"
python - "$OUT" "$DRY" <<'EOF'
import json, sys
from pathlib import Path
out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
runs = {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("*/smoke.json"))}
for name, r in runs.items():
    print(f"{name:6s} {r['tokens_per_s']:>12,.0f} tokens/s  graphs compiled after warm-up: {r['graphs_after_warmup']}"
          f"  sharded: {r['sharded']}  peak memory: {r['peak_memory_gb'] or 0:.1f} GiB")
if "foco" in runs and "adamw" in runs:
    print(f"foco / fused AdamW tokens/s: {runs['foco']['tokens_per_s'] / runs['adamw']['tokens_per_s']:.3f}"
          + (" (dry run: a tiny model on the CPU, not a measurement)" if dry else ""))
EOF
failed=0
for line in "${SUMMARY[@]}"; do
  echo "$line"
  [[ "$line" == *"exit   0"* ]] || failed=1
done
exit $failed
