#!/bin/bash
# What travels to the GPU box is this checkout's working tree (tracked and untracked-not-ignored files) plus the
# `carry` paths, 64 MiB in all. The tree is ~6.7 MB, most of it reports (PNGs, CSVs) the box never reads; a sweep's
# carried state (carry.py, ~49 MB for 60 HalfCheetah runs) plus the wheels (11 MB) leave no room for them.
#   bash experiments/gpu_throughput/box_tree.sh slim   # before the device call: only what the box runs (~1.1 MB)
#   bash experiments/gpu_throughput/box_tree.sh full   # after it: every file back
# `slim` is a git sparse checkout: the other files leave the working tree but stay tracked (git status shows no
# deletions; nothing is lost); `full` (git sparse-checkout disable) brings them back.
set -eu
cd "$(git rev-parse --show-toplevel)"
case "${1:-}" in
  slim)
    git sparse-checkout set --no-cone '/*' '!/experiments/*' '/experiments/box_install.sh' \
      '/experiments/gpu_throughput/*.py' '/experiments/gpu_throughput/*.sh' '/experiments/cuda_eager/' \
      '/experiments/baseline/throughput.py'
    echo "slim tree: $(git ls-files -t | grep -c '^H') tracked files in the working tree," \
      "$(git ls-files -t | grep '^H' | cut -c3- | xargs du -cb | tail -1 | cut -f1) bytes" ;;
  full)
    git sparse-checkout disable
    echo "full tree: $(git ls-files | wc -l) tracked files" ;;
  *) echo "usage: box_tree.sh slim|full (got '${1:-}')" >&2; exit 2 ;;
esac
