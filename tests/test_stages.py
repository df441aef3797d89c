"""experiments/gpu_throughput/stages.sh: a box's plan of sweep stages run one after another; a SIGTERM stops the
running stage with exactly one SIGTERM (the grouped launcher aborts at once on a second) and starts no later one."""
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ROOT / "experiments" / "gpu_throughput" / "stages.sh"
# a stand-in for the sweep command: records its arguments and every SIGTERM it gets, then ends as the launcher does
FAKE = """
import signal, sys, time
log = open(sys.argv[1], "a")
log.write("start " + " ".join(sys.argv[2:]) + "\\n"); log.flush()
def term(*_):
    log.write("SIGTERM\\n"); log.flush()
signal.signal(signal.SIGTERM, term)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    time.sleep(0.01)
"""


def _run(tmp_path, plan, secs, signal_after=None):
    fake, log = tmp_path / "fake.py", tmp_path / "log.txt"
    fake.write_text(FAKE)
    proc = subprocess.Popen(["timeout", "-s", "TERM", "60", "bash", str(STAGES), plan, sys.executable, str(fake),
                             str(log), str(secs)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if signal_after is not None:
        deadline = time.time() + 10
        while not (log.exists() and "start" in log.read_text()) and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(signal_after)
        # as `timeout` and sweep_box.sh's STOP do: the signal to timeout, which relays it to its child and its group
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out, (log.read_text().splitlines() if log.exists() else [])


def test_stages_run_in_order_with_their_envs_and_seeds(tmp_path):
    rc, out, log = _run(tmp_path, "hopper,walker2d@range(11,21) halfcheetah@range(21,31)", 0.05)
    assert rc == 0, out
    assert log == ["start 0.05 env=hopper,walker2d seed=range(11,21)", "start 0.05 env=halfcheetah seed=range(21,31)"]


def test_a_sigterm_reaches_the_running_stage_once_and_no_later_stage_starts(tmp_path):
    rc, out, log = _run(tmp_path, "hopper@range(1,11) walker2d@range(1,11)", 1.0, signal_after=0.2)
    assert log == ["start 1.0 env=hopper seed=range(1,11)", "SIGTERM"], out  # one SIGTERM; walker2d never started
    assert "later stages not started" in out


def test_a_bad_stage_is_refused_before_anything_runs(tmp_path):
    rc, out, log = _run(tmp_path, "hopper@range(1,11) walker2d", 0.05)
    assert rc == 2 and "stage 'walker2d' is not ENVS@SEEDS" in out
    assert log == []
