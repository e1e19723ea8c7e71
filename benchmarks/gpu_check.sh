#!/usr/bin/env bash
# The GPU check: one GPU, at most 8 minutes (GPU_CHECK_BUDGET_S, default 480), three measurements.
#   (a) training images/s and peak memory of the `seed` preset in fp16 and bf16, the seed-style loop against
#       iclevr's own (benchmarks/seed_style_loop.py train)
#   (b) 32 images with 1000 DDPM steps against the default sampler, seconds each, from the weights (a) trained
#       (benchmarks/seed_style_loop.py sample)
#   (c) the token design at 64x64 (preset small-tokens)
#       trained on the embedded kit for the rest of the budget, then scored on val / test / new_test like
#       `iclevr eval` by benchmarks/package_model.py, which also writes the float16 candidate file.
#       `--epochs none`: the preset's 100 epochs would otherwise be the step budget the cosine LR spans
#       (~28,000 steps), so the model scored after a few minutes would never be annealed; with a time budget
#       alone the LR anneals over the minutes given, as in the CPU study's runs (tokens_settings.json shows it,
#       and gpu_check.json's lr_last_over_peak should be near 0).
# Results: $OUT/gpu_check.json (else benchmarks/results/gpu/gpu_check.json), each part's JSON beside it.
# On a CPU (--cpu) it is a dry run at toy sizes: it checks that every part runs and writes its files, and
# measures nothing. What it measures on a GPU, and what has been verified without one: docs/gpu.md.
#
#   bash benchmarks/gpu_check.sh          # on a GPU machine
#   bash benchmarks/gpu_check.sh --cpu    # or GPU_CHECK_TINY=1: toy sizes on the CPU in 1-2 minutes (the test)
set -euo pipefail

TINY=${GPU_CHECK_TINY:-0}
[[ "${1:-}" == "--cpu" ]] && TINY=1
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
PY=${PYTHON:-python}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's iclevr, installed or not
RESULTS=${OUT:-$HERE/results/gpu}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/iclevr-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$RESULTS"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[gpu_check $(elapsed)s] $*"; }

if [[ "$TINY" == 1 ]]; then
  BUDGET=${GPU_CHECK_BUDGET_S:-150}; RESERVE=60; DEVICE=cpu; SEEDS=0
  TRAIN_ROWS=(--steps 2 --warmup 2 --batch-size 8 --workers 0 --tiny); DDPM_STEPS=20
  TOKENS_FLAGS=(--epochs none --max-steps 4 --batch-size 8)
  say "tiny mode: toy sizes on the CPU (a test of this script, not a measurement)"
  "$PY" -m iclevr data synth --out "$WORK/kit" --scenes 16 --size 64x48 --workers 1 > /dev/null
  KIT=$WORK/kit
else
  BUDGET=${GPU_CHECK_BUDGET_S:-480}; RESERVE=100; DEVICE=cuda; SEEDS=0,1,2
  TRAIN_ROWS=(--steps 30 --warmup 5 --workers 8); DDPM_STEPS=1000
  TOKENS_FLAGS=(--epochs none --mixed-precision bf16)  # a time budget alone: the LR anneals within it
  "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else
           'gpu_check: no CUDA GPU visible; use --cpu for the toy run')"
  say "rendering (or reusing) the embedded kit"
  KIT=$("$PY" -c "from iclevr.data.kits import ensure_default_kit; print(ensure_default_kit())" | tail -1)
fi

say "(a) training speed: seed-style loop against iclevr's, fp16 and bf16"
"$PY" "$HERE/seed_style_loop.py" train --data-dir "$KIT" --rows seed:fp16 seed:bf16 ours:fp16 ours:bf16 \
  "${TRAIN_ROWS[@]}" --keep-run "$WORK/seed-run" --device "$DEVICE" --out "$RESULTS/train_speed.json"

say "(b) sampling 32 images: ddpm $DDPM_STEPS steps against the default sampler"
"$PY" "$HERE/seed_style_loop.py" sample --checkpoint "$WORK/seed-run" --ddpm-steps "$DDPM_STEPS" \
  --device "$DEVICE" --out "$RESULTS/sampling.json"

# (c) the token design at 64x64: the small-tokens preset
PRESET=small-tokens
CONFIG=$WORK/tokens.toml
{
  echo "preset = \"$PRESET\""
  echo "[model]"
  if [[ "$TINY" == 1 ]]; then  # toy sizes, whatever the preset
    echo 'sample_size = 16'
    echo 'block_out_channels = [16, 32]'
    echo 'layers_per_block = 1'
    echo 'down_block_types = ["DownBlock2D", "CrossAttnDownBlock2D"]'
    echo 'up_block_types = ["CrossAttnUpBlock2D", "UpBlock2D"]'
    echo 'attention_head_dim = 8'
    echo 'norm_num_groups = 8'
    echo 'condition = "tokens"'
  fi
} > "$CONFIG"
LEFT=$(( BUDGET - $(elapsed) - RESERVE ))
(( LEFT < 30 )) && LEFT=30
MINUTES=$("$PY" -c "print(round($LEFT / 60, 2))")
TRAIN_CMD="iclevr train --config tokens.toml --data-dir KIT --max-minutes $MINUTES --sample-grids off"
TRAIN_CMD="$TRAIN_CMD ${TOKENS_FLAGS[*]}"
say "(c) training the token design (preset $PRESET + $CONFIG) for $MINUTES min"
"$PY" -m iclevr train --config "$CONFIG" --data-dir "$KIT" --out "$WORK/tokens-run" --max-minutes "$MINUTES" \
  --sample-grids off --device "$DEVICE" "${TOKENS_FLAGS[@]}" > "$RESULTS/tokens_train.log" 2>&1
cp "$CONFIG" "$RESULTS/tokens.toml"
cp "$WORK/tokens-run/metrics.jsonl" "$RESULTS/tokens_metrics.jsonl"
cp "$WORK/tokens-run/settings.json" "$RESULTS/tokens_settings.json"

say "(c) scoring it on val, test and new_test (seeds $SEEDS) and writing the float16 candidate"
"$PY" "$HERE/package_model.py" --run "$WORK/tokens-run" --out "$RESULTS/small-tokens.safetensors" \
  --metrics "$RESULTS/small-tokens_metrics.json" --seeds "$SEEDS" --device "$DEVICE" --max-mb 1000 \
  --command "$TRAIN_CMD (config: tokens.toml beside this file)"

"$PY" - "$RESULTS" "$BUDGET" "$(elapsed)" "$TINY" "$PRESET" <<'PYEOF'
import json, sys
from pathlib import Path

from iclevr.studies.demo import machine_info

results, budget, elapsed, tiny, preset = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
tokens = json.loads((results / "small-tokens_metrics.json").read_text())
peak = json.loads((results / "tokens_settings.json").read_text())["train"]["lr"]
last = [json.loads(line) for line in (results / "tokens_metrics.jsonl").read_text().splitlines()][-1]
summary = {
    "mode": "tiny (CPU toy sizes: checks the script, measures nothing)" if tiny == "1" else "gpu",
    "machine": machine_info("cuda" if tiny != "1" else "cpu"), "budget_s": budget, "elapsed_s": elapsed,
    "train_speed": json.loads((results / "train_speed.json").read_text())["rows"],
    "sampling": json.loads((results / "sampling.json").read_text())["rows"],
    "tokens64": {"preset": preset, "steps": tokens["steps"], "images_seen": tokens["images_seen"],
                 "wall_s": tokens["wall_s"], "accuracy": {s: a["mean"] for s, a in tokens["accuracy"].items()},
                 "test_new_test_mean": tokens["test_new_test_mean"], "file": "small-tokens.safetensors",
                 "bytes": tokens["bytes"], "command": tokens["command"],
                 "lr_last_over_peak": round(last["lr"] / peak, 4)},
}
(results / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"wrote {results / 'gpu_check.json'} after {elapsed} s")
PYEOF
