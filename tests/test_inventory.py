"""experiments/mujoco_gelu_amp/inventory.py: per env and block of 10 seeds, whether the block is kept in git, completed
but not kept, unfinished (and at which updates) or not started; the carries on the VM and which runs they resume, a
carry whose runs completed since marked stale. Reads run.json statuses and update counts only."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, rel: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


inventory = _load("inventory", "experiments/mujoco_gelu_amp/inventory.py")
carry = _load("carry", "experiments/gpu_throughput/carry.py")
CELLS = ("exact-fp32", "tanh-fp32", "exact-bf16", "tanh-bf16")


def _runs(sweep: Path, env: str, seeds, status: str, update: int, ckpt: bool = False) -> None:
    for cell in CELLS:
        for s in seeds:
            d = sweep / f"{env}-{cell}" / f"seed={s}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "run.json").write_text(json.dumps({"status": status, "update": update}))
            if ckpt:
                (d / "checkpoints").mkdir(exist_ok=True)
                (d / "checkpoints" / f"ckpt-{update:08d}.pt").write_bytes(b"\0" * 64)
                (d / "checkpoints" / f"ckpt-{update:08d}.pt.sha256").write_text("x")


def test_blocks_totals_and_carries(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep, runs = Path("outputs/sweeps/mujoco_gelu_amp"), tmp_path / "runs"
    runs.mkdir()
    for cell in CELLS:  # halfcheetah 1-10 kept (archives present) and unpacked; hopper 1-10 kept, not unpacked here
        (runs / f"halfcheetah-{cell}_seeds01-10.tar.xz").write_bytes(b"")
        (runs / f"hopper-{cell}_seeds01-10.tar.xz").write_bytes(b"")
    _runs(sweep, "halfcheetah", range(1, 11), "completed", 488)
    _runs(sweep, "halfcheetah", range(11, 21), "completed", 488)  # completed, not kept
    _runs(sweep, "walker2d", range(1, 11), "interrupted", 455, ckpt=True)
    _runs(sweep, "hopper", range(11, 21), "running", 100, ckpt=True)
    carry.pack(sweep, Path(".carry_s1"), part_mb=15)  # walker2d 1-10 and hopper 11-20 at their updates
    _runs(sweep, "hopper", range(11, 21), "completed", 488)  # hopper's carried runs completed since: stale
    capsys.readouterr()  # carry.py's own line
    assert inventory.main(["--study", str(tmp_path), "--sweep", str(sweep), "--runs", str(runs)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "| halfcheetah | kept | 40 completed, not kept | not started | not started |"
    assert out[3] == "| hopper | kept (40 not unpacked here) | 40 completed, not kept | not started | not started |"
    assert out[4] == "| walker2d | 40 unfinished (updates 455-455) | not started | not started | not started |"
    assert out[6].startswith("480 registered runs: 80 kept in git, 80 completed but not kept, 40 unfinished, "
                             "280 not started; left to train: 320 runs (319.8M steps")
    assert out[7] == ("kept runs not unpacked here (the reports need them): python experiments/gpu_throughput/"
                      f"archive.py unpack {runs}/*.tar.xz outputs/sweeps")
    assert out[8].startswith("completed runs not kept: bash experiments/mujoco_gelu_amp/keep_runs.sh")
    assert out[9].startswith("carry .carry_s1: ") and out[9].endswith(
        "hopper seeds 11-20: 40 runs at update 100 (stale: they have completed since); "
        "walker2d seeds 1-10: 40 runs at update 455")


def test_a_carry_of_another_sweep_is_named_and_judged_by_its_own_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep, probe, runs = Path("outputs/sweeps/mujoco_gelu_amp"), Path("outputs/sweeps/mujoco_gelu_amp_probe"), tmp_path
    _runs(sweep, "hopper", range(1, 11), "completed", 488)  # the primary's seeds 1-5 completed: not the probe's
    _runs(probe, "hopper", range(1, 6), "interrupted", 120, ckpt=True)
    carry.pack(probe, Path(".carry_s17p"), part_mb=15)
    capsys.readouterr()
    assert inventory.main(["--study", str(tmp_path), "--sweep", str(sweep), "--runs", str(runs)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("carry "))
    assert line.startswith("carry .carry_s17p: ") and line.endswith(
        "mujoco_gelu_amp_probe hopper seeds 1-5: 20 runs at update 120")


def test_a_carry_of_one_process_per_cell_names_each_cell(tmp_path, monkeypatch, capsys):
    # the probe's layout: one process per env x cell, so each cell's runs stop at their own update
    monkeypatch.chdir(tmp_path)
    sweep, probe = Path("outputs/sweeps/mujoco_gelu_amp"), Path("outputs/sweeps/mujoco_gelu_amp_probe")
    sweep.mkdir(parents=True)
    _runs(probe, "hopper", range(1, 6), "interrupted", 30, ckpt=True)
    for seed in range(1, 6):  # exact/fp32 went further than the other three cells
        ck = probe / "hopper-exact-fp32" / f"seed={seed}" / "checkpoints"
        for f in list(ck.iterdir()):
            f.rename(ck / f.name.replace("00000030", "00000076"))
    carry.pack(probe, Path(".carry_s18p"), part_mb=15)
    capsys.readouterr()
    assert inventory.main(["--study", str(tmp_path), "--sweep", str(sweep), "--runs", str(tmp_path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("carry "))
    assert line.startswith("carry .carry_s18p: ") and line.endswith(
        "mujoco_gelu_amp_probe hopper seeds 1-5: 15 runs at update 30; "  # three cells at one update: the env
        "mujoco_gelu_amp_probe hopper-exact-fp32 seeds 1-5: 5 runs at update 76")  # one cell: named


def test_no_archive_directory_is_one_line_and_exit_2(tmp_path, capsys):
    assert inventory.main(["--study", str(tmp_path), "--runs", str(tmp_path / "nope"), "--sweep", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"inventory.py: no archive directory {tmp_path / 'nope'}"]


def test_require_complete_refuses_until_every_registered_run_has_completed_here(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep, runs = Path("outputs/sweeps/mujoco_gelu_amp"), tmp_path / "runs"
    runs.mkdir()
    for env in ("halfcheetah", "hopper", "walker2d"):
        _runs(sweep, env, range(1, 41), "completed", 488)
    for cell in CELLS:  # kept in git and unpacked here: counts as complete
        (runs / f"hopper-{cell}_seeds01-10.tar.xz").write_bytes(b"")
    args = ["--study", str(tmp_path), "--sweep", str(sweep), "--runs", str(runs), "--require-complete"]
    assert inventory.main(args) == 0
    _runs(sweep, "walker2d", [40], "interrupted", 300)
    capsys.readouterr()
    assert inventory.main(args) == 1
    assert capsys.readouterr().err.strip() == (f"inventory.py: 4 of 480 registered runs have not completed in {sweep} "
                                               "(trained or unpacked): the study stays blind, nothing analysed")


def test_the_probe_and_each_arm_count_kept_completed_and_unfinished_runs(tmp_path, capsys):
    """Kept = run.json files in the arm's archives (whatever their names: the CPU twin's hold two cells each);
    completed runs beyond those are named for keep_runs.sh, unfinished ones with their updates."""
    import tarfile
    study, sweeps = tmp_path / "study", tmp_path / "sweeps"
    src = tmp_path / "src" / "mujoco_gelu_amp_fp16"
    for cell in ("halfcheetah-exact-fp16", "halfcheetah-tanh-fp16"):
        for s in (1, 2):
            d = src / cell / f"seed={s}"
            d.mkdir(parents=True)
            (d / "run.json").write_text(json.dumps({"status": "completed", "update": 488}))
    (study / "exploratory/fp16/runs").mkdir(parents=True)
    with tarfile.open(study / "exploratory/fp16/runs/halfcheetah_seeds01-02.tar.xz", "w:xz") as tar:
        tar.add(src, arcname="mujoco_gelu_amp_fp16")  # 4 runs of two cells in one archive
    _runs(sweeps / "mujoco_gelu_amp_3m", "halfcheetah", range(1, 3), "completed", 1464)
    _runs(sweeps / "mujoco_gelu_amp_probe", "hopper", range(1, 2), "interrupted", 30)
    (sweeps / "mujoco_gelu_amp").mkdir(parents=True)
    lines = {line.split(":")[0].strip(): line.strip() for line in
             (inventory.other_state(study, sweeps, k) for k in inventory.OTHERS)}
    assert lines["fp16"] == "fp16: 4 of 20 registered runs kept in git (4 not unpacked in " \
        f"{sweeps / 'mujoco_gelu_amp_fp16'})"
    assert lines["3m"].startswith("3m: 0 of 40 registered runs kept in git, 8 more completed in ")
    assert lines["probe"] == "probe: 0 of 60 registered runs kept in git, 4 unfinished there (updates 30-30)"
    assert lines["width384"] == "width384: 0 of 20 registered runs kept in git"
    runs = tmp_path / "runs"
    runs.mkdir()
    assert inventory.main(["--sweep", str(sweeps / "mujoco_gelu_amp"), "--runs", str(runs), "--study", str(study),
                           "--carries", str(tmp_path)]) == 0
    assert "the probe and the exploratory arms:\n  probe: 0 of 60" in capsys.readouterr().out


def test_registered_prints_an_arms_run_count_only(capsys):
    """analyse.sh reads each arm's registered count here (the one place it is written)."""
    assert inventory.main(["--registered", "3m"]) == 0 and capsys.readouterr().out == "40\n"
    assert inventory.main(["--registered", "width384"]) == 0 and capsys.readouterr().out == "20\n"


def test_a_compiled_arms_carry_and_its_running_runs_updates(tmp_path, monkeypatch, capsys):
    # session 20: the compile arm's state packed from a frozen sweep: cells named <env>-<gelu>-<dtype>-compiled,
    # run.json still "running" at update 0 (rewritten only when a run stops), metrics.jsonl at the real update
    monkeypatch.chdir(tmp_path)
    sweep, comp = Path("outputs/sweeps/mujoco_gelu_amp"), Path("outputs/sweeps/mujoco_gelu_amp_compile")
    sweep.mkdir(parents=True)
    for cell in ("halfcheetah-exact-bf16-compiled", "halfcheetah-tanh-bf16-compiled"):
        for s in (1, 2):
            d = comp / cell / f"seed={s}"
            (d / "checkpoints").mkdir(parents=True)
            (d / "run.json").write_text(json.dumps({"status": "running", "update": 0}))
            (d / "metrics.jsonl").write_text("".join(json.dumps({"update": u}) + "\n" for u in range(1, 43)))
            (d / "checkpoints" / "ckpt-00000040.pt").write_bytes(b"\0" * 64)
            (d / "checkpoints" / "ckpt-00000040.pt.sha256").write_text("x")
    carry.pack(comp, Path(".carry_s20c"), part_mb=15)
    capsys.readouterr()
    assert inventory.main(["--study", str(tmp_path), "--sweep", str(sweep), "--runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("carry "))
    assert line.endswith("mujoco_gelu_amp_compile halfcheetah seeds 1-2: 4 runs at update 40")
    assert inventory.other_state(tmp_path, Path("outputs/sweeps"), "compile") == \
        "compile: 0 of 20 registered runs kept in git, 4 unfinished there (updates 42-42)"
    # session 21: a run resumed from update 165 says so in run.json; its metrics.jsonl has gone on to 371
    for d in comp.glob("*/seed=*"):
        (d / "run.json").write_text(json.dumps({"status": "running", "update": 165}))
        (d / "metrics.jsonl").write_text("".join(json.dumps({"update": u}) + "\n" for u in range(1, 372)))
    assert inventory.other_state(tmp_path, Path("outputs/sweeps"), "compile").endswith("(updates 371-371)")
