#!/usr/bin/env bash
# The GPU benchmarks of docs/BENCHMARKS.md, as run on the device machine (one H100 or H200):
#   bash bench/gpu_bench.sh OUTDIR [sd15|big|all]
# (models = sd15 + big without the micro-benchmarks; BIG_RUNS sets the SDXL/SD3.5 rounds, default 15)
# sd15: SD 1.5 at 512² (plain, capture with and without CUDA graphs, capture+phases+publish with the
#       sinks+phases in a PacketProcess, recipes handed over by the model's thread, phases on the GPU,
#       sinks in-process, recipes dropped, capture beside other processes' CPU load, +box query,
#       DAAM 0.2.0) plus the delivery, sink-process CPU, phases (eager and compiled) and preview micro-benchmarks; big: SDXL at 1024² and
#       SD3.5-medium-shaped MM-DiT. sd15+: sd15 and phases without the preview.
# Needs diffusers, pyzmq (and moderngl for the preview) importable, DAAM's source on PYTHONPATH.
set -uo pipefail
out=${1:?output folder}; what=${2:-all}; big_runs=${BIG_RUNS:-15}
mkdir -p "$out"
python3 -c 'import torch; print(torch.cuda.get_device_name(0), torch.__version__)' | tee "$out/device.txt"
if [ "$what" = sd15 ] || [ "$what" = sd15+ ] || [ "$what" = all ] || [ "$what" = models ]; then
  python3 -m bridge.cli bench --arch sd15 --runs 40 --warmup 2 --variants plain capture capture_eager publish publish_inline publish_device publish_inproc publish_drop capture_busy queries daam --json "$out/sd15.json" --profile "$out/sd15_profile.txt" 2>&1 | grep -v '^{' | tee "$out/sd15.txt"
  [ "$what" = models ] || python3 bench/delivery_bench.py --rounds 40 2>&1 | tail -4 | tee "$out/delivery.txt"
  [ "$what" = models ] || python3 bench/sink_cpu.py --runs 10 2>&1 | tail -5 | tee -a "$out/delivery.txt"
  [ "$what" = models ] || python3 bench/phases_bench.py --reps 500 --compile 2>&1 | tail -5 | tee "$out/phases.txt"
  [ "$what" = models ] || python3 bench/phases_bench.py --reps 500 --compile --compile-mode reduce-overhead --device cuda 2>&1 | tail -2 | tee -a "$out/phases.txt"
  [ "$what" = models ] || [ "$what" = sd15+ ] || python3 bench/preview_bench.py --particles 1000000 --frames 300 --paths compute,transform_feedback 2>&1 | tail -4 | tee "$out/preview.txt"
fi
if [ "$what" = big ] || [ "$what" = all ] || [ "$what" = models ]; then
  # one text file for the big models (the device tool brings back at most 8 files)
  python3 bench/check_sdpa_tap.py 2>&1 | tee "$out/big.txt"
  python3 -m bridge.cli bench --arch sdxl --runs "$big_runs" --warmup 1 --variants plain capture publish --json "$out/sdxl.json" 2>&1 | grep -v '^{' | tee -a "$out/big.txt"
  python3 -m bridge.cli bench --arch sd35m --runs "$big_runs" --warmup 1 --variants plain capture publish --json "$out/sd35m.json" 2>&1 | grep -v '^{' | tee -a "$out/big.txt"
fi
