"""A synthetic sweep in the primary study's shape, for a dress rehearsal of the final analysis (esper-report) without
the study's data: 3 envs x 4 cells x 40 seeds, 1M steps in 488 updates of 2,048 steps, the primary's stored rule
(configs/experiment/mujoco_gelu_amp.yaml), returns scaled to each env's anchors, no planted effect.
Run from the repository root:

    python experiments/mujoco_gelu_amp/operating/rehearsal_sweep.py /tmp/rehearsal/sweep
    esper-report /tmp/rehearsal/sweep --out /tmp/rehearsal/report --reps 20000 --seed 0
    esper-report --recompute /tmp/rehearsal/report
    bash experiments/mujoco_gelu_amp/analyse.sh /tmp/rehearsal/sweep /tmp/rehearsal/out   # the same, guarded
"""

import sys
import time
from pathlib import Path

from operating import ROOT, registered_rule  # this directory's operating.py (the script's own dir is on sys.path)

sys.path.insert(0, str(ROOT / "tests"))
import synthetic_runs as sr  # noqa: E402  (the trainer's on-disk format, as the analysis tests write it)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: rehearsal_sweep.py OUT_DIR (a new directory)", file=sys.stderr)
        return 2
    root = Path(argv[0])
    if root.exists():
        print(f"rehearsal_sweep.py: {root} exists: give a new directory", file=sys.stderr)
        return 2
    sr.STEPS_PER_UPDATE = 2048  # the study's num_steps x num_envs (1 env of 2,048 steps per update)
    rule = registered_rule()
    t = time.time()
    for env, a in rule["anchors"].items():
        span = a["reference"] - a["random"]
        for gelu in ("exact", "tanh"):
            for precision in ("fp32", "bf16"):
                for seed in range(1, 41):
                    # the sweep's own layout (<env>-<gelu>-<precision>/seed=<n>), which inventory.py and
                    # analyse.sh read; esper-report finds runs by their run.json wherever they are
                    run = root / f"{env}-{gelu}-{precision}" / f"seed={seed}"
                    sr.write_run(run, env=env, gelu=gelu,
                                 precision=precision, seed=seed, total_timesteps=1_000_000, cap=a["reference"],
                                 seed_sd=0.6 * span, noise_sd=0.1 * span, rule=rule)
    print(f"480 runs written to {root} in {time.time() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
