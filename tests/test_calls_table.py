"""experiments/gpu_throughput/calls_table.py: the README's per-call rows from saved progress files."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("calls_table", ROOT / "experiments" / "gpu_throughput" / "calls_table.py")
calls_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(calls_table)


def _progress(when: str, runs: dict, interval: dict | None = None) -> dict:
    return {"when": when, "runs": {k: {"status": st, "steps": 2048 * u, "updates": u, **extra}
                                   for k, (st, u, extra) in runs.items()}, **({"interval": interval} if interval else {})}


def test_rows_name_each_group_that_trained_and_the_boxs_interval(tmp_path, capsys):
    before = _progress("2026-11-24T03:40:00Z", {
        **{f"hc-exact-fp32/seed={s}": ("interrupted", 476, {}) for s in (11, 12)},
        **{f"hc-exact-fp32/seed={s}": ("running", 0, {}) for s in (21, 22)}})
    # without a group field (older files): a group is the runs of one env that moved from one update to one update
    call1 = _progress("2026-11-24T03:57:04Z", {
        **{f"hc-exact-fp32/seed={s}": ("completed", 488, {}) for s in (11, 12)},
        **{f"hc-exact-fp32/seed={s}": ("running", 266, {}) for s in (21, 22)}},
        {"wall_s": 541.3, "env_steps": 22118400, "env_steps_per_s": 40861.2, "outside_updates_s": 54.4})
    # with it: the group decides, even where members stand at different updates
    call2 = _progress("2026-11-24T04:06:30Z", {
        **{f"hc-exact-fp32/seed={s}": ("completed", 488, {"group": "g1"}) for s in (11, 12)},
        "hc-exact-fp32/seed=21": ("running", 300, {"group": "g2"}),
        "hc-exact-fp32/seed=22": ("running", 301, {"group": "g2"})})
    paths = []
    for i, p in enumerate((before, call1, call2)):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(p))
    assert calls_table.main([str(p) for p in paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == ("| 1 | 03:57 | hc 11-12: 476 -> 488 (done), hc 21-22: 0 -> 266 | 541 | 22,118,400 | 40,861 | "
                        "54 |")
    assert lines[3] == "| 2 | 04:06 | hc 21-22: 266 -> 301 |  |  |  |  |"  # no interval: empty cells


def test_a_dash_before_means_the_first_call_started_from_scratch(tmp_path, capsys):
    call1 = _progress("2026-11-24T08:36:26Z",
                      {f"w-exact-fp32/seed={s}": ("running", 157, {"group": "g"}) for s in (1, 2)},
                      {"wall_s": 480.6, "env_steps": 643072, "env_steps_per_s": 1338.1, "outside_updates_s": 35.0})
    (tmp_path / "1.json").write_text(json.dumps(call1))
    assert calls_table.main(["-", str(tmp_path / "1.json")]) == 0
    assert capsys.readouterr().out.splitlines()[2] == "| 1 | 08:36 | w 1-2: 0 -> 157 | 481 | 643,072 | 1,338 | 35 |"


def test_too_few_files_or_an_unreadable_one_is_one_line_and_exit_2(tmp_path, capsys):
    assert calls_table.main([str(tmp_path / "a.json")]) == 2
    (tmp_path / "bad.json").write_text("{")
    assert calls_table.main([str(tmp_path / "bad.json"), str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("calls_table.py: ") for line in err)


def test_groups_of_one_cell_are_named_by_cell_and_overlapping_groups_have_no_outside_time(tmp_path, capsys):
    # the probe's layout: one process per env x cell, several side by side (NJ=4): the member means summed over the
    # groups exceed the wall time, so progress.py's time outside updates comes out negative
    before = _progress("2026-11-24T17:20:00Z", {})
    call1 = _progress("2026-11-24T17:28:50Z", {
        **{f"hc-exact-fp32/seed={s}": ("running", 108, {"group": "hc-exact-fp32/seed=1"}) for s in (1, 2)},
        **{f"hc-tanh-bf16/seed={s}": ("running", 99, {"group": "hc-tanh-bf16/seed=1"}) for s in (1, 2)}},
        {"wall_s": 541.6, "env_steps": 848896, "env_steps_per_s": 1567.4, "outside_updates_s": -1478.9})
    paths = []
    for i, p in enumerate((before, call1)):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(p))
    assert calls_table.main([str(p) for p in paths]) == 0
    assert capsys.readouterr().out.splitlines()[2] == (
        "| 1 | 17:28 | hc-exact-fp32 1-2: 0 -> 108, hc-tanh-bf16 1-2: 0 -> 99 | 542 | 848,896 | 1,567 | overlapped |")
