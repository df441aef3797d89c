"""``esper-bench``: microbenchmarks and numerics checks for tickets B3-PT-05 and B2-PT-02.

    esper-bench [--quick] [--device auto|cpu|cuda] [--out DIR] [--budget-s S] {gelu,fusion,numerics,blend,all}

Writes ``DIR/<part>.json`` (machine, command, date, ceilings, every record) and ``DIR/<part>.md``
(markdown tables); ``all`` writes ``all.json`` and ``all.md``. ``--quick`` is small enough for CI on
two CPU cores (seconds): eager timings on tiny shapes, one default-mode fusion capture, small
numerics. Parts past the time budget are recorded as skipped, never silently dropped.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

from esper_exp.bench import report
from esper_exp.bench.timing import Deadline, copy_bandwidth, machine_info, matmul_ceiling, resolve_device
from esper_exp.numerics import DTYPES

PARTS = ("numerics", "blend", "fusion", "gelu")  # order of `all`: the elastic speed sweep last
# share of the --budget-s each part may use in `all` (of what is left when it starts)
SHARE = {"numerics": 0.15, "blend": 0.25, "fusion": 0.4, "gelu": 1.0}


def ceilings(device: torch.device, quick: bool, precisions) -> dict:
    timing = dict(warmup=2, min_reps=3, max_reps=20, target_s=0.05) if quick else dict(warmup=5, min_reps=10, max_reps=200, target_s=0.3)
    if device.type == "cuda":
        n, nbytes = 8192, 1 << 30
    else:
        n, nbytes = (256, 1 << 24) if quick else (1024, 1 << 28)
    out = {"matmul": {}, "copy": copy_bandwidth(device, nbytes, **timing)}
    for p in precisions:
        out["matmul"][p] = matmul_ceiling(device, DTYPES[p], n, **timing)
    return out


def run_part(part: str, device, quick: bool, deadline: Deadline, precisions, ceil: dict, code_dir: Path | None, modes=None, opts=None) -> tuple[dict, str]:
    if part == "gelu":
        from esper_exp.bench import gelu

        res = gelu.run(device, quick, deadline, precisions, {p: c["tflops"] for p, c in ceil["matmul"].items()}, modes=modes)
        return res, report.gelu_tables(res)
    if part == "fusion":
        from esper_exp.bench import fusion

        res = fusion.run(device, quick, deadline, precisions, keep_code_dir=code_dir, graphs=opts["fusion_graphs"], modes=opts["fusion_modes"])
        return res, report.fusion_tables(res)
    if part == "numerics":
        from esper_exp.bench import numerics

        res = numerics.run(device, quick, deadline, precisions)
        return res, report.numerics_tables(res)
    if part == "blend":
        from esper_exp.bench import blend

        res = blend.run(device, quick, deadline, ceil["copy"]["gbps"])
        return res, report.blend_tables(res)
    raise ValueError(part)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="esper-bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("part", nargs="+", choices=(*PARTS, "all"), help="one or more parts, or all")
    ap.add_argument("--quick", action="store_true", help="CI-sized run (seconds on 2 CPU cores)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--out", default="outputs/bench", help="directory for <part>.json and <part>.md")
    ap.add_argument("--precisions", default=",".join(DTYPES), help="comma list of fp32,bf16,fp16")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock budget; later configurations are recorded as skipped")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--modes", default=None, help="gelu: comma list of eager,compile,max-autotune,cudagraphs (default: all)")
    ap.add_argument("--fusion-graphs", default="inference,training", help="fusion: inference (no_grad forward) and/or training (forward+backward)")
    ap.add_argument("--fusion-modes", default="default,max-autotune", help="fusion: default and/or max-autotune")
    ap.add_argument("--keep-code", action="store_true", help="fusion: also write the generated Inductor code under OUT/inductor_code/")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 4096)
    device = resolve_device(args.device)
    precisions = [p for p in args.precisions.split(",") if p]
    unknown = set(precisions) - set(DTYPES)
    if unknown:
        ap.error(f"unknown precision(s) {sorted(unknown)}; allowed: {', '.join(DTYPES)}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = PARTS if "all" in args.part else tuple(dict.fromkeys(args.part))
    name = "all" if "all" in args.part else "_".join(parts)
    t_start = time.monotonic()
    meta = {
        "command": "esper-bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine_info(device),
        "precisions": precisions,
    }
    ceil = ceilings(device, args.quick, precisions)
    result = {"meta": meta, "ceilings": ceil, "parts": {}}
    md = [f"# esper-bench {' '.join(parts)}", "", f"- command: `{meta['command']}`", f"- date (UTC): {meta['date_utc']}", f"- machine: {meta['machine']}",
          f"- ceilings: memory {ceil['copy']['gbps']:.1f} GB/s (copy {ceil['copy']['copy_gbps']:.1f}, add {ceil['copy']['add_gbps']:.1f}, {ceil['copy']['nbytes'] >> 20} MiB per stream); matmul " + ", ".join(f"{p} {c['tflops']:.2f} TFLOP/s (n={c['n']})" for p, c in ceil["matmul"].items()), ""]
    for part in parts:
        budget = None
        if args.budget_s is not None:
            left = args.budget_s - (time.monotonic() - t_start)
            budget = max(left * (SHARE[part] if len(parts) > 1 and part != parts[-1] else 1.0), 0.0)
        t0 = time.monotonic()
        print(f"[esper-bench] {part} ...", flush=True)
        res, text = run_part(part, device, args.quick, Deadline(budget), precisions, ceil, out_dir / "inductor_code" if args.keep_code else None, modes=args.modes.split(",") if args.modes else None,
            opts={"fusion_graphs": tuple(args.fusion_graphs.split(",")), "fusion_modes": tuple(args.fusion_modes.split(","))})
        res["wall_s"] = time.monotonic() - t0
        result["parts"][part] = res
        md += [f"## {part} ({res['wall_s']:.1f} s)", "", text, ""]
        # write after every part, so a run stopped by its time limit keeps what it finished
        report.write_json(out_dir / f"{name}.json", result)
        (out_dir / f"{name}.md").write_text("\n".join(md) + "\n")
        print(f"[esper-bench] {part} done in {res['wall_s']:.1f} s", flush=True)
    print(f"[esper-bench] wrote {out_dir / (name + '.json')} and .md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
