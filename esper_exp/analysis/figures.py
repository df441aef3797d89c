"""Figures for the report (matplotlib, Agg backend: files only, no display).

Cells stay distinguishable in greyscale print: precision sets the colour and the marker, the GELU
variant sets the line style (exact solid, tanh dashed), a compiled cell has hollow markers.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Okabe-Ito colours (colour-blind safe), distinct markers for print
_PREC = {"fp32": ("#0072B2", "o"), "bf16": ("#D55E00", "s"), "fp16": ("#009E73", "^")}
_EXTRA = [("#CC79A7", "D"), ("#E69F00", "v"), ("#56B4E9", "P"), ("#000000", "X")]
_GELU = {"exact": "-", "tanh": "--"}
_PERTURB = {"perturb-ulp": ("#555555", "X"), "perturb-large": ("#000000", "D")}
_EXTRA_LS = [":", "-.", (0, (5, 1, 1, 1))]

HEALTH_PANELS = [
    ("approx_kl", "approx. KL", "log"),
    ("clipfrac", "clip fraction", "linear"),
    ("explained_variance", "explained variance", "linear"),
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


def plot_paired(paired: dict, reference: str, path, metric: str = "final return") -> None:
    """paired: {env: {cell: {"diffs": array, "mean", "lo", "hi"}}}: one panel per env,
    one column per variant cell: each seed's (variant - reference), mean with 95% CI."""
    envs = list(paired)
    widths = [max(len(paired[e]), 1) for e in envs]
    fig, axes = plt.subplots(1, len(envs), figsize=(max(1.3 * sum(widths) + 1.5 * len(envs), 5), 4),
                             squeeze=False, gridspec_kw={"width_ratios": widths})
    rng = np.random.default_rng(0)  # jitter only
    for ax, env in zip(axes[0], envs):
        cells = list(paired[env])
        ax.axhline(0.0, color="0.3", linewidth=0.8, zorder=1)
        for j, cell in enumerate(cells):
            p = paired[env][cell]
            st = cell_style(cell)
            d = np.asarray(p["diffs"])
            if d.size:
                ax.boxplot([d], positions=[j], widths=0.5, showfliers=False,
                           medianprops={"color": "0.4"}, boxprops={"color": "0.6"},
                           whiskerprops={"color": "0.6"}, capprops={"color": "0.6"})
                ax.scatter(j + rng.uniform(-0.15, 0.15, d.size), d, s=18, marker=st["marker"],
                           facecolors=st["markerfacecolor"], edgecolors=st["color"], zorder=3, alpha=0.85)
            if np.isfinite(p["mean"]):
                lo, hi = p["lo"], p["hi"]
                yerr = None if not np.isfinite(lo) else [[p["mean"] - lo], [hi - p["mean"]]]
                ax.errorbar(j + 0.32, p["mean"], yerr=yerr, fmt="D", color="black", markersize=5,
                            capsize=3, zorder=4)
        ax.set_xticks(range(len(cells)))
        ax.set_xticklabels([f"{c}\n(n={len(paired[env][c]['diffs'])})" for c in cells], fontsize=8)
        ax.set_xlim(-0.6, len(cells) - 0.4)
        ax.set_title(f"{env}: {metric}, variant − {reference}\n(seeds paired; ◆ mean, 95% CI)",
                     fontsize=10)
        ax.set_ylabel(f"Δ {metric}")
        ax.grid(True, axis="y", alpha=0.3, linewidth=0.5)
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


DRIFT_PROBE_PANELS = [
    ("grad_rel_l2", "gradient: |g_run - g_ref| / |g_ref|"),
    ("one_minus_grad_cos", "gradient: 1 - cos(g_run, g_ref)"),
    ("action_kl", "action KL(ref || run), minibatch mean"),
    ("actor_out_max_abs", "actor output max |run - ref|"),
    ("actor_seed_max_abs", "actor seed-MLP output max |run - ref|"),
    ("value_max_abs", "value max |run - ref|"),
]

DIVERGENCE_PANELS = [
    ("kl", "KL(run || reference) on the probe set", "log"),
    ("param_rel", "relative parameter distance", "log"),
    ("value_rms", "value prediction RMS difference", "log"),
    ("return_diff", "return difference (run - reference), windowed", "linear"),
]


def _positive(a):
    a = np.asarray(a, dtype=np.float64)
    return np.where(a > 0, a, np.nan)


def plot_drift_probe(env: str, probe: dict, path) -> None:
    """probe: {cell: {"updates", key: {"median", "q25", "q75"}}}: the instantaneous run-vs-reference
    numerics difference over training, median over seeds with IQR band, log y."""
    panels = [p for p in DRIFT_PROBE_PANELS if any(p[0] in c for c in probe.values())]
    ncol = 3
    nrow = max((len(panels) + ncol - 1) // ncol, 1)
    fig, axes = plt.subplots(nrow, ncol, figsize=(13, 3.1 * nrow + 0.7), squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels):
        for i, (cell, c) in enumerate(probe.items()):
            if key not in c or not np.isfinite(_positive(c[key]["median"])).any():
                continue  # all zero (reference numerics against themselves): nothing on a log axis
            st = cell_style(cell)
            u = c["updates"]
            ax.fill_between(u, _positive(c[key]["q25"]), _positive(c[key]["q75"]), color=st["color"],
                            alpha=0.12, linewidth=0)
            ax.plot(u, _positive(c[key]["median"]), label=f"{cell} (n={c['n']})", linewidth=1.3,
                    markevery=_markevery(len(u), i), markersize=4, **st)
        ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("update", fontsize=8)
        ax.grid(True, alpha=0.3, linewidth=0.5)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, labels = _legend_entries(axes.flat)
    fig.suptitle(f"{env}: shadow probe, run numerics vs reference (exact GELU, fp32) at the same parameters "
                 f"and minibatch\n(median over seeds, IQR band; cells identical to the reference are not drawn)",
                 fontsize=10)
    if labels:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    else:
        fig.text(0.5, 0.02, "every cell's numerics equal the reference's: nothing to draw on log axes",
                 ha="center", fontsize=9)
    fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    fig.suptitle(f"{env}: divergence from the reference run of the same seed (median over seeds, 95% "
                 f"bootstrap band; exact zeros not drawn on log axes)", fontsize=10)
    if labels:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.75 / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
