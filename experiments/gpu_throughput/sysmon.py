"""What the box's CPUs (and GPU) are doing while a sweep runs: one JSON line per interval, until stopped.

    python sysmon.py OUT.jsonl [INTERVAL_S]

Why: in round 4 the sweep's env wait rose 4-6x in bursts of 20 s to minutes (update time constant), not with
training progress; this says whether such a burst coincides with CPU steal (the VM's host), a lower clock, more
runnable processes than cores, or a process other than the sweep's. Per line: ``t`` (epoch s); ``cpu``: the shares
of all CPUs' time over the interval (user, system, idle, iowait, irq, steal) from /proc/stat; ``running`` /
``load1`` from /proc/loadavg; ``mhz`` mean and min over /proc/cpuinfo; ``top``: the 6 processes with the most CPU
time over the interval ([pid, command, % of one core]); ``gpu``: utilisation %, SM clock MHz, temperature C from
nvidia-smi where it exists. Reads /proc only (Linux)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_times() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:1 + len(FIELDS)]]


def proc_times() -> dict[int, tuple[str, int]]:
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                raw = f.read()
        except OSError:  # gone meanwhile
            continue
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        rest = raw[raw.rindex(")") + 2:].split()
        out[int(pid)] = (comm, int(rest[11]) + int(rest[12]))  # utime + stime, in ticks
    return out


def mhz() -> list[float]:
    try:
        with open("/proc/cpuinfo") as f:
            return [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
    except OSError:
        return []


def gpu() -> list[str] | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,clocks.sm,temperature.gpu",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [x.strip() for x in r.stdout.strip().split(",")] if r.returncode == 0 else None


def main(path: str, interval: float) -> None:
    prev_cpu, prev_procs, prev_t = cpu_times(), proc_times(), time.time()
    with open(path, "a") as out:
        while True:
            time.sleep(interval)
            now_cpu, now_procs, now = cpu_times(), proc_times(), time.time()
            d = [b - a for a, b in zip(prev_cpu, now_cpu)]
            total = sum(d) or 1
            share = dict(zip(FIELDS, (round(x / total, 4) for x in d)))
            share["irq"] = round(share["irq"] + share.pop("softirq"), 4)
            share["user"] = round(share["user"] + share.pop("nice"), 4)
            used = []
            for pid, (comm, ticks) in now_procs.items():  # processes alive at both ends of the interval
                if pid in prev_procs and ticks > prev_procs[pid][1]:
                    used.append((ticks - prev_procs[pid][1], pid, comm))
            used.sort(reverse=True)
            with open("/proc/loadavg") as f:
                load = f.read().split()
            clocks = mhz()
            rec = {"t": round(now, 2), "cpu": share, "running": int(load[3].split("/")[0]), "load1": float(load[0]),
                   "mhz": [round(sum(clocks) / len(clocks)), round(min(clocks))] if clocks else None,
                   "top": [[pid, comm, round(100 * u / TICK / (now - prev_t))] for u, pid, comm in used[:6]],
                   "gpu": gpu()}
            out.write(json.dumps(rec) + "\n")
            out.flush()
            prev_cpu, prev_procs, prev_t = now_cpu, now_procs, now


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python sysmon.py OUT.jsonl [INTERVAL_S]")
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) == 3 else 5.0)
