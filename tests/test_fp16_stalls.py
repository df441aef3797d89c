"""experiments/mujoco_gelu_amp/fp16_stalls.py: per loss-scaled run, the update whose loss scale fell below 2**-127
(where 1/scale overflows float32), the steps skipped in it and before it, and the stalled updates; runs without a
loss scale are left out. Reads metrics.jsonl and run.json only."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("fp16_stalls", ROOT / "experiments/mujoco_gelu_amp/fp16_stalls.py")
fp16_stalls = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fp16_stalls)
N_MB, EPOCHS = 4, 2  # 8 attempted steps per update


def _run(sweep: Path, cell: str, seed: int, scales, skipped, scaled: bool = True, norms=None) -> None:
    d = sweep / f"halfcheetah-{cell}" / f"seed={seed}"
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"status": "completed", "config": {"ppo": {"num_minibatches": N_MB}}}))
    total, lines = 0, []
    for u, (scale, skip) in enumerate(zip(scales, skipped), start=1):
        total += skip
        row = {"update": u, "epochs": EPOCHS, "nonfinite_grad_steps": total, "policy_loss": 0.01, "value_loss": 0.002}
        if scaled:
            row["loss_scale"] = scale
        if norms is not None:
            row["grad_norm"] = norms[u - 1]  # as metrics.jsonl writes them: non-finite values as strings
        lines.append(json.dumps(row))
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_a_collapse_is_found_with_the_steps_skipped_before_and_in_it(tmp_path, capsys):
    sweep = tmp_path / "s"
    # seed 1: probing skips (1, then 2), then the scale collapses in update 4 (7 of 8 skipped) and stays 0
    # (its mean norms: inf in the probing updates, NaN from the collapse on)
    _run(sweep, "exact-fp16", 1, [8192.0, 4096.0, 2048.0, 0.0, 0.0], [1, 1, 2, 7, 8],
         norms=["Infinity", "Infinity", "Infinity", "NaN", "NaN"])
    _run(sweep, "exact-fp16", 2, [65536.0, 32768.0, 2.0 ** -126, 2.0 ** -126], [0, 1, 3, 0],  # above the floor
         norms=[5.0, "Infinity", "NaN", 4.0])
    _run(sweep, "exact-fp32", 1, [None] * 3, [0, 0, 0], scaled=False)
    rows = [fp16_stalls.run_row(p) for p in sorted((sweep / "halfcheetah-exact-fp16").iterdir())]
    assert rows[0] == {"run": "halfcheetah-exact-fp16/seed=1", "collapse": 4, "scale_before": 2048.0,
                       "skipped_then": 7, "most_skipped_before": 2, "losses_finite_then": True, "stalled_updates": 1,
                       "inf_norm_updates": 3, "first_nan_norm": 4}
    assert rows[1]["collapse"] is None and rows[1]["most_skipped_before"] == 3 and rows[1]["stalled_updates"] == 0
    assert rows[1]["inf_norm_updates"] == 1 and rows[1]["first_nan_norm"] == 3
    assert fp16_stalls.run_row(sweep / "halfcheetah-exact-fp32" / "seed=1") is None
    out = tmp_path / "stalls.md"
    assert fp16_stalls.main([str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 of 2 loss-scaled runs had their scale collapse" in printed and "skipped 7-7 steps" in printed
    assert "at most 3 in any other update" in printed and "exact-fp32" not in printed
    assert "2 runs had updates with an inf mean gradient norm (4 updates); 2 had one with a NaN mean norm, 1 of them " \
           "first in their collapse update." in printed
    assert out.read_text().endswith(printed)


def test_no_runs_is_one_line_and_exit_2(tmp_path, capsys):
    assert fp16_stalls.main([str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no runs in" in err


def test_a_trace_adds_each_runs_first_non_finite_op(tmp_path, capsys):
    sweep = tmp_path / "s"
    _run(sweep, "exact-fp16", 1, [8192.0, 0.0], [1, 8])
    _run(sweep, "exact-fp16", 2, [8192.0, 4096.0], [1, 1])
    run_keys = {"env_id": "HalfCheetah-v5", "gelu": "exact", "precision": "fp16"}
    for seed in (1, 2):
        p = sweep / "halfcheetah-exact-fp16" / f"seed={seed}" / "run.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), **run_keys, "seed": seed}))
    first = lambda node, path: {"node": node, "path": path}  # noqa: E731
    records = [{**run_keys, "seed": 1, "update": 2, "loss_scale": 0.5,  # seed 1 in two launches (pids 77, 91)
                "pid": 77, "trace": {"first": first("ExpBackward0", ["SumBackward0", "MulBackward0", "ExpBackward0"])}},
               {**run_keys, "seed": 1, "update": 2, "loss_scale": 0.25,
                "pid": 91, "trace": {"first": first("MulBackward0", ["SumBackward0", "MulBackward0"])}},
               {**run_keys, "gelu": "tanh", "seed": 2, "update": 2, "loss_scale": 0.5,  # tanh's seed 2: not this run
                "trace": {"first": first("AddmmBackward0", ["AddmmBackward0"])}}]
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert fp16_stalls.main([str(sweep), "--trace", str(trace)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| halfcheetah")]
    assert rows[0].endswith("| update 2, scale 0.5: ExpBackward0 (ExpBackward0 <- MulBackward0 <- SumBackward0); "
                            "later also MulBackward0 [2 traced] |")
    assert rows[1].endswith("| 0 | 0 | - | - |")
    assert fp16_stalls.main([str(sweep), "--trace", str(tmp_path / "none.jsonl")]) == 2
    assert "--trace" in capsys.readouterr().err
    # the kept runs: seed 1 as the rerun through its 2 updates (wall clock aside), seed 2 different from update 2
    kept = tmp_path / "kept"
    _run(kept, "exact-fp16", 1, [8192.0, 0.0, 0.0], [1, 8, 8])
    _run(kept, "exact-fp16", 2, [8192.0, 2048.0], [1, 1])
    rows = (kept / "halfcheetah-exact-fp16" / "seed=1" / "metrics.jsonl").read_text().splitlines()
    (kept / "halfcheetah-exact-fp16" / "seed=1" / "metrics.jsonl").write_text(
        "".join(json.dumps({**json.loads(r), "time_update": 1.5}) + "\n" for r in rows))
    assert fp16_stalls.main([str(sweep), "--trace", str(trace), "--kept", str(kept)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| halfcheetah")]
    assert rows[0].endswith("[2 traced] | yes (updates 1-2) |") and rows[1].endswith("| - | no: from update 2 |")
    assert fp16_stalls.main([str(sweep), "--kept", str(kept)]) == 0  # without a trace: the comparison alone
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| halfcheetah")]
    assert rows[0].endswith("| yes (updates 1-2) |") and rows[1].endswith("| no: from update 2 |")
    assert fp16_stalls.main([str(sweep), "--kept", str(tmp_path / "none")]) == 2 and "--kept" in capsys.readouterr().err
    # a record with the whole step recomputed (nonfinite.step_gradients): what it found goes into the column
    records[0]["trace"]["first"] = None
    records[0]["step_gradients"] = {"eager": {"grad_norm": 6.25, "grad_norm_f64": 6.25, "nonfinite": {}},
                                    "step": {"nonfinite": {"trunk.seed.0.weight": 12}}}
    records[0].update(policy_loss=0.0125, step_stats={"policy_loss": 0.0125, "grad_norm": float("nan")})
    trace.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert fp16_stalls.main([str(sweep), "--trace", str(trace)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| halfcheetah")]
    assert rows[0].endswith("| update 2, scale 0.5: none found; eager step: norm 6.25, non-finite nowhere; the run's "
                            "step: policy loss 0.0125 (eager 0.0125), norm nan, non-finite trunk.seed.0.weight (12); "
                            "later also MulBackward0 [2 traced] |")
