#!/usr/bin/env bash
# Issue 24's targets in one device call, as `stepx serve` runs (the step ring, the default):
# the CUDA tests of the ring, the bench and CUDA capture; the ring's wait on this host
# (bench/ring_wait.py, CPU only); SD 1.5 512² (40 interleaved rounds) and SDXL 1024² (20) with
# plain, capture and publish_ring. Usage: bash bench/targets_round.sh OUT [SD15_SECONDS] [SDXL_SECONDS].
set -uo pipefail
OUT=${1:?usage: targets_round.sh OUT [SD15_SECONDS] [SDXL_SECONDS]}
SD15=${2:-120}
SDXL=${3:-170}
mkdir -p "$OUT"
{ nproc; lscpu | grep -E "Model name|Thread|Core|Socket|NUMA|MHz"; uptime; nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv; } > "$OUT/host.txt" 2>&1
python -m pytest -q -x --tb=short -p no:cacheprovider tests/test_ring.py tests/test_bench.py tests/test_capture_cuda.py \
    tests/test_threads.py -k "cuda or gpu or ring or slack" > "$OUT/tests.txt" 2>&1
echo "pytest rc $?" >> "$OUT/tests.txt"
python bench/ring_wait.py --steps 200 --rounds 3 --json "$OUT/ring_wait.json" > "$OUT/ring_wait.txt" 2>&1
python -m bridge.cli bench --arch sd15 --runs 40 --warmup 2 --variants plain capture publish_ring --max-seconds "$SD15" \
    --json "$OUT/sd15.json" > "$OUT/sd15.txt" 2>&1
python -m bridge.cli bench --arch sdxl --runs 20 --warmup 1 --variants plain capture publish_ring --max-seconds "$SDXL" \
    --json "$OUT/sdxl.json" > "$OUT/sdxl.txt" 2>&1
tail -n 3 "$OUT"/tests.txt; cat "$OUT"/ring_wait.txt; grep -h -A20 "^variant" "$OUT"/sd15.txt "$OUT"/sdxl.txt
