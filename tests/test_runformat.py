"""esper_exp/runformat.py: the run-directory format shared by every reader and writer (torch-free)."""

import json
import math
import subprocess
import sys

import pytest

from esper_exp import runformat as rf


def test_runformat_imports_without_torch():
    code = "import sys, esper_exp.runformat; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cell_names():
    cfg = {"env": {"name": "cartpole"}, "model": {"gelu": "tanh", "compile": True}, "precision": {"name": "bf16"},
           "drift": {"perturb": "ulp"}}
    assert rf.cell_name(cfg) == "cartpole/tanh/bf16/compiled/perturb-ulp"
    assert rf.cell_name(cfg, sep="-") == "cartpole-tanh-bf16-compiled-perturb-ulp"
    assert rf.cell_label("exact", "fp32", False) == "exact/fp32"


def test_non_finite_numbers_are_written_as_strict_json_strings_and_read_back(tmp_path):
    record = {"grad_norm": math.inf, "loss": -math.inf, "kl": math.nan, "ok": 1.5, "nested": [math.inf]}
    text = rf.dumps(record)
    json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} token"))  # strict parsers accept it
    assert json.loads(text)["grad_norm"] == "Infinity"
    path = tmp_path / "m.jsonl"
    path.write_text(text + "\n")
    back = rf.read_jsonl(path)[0]
    assert back["grad_norm"] == math.inf and back["loss"] == -math.inf and math.isnan(back["kl"])
    assert back["nested"] == [math.inf] and back["ok"] == 1.5
    rf.write_json_atomic(tmp_path / "run.json", {"x": math.nan})
    assert json.loads((tmp_path / "run.json").read_text()) == {"x": "NaN"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_strict_jsonl_reader_names_the_first_bad_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"update": 1}\n{"update": 2}{"update": 3}\n{"update": 4}\n')
    with pytest.raises(rf.BadRunFile, match="line 2 is not valid JSON"):
        rf.read_jsonl(path)
    path.write_text('{"update": 1}\n{"upd')
    with pytest.raises(rf.BadRunFile, match="line 2 is cut off"):
        rf.read_jsonl(path)
    path.write_text('{"update": 1}\n[1]\n')
    with pytest.raises(rf.BadRunFile, match="line 2 is not a JSON object"):
        rf.read_jsonl(path)
    path.write_text('{"update": 1, "g": NaN}\n')  # files written before the strict rule
    assert math.isnan(rf.read_jsonl(path)[0]["g"])


def test_check_run_files_finds_missing_updates_and_status_mismatch(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"update": u}) + "\n" for u in (1, 2, 4)))
    with pytest.raises(rf.BadRunFile, match="record 3 has update 4"):
        rf.check_run_files(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"update": u}) + "\n" for u in (1, 2)))
    with pytest.raises(rf.BadRunFile, match="holds 2 updates but run.json says completed at update 3"):
        rf.check_run_files(tmp_path, {"status": "completed", "update": 3})
    assert len(rf.check_run_files(tmp_path, {"status": "completed", "update": 2})[0]) == 2


def test_run_lock_is_exclusive_and_released(tmp_path):
    a = rf.RunLock(tmp_path).acquire()
    with pytest.raises(rf.RunLocked, match="in use by another process"):
        rf.RunLock(tmp_path).acquire()  # a second open file description: flock refuses it even in one process
    a.release()
    with rf.RunLock(tmp_path) as b:
        assert b.held and b.taken_over is None
    assert (tmp_path / rf.LOCK_NAME).read_text() == ""


def test_rule_keys_added_later_keep_older_runs_identity():
    """analysis.grid / window / last were added after runs stored rules without them: a run.json written before
    keeps its config hash (so its sweep resumes), the same config with the keys at their defaults hashes the same,
    another value does not, and esper-report reads the old and new stored rules as one rule."""
    import copy
    import json
    from pathlib import Path

    from esper_exp.analysis.rule import ADDED_DEFAULTS, rule_from_runs
    from esper_exp.tracking import config_hash

    old = json.loads((Path(__file__).parent / "data" / "run_config_before_endpoint_keys.json").read_text())
    assert not set(ADDED_DEFAULTS) & set(old["config"]["analysis"])
    assert config_hash(old["config"]) == old["config_hash"]
    new = copy.deepcopy(old["config"])
    new["analysis"].update(ADDED_DEFAULTS)
    assert config_hash(new) == old["config_hash"]
    new["analysis"]["window"] = 5
    assert config_hash(new) != old["config_hash"]
    new["analysis"]["window"] = ADDED_DEFAULTS["window"]
    rule, problems = rule_from_runs([{"config": old["config"]}, {"config": new}])
    assert not problems and rule["window"] == ADDED_DEFAULTS["window"]
