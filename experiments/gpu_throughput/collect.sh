#!/bin/bash
# On the dev side, in the repository root, after each sweep_box.sh call: file what the call returned.
#   bash experiments/gpu_throughput/collect.sh FILES_DIR RESULTS_PREFIX [CARRY_DIR]
# e.g. collect.sh /work/.device/3 experiments/mujoco_gelu_amp/results/study_s11_call3 .carry_s11
# - runs.tgz.part-* (or an older call's runs.tar.gz) is extracted in the repository root (runs_pack.py: the sweep's
#   small per-run files changed since the previous call's pack; extract every call's parts, in call order);
# - log.txt and progress.json are kept as RESULTS_PREFIX_log.txt / _progress.json (for the README's tables);
# - with CARRY_DIR, the call's carry parts replace CARRY_DIR's (git-ignored .carry*/), the state the next box restores;
# then prints where the sweep stands: runs per status, and the unfinished runs' updates per cell.
set -eu
[ $# -ge 2 ] || { echo "usage: collect.sh FILES_DIR RESULTS_PREFIX [CARRY_DIR]" >&2; exit 2; }
src=$1; prefix=$2; carry=${3:-}
[ -d "$src" ] || { echo "collect.sh: no directory $src" >&2; exit 2; }
[ -f "$src/progress.json" ] ||
  { echo "collect.sh: $src has no progress.json (not a sweep_box.sh call's files?)" >&2; exit 2; }
if [ -n "$carry" ]; then
  case $(basename "$carry") in
    .carry*) ;;
    *) echo "collect.sh: CARRY_DIR must be a git-ignored .carry*/ directory, got '$carry'" >&2; exit 2;;
  esac
  ls "$src"/carry.t*z.part-* > /dev/null 2>&1 ||
    { echo "collect.sh: $src holds no carry parts (the call ran without CKPT=1?)" >&2; exit 2; }
fi
mkdir -p "$(dirname "$prefix")"
if ls "$src"/runs.tgz.part-* > /dev/null 2>&1 || [ -f "$src/runs.tar.gz" ]; then
  python3 "$(dirname "$0")/runs_pack.py" unpack "$src" .
fi
cp "$src/progress.json" "${prefix}_progress.json"
[ -f "$src/log.txt" ] && cp "$src/log.txt" "${prefix}_log.txt"
echo "kept ${prefix}_log.txt, ${prefix}_progress.json"
if [ -n "$carry" ]; then
  rm -rf "$carry" && mkdir -p "$carry" && cp "$src"/carry.t*z.part-* "$carry"/
  echo "carry for the next box: $carry ($(du -sh "$carry" | cut -f1))"
fi
python3 - "$src/progress.json" <<'EOF'
import collections, json, sys
p = json.load(open(sys.argv[1]))
print("statuses:", p["statuses"], "| total env steps:", p["total_steps"])
left = collections.defaultdict(list)
for name, r in p["runs"].items():
    if r["status"] != "completed":
        left[name.split("/")[0]].append(r["updates"])
for cell, ups in sorted(left.items()):
    print(f"  unfinished {cell}: {len(ups)} runs at updates {min(ups)}-{max(ups)}")
EOF
