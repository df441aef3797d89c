#!/bin/bash
# After each device call's collect.sh (dev side, repository root): every block of 10 seeds of an env and cell whose 10
# primary runs have all completed, and that has no archive yet, is packed into runs/<env>-<cell>_seeds<a>-<b>.tar.xz
# (0.4-0.9 MB each: one file per env, cell and block keeps every file in git well under 2 MiB) and staged for
# commit (archive.py: the runs' files, byte-for-byte, no checkpoints). Commit it at once: the dev VM's outputs/ does
# not outlive the session (session 12 found sessions 9-11's 280 runs gone). Blocks still running are left alone.
# `git add --sparse`: works with the slim tree (box_tree.sh) too, which leaves runs/ out of what travels to a box.
#   bash experiments/mujoco_gelu_amp/keep_runs.sh [SWEEP (outputs/sweeps/mujoco_gelu_amp)]
# A new checkout gets the kept runs back with:
#   python experiments/gpu_throughput/archive.py unpack experiments/mujoco_gelu_amp/runs/*.tar.xz outputs/sweeps
set -eu
SWEEP=${1:-outputs/sweeps/mujoco_gelu_amp}; HERE=experiments/mujoco_gelu_amp; PY=${PY:-python3}
[ -d "$SWEEP" ] || { echo "keep_runs.sh: no sweep directory $SWEEP" >&2; exit 2; }
for env in halfcheetah hopper walker2d; do
  for cell in exact-fp32 tanh-fp32 exact-bf16 tanh-bf16; do
    for a in 1 11 21 31; do
      b=$((a + 9)); out=$(printf "%s/runs/%s-%s_seeds%02d-%02d.tar.xz" "$HERE" "$env" "$cell" "$a" "$b")
      [ -f "$out" ] && continue
      globs=(); done_n=0
      for s in $(seq "$a" "$b"); do
        globs+=("$env-$cell/seed=$s")
        grep -qE '"status": *"completed"' "$SWEEP/$env-$cell/seed=$s/run.json" 2>/dev/null && done_n=$((done_n + 1))
      done
      if [ "$done_n" = 10 ]; then
        $PY experiments/gpu_throughput/archive.py pack "$SWEEP" "$out" --match "${globs[@]}" && git add --sparse "$out"
      elif [ "$done_n" -gt 0 ]; then
        echo "keep_runs.sh: $env $cell seeds $a-$b: $done_n of 10 runs completed, not packed yet (a failed run is rerun by the sweep)"
      fi
    done
  done
done
