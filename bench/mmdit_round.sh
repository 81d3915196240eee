#!/usr/bin/env bash
# Issue 24's MM-DiT figures in one device call, under a deadline (docs/CAPTURE_MMDIT.md, docs/BENCHMARKS.md):
#   bash bench/mmdit_round.sh OUTDIR [SECONDS]      (SECONDS: this script's budget, default 290)
# FLUX.1-dev shape 512² and SD3.5-medium shape 1024², 20 steps: plain, capture (the fused map kernel),
# capture_unfused (each joint layer's maps op by op, as before: the kernel's gain on the same card)
# and publish (capture + phases + ZeroMQ), interleaved rounds, --profile; first
# bench/check_joint_kernel.py (the kernel's maps against op by op on the tiny pipelines, its GPU
# time per layer at both shapes). Six files come back in OUTDIR: log, check_joint_kernel.json,
# flux.json, sd35m.json, flux_profile.txt, sd35m_profile.txt.
# DRY=1: the same commands on the CPU with one block of each kind, 2 steps, 1 round (a check that
# the GPU shot will not die on a typo; its figures mean nothing).
set -uo pipefail
out=${1:?output folder}; budget=${2:-290}; mkdir -p "$out"; tmp=$(mktemp -d)
python3 -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU", torch.__version__)' | tee -a "$out/log"
python3 -c 'import triton; print("triton", triton.__version__)' 2>&1 | tail -1 | tee -a "$out/log"
echo "$(nproc) CPUs; code: $(python3 -c 'import bridge, os; print(os.path.dirname(bridge.__file__))')" | tee -a "$out/log"
variants=(plain capture capture_unfused publish)
dry=(); flux_size=(--size 512); sd35m_size=(); check_args=()
if [ "${DRY:-0}" = 1 ]; then
  dry=(--device cpu --layers 1 --steps 2 --runs 1 --warmup 0 --threads 1); flux_size=(--size 128); sd35m_size=(--size 128)
  check_args=(--device cpu)
fi
bench() {  # NAME NEED_S TIMED_S ARGS...: run when NEED_S seconds are left; TIMED_S is its rounds' budget
  local name=$1 need=$2 timed=$3; shift 3
  local left=$((budget - SECONDS))
  if [ "$left" -lt "$need" ]; then echo "== $name skipped: $left s left, $need needed" | tee -a "$out/log"; return; fi
  echo "== $name: stepx bench $* ${dry[*]} --max-seconds $timed ($left s left)" | tee -a "$out/log"
  timeout $((left - 5)) python3 -m bridge.cli bench "$@" "${dry[@]}" --max-seconds "$timed" --json "$tmp/$name.json" \
    --profile "$out/${name}_profile.txt" 2>&1 | tee -a "$out/log" | grep -v '^{'
  [ -f "$tmp/$name.json" ] && cp "$tmp/$name.json" "$out/"
}
# the fused map kernel first: maps against op by op on the tiny pipelines, GPU time per layer at both shapes
echo "== check_joint_kernel" | tee -a "$out/log"
timeout 120 python3 bench/check_joint_kernel.py "${check_args[@]}" > "$out/check_joint_kernel.json" 2>> "$out/log"
tail -c 1500 "$out/check_joint_kernel.json"
bench flux 140 60 --arch flux "${flux_size[@]}" --runs 10 --warmup 1 --variants "${variants[@]}"
bench sd35m 120 50 --arch sd35m "${sd35m_size[@]}" --runs 10 --warmup 1 --variants "${variants[@]}"
echo "done in $SECONDS s" | tee -a "$out/log"
