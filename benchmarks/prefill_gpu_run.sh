#!/usr/bin/env bash
# Long prompts on one H100 in one command of at most 520 s: benchmarks/prefill_throughput.py part by part, in
# priority order, each under `timeout` so that a slow part cannot eat the time of the next. Random bf16 weights
# at Apriel-15B dims; the teacher against H1-30 and H1-40.
#
#   bash benchmarks/prefill_gpu_run.sh            # on the GPU; rows and logs under ${OUT:-/tmp/out}
#   bash benchmarks/prefill_gpu_run.sh --tiny     # the same steps at tiny dims on the CPU (a smoke test)
#
# 1. profile (~50 s): one Mamba layer's prefill at 16k/32k/64k/128k tokens, token-major (the reference layout)
#    and channel-major side by side: whole prefill (one call, and 4096-token calls carrying the states) and its
#    pieces; at 64k and 128k also the forward scan kernel alone for six candidate tiles. The faster layout at the longest length both measured is the one the
#    models below prefill in (written to layout.txt; token-major if in doubt).
# 2-4. one process per model, each model built once for its parts (estimates from the earlier H100 rows: teacher
#    ~155 s = start and build ~20, ttft ~60, prefix ~30, serving ~45; H1-40 ~130 s = 20 + 50 + 25 + 35; H1-30
#    ~115 s = 20 + 55 + 40; the timeouts below add margins, and the last step gets what is left of the 520 s, so
#    H1-30's serving is what an overrun costs first):
#    ttft: batch 1 at 16k/32k/64k/128k, chunked (4096) then unchunked; a prefill that runs out of memory
#      (the teacher's unchunked 128k, probably) is a row with out_of_memory; the hybrids also at 64k chunked in
#      the other prefill layout (the two layouts end to end, same run);
#    prefix (teacher and H1-40): 32 requests (not 256: the time limit) sharing a 4k prefix, 256-token distinct
#      suffixes, 256 new tokens each, without and with the prefix cache, from a 72 GiB budget;
#    serving: 6 requests (as many as the teacher's slots; fewer than the issue's, for the time limit) of 32k
#      tokens, 1024 new each, chunked prefill, from a 72 GiB budget (80 does not fit beside the weights).
#    Each part stops starting rows past its allowance (--part-seconds); its remaining rows are written as skipped.
#
# Every row lands in $OUT/prefill_rows.jsonl as soon as it is measured, with the command, GPU, versions, commit
# and date; each process logs to $OUT/<step>.log and status.txt gets one line per step (exit code, seconds);
# summary.md tabulates the rows at the end.
set -uo pipefail  # no -e: a step that fails or times out must not stop the next
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
ROWS="$OUT/prefill_rows.jsonl"
STATUS="$OUT/status.txt"
LIMIT=${PREFILL_RUN_SECONDS:-520}  # the whole script, wall clock
START=$(date +%s)
: > "$ROWS"
: > "$STATUS"

if [ "${1:-}" = "--tiny" ]; then
    COMMON=(--tiny --device cpu --repeats 1 --chunk 16 --budget-gib 0.002 --reserve-gib 0)
    PROFILE=(--profile-lengths 32 64 --profile-repeats 1 --scan-tile-lengths 64)
    TTFT=(--prompts 24 40 --other-layout-prompts 40)
    PREFIX=(--prefix-requests 3 --prefix-tokens 19 --suffix-tokens 4 --prefix-new 3 --block-size 8
            --prefix-cache-gib 0.0005)
    SERVING=(--serve-prompt 20 --serve-new 4 --serve-requests 3)
else
    COMMON=(--repeats 1 --chunk 4096 --budget-gib 72 --reserve-gib 3)
    PROFILE=(--profile-lengths 16384 32768 65536 131072 --profile-repeats 5 --scan-tile-lengths 65536 131072)
    TTFT=(--prompts 16384 32768 65536 131072 --other-layout-prompts 65536)
    PREFIX=(--prefix-requests 32 --prefix-tokens 4096 --suffix-tokens 256 --prefix-new 256 --block-size 512
            --prefix-cache-gib 2)
    SERVING=(--serve-prompt 32768 --serve-new 1024 --serve-requests 6)
fi

{
    date -u +"date %Y-%m-%dT%H:%M:%SZ"
    git rev-parse HEAD 2>/dev/null || echo "commit unknown (no git)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda,
"transformers", transformers.__version__)
try:
    import triton; print("triton", triton.__version__)
except ImportError:
    print("no triton")'
} > "$OUT/environment.txt" 2>&1

# step NAME SECONDS ARGS...: run the benchmark with ARGS under a timeout of SECONDS, or what is left of LIMIT
step() {
    local name=$1 seconds=$2 left
    shift 2
    left=$((START + LIMIT - $(date +%s) - 5))  # 5 s for timeout's kill and the summary
    [ "$seconds" -gt "$left" ] && seconds=$left
    if [ "$seconds" -lt 15 ]; then
        echo "$name skipped: ${left}s left" | tee -a "$STATUS"
        return
    fi
    local began=$(date +%s)
    echo "== $name (timeout ${seconds}s): $*" | tee "$OUT/$name.log"
    timeout -k 3 "$((seconds - 3))" "$PYTHON" benchmarks/prefill_throughput.py "$@" --jsonl "$ROWS" \
        >> "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$(($(date +%s) - began))$([ $rc -ge 124 ] && echo ' (timed out)')" | tee -a "$STATUS"
    tail -n 3 "$OUT/$name.log"
}

step profile 70 --part profile-mamba "${COMMON[@]}" "${PROFILE[@]}" --part-seconds profile-mamba=45

# the layout the models prefill in: channel-major only where the profile measured it faster
LAYOUT=$("$PYTHON" - "$ROWS" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
times = {}
for row in rows:
    if row["part"] == "profile-mamba" and row.get("prefill_ms"):
        times.setdefault(row["tokens"], {})[row["prefill_layout"]] = row["prefill_ms"]
both = [tokens for tokens, layouts in times.items() if len(layouts) == 2]
faster = both and times[max(both)]["channel_major"] < times[max(both)]["token_major"]
print("channel_major" if faster else "token_major")
EOF
) || LAYOUT=token_major
echo "$LAYOUT" > "$OUT/layout.txt"
echo "models prefill in $LAYOUT" | tee -a "$STATUS"
MODEL=("${COMMON[@]}" --prefill-layout "$LAYOUT" --modes chunked unchunked --serve-modes chunked
       "${TTFT[@]}" "${PREFIX[@]}" "${SERVING[@]}")

# timeouts: what each model needs by the estimates above plus a margin; the last takes what is left
step teacher 190 --models teacher --part ttft prefix serving "${MODEL[@]}" \
    --part-seconds ttft=75 prefix=40 serving=45
step h1-40 155 --models H1-40 --part ttft prefix serving "${MODEL[@]}" \
    --part-seconds ttft=60 prefix=35 serving=40
step h1-30 150 --models H1-30 --part ttft serving "${MODEL[@]}" --part-seconds ttft=60 serving=45

"$PYTHON" benchmarks/prefill_throughput.py --summarize "$ROWS" > "$OUT/summary.md" 2>> "$STATUS"
cat "$OUT/summary.md"
echo "total $(($(date +%s) - START)) s" | tee -a "$STATUS"
