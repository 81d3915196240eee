#!/usr/bin/env bash
# Issue 22, phase 1: train ungrounded shapes variants CONCURRENTLY on one GPU, evaluate them, bring
# back the weights. One device call, from the repository root:
#   bash bench/train_free.sh OUT SECONDS [--device cuda|cpu] [--batch 256] [--prompts 24] [--steps 20]
#                                        [--budget 570] [--resume DIR] [--variants "A B C"]
# SECONDS: training wall-clock per variant (all variants train at the same time, one process each,
#   --ground 0, UNet + text encoder from scratch, the shipped VAE reused frozen).
# --budget: the whole script stops itself (training, eval, packing) within this many seconds.
# --resume DIR: a folder holding A/ B/ C/ exported weights from an earlier call (unpacked weights tar);
#   each variant found there continues from its EMA weights (no optimizer state: the LR warms up again).
# OUT gets: summary.txt (steps/s per process, eval per variant), evals.tar (logs, eval JSON, sheets,
# samples of every variant), weights.tar.part-* (exported unet + text_encoder + meta + log of the
# two variants with the best shape-word IoU at tau 0.4; <= 15 MiB each; 3 variants would pass the 64 MiB
# that comes back). Unpack: cat weights.tar.part-* | tar x; then for V in A B:
#   python3 -m bridge.cli train-shapes --export-from free/V --weights free/V/weights   (a diffusers folder)
# To continue in a later call: unpack into a git-ignored folder (e.g. .free/ listed in .git/info/exclude),
# name it in the call's carry, and pass --resume .free/free (about 50 MB of the 64 MiB that travels).
set -uo pipefail
out=${1:?usage: train_free.sh OUT SECONDS [--device D] [--batch B] [--prompts N] [--steps S] [--budget S] [--resume DIR]}
secs=${2:?training seconds per variant}
shift 2
device=cuda batch=256 prompts=24 steps=20 budget=570 resume="" variants="A B C"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --prompts) prompts=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    --resume) resume=$2; shift 2 ;;
    --variants) variants=$2; shift 2 ;;
    *) echo "train_free.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
t0=$(date +%s)
[ "$secs" -le $(( budget - 120 )) ] || echo "train_free.sh: warning: ${secs}s of training leaves under 120s of the ${budget}s budget for start-up, eval and packing" >&2
left() { echo $(( budget - ($(date +%s) - t0) )); }
work=${TMPDIR:-/tmp}/train_free.$$
mkdir -p "$out" "$work/free"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
py=${PYTHON:-python3}
summary="$out/summary.txt"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }
say "train_free: $(date -u +%FT%TZ) device=$device seconds=$secs batch=$batch budget=${budget}s"
$py -c 'import torch, diffusers, transformers; print("torch", torch.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no cuda")' 2>&1 | tee -a "$summary"

# The variants (all --ground 0, from scratch, shipped VAE frozen):
#   A: (a) rewrites + (b) local text encoder        -- the main candidate
#   B: (a) + (b) + (c) frozen random text encoder   -- keys a fixed function of the words, as with SD's frozen CLIP
#   C: (a) rewrites alone, ordinary causal CLIP     -- control: are rewrites enough?
declare -A opts=(
  [A]="--rewrite-captions --text-encoder local"
  [B]="--rewrite-captions --text-encoder local --freeze-text"
  [C]="--rewrite-captions"
)
minutes=$(awk -v s="$secs" 'BEGIN { printf "%.4f", s / 60 }')
log_every=$([ "$device" = cpu ] && echo 1 || echo 100)
declare -A pids
for v in $variants; do
  from=""
  if [ -n "$resume" ] && [ -f "$resume/$v/meta.json" ]; then from="--resume $resume/$v"; else from="--vae-from bridge/models/shapes/weights"; fi
  # shellcheck disable=SC2086
  timeout $((secs + 150)) $py -m bridge.cli train-shapes --device "$device" --ground 0 $from ${opts[$v]} \
    --out "$work/free/$v" --ckpt-dir "$work/ckpt_$v" --minutes "$minutes" --batch "$batch" --log-every "$log_every" \
    --ckpt-every 60 --seed 0 > "$work/train_$v.out" 2>&1 &
  pids[$v]=$!
  say "variant $v (pid ${pids[$v]}): ${opts[$v]} $from"
done
for v in $variants; do
  wait "${pids[$v]}"; rc=$?
  say "variant $v: training exit $rc after $(( $(date +%s) - t0 ))s; $(grep -c 'unet step' "$work/train_$v.out") log lines"
  grep 'unet step' "$work/train_$v.out" | tail -2 | sed "s/^/  $v /" | tee -a "$summary"
  grep -E 'unet stopped|Error|error' "$work/train_$v.out" | tail -3 | sed "s/^/  $v /" | tee -a "$summary"
done

# export + eval, the variants concurrently, each bounded by what is left of the budget
eval_limit=$(( $(left) - 40 ))
[ "$eval_limit" -ge 20 ] || { say "eval: skipped, only $(left)s of the budget left"; eval_limit=1; }
say "eval (held-out split): ${prompts} prompts, ${steps} steps, limit ${eval_limit}s"
for v in $variants; do
  ( $py -m bridge.cli train-shapes --export-from "$work/free/$v" --weights "$work/free/$v/weights" > "$work/export_$v.out" 2>&1 &&
    timeout "$eval_limit" $py -m bridge.cli eval-shapes --device "$device" --weights "$work/free/$v/weights" --prompts "$prompts" \
      --steps "$steps" --out "$work/free/$v/eval" > "$work/eval_$v.out" 2>&1 ) &
  pids[$v]=$!
done
declare -A score
for v in $variants; do
  wait "${pids[$v]}"; rc=$?
  say "variant $v: export+eval exit $rc"
  sed "s/^/  $v /" "$work/eval_$v.out" 2>/dev/null | grep -v Warning | tail -9 | tee -a "$summary"
  score[$v]=$(grep -o 'mean IoU shape words.*tau=0.4: [0-9.]*' "$work/eval_$v.out" 2>/dev/null | grep -o '[0-9.]*$' || true)
done

# pack: every variant's small files; the best two variants' weights (by shape-word IoU at tau 0.4)
ranked=$(for v in $variants; do echo "${score[$v]:--1} $v"; done | sort -rn | awk '{ print $2 }' | head -2 | tr '\n' ' ')
say "shape-word IoU tau 0.4: $(for v in $variants; do echo -n "$v=${score[$v]:-none} "; done); weights brought back: $ranked"
for v in $variants; do cp "$work/train_$v.out" "$work/export_$v.out" "$work/eval_$v.out" "$work/free/$v/" 2>/dev/null; done
(cd "$work" && tar cf "$out/evals.tar" --exclude='*.safetensors' --exclude='weights' free)
files=()
for v in $ranked; do
  for f in unet_0.safetensors unet_1.safetensors text_encoder.safetensors meta.json train_log.txt; do files+=("free/$v/$f"); done
done
(cd "$work" && tar cf - "${files[@]}") | split -b 15M -d - "$out/weights.tar.part-"
ls -l "$out" | tee -a "$summary"
say "done in $(( $(date +%s) - t0 ))s"
rm -rf "$work"
