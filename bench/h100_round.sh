#!/usr/bin/env bash
# One device call of issue 24's figures on one GPU (docs/BENCHMARKS.md), under a deadline:
#   bash bench/h100_round.sh OUTDIR SET [SECONDS]     (SECONDS: this script's budget, default 570)
# SET small: SD 1.5 512² (40 interleaved rounds with capture_unfused, the op-by-op cross maps beside the fused kernel, --profile; then plain and publish with a 0.5 ms GIL
#   switch interval, the packet thread's GIL wait) and the few-step models at 512² (SD-Turbo
#   shape at 1 and 4 steps, guidance 0; SD 1.5 with LCM at 4 steps, guidance 1): 5 files; then, time
#   left, the sink process's CPU per step (bench/sink_cpu.py) into the log.
# SET big: FLUX.1-dev shape 512², SDXL and SD3.5-medium shapes 1024²: 4 files.
# SET kernel: SD 1.5 as in small (sd15 only, and publish_device), then SDXL and SD3.5-medium as in rest (the fused map kernels
#   of both families against the op-by-op maps on one card).
# SET rest: LCM at 4 steps, then SDXL and SD3.5-medium, 12 rounds each (big without FLUX, which bench/mmdit_round.sh covers).
# SET targets: each of issue 24's targets once: SD 1.5 (40 rounds of plain, capture, publish), SD 1.5 publish with the
#   sink process and the subscriber on the last two CPUs and the model off them (15 rounds), then SDXL and SD3.5-medium as in rest.
# SET capture: the capture targets alone, plain against capture (each round's pair adjacent in time): SD 1.5 80 rounds,
#   SDXL 24 rounds.
# SET mapsize: does what publish costs scale with the sink's work? plain, capture and publish with smaller maps than the
#   latent's: SD 1.5 at 32² (a quarter of the sink's work), SDXL at 64² (a quarter).
# SET sdxl: SDXL at the default map size (its finest attention grid, 64² at 1024²), 20 rounds of plain, capture and
#   publish, then 12 with the latent-sized 128² maps that were the default before.
# SET busy: what publishing costs SD 1.5, taken apart (30 rounds): capture; publish_drop (the runner's own work, its
#   recipes dropped: no sink process, no subscriber); capture_busy (two processes that touch nothing of ours spinning
#   4 ms in every 30, about the sink's and the subscriber's CPU); publish.
# SET pin: SD 1.5 plain, capture, publish (20 rounds) with the model's thread free, then kept on one CPU (--pin-thread 3).
# Each bench gets --max-seconds inside what is left and is skipped when too little is; every
# result's JSON also goes into OUTDIR/log. Run it twice in one call (two code trees, two OUTDIRs
# under $OUT) to compare code on the same machine: the device brings back 8 files.
set -uo pipefail
out=${1:?output folder}; set=${2:?small or big}; budget=${3:-570}; mkdir -p "$out"; tmp=$(mktemp -d)
python3 -c 'import torch; print(torch.cuda.get_device_name(0), torch.__version__)' | tee -a "$out/log"
echo "$(nproc) CPUs; code: $(python3 -c 'import bridge, os; print(os.path.dirname(bridge.__file__))')" | tee -a "$out/log"
bench() {  # NAME NEED_S TIMED_S ARGS...: run when NEED_S seconds are left; TIMED_S is its rounds' budget
  local name=$1 need=$2 timed=$3; shift 3
  local left=$((budget - SECONDS))
  if [ "$left" -lt "$need" ]; then echo "== $name skipped: $left s left, $need needed" | tee -a "$out/log"; return; fi
  echo "== $name: stepx bench $* --max-seconds $timed ($left s left)" | tee -a "$out/log"
  timeout $((left - 5)) python3 -m bridge.cli bench "$@" --max-seconds "$timed" --json "$tmp/$name.json" 2>&1 | tee -a "$out/log" | grep -v '^{'
}
if [ "$set" = kernel ]; then  # and the phases compiled on the GPU (publish_device): is the sink's CPU what publish costs?
bench sd15 190 120 --arch sd15 --runs 40 --warmup 2 --variants plain capture capture_unfused publish publish_device --profile "$out/sd15_profile.txt"
fi
if [ "$set" = targets ]; then
bench sd15 140 80 --arch sd15 --runs 40 --warmup 2 --variants plain capture publish
n=$(nproc); bench sd15_pin 55 25 --arch sd15 --runs 15 --warmup 1 --variants plain publish --model-cpus 0-$((n - 3)) --sink-cpus $((n - 2))-$((n - 1))
fi
if [ "$set" = capture ]; then
bench sd15 150 100 --arch sd15 --runs 80 --warmup 2 --variants plain capture
bench sdxl 150 75 --arch sdxl --runs 24 --warmup 1 --variants plain capture
fi
if [ "$set" = mapsize ]; then
bench sd15_m32 110 55 --arch sd15 --runs 30 --warmup 2 --variants plain capture publish --map-size 32
bench sdxl_m64 140 55 --arch sdxl --runs 12 --warmup 1 --variants plain capture publish --map-size 64
fi
if [ "$set" = sdxl ]; then
bench sdxl 160 85 --arch sdxl --runs 20 --warmup 1 --variants plain capture publish
bench sdxl_m128 125 55 --arch sdxl --runs 12 --warmup 1 --variants plain capture publish --map-size 128
fi
if [ "$set" = busy ]; then
bench sd15_busy 130 95 --arch sd15 --runs 30 --warmup 2 --variants plain capture publish_drop capture_busy publish
fi
if [ "$set" = pin ]; then  # the model's thread free to move, then kept on CPU 3 (the same machine)
bench sd15_free 75 35 --arch sd15 --runs 20 --warmup 2 --variants plain capture publish
bench sd15_pinned 75 35 --arch sd15 --runs 20 --warmup 2 --variants plain capture publish --pin-thread 3
fi
if [ "$set" = small ]; then
bench sd15 165 95 --arch sd15 --runs 40 --warmup 2 --variants plain capture capture_unfused publish --profile "$out/sd15_profile.txt"
bench sd15_si 45 20 --arch sd15 --runs 15 --warmup 1 --variants plain publish --switch-interval 0.0005
bench turbo1 60 15 --arch sdturbo --steps 1 --guidance 0 --runs 100 --warmup 3 --variants plain capture publish
bench turbo4 45 15 --arch sdturbo --steps 4 --guidance 0 --runs 100 --warmup 3 --variants plain capture publish
bench lcm4 60 15 --arch sd15 --scheduler lcm --steps 4 --guidance 1 --runs 100 --warmup 3 --variants plain capture publish
if [ $((budget - SECONDS)) -ge 40 ]; then  # the sink process's CPU per step on this host (into the log: no extra file)
  echo "== sink_cpu: python3 bench/sink_cpu.py --runs 10" | tee -a "$out/log"
  timeout 35 python3 bench/sink_cpu.py --runs 10 2>&1 | tee -a "$out/log"
else echo "== sink_cpu skipped: $((budget - SECONDS)) s left" | tee -a "$out/log"; fi
fi
if [ "$set" = rest ]; then
bench lcm4 60 15 --arch sd15 --scheduler lcm --steps 4 --guidance 1 --runs 100 --warmup 3 --variants plain capture publish
fi
if [ "$set" = big ] || [ "$set" = rest ] || [ "$set" = kernel ] || [ "$set" = targets ]; then
[ "$set" = big ] && bench flux 130 60 --arch flux --size 512 --runs 8 --warmup 1 --variants plain capture publish
# 12 rounds of 4 (SDXL) or 3 (SD3.5) variants at 1.2-2.2 s (SDXL) and 1.9 s (SD3.5) a generation on an H100
bench sdxl 150 100 --arch sdxl --runs 12 --warmup 1 --variants plain capture capture_unfused publish
bench sd35m 110 70 --arch sd35m --runs 12 --warmup 1 --variants plain capture publish
fi
for f in sd15 sd15_si sd15_pin sd15_m32 sd15_busy sd15_free sd15_pinned flux sdxl sdxl_m64 sdxl_m128 sd35m; do [ -f "$tmp/$f.json" ] && cp "$tmp/$f.json" "$out/"; done
[ "$set" = small ] || [ "$set" = rest ] && python3 - "$tmp" "$out/fewstep.json" <<'PY'
import json, pathlib, sys
tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
found = {n: json.loads((tmp / f"{n}.json").read_text()) for n in ("turbo1", "turbo4", "lcm4") if (tmp / f"{n}.json").exists()}
dest.write_text(json.dumps(found, indent=1))
PY
echo "done in $SECONDS s" | tee -a "$out/log"
