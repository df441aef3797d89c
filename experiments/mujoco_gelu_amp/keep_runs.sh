#!/bin/bash
# After each device call's collect.sh (dev side, repository root): every block of seeds of a group (a directory of
# the sweep holding seed=N runs: env and cell) whose runs have all completed, and that has no archive yet, is packed
# into DEST/<group>_seeds<a>-<b>.tar.xz (archive.py: the runs' files, byte-for-byte, no checkpoints) and staged for
# commit. Commit it at once: the dev VM's outputs/ does not outlive the session (session 12 found sessions 9-11's 280
# runs gone). Blocks still running are left alone. `git add --sparse`: works with the slim tree (box_tree.sh) too.
#   bash experiments/mujoco_gelu_amp/keep_runs.sh [SWEEP [DEST]]
# SEEDS="FIRST LAST" and BLOCK: the registered seeds and how many go into one archive. Defaults: the primary study
# (outputs/sweeps/mujoco_gelu_amp -> experiments/mujoco_gelu_amp/runs, seeds 1-40 in blocks of 10: 0.4-0.9 MB each).
# The probe (seeds 1-5, ~0.4 MB per run with its probe.jsonl): SEEDS="1 5" BLOCK=3, e.g.
#   SEEDS="1 5" BLOCK=3 bash experiments/mujoco_gelu_amp/keep_runs.sh outputs/sweeps/mujoco_gelu_amp_probe \
#     experiments/mujoco_gelu_amp/probe/runs
# An archive over 2 MiB (MAX_BYTES) is removed again and named (exit 1): every file in git stays under 2 MiB; use a
# smaller BLOCK.
# A new checkout gets the kept runs back with:
#   python experiments/gpu_throughput/archive.py unpack experiments/mujoco_gelu_amp/runs/*.tar.xz outputs/sweeps
set -eu
SWEEP=${1:-outputs/sweeps/mujoco_gelu_amp}; DEST=${2:-experiments/mujoco_gelu_amp/runs}; PY=${PY:-python3}
read -r first last <<< "${SEEDS:-1 40}"; block=${BLOCK:-10}; max=${MAX_BYTES:-2097152}
[ -d "$SWEEP" ] || { echo "keep_runs.sh: no sweep directory $SWEEP" >&2; exit 2; }
[[ $first =~ ^[0-9]+$ && $last =~ ^[0-9]+$ && $block =~ ^[1-9][0-9]*$ ]] && [ "$first" -le "$last" ] ||
  { echo "keep_runs.sh: SEEDS='$first $last' BLOCK=$block: need whole numbers FIRST <= LAST and BLOCK >= 1" \
    "(e.g. SEEDS='1 40' BLOCK=10)" >&2; exit 2; }
mkdir -p "$DEST"; rc=0
for gdir in "$SWEEP"/*/; do
  group=$(basename "$gdir")
  ls -d "$gdir"seed=* > /dev/null 2>&1 || continue  # not a group of runs (e.g. .submitit, multirun.yaml)
  for a in $(seq "$first" "$block" "$last"); do
    b=$((a + block - 1)); [ "$b" -gt "$last" ] && b=$last
    out=$(printf "%s/%s_seeds%02d-%02d.tar.xz" "$DEST" "$group" "$a" "$b")
    [ -f "$out" ] && continue
    globs=(); done_n=0
    for s in $(seq "$a" "$b"); do
      globs+=("$group/seed=$s")
      grep -qE '"status": *"completed"' "$SWEEP/$group/seed=$s/run.json" 2>/dev/null && done_n=$((done_n + 1))
    done
    n=$((b - a + 1))
    if [ "$done_n" = "$n" ]; then
      $PY experiments/gpu_throughput/archive.py pack "$SWEEP" "$out" --match "${globs[@]}"
      if [ "$(stat -c %s "$out")" -gt "$max" ]; then
        echo "keep_runs.sh: $out is $(stat -c %s "$out") bytes, over 2 MiB: removed; use a smaller BLOCK" >&2
        rm -f "$out"; rc=1; continue
      fi
      git add --sparse "$out"
    elif [ "$done_n" -gt 0 ]; then
      echo "keep_runs.sh: $group seeds $a-$b: $done_n of $n runs completed, not packed yet (a failed run is rerun by" \
        "the sweep)"
    fi
  done
done
exit "$rc"
