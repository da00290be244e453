#!/usr/bin/env bash
# GPU readiness check, <= 8 minutes on one GPU: the `gpu` tests, CPU == CUDA labels,
# flows -> labels and segment images/s, 100 training steps with bf16 AMP; one markdown table.
#
#   bash benchmarks/gpu_check.sh             # on a CUDA machine
#   bash benchmarks/gpu_check.sh --dry-run   # CPU, tiny sizes: tests the script, measures nothing
#
# Every check runs in its own process under `timeout`, so one hanging step cannot eat the
# budget (150 + 60 + 60 + 90 + 90 s = 7.5 min at most); a check that times out shows as FAIL.
# Exit status: 0 when every row passes.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DRY=()
if [[ "${1:-}" == "--dry-run" ]]; then DRY=(--dry-run); fi
RESULTS=$(mktemp)
trap 'rm -f "$RESULTS"' EXIT

step() {   # step SECONDS CHECK
    timeout --kill-after=10 "$1" "$PYTHON" benchmarks/gpu_check.py run "$2" --results "$RESULTS" "${DRY[@]}"
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "gpu_check: $2 exited with $rc (124: timed out after $1 s)" >&2
    fi
}

step 150 tests
step 60 equality
step 60 flows
step 90 segment
step 90 train
"$PYTHON" benchmarks/gpu_check.py table --results "$RESULTS" "${DRY[@]}"
