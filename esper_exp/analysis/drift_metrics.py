"""Drift metrics: how far two runs' policies are apart, and how large a run's numerics make each applied update.
Files in, numbers out; no verdicts (drift_verdicts.py) and no writing (drift_report.py).

Distances are bounded or defined at zero, with no floor constant anywhere: identical policies give exactly 0.

- ``tv``: mean over the states of the total variation between the two action distributions, in [0, 1]
  (Categorical: 1/2 sum |p - q|; diagonal Gaussian: E_{x~P}[max(0, 1 - q(x)/p(x))] over 512 fixed
  standard-normal draws per state shared by every pair, which is exactly 0 when P = Q);
- ``disagreement``: fraction of states whose greedy actions differ (Categorical only), in [0, 1];
- ``out_rms``: RMS difference of the policy outputs: centred logits (softmax-invariant) for Categorical, the
  mean in units of the reference's std for Gaussian;
- ``value_rms``, ``param_rel`` (count-sketch distance / ||theta_A||), ``return_diff`` (windowed episodic return,
  A minus B), as before.

RECORD SCHEMA the trainer writes (version 2; what esper-drift and esper-report read)
======================================================================================

``snapshots.jsonl`` in each run directory, one JSON object per (snapshot update, state set)::

    {"schema": 2,
     "update": int,                 # PPO updates completed when the snapshot was taken (0 = at init)
     "global_step": int,
     "states": {"kind": "on_policy" | "probe_set",
                "source": str,      # whose observations: "<cell>/seed=<k>" (e.g. "exact/fp32/seed=3") or "self"
                "sha": str,         # hash of the raw observations: two runs are compared on equal sha only
                "n": int},          # number of states N
     "eval": {"gelu": "exact", "precision": "fp32"},   # numerics of this evaluation: must be fp32, no autocast
     "discrete": bool,
     "actor_out": [[float] * A] * N,  # logits (discrete) or action means (continuous)
     "logstd": [float] * A,           # continuous only (state-independent log std)
     "value": [float] * N,
     "params": {"sketch": [float] * 1024, "norm": float, "numel": int}}   # as today (probe.param_sketch)

On-policy states: a held-out sample of N observations (N = drift.probe_set_size, raw, before normalisation; the
run's current normalisation applied for the forward) from the most recent rollout of the *reference* run of the
same seed (``source`` = "<reference cell>/seed=<k>"), drawn with a dedicated RNG so training is untouched; every
cell of that seed evaluates its policy on the same states, so equal ``sha`` at equal ``update`` pairs them.

How a run gets the reference's states (esper_exp/probe.py, esper_exp/drift_eval.py): at every snapshot each run
draws N raw observations from its own most recent rollout (update 0: from its first rollout, which the initial
policy collected) with ``default_rng([SNAPSHOT_SEED, seed, update])``, evaluates itself on them (``source`` =
"self") and saves its weights, observation statistics and those states in ``<run dir>/drift/snapshot-<update>.pt``.
After the sweep, ``python -m esper_exp.drift_eval SWEEP`` evaluates every run's saved weights on the reference run's
states of the same seed and update and appends those records (``source`` = "<reference cell>/seed=<k>"); a run
whose own states are the reference's (the reference itself, its duplicate, a cell whose rollouts have not moved
away from the reference's yet) already holds that (update, sha). Every record is evaluated with exact GELU in fp32
for every cell: the distance then measures how far the *parameters* have moved apart (what compounds), is exactly 0
for equal parameters (update 0), and leaves the direct per-forward effect of GELU and dtype to the probe. A run may
hold records on several state sets; the analysis pairs on the reference's on-policy set when present, else on any
common sha.

``probe.jsonl`` in each run directory, one JSON object per probed update (the applied-update probe)::

    {"schema": 2,
     "update": int, "global_step": int,
     "steps": {                             # one entry per optimizer step of this update, E epochs x M minibatches
        "epoch": [int], "minibatch": [int],
        "applied_norm": [float],            # ||dtheta_run||: the step actually applied (after grad clipping, Adam,
                                            #   GradScaler unscale; 0 for a scaler-skipped step)
        "gelu_diff_norm": [float],          # ||dtheta_run - dtheta_otherGELU||: same parameters, Adam state,
                                            #   minibatch and dtype, the other GELU variant
        "dtype_diff_norm": [float | null],  # ||dtheta_run - dtheta_fp32||: same GELU, fp32 (null in fp32 runs)
        "noise_diff_norm": [float]}}        # ||dtheta(mb) - dtheta(mb')||: run numerics, same parameters and Adam
                                            #   state, mb and mb' two disjoint minibatches of this rollout
                                            #   (the sampling noise floor)

Each ``dtheta`` is the full flattened parameter step (actor and critic) computed from a copy of the optimizer
state, so the probe changes nothing. The ratio ``gelu_diff_norm / noise_diff_norm`` (and dtype) is what
drift_verdicts judges: numerics are negligible when its median is below 0.1 in every third of training.

Control cells (``drift.perturb``) are cells of their own, ``<cell>/perturb-<kind>``: ``ulp`` (one initial weight
moved by one ulp), ``persistent`` (a zero-mean perturbation of the GELU output of the tanh-vs-exact size at every
forward), ``duplicate`` (no perturbation: the determinism control, expected bitwise equal to its base cell).

Legacy files (written before schema 2, still read): snapshots with ``probe_sha`` on a random-policy probe set,
evaluated under the run's autocast (so bf16/fp16 distances include evaluation rounding, visible at update 0);
probe records with ``grad_rel_l2`` etc. (raw loss gradients on one minibatch against exact/fp32), summarised
descriptively only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import log_softmax

from esper_exp.runformat import read_jsonl

from .load import Run

SCHEMA = 2
METRICS = ("tv", "disagreement", "out_rms", "value_rms", "param_rel", "return_diff")
LEGACY_PROBE_KEYS = ("grad_rel_l2", "action_kl", "actor_out_max_abs", "value_max_abs", "actor_seed_max_abs")
GAUSS_DRAWS = 512  # Monte Carlo points per state for the Gaussian TV (the same fixed points for every pair)


def _gauss_draws(n: int, adim: int) -> np.ndarray:
    """Fixed standard-normal draws, shape (GAUSS_DRAWS, n, adim): common random numbers for every pair."""
    return np.random.default_rng(20261123).standard_normal((GAUSS_DRAWS, n, adim))


class DriftError(Exception):
    """Bad input: reported as one line, non-zero exit, no traceback."""


# --------------------------------------------------------------------------- files


def _snapshot(rec: dict) -> dict | None:
    if "update" not in rec or "actor_out" not in rec or "params" not in rec:
        return None
    legacy = rec.get("schema") != SCHEMA
    st = rec.get("states") or {}
    sha = st.get("sha") if not legacy else rec.get("probe_sha")
    return {"update": int(rec["update"]), "global_step": float(rec.get("global_step", 0)), "legacy": legacy,
            "sha": sha, "kind": st.get("kind", "probe_set"), "source": st.get("source"),
            "eval": rec.get("eval"), "discrete": bool(rec.get("discrete")),
            "out": np.asarray(rec["actor_out"], dtype=np.float64),
            "logstd": np.asarray(rec.get("logstd") or [], dtype=np.float64),
            "value": np.asarray(rec.get("value") or [], dtype=np.float64).reshape(-1),
            "sketch": np.asarray(rec["params"]["sketch"], dtype=np.float64),
            "norm": float(rec["params"]["norm"])}


def read_snapshots(run_dir) -> dict:
    """{(update, sha): snapshot} (a resumed run may repeat an update: the last record is kept)."""
    rows = read_jsonl(Path(run_dir) / "snapshots.jsonl")
    out = {}
    for r in rows:
        s = _snapshot(r)
        if s is not None:
            out[(s["update"], s["sha"])] = s
    return out


def read_probe(run_dir) -> tuple[list[dict], list[dict]]:
    """(schema-2 applied-update records, legacy gradient records), each sorted by update, last copy kept."""
    rows = read_jsonl(Path(run_dir) / "probe.jsonl")
    new, old = {}, {}
    for r in rows:
        if "update" not in r:
            continue
        (new if r.get("schema") == SCHEMA and "steps" in r else old)[int(r["update"])] = r
    return [new[u] for u in sorted(new)], [old[u] for u in sorted(old)]


def has_drift_files(run: Run) -> bool:
    return (run.path / "snapshots.jsonl").exists() or (run.path / "probe.jsonl").exists()


# --------------------------------------------------------------------------- distances


def action_distances(a: dict, b: dict, discrete: bool) -> dict:
    """tv, disagreement, out_rms between two snapshots' policies on the same states (a, b: _snapshot dicts)."""
    if discrete:
        la, lb = log_softmax(a["out"], axis=-1), log_softmax(b["out"], axis=-1)
        tv = 0.5 * np.abs(np.exp(la) - np.exp(lb)).sum(-1)
        dis = (a["out"].argmax(-1) != b["out"].argmax(-1)).astype(float)
        ca = a["out"] - a["out"].mean(-1, keepdims=True)
        cb = b["out"] - b["out"].mean(-1, keepdims=True)
        rms = float(np.sqrt(((ca - cb) ** 2).mean()))
        return {"tv": float(tv.mean()), "disagreement": float(dis.mean()), "out_rms": rms}
    mu_a, mu_b = a["out"], b["out"]  # (N, A)
    sb = np.exp(b["logstd"])  # (A,)
    z = _gauss_draws(*mu_a.shape)  # (M, N, A): independent per state and action dim, fixed across pairs
    # x = mu_a + sigma_a z; u = (x - mu_b) / sigma_b, written so that u == z exactly when P == Q
    u = (mu_a - mu_b)[None] / sb + np.exp(a["logstd"] - b["logstd"]) * z
    log_ratio = (-0.5 * u ** 2 + 0.5 * z ** 2 - (b["logstd"] - a["logstd"])).sum(-1)  # log q(x) - log p(x)
    tv = np.maximum(0.0, 1.0 - np.exp(np.minimum(log_ratio, 50.0))).mean(0)  # (N,)
    rms = float(np.sqrt((((mu_a - mu_b) / sb) ** 2).mean()))
    return {"tv": float(tv.mean()), "disagreement": float("nan"), "out_rms": rms}


def _window_mean(steps: np.ndarray, rets: np.ndarray, g: float, w: float) -> float:
    lo, hi = np.searchsorted(steps, g - w, side="right"), np.searchsorted(steps, g, side="right")
    return float(rets[lo:hi].mean()) if hi > lo else float("nan")


def _pick_sha(sa: dict, sb: dict, prefer_source: str | None) -> dict:
    """Per update, the state set both runs evaluated on: the reference's on-policy set if present, else any."""
    by_u: dict = {}
    for (u, sha), s in sa.items():
        if (u, sha) in sb:
            by_u.setdefault(u, []).append(s)
    out = {}
    for u, ss in by_u.items():
        ss.sort(key=lambda s: (s["kind"] != "on_policy", s["source"] != prefer_source, str(s["sha"])))
        out[u] = ss[0]["sha"]
    return out


def pair_divergence(a: Run, b: Run, return_window: float | None = None, cache: dict | None = None,
                    prefer_source: str | None = None) -> dict:
    """Distances of run A from run B at every update both snapshotted on a common state set. Raises DriftError."""
    cache = {} if cache is None else cache
    snaps = []
    for r in (a, b):
        if r.path not in cache:
            cache[r.path] = read_snapshots(r.path)
        if not cache[r.path]:
            raise DriftError(f"no snapshots in {r.path} (train with drift.snapshot_every=M)")
        snaps.append(cache[r.path])
    sa, sb = snaps
    chosen = _pick_sha(sa, sb, prefer_source)
    if not chosen:
        ua, ub = sorted({u for u, _ in sa}), sorted({u for u, _ in sb})
        if set(ua) & set(ub):
            raise DriftError(f"probe sets differ between {a.path} and {b.path} (no common state-set sha at any "
                             f"common update): pair runs of the same env and seed")
        raise DriftError(f"no common snapshot update between {a.path} ({ua[:5]}...) and {b.path} ({ub[:5]}...)")
    unpaired = sorted({u for u, _ in sa} & {u for u, _ in sb} - set(chosen))
    if unpaired:
        raise DriftError(f"{a.path} and {b.path} share no state set at updates {unpaired[:5]}"
                         f"{'...' if len(unpaired) > 5 else ''} (schema 2: run `python -m esper_exp.drift_eval "
                         f"SWEEP_DIR` first, which evaluates every run on its seed's reference states)")
    common = sorted(chosen)
    steps = [sa[(u, chosen[u])]["global_step"] for u in common]
    if return_window is None:
        gaps = np.diff(steps)
        return_window = float(np.median(gaps)) if gaps.size and np.median(gaps) > 0 else max(steps[-1], 1.0)
    rows, identical, legacy = [], True, False
    for u in common:
        A, B = sa[(u, chosen[u])], sb[(u, chosen[u])]
        if A["discrete"] != B["discrete"]:
            raise DriftError("one run has a discrete policy and the other a continuous one")
        if A["out"].shape != B["out"].shape or A["value"].shape != B["value"].shape:
            raise DriftError(f"snapshot shapes differ at update {u}")
        legacy |= A["legacy"] or B["legacy"]
        same = (all(np.array_equal(A[k], B[k]) for k in ("out", "value", "logstd", "sketch"))
                and A["norm"] == B["norm"])
        identical &= same
        d = {"tv": 0.0, "disagreement": 0.0 if A["discrete"] else float("nan"), "out_rms": 0.0} if same \
            else action_distances(A, B, A["discrete"])
        dv = A["value"] - B["value"]
        ra = _window_mean(a.episodes_step, a.episodes_return, A["global_step"], return_window)
        rb = _window_mean(b.episodes_step, b.episodes_return, A["global_step"], return_window)
        rows.append({"update": u, "global_step": A["global_step"], "identical": same, "states": A["kind"],
                     **d, "value_rms": float(np.sqrt((dv ** 2).mean())) if dv.size else float("nan"),
                     "param_rel": float(np.linalg.norm(A["sketch"] - B["sketch"]) / A["norm"]) if A["norm"]
                     else float("nan"), "return_a": ra, "return_b": rb, "return_diff": ra - rb})
    episodes_equal = (np.array_equal(a.episodes_step, b.episodes_step)
                      and np.array_equal(a.episodes_return, b.episodes_return))
    first = next((r["update"] for r in rows if not r["identical"]), None)
    return {"a": str(a.path), "b": str(b.path), "cell_a": a.cell, "cell_b": b.cell, "seed_a": a.seed,
            "seed_b": b.seed, "env": a.env, "legacy": legacy,
            "determinism_control": a.env == b.env and a.seed == b.seed and (
                a.cell == b.cell or a.perturb == "duplicate" or b.perturb == "duplicate"),
            "identical": bool(identical and episodes_equal), "snapshots_identical": bool(identical),
            "episodes_identical": bool(episodes_equal), "first_divergent_update": first,
            "return_window": return_window, "rows": rows}


def pair_verdict(p: dict) -> str:
    if p["identical"]:
        s = "IDENTICAL: every snapshot (policy outputs, values, parameter sketch) and every episode is bitwise equal"
        return s + (" (determinism control passed)" if p["determinism_control"] else "")
    where = (f"snapshots first differ at update {p['first_divergent_update']}"
             if p["first_divergent_update"] is not None else "snapshots equal but episodes differ")
    if p["determinism_control"]:
        return (f"!!! DETERMINISM CONTROL FAILED !!! {p['a']} and {p['b']} are the same computation "
                f"({p['cell_a']}, seed {p['seed_a']}) but differ: {where}. Divergence between cells cannot be "
                f"trusted to come from numerics alone on this machine.")
    return f"differ: {where}"


# --------------------------------------------------------------------------- applied-update probe


def probe_ratios(records: list[dict]) -> dict:
    """Per optimizer step of the probed updates: update, and the ratios of the numerics' effect on the applied
    step to the sampling noise floor. {"update": (S,), "gelu": (S,), "dtype": (S,), "rel_gelu": (S,)}."""
    up, g, d, rel = [], [], [], []
    for r in records:
        st = r["steps"]
        noise = np.asarray(st["noise_diff_norm"], dtype=np.float64)
        gd = np.asarray(st["gelu_diff_norm"], dtype=np.float64)
        dd = np.asarray([np.nan if v is None else v for v in (st.get("dtype_diff_norm") or [None] * noise.size)],
                        dtype=np.float64)
        ap = np.asarray(st.get("applied_norm") or [np.nan] * noise.size, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            g.append(np.where(noise > 0, gd / noise, np.where(gd == 0, 0.0, np.inf)))
            d.append(np.where(noise > 0, dd / noise, np.where(dd == 0, 0.0, np.inf)))
            rel.append(np.where(ap > 0, gd / ap, np.nan))
        up.append(np.full(noise.size, int(r["update"])))
    return {k: np.concatenate(v) if v else np.array([]) for k, v in
            (("update", up), ("gelu", g), ("dtype", d), ("rel_gelu", rel))}


def total_updates(run: Run) -> int | None:
    """Planned PPO updates of a run, from its stored config (None when unknown)."""
    cfg = run.info.get("config") or {}
    try:
        return int(cfg["ppo"]["total_timesteps"]) // (int(cfg["env"]["num_envs"]) * int(cfg["ppo"]["num_steps"]))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
