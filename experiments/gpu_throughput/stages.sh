#!/bin/bash
# The sweep command once per stage, one stage after another (sweep_box.sh runs it; a box's whole plan in one
# detached job, so no call has to start the next seeds):
#   stages.sh "ENVS@SEEDS [ENVS@SEEDS ...]" CMD...   e.g. "halfcheetah@range(11,21) hopper,walker2d@range(21,31)"
# Stage i runs `CMD... env=ENVS seed=SEEDS` (completed runs are skipped, interrupted ones resume: the sweep command's
# own rules). A SIGTERM or SIGINT stops the running stage as its time limit would (one SIGTERM to the command, whose
# launcher has every member checkpoint), waits for it, and starts no later stage. The command runs in a session of
# its own, so a signal sent to this script's process group (timeout's) reaches it once, through here, not twice (the
# grouped launcher reads a second SIGTERM as "abort at once"). A stage that ends with an error does not stop the
# plan (its runs say why, in their run.json and the sweep summary); the script's exit status is the last stage's.
set -u
[ $# -ge 2 ] || { echo "usage: stages.sh 'ENVS@SEEDS ...' CMD..." >&2; exit 2; }
plan=$1; shift
for st in $plan; do
  case $st in *?@?*) ;; *) echo "stages.sh: stage '$st' is not ENVS@SEEDS (e.g. hopper,walker2d@range(11,21))" >&2
                           exit 2;; esac
done
stop=0; p=""; rc=0
# once: timeout signals its child and then its whole process group, so this script may get the same SIGTERM twice
trap '[ "$stop" = 1 ] || { stop=1; [ -n "$p" ] && kill -TERM "$p" 2>/dev/null; }' TERM INT
for st in $plan; do
  [ "$stop" = 1 ] && break
  echo "== stage $st: started $(date -u +%FT%TZ)"
  setsid "$@" "env=${st%@*}" "seed=${st#*@}" < /dev/null & p=$!
  # a trapped signal ends `wait` early: wait again until the command itself has ended
  while :; do wait "$p"; rc=$?; kill -0 "$p" 2>/dev/null || break; done
  p=""
  echo "== stage $st: rc=$rc, ended $(date -u +%FT%TZ)"
done
[ "$stop" = 1 ] && echo "== stopped by a signal; later stages not started"
exit "$rc"
