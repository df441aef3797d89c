#!/bin/bash
# What travels to the GPU box is this checkout's working tree (tracked and untracked-not-ignored files) plus the
# `carry` paths, 64 MiB in all. The tree is ~6.7 MB, most of it reports (PNGs, CSVs) the box never reads; a sweep's
# carried state (carry.py, ~49 MB for 60 HalfCheetah runs) plus the wheels (11 MB) leave no room for them.
#   bash experiments/gpu_throughput/box_tree.sh slim   # before the device call: only what the box runs (~1.1 MB)
#   bash experiments/gpu_throughput/box_tree.sh full   # after it: every file back
#   bash experiments/gpu_throughput/box_tree.sh box    # on the box (sweep_box.sh does it): git sees what the dev side's does
# `slim` is a git sparse checkout: the other files leave the working tree but stay tracked (git status shows no
# deletions; nothing is lost); `full` (git sparse-checkout disable) brings them back.
set -eu
cd "$(git rev-parse --show-toplevel)"
slim() {
  git sparse-checkout set --no-cone '/*' '!/experiments/*' '/experiments/box_install.sh' \
    '/experiments/gpu_throughput/*.py' '/experiments/gpu_throughput/*.sh' '/experiments/cuda_eager/' \
    '/experiments/baseline/throughput.py'
}
case "${1:-}" in
  slim)
    slim
    echo "slim tree: $(git ls-files -t | grep -c '^H') tracked files in the working tree," \
      "$(git ls-files -t | grep '^H' | cut -c3- | xargs du -cb 2>/dev/null | tail -1 | cut -f1) bytes" ;;
  box)  # on the box (sweep_box.sh): a slim tree arrives without its sparse-checkout marks, so the box's git would
    # call the files slim left out deleted and every run.json "-dirty" with them. If tracked files are missing,
    # re-apply slim's patterns (that marks them, restores nothing and keeps every change inside the slim set:
    # a modified or deleted file there still shows), then say what git sees.
    if [ -n "$(git ls-files --deleted | head -1)" ]; then slim; fi
    echo "git: $(git rev-parse --short HEAD), $(git status --porcelain | wc -l) changed path(s)" ;;
  full)
    git sparse-checkout disable
    echo "full tree: $(git ls-files | wc -l) tracked files" ;;
  *) echo "usage: box_tree.sh slim|full|box (got '${1:-}')" >&2; exit 2 ;;
esac
