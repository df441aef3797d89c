"""Figures for the report (matplotlib, Agg backend: files only, no display).

Cells stay distinguishable in greyscale print: precision sets the colour and the marker, the GELU
variant sets the line style (exact solid, tanh dashed), a compiled cell has hollow markers.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

# Okabe-Ito colours (colour-blind safe), distinct markers for print
_PREC = {"fp32": ("#0072B2", "o"), "bf16": ("#D55E00", "s"), "fp16": ("#009E73", "^")}
_EXTRA = [("#CC79A7", "D"), ("#E69F00", "v"), ("#56B4E9", "P"), ("#000000", "X")]
_GELU = {"exact": "-", "tanh": "--"}
_PERTURB = {"perturb-ulp": ("#555555", "X"), "perturb-persistent": ("#888888", "P"), "perturb-large": ("#000000", "D"),
            "perturb-duplicate": ("#BBBBBB", "o")}
_EXTRA_LS = [":", "-.", (0, (5, 1, 1, 1))]

HEALTH_PANELS = [
    ("approx_kl", "approx. KL", "log"),
    ("clipfrac", "clip fraction", "linear"),
    ("explained_variance", "explained variance", "linear"),
    ("value_loss", "value loss", "log"),
    ("grad_norm", "gradient norm (pre-clip)", "log"),
    ("loss_scale", "fp16 loss scale (lowest seed)", "log"),
    ("nonfinite_grad_steps", "skipped non-finite steps, cumulative (worst seed)", "linear"),
]


def cell_style(cell: str) -> dict:
    parts = cell.split("/")
    gelu, prec = parts[0], parts[1] if len(parts) > 1 else ""
    tags = parts[2:]
    compiled = "compiled" in tags
    perturb = next((t for t in tags if t.startswith("perturb-")), None)
    colour, marker = _PREC.get(prec) or _EXTRA[sum(map(ord, prec)) % len(_EXTRA)]
    ls = _GELU.get(gelu) or _EXTRA_LS[sum(map(ord, gelu)) % len(_EXTRA_LS)]
    if perturb:  # noise-floor controls: grey/black, dotted, their own marker
        colour, marker = _PERTURB.get(perturb, ("#000000", "X"))
        ls = ":"
    return {"color": colour, "marker": marker, "linestyle": ls,
            "markerfacecolor": "white" if compiled else colour, "markeredgecolor": colour}


def _markevery(n: int, i: int, k: int = 8):
    """Markers every n/k points, offset per cell so they do not sit on top of each other."""
    step = max(n // k, 1)
    return slice((i * step) // 6 % step, None, step)


def _legend_entries(axes):
    """Union of the labelled lines of all panels (each env may hold different cells)."""
    seen = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    return list(seen.values()), list(seen.keys())


def _fmt_steps(ax):
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3), useMathText=True)
    ax.grid(True, alpha=0.3, linewidth=0.5)


def plot_curves(curves: dict, path, title_suffix: str = "") -> None:
    """curves: {env: {"grid": steps, "cells": {cell: {"iqm", "lo", "hi", "n"}}}}."""
    envs = list(curves)
    fig, axes = plt.subplots(1, len(envs), figsize=(5.6 * len(envs), 4.2), squeeze=False)
    for ax, env in zip(axes[0], envs):
        grid = curves[env]["grid"]
        for i, (cell, c) in enumerate(curves[env]["cells"].items()):
            st = cell_style(cell)
            ax.fill_between(grid, c["lo"], c["hi"], color=st["color"], alpha=0.15, linewidth=0)
            ax.plot(grid, c["iqm"], label=f"{cell} (n={c['n']})", linewidth=1.6,
                    markevery=_markevery(len(grid), i), markersize=5, **st)
        ax.set_title(f"{env}: IQM episodic return, 95% CI{title_suffix}", fontsize=10)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("episodic return")
        _fmt_steps(ax)
        # per panel: each env may hold different cells and seed counts
        ax.legend(loc="lower right", fontsize=7, title="GELU/precision", title_fontsize=7,
                  framealpha=0.85, handlelength=3.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_health(env: str, health: dict, path) -> None:
    """health: {"grid": steps, "metrics": {key: {cell: {"median", "q25", "q75"}}},
    "nonfinite": {cell: [steps of non-finite updates]}}. Median over seeds with the IQR band."""
    panels = [p for p in HEALTH_PANELS if health["metrics"].get(p[0])]
    ncol = 3
    nrow = max((len(panels) + ncol - 1) // ncol, 1)
    fig, axes = plt.subplots(nrow, ncol, figsize=(13, 3.1 * nrow + 0.6), squeeze=False)
    grid = health["grid"]
    for ax, (key, label, scale) in zip(axes.flat, panels):
        for i, (cell, c) in enumerate(health["metrics"][key].items()):
            st = cell_style(cell)
            ax.fill_between(grid, c["q25"], c["q75"], color=st["color"], alpha=0.12, linewidth=0)
            ax.plot(grid, c["median"], label=cell, linewidth=1.3,
                    markevery=_markevery(len(grid), i), markersize=4, **st)
        for cell, steps in health.get("nonfinite", {}).items():
            if len(steps):
                ax.plot(steps, np.full(len(steps), 0.02), transform=ax.get_xaxis_transform(),
                        linestyle="none", marker="|", markersize=9, color=cell_style(cell)["color"])
        if scale == "log":
            ax.set_yscale("log", nonpositive="mask")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("environment steps", fontsize=8)
        _fmt_steps(ax)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, labels = _legend_entries(axes.flat)
    fig.suptitle(f"{env}: training health (median over seeds with IQR band unless noted; "
                 f"| on the axis = an update with a non-finite value)", fontsize=10)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)



DIVERGENCE_PANELS = [
    ("tv", "total variation between action distributions", "linear"),
    ("disagreement", "action disagreement (1 - agreement of greedy actions)", "linear"),
    ("out_rms", "policy output RMS difference (centred logits / mean in std units)", "linear"),
    ("return_diff", "return difference (run - reference), windowed", "linear"),
]


def _positive(a):
    a = np.asarray(a, dtype=np.float64)
    return np.where(a > 0, a, np.nan)


def plot_divergence(env: str, curves: dict, control: str | None, path) -> None:
    """curves: {cell: {"updates", "n", metric: {"median", "lo", "hi"}}}: each cell's divergence
    from the reference run of the same seed; the control cell drawn as a grey band."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.6), squeeze=False)
    for ax, (key, label, scale) in zip(axes.flat, DIVERGENCE_PANELS):
        tr = _positive if scale == "log" else (lambda a: np.asarray(a, dtype=np.float64))
        if control in curves:
            c = curves[control]
            ax.fill_between(c["updates"], tr(c[key]["lo"]), tr(c[key]["hi"]), color="0.55", alpha=0.35,
                            linewidth=0, label=f"noise floor: {control} (95% CI)")
            ax.plot(c["updates"], tr(c[key]["median"]), color="0.3", linewidth=1.2, linestyle=":")
        for i, (cell, c) in enumerate(curves.items()):
            if cell == control:
                continue
            st = cell_style(cell)
            ax.fill_between(c["updates"], tr(c[key]["lo"]), tr(c[key]["hi"]), color=st["color"], alpha=0.1,
                            linewidth=0)
            ax.plot(c["updates"], tr(c[key]["median"]), label=f"{cell} (n={c['n']})", linewidth=1.4,
                    markevery=_markevery(len(c["updates"]), i), markersize=4, **st)
        if scale == "log":
            ax.set_yscale("log")
        else:
            ax.axhline(0.0, color="0.3", linewidth=0.8)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("update", fontsize=8)
        ax.grid(True, alpha=0.3, linewidth=0.5)
    handles, labels = _legend_entries(axes.flat)
    fig.suptitle(f"{env}: distance from the reference run of the same seed (median over seeds, 95% "
                 f"bootstrap band of the median)", fontsize=10)
    if labels:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.75 / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- decision figures (issue 10)

_VERDICT_COLOUR = {"equivalent": "#009E73", "different": "#D55E00", "inconclusive": "#555555"}


def plot_forest(rows: list[dict], delta: float, path, title: str = "") -> None:
    """The decision figure: one line per contrast (scope: contrast), estimate with its 90% CI (thick) and the
    Holm-corrected CI (thin), the equivalence band (-delta, +delta) shaded, zero marked, verdict at the right."""
    n = len(rows)
    fig, ax = plt.subplots(figsize=(9.5, 0.42 * n + 1.6))
    ax.axvspan(-delta, delta, color="#009E73", alpha=0.12, linewidth=0, label=f"equivalence margin ±{delta:g}")
    ax.axvline(0.0, color="0.3", linewidth=0.8)
    lim = delta * 1.5
    for i, r in enumerate(rows):
        y = n - 1 - i
        col = _VERDICT_COLOUR.get(r["verdict"], "black")
        lo, hi = r.get("ci_holm", (np.nan, np.nan))
        if np.isfinite(lo):
            ax.plot([lo, hi], [y, y], color=col, linewidth=1.0)
            lim = max(lim, abs(lo), abs(hi))
        lo9, hi9 = r["ci90"]
        if np.isfinite(lo9):
            ax.plot([lo9, hi9], [y, y], color=col, linewidth=4.0, solid_capstyle="butt", alpha=0.8)
            lim = max(lim, abs(lo9), abs(hi9))
        if np.isfinite(r["estimate"]):
            ax.plot(r["estimate"], y, "o", color="black", markersize=4, zorder=3)
            lim = max(lim, abs(r["estimate"]))
    lim *= 1.1
    ax.set_xlim(-lim, lim)
    ax.set_yticks(range(n))
    ax.set_yticklabels([f"{r['scope']}: {r['contrast']} (n={r['n']})" for r in rows][::-1], fontsize=8)
    for i, r in enumerate(rows):
        ax.text(1.01, n - 1 - i, r["verdict"], transform=ax.get_yaxis_transform(), va="center", fontsize=8,
                color=_VERDICT_COLOUR.get(r["verdict"], "black"), fontweight="bold")
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel("IQM difference of the normalised endpoint (A - B)")
    ax.grid(True, axis="x", alpha=0.3, linewidth=0.5)
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.12 - 0.2 / max(n, 1)), fontsize=8, frameon=False)
    ax.set_title(title + "\n● estimate, thick: 90% CI (TOST), thin: Holm-corrected CI", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_difference_curves(env: str, grid, diffs: dict, delta: float, path) -> None:
    """diffs: {contrast name: {"point", "lo", "hi", "n"}} of normalised curves: pointwise IQM(A) - IQM(B) with
    its 90% band, the (-delta, +delta) band shaded. One panel per contrast."""
    names = list(diffs)
    ncol = min(len(names), 4)
    nrow = (len(names) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.8 * nrow + 0.6), squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names):
        d = diffs[name]
        ax.axhspan(-delta, delta, color="#009E73", alpha=0.12, linewidth=0)
        ax.axhline(0.0, color="0.3", linewidth=0.8)
        st = cell_style(name.split(" - ")[0])
        ax.fill_between(grid, d["lo"], d["hi"], color=st["color"], alpha=0.25, linewidth=0)
        ax.plot(grid, d["point"], color=st["color"], linestyle=st["linestyle"], linewidth=1.4)
        ax.set_title(f"{name} (n={d['n']})", fontsize=8)
        ax.set_xlabel("environment steps", fontsize=8)
        _fmt_steps(ax)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    axes[0][0].set_ylabel("Δ normalised return")
    fig.suptitle(f"{env}: pointwise IQM difference of normalised return curves, 90% band; "
                 f"green: ±{delta:g} (the margin applies to the endpoint, not to each point)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_profiles(profiles: dict, path, xlabel: str) -> None:
    """profiles: {env: {"taus", "cells": {cell: (point, lo, hi)}}}: rliable performance profiles."""
    envs = list(profiles)
    fig, axes = plt.subplots(1, len(envs), figsize=(5.4 * len(envs), 3.8), squeeze=False)
    for ax, env in zip(axes[0], envs):
        taus = profiles[env]["taus"]
        for i, (cell, (p, lo, hi)) in enumerate(profiles[env]["cells"].items()):
            st = cell_style(cell)
            ax.fill_between(taus, lo, hi, color=st["color"], alpha=0.12, linewidth=0)
            ax.plot(taus, p, label=cell, linewidth=1.4, markevery=_markevery(len(taus), i), markersize=4, **st)
        ax.set_title(f"{env}: performance profile, 95% CI", fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("fraction of runs with score > τ", fontsize=8)
        ax.grid(True, alpha=0.3, linewidth=0.5)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_drift_thirds(env: str, rows: list[dict], metric_label: str, path) -> None:
    """rows: per (cell, control, third): paired mean difference of the per-third mean distance to the reference,
    cell minus control, with its CI. One panel per control, thirds on the x axis, one line per cell."""
    controls = sorted({r["control"] for r in rows})
    fig, axes = plt.subplots(1, max(len(controls), 1), figsize=(5.6 * max(len(controls), 1), 3.8), squeeze=False)
    thirds = ["early", "middle", "late"]
    for ax, ctrl in zip(axes[0], controls):
        cells = [c for c in dict.fromkeys(r["cell"] for r in rows if r["control"] == ctrl)]
        ax.axhline(0.0, color="0.3", linewidth=0.8)
        for i, cell in enumerate(cells):
            st = cell_style(cell)
            rr = {r["third"]: r for r in rows if r["control"] == ctrl and r["cell"] == cell}
            x = np.arange(3) + (i - len(cells) / 2) * 0.06
            m = [rr.get(t, {}).get("diff", np.nan) for t in thirds]
            lo = [rr.get(t, {}).get("lo", np.nan) for t in thirds]
            hi = [rr.get(t, {}).get("hi", np.nan) for t in thirds]
            ax.errorbar(x, m, yerr=[np.subtract(m, lo), np.subtract(hi, m)], fmt=st["marker"], color=st["color"],
                        markerfacecolor=st["markerfacecolor"], capsize=3, label=cell, linestyle="none")
        ax.set_xticks(range(3))
        ax.set_xticklabels(thirds)
        ax.set_title(f"{env}: cell − control {ctrl}\n{metric_label}, mean over seeds, 95% CI", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3, linewidth=0.5)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_probe_ratio(env: str, curves: dict, threshold: float, path) -> None:
    """curves: {(cell, kind): {"updates", "median", "q25", "q75"}}: applied-update difference / sampling-noise
    floor over training (median over seeds, IQR band), log y, the negligibility threshold dashed."""
    kinds = sorted({k for _, k in curves})
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(6 * max(len(kinds), 1), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for i, ((cell, k), c) in enumerate(curves.items()):
            if k != kind:
                continue
            st = cell_style(cell)
            u = c["updates"]
            ax.fill_between(u, _positive(c["q25"]), _positive(c["q75"]), color=st["color"], alpha=0.12, linewidth=0)
            ax.plot(u, _positive(c["median"]), label=cell, linewidth=1.3, markevery=_markevery(len(u), i),
                    markersize=4, **st)
        ax.axhline(threshold, color="black", linestyle="--", linewidth=0.8, label=f"negligible below {threshold:g}")
        ax.set_yscale("log")
        ax.set_title(f"{env}: |Δθ_run − Δθ_{kind}| / |Δθ(mb) − Δθ(mb')|", fontsize=9)
        ax.set_xlabel("update", fontsize=8)
        ax.grid(True, alpha=0.3, linewidth=0.5)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
