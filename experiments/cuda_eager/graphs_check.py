"""Correctness of the CUDA-graph path on the GPU box (issue 12 item 2; run by graphs_box.sh), one JSON out.

1. captured vs the same code uncaptured (``ppo.graph_capture = False``): K = 10 HalfCheetah fp32 / bf16 / fp16 and
   CartPole fp32, 3 updates through ``run_update``: max relative difference of every metric (expected 0 or rounding);
2. graph update vs the eager (host-sync, fused-Adam) update on the SAME rollouts (a graphed PPO collects, an eager
   PPO of the same seeds gets a copy): max relative differences of the update's stats and the parameters after it,
   2 updates, fp32 and bf16 (the two runs' rollouts would differ otherwise: a graphed run pre-draws its noise);
3. a non-finite member under graphs: member 3 of K = 10 gets a NaN critic bias after update 1; update 2 must fail it
   alone with its reason, update 3 runs the other 9.

    python experiments/cuda_eager/graphs_check.py OUT.json
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback

import torch
from hydra import compose, initialize_config_dir

from esper_exp.ppo import compute_gae
from esper_exp.runtime import prepare
from esper_exp.train import CONFIG_DIR, build_ppo

DEV = torch.device("cuda:0")
NOOP = lambda *a: None  # noqa: E731


def build(env, precision, K, graphs=True, capture=True):
    os.environ["ESPER_CUDA_GRAPHS"] = "1" if graphs else "0"
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"env={env}", f"precision={precision}", "device=cuda",
                                          "tracking.wandb.mode=disabled", "tracking.progress=off"])
    prepare(1, DEV, True, 1)
    ppo = build_ppo(cfg, list(range(1, K + 1)), DEV)[0]
    assert ppo.cuda_graphs == graphs
    ppo.graph_capture = capture
    return ppo


def rel(a: float, b: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)):
        return 0.0 if (math.isnan(a) and math.isnan(b)) or a == b else float("inf")
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def records_diff(ra, rb) -> dict:
    out = {}
    for k, rec in ra.records.items():
        for key, v in rec.items():
            if key.startswith("time_") or not isinstance(v, (int, float)):
                continue
            out[key] = max(out.get(key, 0.0), rel(float(v), float(rb.records[k][key])))
    return out


def captured_vs_uncaptured(env, precision, K=10, updates=3) -> dict:
    runs, walls = [], []
    for capture in (False, True):
        ppo = build(env, precision, K, capture=capture)
        t0 = time.perf_counter()
        runs.append([ppo.run_update(NOOP) for _ in range(updates)])
        walls.append(time.perf_counter() - t0)
        graphs = sorted(ppo._graphs)
        ppo.close()
    diffs = [records_diff(a, b) for a, b in zip(*runs)]
    worst = {key: max(d.get(key, 0.0) for d in diffs) for key in diffs[0]}
    return {"env": env, "precision": precision, "K": K, "updates": updates, "graphs": graphs,
            "failures": [sorted(r.failures) for r in runs[1]], "wall_s_uncaptured_vs_captured": walls,
            "max_rel_diff": max(worst.values()), "max_rel_diff_per_metric": worst,
            "loss_scale_last": [runs[1][-1].records[k].get("loss_scale") for k in (0, K - 1)],
            "skipped_steps_last": [runs[1][-1].records[k]["nonfinite_grad_steps"] for k in range(K)],
            "policy_loss_update1_member0": runs[1][0].records[0]["policy_loss"]}


def graph_vs_eager_update(env, precision, K=10, updates=2) -> dict:
    g, e = build(env, precision, K, graphs=True), build(env, precision, K, graphs=False)
    out = []
    for _ in range(updates):
        g.collect_rollout(NOOP, {"env": 0.0, "inference": 0.0})
        for f in ("obs", "actions", "logprobs", "rewards", "episode_ends", "values"):
            getattr(e.buf, f).copy_(getattr(g.buf, f))
        with torch.no_grad():
            last = e.policy.value(g.next_obs, e.numerics)
        adv, ret = compute_gae(e.buf.rewards, e.buf.values, e.buf.episode_ends, last, e.hp.gamma, e.hp.gae_lambda)
        se, fe = e.update(adv, ret)
        sg, fg = g.update(adv, ret)
        torch.cuda.synchronize()
        stats = {k: max(rel(a, b) for a, b in zip(se[k].tolist(), sg[k].tolist())) for k in se}
        d = (g.flat.data - e.flat.data).abs().max().item() / e.flat.data.abs().max().item()
        out.append({"max_rel_diff_stats": stats, "max_abs_param_diff_over_max_param": d,
                    "fail_at": [fe["at"].tolist(), fg["at"].tolist()],
                    "adam_steps": [e.optimizer.steps[0], int(g.optimizer.step_t[0].item())]})
    g.close(), e.close()
    return {"env": env, "precision": precision, "K": K, "updates": out}


def non_finite_member(env="halfcheetah", K=10) -> dict:
    ppo = build(env, "fp32", K)
    r1 = ppo.run_update(NOOP)
    with torch.no_grad():
        ppo.policy.critic_head.bias[3] = float("nan")
    ppo.flat.pull()
    r2 = ppo.run_update(NOOP)
    r3 = ppo.run_update(NOOP)
    finite = all(math.isfinite(v) for r in (r2, r3) for rec in r.records.values()
                 for key, v in rec.items() if key in ("policy_loss", "value_loss", "grad_norm"))
    ppo.close()
    return {"update1_failures": r1.failures, "update2_failures": r2.failures, "update2_members": sorted(r2.records),
            "update3_members": sorted(r3.records), "others_finite": finite,
            "ok": sorted(r2.failures) == [3] and sorted(r3.records) == [k for k in range(K) if k != 3] and finite}


def main() -> None:
    result = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
    checks = [("captured_hc_fp32", lambda: captured_vs_uncaptured("halfcheetah", "fp32")),
              ("nonfinite_member", non_finite_member),
              ("captured_cartpole_fp32", lambda: captured_vs_uncaptured("cartpole", "fp32")),
              ("captured_hc_bf16", lambda: captured_vs_uncaptured("halfcheetah", "bf16")),
              ("captured_hc_fp16", lambda: captured_vs_uncaptured("halfcheetah", "fp16")),
              ("graph_vs_eager_update_fp32", lambda: graph_vs_eager_update("halfcheetah", "fp32")),
              ("graph_vs_eager_update_bf16", lambda: graph_vs_eager_update("halfcheetah", "bf16"))]
    for name, fn in checks:
        t0 = time.perf_counter()
        try:
            result[name] = fn()
        except Exception:  # noqa: BLE001 - record and go on
            result[name] = {"error": traceback.format_exc()[-3000:]}
        result[name]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(name, json.dumps(result[name])[:600], flush=True)
        with open(sys.argv[1], "w") as f:
            json.dump(result, f, indent=1, default=str)


if __name__ == "__main__":
    main()
