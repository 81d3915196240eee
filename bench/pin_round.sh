#!/usr/bin/env bash
# Issue 24, one device call: the CUDA tests of the ring, the bench and CUDA capture, then SD 1.5
# 512² (40 interleaved rounds) as `stepx serve` runs it and again with the model's thread alone
# on one CPU (`--pin-thread 3 --pin-alone`: every other thread of the process, the sink process
# and the latency subscriber on other CPUs). Does a woken thread taking the model's CPU cost it?
# Usage: bash bench/pin_round.sh OUT [SECONDS per bench, default 130]. Writes six files to OUT.
set -uo pipefail
OUT=${1:?usage: pin_round.sh OUT [SECONDS]}
BUDGET=${2:-130}
mkdir -p "$OUT"
{ nproc; lscpu | grep -E "Model name|Thread|Core|Socket|NUMA|MHz"; uptime; nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv; } > "$OUT/host.txt" 2>&1
python -m pytest -q -x --tb=short -p no:cacheprovider tests/test_ring.py tests/test_bench.py tests/test_capture_cuda.py \
    -k "cuda or gpu or ring" > "$OUT/tests.txt" 2>&1
echo "pytest rc $?" >> "$OUT/tests.txt"
common=(--arch sd15 --runs 40 --warmup 2 --variants plain capture publish publish_ring --max-seconds "$BUDGET")
python -m bridge.cli bench "${common[@]}" --json "$OUT/sd15.json" > "$OUT/sd15.txt" 2>&1
python -m bridge.cli bench "${common[@]}" --pin-thread 3 --pin-alone --sink-cpus 8-15 --json "$OUT/sd15_alone.json" \
    > "$OUT/sd15_alone.txt" 2>&1
tail -n 4 "$OUT"/tests.txt; grep -h -A8 "^variant" "$OUT"/sd15.txt "$OUT"/sd15_alone.txt
