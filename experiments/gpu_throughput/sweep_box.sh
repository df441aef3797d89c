#!/bin/bash
# Issue 12: the 60-run HalfCheetah-v5 sweep (GELU x precision x 10 seeds, 1M steps each) on the GPU box, resumable
# across device calls: call this repeatedly, back to back (the box keeps git-ignored paths of the checkout while it
# stays warm: the sweep lives in outputs/, the offline install in .box/). Each call runs the sweep command for at
# most LIMIT seconds, then SIGTERM: every member checkpoints and the next call's identical command resumes it.
# The grouped launcher's defaults on CUDA put all 60 runs in ONE process (mix_cells, max_members auto); W env
# workers with SPIN us of polling. PRE=1: first the GPU suite and a single run (one run per process) for reference;
# the sweep is not started if the suite fails. sysmon.py samples the box's CPUs and GPU every 5 s meanwhile
# ($OUT/sysmon.jsonl: steal, clocks, runnable processes, the busiest processes). WH: the wheels to install
# (.wheelhouse/sweep: .wheelhouse/issue12 less mujoco_studio, pyopengl and websockets, which simulation does not
# import: 11 MB instead of 27).
# CKPT=1: also bring the sweep's state back (carry.py pack: newest checkpoint per unfinished run, 15 MB parts, xz
# preset XZ (6; 0 packs in 0.22x the time, 7% larger); 60 unfinished HalfCheetah runs: 48.6 MB, which fits beside the wheels
# only with a slim tree, box_tree.sh); RESTORE=DIR: on a box without the sweep, unpack such parts first
# (copy the returned parts into a git-ignored .carry/ and carry it with the wheels).
# EXP / ENVS / SWEEP: another experiment, env(s) and its sweep directory, e.g. issue 13's pilot on one env:
#   EXP=mujoco_gelu_amp ENVS=hopper SWEEP=outputs/sweeps/mujoco_gelu_amp ... sweep_box.sh
#   LIMIT=500 W=15 SPIN=1000 bash experiments/gpu_throughput/sweep_box.sh
# STAGES="ENVS@SEEDS ...": the sweep command once per stage, one after another in the same sweep dir (stages.sh;
# default "$ENVS@$SEEDS"), e.g. a box's whole plan: STAGES="halfcheetah@range(11,21) hopper,walker2d@range(21,31)".
# Keep each stage's unfinished runs within what a carry holds (~40-55 runs; a box's last call packs only the running
# stage's unfinished runs, since stages and the launcher's env groups (NJ=1) run one after another).
# DETACH=1: the sweep runs detached across calls (no start-up or stop per call; ~30-75 s of each 9-minute call in
# session 9); each call watches it for LIMIT seconds and returns the progress (and with CKPT=1 a carry packed from its
# periodic checkpoints: `EXTRA=tracking.checkpoint_every=5` keeps them recent; tracking keys are not part of a run's
# identity). The box's last call: STOP=1 CKPT=1 (the sweep stops as at its time limit, then the pack).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; PY=${PY:-python3}
LIMIT=${LIMIT:-500}; W=${W:-15}; SPIN=${SPIN:-1000}; NJ=${NJ:-1}; SEEDS=${SEEDS:-range(1,11)}; DEV=${DEV:-cuda}
EXTRA=${EXTRA:-}; PRE=${PRE:-0}
WH=${WH:-$PWD/.wheelhouse/issue12}; BOX=$PWD/.box
EXP=${EXP:-gelu_amp}; ENVS=${ENVS:-halfcheetah}; SWEEP=${SWEEP:-outputs/sweeps/gelu_amp_halfcheetah}
exec > >(tee "$OUT/log.txt") 2>&1
source "$PWD/experiments/box_install.sh"
date -u; nproc; box_cpu; nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv,noheader 2>/dev/null
mkdir -p "$BOX"; [ -f "$BOX/calls" ] && echo "previous calls on this box: $(cat "$BOX/calls")" || echo "fresh box"
echo $(( $(cat "$BOX/calls" 2>/dev/null || echo 0) + 1 )) > "$BOX/calls"
if [ "$PRE" = 1 ]; then NEED="gymnasium, hydra, mujoco, pytest"; WHL="$WH/*.whl $PWD/.wheelhouse/pytest/*.whl"
else NEED="gymnasium, hydra, mujoco"; WHL="$WH/*.whl"; fi
NEED=$NEED PFX="$BOX/pfx" WHEELS=$WHL box_install || exit 1
bash experiments/gpu_throughput/box_tree.sh box  # a slim tree's left-out files are not "changes" (box_tree.sh)
if [ "$PRE" = 1 ]; then
  box_suite "$OUT/suite.txt" 200 || exit 1
  echo "== one run per process (HalfCheetah, exact/fp32, device=cuda, in-process envs)"
  timeout 120 $PY experiments/cuda_eager/group_run.py --k 1 --device cuda --updates 8 --env halfcheetah \
    --out /tmp/single > /tmp/single.log 2>&1 || tail -3 /tmp/single.log
  $PY experiments/gpu_throughput/timing_summary.py /tmp/single; cp /tmp/single/timing.json "$OUT/timing_single.json"
fi
if [ -n "${RESTORE:-}" ] && [ ! -d "$SWEEP" ]; then  # a fresh box: the state a previous box packed (CKPT=1)
  $PY experiments/gpu_throughput/carry.py unpack "$RESTORE" "$SWEEP" || exit 1
  touch "$BOX/runs_packed"  # the restored files came back with the call that packed them: not sent again
fi
$PY experiments/gpu_throughput/progress.py "$SWEEP" "$BOX/progress_before.json" > /dev/null 2>&1 || true
$PY experiments/gpu_throughput/sysmon.py "$OUT/sysmon.jsonl" 5 & mon=$!  # the box's CPUs and GPU every 5 s
s=$(date +%s.%N); echo "sweep start epoch $s"
elapsed() { echo "$(date +%s.%N) $s" | awk '{printf "%.1f", $1 - $2}'; }  # seconds since the sweep step began
# shellcheck disable=SC2206  # EXTRA: overrides, split on purpose
CMD=(bash experiments/gpu_throughput/stages.sh "${STAGES:-$ENVS@$SEEDS}"
     $PY -m esper_exp.train -m experiment=$EXP hydra/launcher=grouped hydra.launcher.n_jobs=$NJ
     device=$DEV env_workers=$W env_spin_us=$SPIN tracking.wandb.mode=disabled tracking.progress=off $EXTRA)
PIDF=$BOX/sweep.pid
alive() { [ -f "$PIDF" ] && kill -0 "$(cat "$PIDF")" 2>/dev/null; }
tree() { ps -eo pid=,ppid= | awk -v root="$1" '{kids[$2] = kids[$2] " " $1}
  END {n = split(root, q, " "); for (i = 1; i <= n; i++) {print q[i]; m = split(kids[q[i]], k, " ");
       for (j = 1; j <= m; j++) q[++n] = k[j]}}'; }
if [ "${DETACH:-0}" = 1 ]; then
  # The sweep outlives the call: started detached by the first call (in its own session, at most TOTAL seconds), the
  # next calls only watch it (no start-up, no checkpoint-and-stop per call); STOP=1 ends it as its time limit would.
  # Calls must follow each other within the box's idle release (30 s), or the box goes back with the sweep.
  # SIGCONT first: an earlier call killed while its pack ran (below) left the sweep frozen (session 18)
  if alive; then kill -CONT $(tree "$(cat "$PIDF")") 2>/dev/null
    echo "sweep running detached since an earlier call (pid $(cat "$PIDF"))"
  elif [ "${STOP:-0}" = 1 ]; then echo "no detached sweep running: nothing to stop"
  else
    setsid timeout -s TERM -k 60 "${TOTAL:-1700}" "${CMD[@]}" >> "$BOX/sweep_call.log" 2>&1 < /dev/null &
    echo $! > "$PIDF"; echo "sweep started detached (pid $!, at most ${TOTAL:-1700} s)"
  fi
  if [ "${STOP:-0}" = 1 ]; then
    kill -TERM "$(cat "$PIDF")" 2>/dev/null  # timeout relays it to the sweep's processes: each member checkpoints
    for _ in $(seq 120); do alive || break; sleep 1; done
  else
    end=$(( $(date +%s) + LIMIT )); while alive && [ "$(date +%s)" -lt "$end" ]; do sleep 2; done
  fi
  alive && echo "sweep still running detached after wall_s=$(elapsed)" || echo "sweep ended; wall_s=$(elapsed) in this call"
else
  timeout -s TERM -k 60 "$LIMIT" "${CMD[@]}" > "$BOX/sweep_call.log" 2>&1
  echo "sweep rc=$? wall_s=$(elapsed)"
fi
kill $mon 2>/dev/null
tail -25 "$BOX/sweep_call.log" | cut -c1-250
$PY experiments/gpu_throughput/progress.py "$SWEEP" "$OUT/progress.json" "$BOX/progress_before.json" "$s"
# a sweep still running is frozen while its files are read (SIGSTOP to it and every descendant, parents first: the
# grouped launcher starts each group in a session of its own; then SIGCONT): no file changes under tar or the pack,
# which takes each run's newest checkpoint whose write finished
# the call may be stopped while they are frozen (its time limit; session 18): resume them on the way out (PIPE too:
# bash reports the killed pack on stderr, whose tee died with it, and SIGPIPE would end it without the EXIT trap;
# checked on the dev CPU with a pack held 30 s and `timeout -s TERM`: the sweep ran on); a SIGKILL leaves them
# frozen until the next call's SIGCONT (above)
frozen=""; trap '[ -n "$frozen" ] && kill -CONT $frozen 2>/dev/null' EXIT; trap 'exit 143' TERM INT PIPE
if alive; then frozen=$(tree "$(cat "$PIDF")"); kill -STOP $frozen 2>/dev/null; sleep 1
  echo "froze the running sweep's $(echo $frozen | wc -w) processes while its files are read"; fi
# the small per-run files (no checkpoints) changed since the previous call's pack (runs_pack.py: parts of 15 MB; the
# dev side extracts every call's parts in call order, collect.sh); FULL=1: all of them (after a call whose parts did
# not come back)
if [ "${FULL:-0}" = 1 ]; then rm -f "$BOX/runs_packed"; fi
$PY experiments/gpu_throughput/runs_pack.py pack "$SWEEP" "$OUT" --since "$BOX/runs_packed"
# CKPT=1: the whole state (newest checkpoint per run) in parts of 15 MB, for RESTORE on another box
# (carry.py refuses, at once, a state too big to carry: a width-384 sweep must finish on one box)
[ "${CKPT:-0}" = 1 ] && $PY experiments/gpu_throughput/carry.py pack "$SWEEP" "$OUT" --preset "${XZ:-6}"
[ -n "$frozen" ] && kill -CONT $frozen 2>/dev/null; frozen=""  # resumed: nothing left for the EXIT trap
ls -la "$OUT"; date -u
