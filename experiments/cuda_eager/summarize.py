"""Summarise box_run.sh's runs (issue 12, eager CUDA) into summary.json and summary.md: run statuses and what their
run.json records on CUDA, drift controls, bitwise repeatability of two identical CUDA groups, layout dependence
(seed 1 alone vs in groups of 10 and 60), and eager-CUDA vs one-CPU-core throughput.

    python experiments/cuda_eager/summarize.py ROOT OUT_DIR
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

WALL_CLOCK = {"sps", "time_env", "time_inference", "time_update"}
PINNED = {"matmul_allow_tf32": False, "cudnn_allow_tf32": False, "float32_matmul_precision": "highest",
          "allow_bf16_reduced_precision_reduction": False, "allow_fp16_reduced_precision_reduction": False,
          "cublas_workspace_config": ":4096:8"}


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def compare(a: Path, b: Path) -> dict:
    """metrics (wall-clock fields dropped) and episodes of two run dirs: identical, or the first difference."""
    ma, mb = jsonl(a / "metrics.jsonl"), jsonl(b / "metrics.jsonl")
    out: dict = {"a": str(a), "b": str(b), "updates": [len(ma), len(mb)]}
    n = min(len(ma), len(mb))
    for i in range(n):
        ra = {k: v for k, v in ma[i].items() if k not in WALL_CLOCK}
        rb = {k: v for k, v in mb[i].items() if k not in WALL_CLOCK}
        if ra != rb:
            key = next(k for k in ra if ra.get(k) != rb.get(k))
            out.update(identical=False, first_diff={"update": ra.get("update"), "key": key, "a": ra.get(key),
                                                    "b": rb.get(key)})
            return out
    ea, eb = jsonl(a / "episodes.jsonl"), jsonl(b / "episodes.jsonl")
    out["identical"] = n > 0 and len(ma) == len(mb) and ea == eb
    if not out["identical"]:
        out["first_diff"] = "episodes differ" if n else "no metrics"
    return out


def run_info(d: Path, root: Path) -> dict:
    info = json.loads((d / "run.json").read_text())
    metrics = jsonl(d / "metrics.jsonl")
    cuda = info.get("cuda")
    row = {"run": str(d.relative_to(root)), "status": info["status"], "reason": info["reason"],
           "device": info["device"], "precision": info["precision"], "env": info["env"], "seed": info["seed"],
           "group": [info["group"]["member_index"], info["group"]["size"]], "updates": len(metrics),
           "cuda_block": cuda is not None,
           "flags_as_pinned": cuda is not None and all(cuda["flags"].get(k) == v for k, v in PINNED.items()),
           "layout_recorded": cuda is not None and cuda.get("layout", {}).get("group_size") == info["group"]["size"],
           "perturbation": (info.get("perturbation") or {}).get("kind"),
           "probe_records": len(jsonl(d / "probe.jsonl")), "snapshot_records": len(jsonl(d / "snapshots.jsonl"))}
    if metrics:
        last = metrics[-1]
        row["last"] = {k: last.get(k) for k in ("update", "policy_loss", "value_loss", "grad_norm", "loss_scale")}
    return row


def main(root: str, out_dir: str) -> None:
    root, out = Path(root), Path(out_dir)
    runs = sorted(p.parent for p in root.rglob("run.json") if "attempts" not in p.parts)
    rows = [run_info(d, root) for d in runs]
    summary: dict = {"runs": rows}
    cuda_runs = [d for d in runs if json.loads((d / "run.json").read_text()).get("cuda")]
    if cuda_runs:
        summary["cuda_block_example"] = json.loads((cuda_runs[0] / "run.json").read_text())["cuda"]
    checks = root / "checks.json"
    if checks.exists():
        summary["checks"] = json.loads(checks.read_text())

    # repeatability: two identical deterministic CUDA groups of 10 (grouped launcher, concurrent processes)
    pairs = []
    for a in sorted((root / "g10a").glob("*/seed=*")):
        b = root / "g10b" / a.relative_to(root / "g10a")
        if b.exists():
            pairs.append(compare(a, b))
    summary["repeat_g10"] = {"pairs": len(pairs), "identical": sum(p["identical"] for p in pairs),
                             "details": [p for p in pairs if not p["identical"]][:3]}
    # layout: seed 1 alone vs member 0 of groups of 10 and 60 (same config, 3 updates)
    summary["layout"] = {}
    for dev in ("cuda", "cpu"):
        base = root / f"{dev}_k1" / "seed=1"
        for other in sorted(root.glob(f"{dev}_k*/seed=1"), key=lambda p: int(p.parent.name.split("_k")[1])):
            if base.exists() and other != base:
                summary["layout"][f"{dev}: K={other.parent.name.split('_k')[1]} vs K=1"] = compare(base, other)
    if (root / "hc_fp32").exists() and (root / "cuda_k1" / "seed=1").exists():
        summary["layout"]["cuda: esper-train run vs run_group K=1 (other process)"] = compare(
            root / "hc_fp32", root / "cuda_k1" / "seed=1")

    # throughput: median over updates 2.. (update 1 holds CUDA/cuBLAS start-up)
    thr = {}
    for t in sorted(root.glob("*_k*/timing.json")):
        r = json.loads(t.read_text())
        ups = r["updates"][1:] or r["updates"]
        med = {k: statistics.median(u[k] for u in ups) for k in ("wall_s", "env_steps_per_s", "time_env",
                                                                "time_inference", "time_update")}
        thr[t.parent.name] = {"k": r["k"], "device": r["device"], "device_name": r["device_name"],
                              "statuses": r["statuses"], "updates_used": [u["update"] for u in ups], **med,
                              "first_update_wall_s": r["updates"][0]["wall_s"] if r["updates"] else None}
    summary["throughput"] = thr
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))

    lines = ["# box_run.sh summary", "", "## runs", "",
             ("| run | status | device | prec | member/size | updates | cuda block | flags pinned | layout | "
              "perturb | probe | snap | reason |"), "|" + "---|" * 13]
    for r in rows:
        lines.append(f"| {r['run']} | {r['status']} | {r['device']} | {r['precision']} | "
                     f"{r['group'][0]}/{r['group'][1]} | {r['updates']} | {r['cuda_block']} | {r['flags_as_pinned']} | "
                     f"{r['layout_recorded']} | "
                     f"{r['perturbation']} | {r['probe_records']} | {r['snapshot_records']} | "
                     f"{(r['reason'] or '')[:160]} |")
    lines += ["", "## repeatability (g10a vs g10b)", "", json.dumps(summary["repeat_g10"]), "", "## layout", ""]
    lines += [f"- {k}: identical={v['identical']} {v.get('first_diff', '')}" for k, v in summary["layout"].items()]
    lines += ["", "## throughput (median over updates >= 2)", "",
              "| run | K | device | env steps/s | wall/update s | env s | inference s | update s | 1st update s |",
              "|" + "---|" * 9]
    for name, t in thr.items():
        lines.append(f"| {name} | {t['k']} | {t['device_name']} | {t['env_steps_per_s']:.0f} | {t['wall_s']:.2f} | "
                     f"{t['time_env']:.2f} | {t['time_inference']:.2f} | {t['time_update']:.2f} | "
                     f"{t['first_update_wall_s']:.2f} |")
    if "cuda_block_example" in summary:
        lines += ["", "## run.json cuda block (first CUDA run)", "", "```",
                  json.dumps(summary["cuda_block_example"], indent=1), "```"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
