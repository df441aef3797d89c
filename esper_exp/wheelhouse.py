"""Build an offline wheelhouse of esper-exp and every runtime dependency for a target Python and platform.

Used by ``make wheelhouse`` (see README, "Sweeps, clusters and offline installs"); on the air-gapped machine:

    python3 -m pip install --no-index --find-links <wheelhouse> esper-exp

Steps (all with this machine's pip, which needs an index):
1. ``pip wheel --no-deps`` esper-exp itself and the sdist-only dependencies (antlr4-python3-runtime 4.9.3 for
   omegaconf/hydra, rliable 1.2.0): both are pure Python, so their wheels install anywhere.
2. Resolve the whole tree for the target (``pip install --dry-run --report`` with ``--platform``,
   ``--python-version``, ``--only-binary=:all:``): only metadata is fetched, not e.g. torch's wheels.
3. Walk esper-exp's requirements with the target's environment markers, not descending into ``--skip`` packages
   (those the target already has, e.g. torch: torch's own dependencies are then skipped too), and download
   exactly the pinned wheels of what is left with ``pip download --no-deps``.
Writes ``requirements.txt`` (the pins) and ``SKIPPED.txt`` into the wheelhouse.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SDIST_ONLY = ("antlr4-python3-runtime==4.9.3", "rliable==1.2.0")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def target_env(python: str, machine: str) -> dict[str, str]:
    full = python if python.count(".") >= 2 else python + ".0"
    return {"implementation_name": "cpython", "implementation_version": full, "os_name": "posix",
            "platform_machine": machine, "platform_python_implementation": "CPython", "platform_release": "",
            "platform_system": "Linux", "platform_version": "", "python_full_version": full,
            "python_version": ".".join(python.split(".")[:2]), "sys_platform": "linux"}


def marker_ok(marker: Marker | None, env: dict[str, str], extras: set[str]) -> bool:
    if marker is None:
        return True
    return any(marker.evaluate({**env, "extra": e}) for e in (extras or {""}))


def closure(report: dict, root: str, env: dict[str, str], skip: set[str]) -> tuple[dict[str, dict], set[str]]:
    """Packages needed from ``root`` under ``env`` (name -> report item), and the skipped names reached."""
    items = {norm(i["metadata"]["name"]): i for i in report["install"]}
    need: dict[str, dict] = {}
    reached_skipped: set[str] = set()
    stack: list[tuple[str, set[str]]] = [(norm(root), set())]
    seen: set[tuple[str, frozenset]] = set()
    while stack:
        name, extras = stack.pop()
        if (name, frozenset(extras)) in seen:
            continue
        seen.add((name, frozenset(extras)))
        if name in skip:
            reached_skipped.add(name)
            continue
        if name not in items:
            raise SystemExit(f"error: {name} is needed on the target but pip did not resolve it here "
                             f"(a marker that differs between this python and the target?); add it by hand")
        need[name] = items[name]
        for spec in items[name]["metadata"].get("requires_dist") or []:
            req = Requirement(spec)
            if marker_ok(req.marker, env, extras):
                stack.append((norm(req.name), set(req.extras)))
    return need, reached_skipped


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m esper_exp.wheelhouse", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / ".wheelhouse")
    p.add_argument("--python", default="3.12", help="target Python version, e.g. 3.12")
    p.add_argument("--platform", nargs="+", default=["manylinux_2_28_x86_64", "manylinux2014_x86_64"],
                   help="target platform tags (pip --platform), most specific first")
    p.add_argument("--skip", nargs="*", default=[], help="packages the target already has (e.g. torch numpy)")
    p.add_argument("--sdist-only", nargs="*", default=list(DEFAULT_SDIST_ONLY),
                   help="pinned dependencies published only as sdists: built here with pip wheel --no-deps")
    args = p.parse_args(argv)

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("esper_exp-*.whl"):
        old.unlink()
    pip("wheel", "-q", "--no-deps", "-w", str(out), str(ROOT))
    if args.sdist_only:
        pip("wheel", "-q", "--no-deps", "-w", str(out), *args.sdist_only)
    own = sorted(out.glob("esper_exp-*.whl"))[-1]
    abi = "cp" + args.python.replace(".", "")[:3]
    target = ["--only-binary=:all:", "--python-version", args.python, "--implementation", "cp", "--abi", abi]
    for plat in args.platform:
        target += ["--platform", plat]
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        pip("install", "-q", "--dry-run", "--ignore-installed", "--report", str(report_path), "--target",
            str(Path(tmp) / "t"), "--find-links", str(out), *target, str(own))
        report = json.loads(report_path.read_text())
    machine = "aarch64" if "aarch64" in args.platform[0] else "x86_64"
    skip = {norm(s) for s in args.skip}
    need, skipped = closure(report, "esper-exp", target_env(args.python, machine), skip)
    pins = sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for n, i in need.items() if n != "esper-exp")
    local = {(norm(w.name.split("-")[0]), w.name.split("-")[1]) for w in out.glob("*.whl")}
    to_fetch = [pin for pin in pins if (norm(pin.split("==")[0]), pin.split("==")[1]) not in local]
    if to_fetch:
        pip("download", "-q", "--no-deps", "-d", str(out), *target, *to_fetch)
    (out / "requirements.txt").write_text("\n".join(pins + [f"esper-exp=={own.name.split('-')[1]}"]) + "\n")
    (out / "SKIPPED.txt").write_text("# expected on the target already (with their own dependencies)\n"
                                     + "\n".join(sorted(skipped)) + "\n")
    size = sum(f.stat().st_size for f in out.glob("*.whl")) / 2**20
    print(f"wheelhouse: {out} ({len(list(out.glob('*.whl')))} wheels, {size:.1f} MiB) for Python {args.python} "
          f"{' '.join(args.platform)}; skipped (target has them): {', '.join(sorted(skipped)) or 'none'}")
    print(f"install on the target: python{args.python} -m pip install --no-index --find-links {out} esper-exp")
    return 0


if __name__ == "__main__":
    sys.exit(main())
