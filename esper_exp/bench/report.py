"""JSON results and markdown tables for esper-bench."""

from __future__ import annotations

import json
import math
from pathlib import Path


def clean(obj):
    """JSON-safe copy: NaN/inf become None (strict JSON has neither), tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(clean(obj), indent=1, allow_nan=False) + "\n")


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-2:
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    return str(v)


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def gelu_tables(res: dict) -> str:
    out = ["### Seed MLP speed: tanh speed-up = time(exact) / time(tanh)", "",
           "Per-call time (host launch overhead included, as a PPO loop sees it); on CUDA also device time (launch overhead hidden, see timing.device_time_us).", ""]
    rows = [
        [s["blueprint"], s["dim"], s["rows"], s["precision"], s["mode"], s["pass_"], s["exact_us"], s["tanh_us"], s["tanh_speedup"], s["noise"],
         s.get("exact_device_us"), s.get("tanh_device_us"), s.get("device_speedup"), s.get("device_noise"), s["exact_tflops"], s["exact_frac_ceiling"]]
        for s in res["speedups"]
    ]
    out.append(table(["seed", "d", "rows", "prec", "mode", "pass", "exact us", "tanh us", "tanh speed-up", "noise (repeat spread)",
                      "exact dev us", "tanh dev us", "dev speed-up", "dev noise", "TFLOP/s (dev if CUDA)", "of matmul ceiling"], rows))
    bad = [r for r in res["records"] if "error" in r or "skipped" in r]
    if bad:
        out += ["", "Not measured:", ""]
        out += [f"- {r['blueprint']} d={r['dim']} rows={r['rows']} {r['precision']} {r['mode']} {r['pass_']} {r['gelu']}: {r.get('error') or r.get('skipped')}" for r in bad]
    return "\n".join(out)


def fusion_tables(res: dict) -> str:
    rows = []
    for r in res["records"]:
        if "forward" not in r:
            rows.append([r["gelu"], r["precision"], r["mode"], r.get("graph", "training"), r.get("error") or r.get("skipped"), "", "", "", ""])
            continue
        f, b = r["forward"], r["backward"]
        rows.append(
            [
                r["gelu"],
                r["precision"],
                r["mode"],
                r.get("graph", "training"),
                f["gelu"]["placement"],
                ", ".join(f["gelu"]["kernels"]),
                b["gelu_backward"]["placement"],
                ", ".join(b["gelu_backward"]["kernels"]),
                f"{f['n_generated']}+{f['n_extern']} / {b['n_generated']}+{b['n_extern']}",
            ]
        )
    return "### Inductor: where GELU runs in the compiled seed\n\n" + table(
        ["gelu", "prec", "mode", "graph", "fwd GELU", "fwd kernel", "bwd GELU'", "bwd kernel", "launches fwd / bwd (generated+extern)"], rows
    )


def numerics_tables(res: dict) -> str:
    out = []
    for key in ("grid", "policy"):
        g = res[f"gelu_{key}"]
        out += [f"### GELU vs float64, {g['name']} (x in [{g['x_min']:.3g}, {g['x_max']:.3g}])", ""]
        gap = g["gap_fp64"]
        out.append(
            f"tanh - exact in float64: value max {fmt(gap['value']['max_abs'])} at x={gap['value']['at_x']:.3g}, mean {fmt(gap['value']['mean_abs'])}; "
            f"derivative max {fmt(gap['grad']['max_abs'])} at x={gap['grad']['at_x']:.3g}, mean {fmt(gap['grad']['mean_abs'])}"
        )
        out.append("")
        rows = []
        for dt, r in g["per_dtype"].items():
            for v in ("exact", "tanh"):
                e = r[v]
                rows.append([dt, v, e["value_vs_own_fp64"]["max_abs"], e["value_vs_own_fp64"]["max_rel"], e["value_vs_exact_fp64"]["max_abs"], e["value_vs_exact_fp64"]["mean_abs"], e["grad_vs_own_fp64"]["max_abs"], e["grad_vs_exact_fp64"]["max_abs"], e["grad_vs_exact_fp64"]["mean_abs"]])
        out.append(table(["dtype", "variant", "value err vs own fp64 (max abs)", "(max rel)", "value err vs EXACT fp64 (max abs)", "(mean abs)", "grad err vs own fp64 (max abs)", "grad err vs EXACT fp64 (max abs)", "(mean abs)"], rows))
        out += ["", "Gap over the dtype's own rounding (ratio < 1: the approximation hides under rounding):", ""]
        out.append(table(["dtype", "quantity", "gap max", "rounding max", "ratio max", "gap mean", "rounding mean", "ratio mean"], [[r["dtype"], r["quantity"], r["gap_max_abs"], r["rounding_max_abs"], r["ratio_max"], r["gap_mean_abs"], r["rounding_mean_abs"], r["ratio_mean"]] for r in res["gap_vs_rounding"][key]]))
        out.append("")
    p = res["policy"]
    out.append(f"Probe policy: REINFORCE on torch CartPole, {p['iterations']} iterations, mean episode length {p['episode_length_first']:.1f} -> {p['episode_length_last']:.1f} (horizon {p['horizon']}).")
    for key, title in (("seed_trained_probe", "trained probe seed (d=64, 4x), its own inputs"), ("seed_random_perturbed", "random seed d=384 4x, fc2 perturbed from zero, N(0,1) inputs")):
        out += ["", f"### Seed MLP end to end, {title}: relative L2 deviations", ""]
        out.append(table(["precision", "quantity", "tanh vs exact (same precision)", "exact vs fp64 exact (rounding)", "gap / rounding", "tanh vs fp64 exact"], [[r["precision"], r["quantity"], r["gap_tanh_vs_exact"], r.get("rounding_exact_vs_fp64"), r.get("gap_over_rounding"), r.get("tanh_vs_fp64_exact")] for r in res[key]]))
    return "\n".join(out)


def blend_tables(res: dict) -> str:
    out = ["### blend_add speed", ""]
    rows = [[r["rows"], r["features"], r["numel"], f"{r['host']}/{r['seed']}", r["policy"], r.get("median_us"), r.get("spread"), r.get("device_us"), r.get("device_spread"), r.get("achieved_gbps"), r.get("roofline_us"), r.get("x_roofline"), r.get("error") or r.get("skipped") or ""] for r in res["speed"]]
    out.append(table(["rows", "d", "elements", "host/seed", "policy", "per-call us", "repeat spread", "device us (CUDA)", "device spread", "GB/s (min bytes)", "roofline us", "x roofline", "note"], rows))
    out += ["", "x roofline and GB/s use the device time where measured (CUDA), else the per-call time."]
    out += ["", "### blend_add correctness vs float64 (error in units of host eps x max|ref|)", ""]
    rows = [[r["host"], r["seed"], r["alpha"], r["policy"], r["ok"], r.get("max_err_eps"), r.get("endpoints_exact"), r.get("error", "")] for r in res["correctness"]]
    out.append(table(["host", "seed", "alpha", "policy", "runs", "max err (eps units)", "alpha 0/1 exact", "error"], rows))
    out += ["", "### Tensor.to when the dtype already matches", ""]
    out.append(table(["case", "returns self", "same data_ptr", "bytes allocated (CUDA)"], [[k, v["returns_self"], v["same_data_ptr"], v["bytes_allocated"]] for k, v in res["to_allocates"].items()]))
    a = res["autocast_lerp_mixed"]
    out += ["", f"Mixed fp32/bf16 torch.lerp under autocast raises: {fmt(a['raises'])} {a.get('error', '')}"]
    return "\n".join(out)
