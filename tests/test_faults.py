"""The run-directory contract under faults: one owner per run directory, honest exit codes, one-line user errors."""

import os
import platform
import signal
import subprocess
import sys
import time

from esper_exp.runformat import LOCK_NAME, read_jsonl, read_run_json

TINY = ("env=cartpole", "ppo.total_timesteps=2048", "ppo.num_steps=64", "tracking.wandb.mode=disabled",
        "tracking.progress=off")


def _train(*args, **kw):
    return subprocess.run([sys.executable, "-m", "esper_exp.train", *args], capture_output=True, text=True,
                          timeout=300, **kw)


def _hold_lock(run_dir):
    """A second real process that owns run_dir's lock (prints 'locked' once it holds it)."""
    code = ("import sys, time; from esper_exp.runformat import RunLock; "
            f"RunLock({str(run_dir)!r}).acquire(); print('locked', flush=True); time.sleep(120)")
    run_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_run_dir_held_by_another_process_is_refused_with_one_line_naming_it(tmp_path):
    out = tmp_path / "run"
    holder = _hold_lock(out)
    try:
        proc = _train(*TINY, f"hydra.run.dir={out}")
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert f"pid {holder.pid}" in lines[0] and f"host {platform.node()}" in lines[0] and "in use" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (out / "run.json").exists() and not (out / "metrics.jsonl").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over_and_said_so(tmp_path):
    out = tmp_path / "run"
    holder = _hold_lock(out)
    holder.send_signal(signal.SIGKILL)  # dies holding the lock: the OS releases it, the file still names it
    holder.wait()
    assert (out / LOCK_NAME).read_text().split() == [platform.node(), str(holder.pid)]
    proc = _train(*TINY, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    assert f"took over the lock left by host {platform.node()}, pid {holder.pid}" in proc.stderr
    assert read_run_json(out)["status"] == "completed"
    assert (out / LOCK_NAME).read_text() == ""  # released cleanly at the end


def test_two_trainers_on_one_run_dir_the_second_refuses_and_the_first_is_intact(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "esper_exp.train", "env=cartpole", "ppo.total_timesteps=10000000",
                              "ppo.num_steps=64", "tracking.wandb.mode=disabled", "tracking.progress=off",
                              f"hydra.run.dir={out}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ((out / "metrics.jsonl").exists()
                                              and (out / "metrics.jsonl").stat().st_size):
            time.sleep(0.2)
        second = _train("env=cartpole", "ppo.total_timesteps=10000000", "ppo.num_steps=64",
                        "tracking.wandb.mode=disabled", "tracking.progress=off", f"hydra.run.dir={out}")
        assert second.returncode == 2, second.stderr
        assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
        assert read_run_json(out)["status"] == "running" and read_run_json(out)["pid"] == first.pid
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    info = read_run_json(out)
    assert info["status"] == "interrupted" and info["pid"] == first.pid
    metrics = read_jsonl(out / "metrics.jsonl")  # strict: no torn or merged line
    assert [m["update"] for m in metrics] == list(range(1, len(metrics) + 1))
    assert not (out / "attempts").exists()


def test_every_member_of_a_group_is_locked(tmp_path):
    from conftest import make_cfg

    from esper_exp.runformat import RunLock
    from esper_exp.train import run_group

    dirs = [tmp_path / f"seed={s}" for s in (1, 2)]
    seen = []

    from esper_exp import train
    real = train._train_group

    def probe(members, job_num):
        for m in members:  # while the group trains, nobody else can take any member's lock
            try:
                RunLock(m.run_dir).acquire()
                seen.append("free")
            except Exception as e:
                seen.append(type(e).__name__)
        return real(members, job_num)

    train._train_group = probe
    try:
        statuses = run_group([(make_cfg("env=cartpole", "ppo.total_timesteps=512", "ppo.num_steps=64", f"seed={s}"), d)
                              for s, d in zip((1, 2), dirs)])
    finally:
        train._train_group = real
    assert statuses == ["completed", "completed"]
    assert seen == ["RunLocked", "RunLocked"]
    for d in dirs:  # released after the group
        RunLock(d).acquire().release()


def test_a_locked_member_is_refused_and_the_other_members_train(tmp_path, capsys):
    from conftest import make_cfg

    from esper_exp.train import run_group

    dirs = [tmp_path / f"seed={s}" for s in (1, 2)]
    holder = _hold_lock(dirs[1])
    try:
        statuses = run_group([(make_cfg("env=cartpole", "ppo.total_timesteps=512", "ppo.num_steps=64", f"seed={s}"), d)
                              for s, d in zip((1, 2), dirs)])
    finally:
        holder.kill()
        holder.wait()
    assert statuses == ["completed", "config_error"]
    assert f"pid {holder.pid}" in capsys.readouterr().err
    assert not (dirs[1] / "run.json").exists()


def test_a_file_where_the_run_dir_should_be_is_one_line(tmp_path):
    import pytest
    from conftest import make_cfg

    from esper_exp.config import ConfigError
    from esper_exp.train import run

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot use run directory"):
        run(make_cfg("env=cartpole", "ppo.total_timesteps=512", "ppo.num_steps=64"), blocker / "run")
    os.chmod(tmp_path, 0o500)
    try:
        if os.access(tmp_path, os.W_OK):  # root ignores permissions
            return
        with pytest.raises(ConfigError, match="cannot use run directory"):
            run(make_cfg("env=cartpole", "ppo.total_timesteps=512", "ppo.num_steps=64"), tmp_path / "ro")
    finally:
        os.chmod(tmp_path, 0o700)


def _one_line_exit_2(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_user_errors_are_one_line_exit_2_and_leave_no_trace(tmp_path):
    """Rejected before Hydra runs: no timestamped outputs/runs/... dir, no .hydra/, no train.log."""
    cases = [("seed=-1", "allowed: an integer in [0, 4294967292]"),
             ("seed=4294967296", "numpy seeds are 0 <= seed < 2**32"),
             ("+ppo.foo=1", "ppo.foo is not a known key"),
             ("env=pong", "allowed: cartpole, halfcheetah, hopper, walker2d"),
             ("model.gelu=fast", "allowed: exact, tanh")]
    for override, needle in cases:
        _one_line_exit_2(_train(override, "tracking.wandb.mode=disabled", cwd=tmp_path), needle)
        assert not list(tmp_path.iterdir()), override


def test_a_bad_sweep_value_is_refused_before_the_first_job(tmp_path):
    sw = tmp_path / "sw"
    line = _one_line_exit_2(_train("-m", "model.gelu=exact,fast", *TINY, f"hydra.sweep.dir={sw}"),
                            "job #1 (model.gelu=fast)", "no job was started")
    assert "allowed: exact, tanh" in line
    assert not sw.exists()


def test_a_refused_rerun_leaves_the_old_runs_hydra_record_untouched(tmp_path):
    out = tmp_path / "run"
    assert _train(*TINY, f"hydra.run.dir={out}").returncode == 0
    before = {p: p.read_bytes() for p in (out / ".hydra").iterdir()}
    _one_line_exit_2(_train(*TINY, "seed=5", f"hydra.run.dir={out}"), "completed run of a different config")
    assert {p: p.read_bytes() for p in (out / ".hydra").iterdir()} == before
    assert read_run_json(out)["seed"] == 1


def test_a_sweep_rerun_with_another_config_refuses_before_touching_any_job(tmp_path):
    sw = tmp_path / "sw"
    assert _train("-m", "seed=1,2", *TINY, f"hydra.sweep.dir={sw}").returncode == 0
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sw.rglob("*") if p.is_file()}
    _one_line_exit_2(_train("-m", "seed=1,2", *TINY, "ppo.total_timesteps=4096", f"hydra.sweep.dir={sw}"),
                     "completed run of a different config", "(and 1 more jobs)", "no job of the sweep was started")
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sw.rglob("*") if p.is_file()} == stamps


def test_unusable_output_paths_are_one_line_exit_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_exit_2(_train(*TINY, f"hydra.run.dir={blocker / 'run'}"), "is a file, not a directory")
    _one_line_exit_2(_train(*TINY, f"hydra.run.dir={blocker}"), "a file is in the way")
    _one_line_exit_2(_train(*TINY, "hydra.run.dir=/proc/esper-test/run"), "cannot create run directory")
    _one_line_exit_2(_train("-m", *TINY, "hydra.sweep.dir=/proc/esper-test/sw"), "cannot create run directory")
    assert blocker.read_text() == "x"


def test_a_user_config_dir_adds_an_env(tmp_path):
    """`--config-dir my_configs env=acrobot`: Hydra's search path extends the env group; any registered gymnasium
    env with a Box observation space and a Discrete or 1-D Box action space trains."""
    cfg_dir = tmp_path / "my_configs" / "env"
    cfg_dir.mkdir(parents=True)
    (cfg_dir / "acrobot.yaml").write_text("name: acrobot\nid: Acrobot-v1\nnum_envs: 4\n")
    (cfg_dir / "frozen.yaml").write_text("name: frozen\nid: FrozenLake-v1\n")
    out = tmp_path / "run"
    proc = _train("--config-dir", str(tmp_path / "my_configs"), "env=acrobot", *TINY[1:], f"hydra.run.dir={out}",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = read_run_json(out)
    assert info["status"] == "completed" and info["env_id"] == "Acrobot-v1" and info["cell"] == "acrobot/exact/fp32"
    _one_line_exit_2(_train("--config-dir", str(tmp_path / "my_configs"), "env=frozen", *TINY[1:],
                            f"hydra.run.dir={tmp_path / 'frozen'}"), "Discrete observation space")
    _one_line_exit_2(_train("--config-dir", str(tmp_path / "my_configs"), "env=pong", *TINY[1:],
                            f"hydra.run.dir={tmp_path / 'pong'}"), "allowed: acrobot, cartpole, frozen")
    assert not (tmp_path / "frozen").exists() and not (tmp_path / "pong").exists()


def test_every_file_a_run_writes_is_strict_json(train_run):
    """Non-finite numbers (a diverging fp16 run's losses and grad norms) are written as "NaN" / "Infinity" strings."""
    import json

    import pytest

    run_dir = train_run("env=cartpole", "ppo.total_timesteps=2048", "ppo.num_steps=64", "precision=fp16",
                        "ppo.learning_rate=1e30", name="nan")
    assert read_run_json(run_dir)["status"] == "failed"

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} token"))

    strict((run_dir / "run.json").read_text())
    for name in ("metrics.jsonl", "episodes.jsonl"):
        for line in (run_dir / name).read_text().splitlines():
            strict(line)


def test_an_unfinished_run_of_another_config_is_kept_and_the_restart_said_so(tmp_path, monkeypatch, capsys):
    from conftest import interrupt_after_update, make_cfg

    from esper_exp.train import run

    overrides = ("env=cartpole", "ppo.total_timesteps=2048", "ppo.num_steps=64", "tracking.checkpoint_every=2")
    run_dir = tmp_path / "run"
    interrupt_after_update(monkeypatch, overrides, run_dir, 2)
    capsys.readouterr()
    assert run(make_cfg(*overrides, "seed=5"), run_dir) == "completed"
    err = capsys.readouterr().err
    assert "held an unfinished run of another config" in err and "attempts/" in err
    assert read_run_json(run_dir / "attempts" / "0")["status"] == "interrupted"


def test_a_fixed_run_dir_is_locked_before_hydra_writes_so_a_simultaneous_second_command_leaves_no_trace(tmp_path):
    # the window between the pre-check and the run's lock: this process passes the pre-check (and so holds the lock)
    # but has not let Hydra write yet; a second command on the same run dir is refused and writes nothing there
    from esper_exp import train
    from esper_exp.runformat import lock_holder

    out = tmp_path / "run"
    argv = ["env=cartpole", "ppo.total_timesteps=512", "tracking.wandb.mode=disabled", f"hydra.run.dir={out}"]
    train.precheck(argv)
    try:
        assert lock_holder(out) and str(os.getpid()) in lock_holder(out)
        second = _train(*argv)
        assert second.returncode == 2 and "in use by another process" in second.stderr, second.stderr
        assert not (out / ".hydra").exists() and not (out / "train.log").exists()
    finally:
        train._PRELOCKED.pop(out.resolve()).release()
    assert lock_holder(out) is None


def test_two_sweep_commands_on_one_sweep_dir_one_refuses_and_writes_nothing(tmp_path):
    # both started at the same moment: the sweep dir is locked in the pre-check, before Hydra writes multirun.yaml,
    # so exactly one sweep runs (intact) and the other exits 2 with one line naming it
    import json

    from esper_exp.runformat import RunLock

    sw = tmp_path / "sw"
    args = [sys.executable, "-m", "esper_exp.train", "-m", "seed=1,2", *TINY, f"hydra.sweep.dir={sw}"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 2], [err for _, err in outs]
    won, lost = (0, 1) if procs[0].returncode == 0 else (1, 0)
    _one_line_exit_2(subprocess.CompletedProcess(args, 2, *outs[lost]), f"sweep directory {sw} is in use",
                     f"host {platform.node()}, pid {procs[won].pid}")
    summary = json.loads((sw / "summary.json").read_text())
    assert summary["launched"] == 2 and summary["counts"]["completed"] == 2, summary
    for seed in (1, 2):
        run_dir = sw / "cartpole-exact-fp32" / f"seed={seed}"
        assert read_run_json(run_dir)["pid"] == procs[won].pid and not (run_dir / "attempts").exists()
        assert [m["update"] for m in read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, 2048 // 256 + 1))
    assert (sw / LOCK_NAME).read_text() == ""  # released cleanly: a re-run takes it without a take-over note
    # the refused command writes nothing: not multirun.yaml, not a job's .hydra/, not the summary, not the lock file
    with RunLock(sw):
        stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sw.rglob("*") if p.is_file()}
        _one_line_exit_2(_train(*args[3:]), f"sweep directory {sw} is in use", f"pid {os.getpid()}")
        assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sw.rglob("*") if p.is_file()} == stamps


def test_a_bad_env_parts_setting_is_refused_with_one_line_and_nothing_written(tmp_path):
    out = tmp_path / "run"
    proc = _train(*TINY, f"hydra.run.dir={out}", env={**os.environ, "ESPER_ENV_PARTS": "two"})
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["error: ESPER_ENV_PARTS='two' is not allowed; allowed: segments, one"], proc.stderr
    assert not out.exists()
