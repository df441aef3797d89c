"""esper-bench --quick writes well-formed JSON and markdown (issue 5)."""

import json

import pytest

from esper_exp.bench import cli
from esper_exp.bench.gelu import seed_flops


def _strict(s):
    raise ValueError(f"non-standard JSON constant {s}")


@pytest.fixture(scope="module")
def quick_all(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert cli.main(["all", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    return out


def test_quick_all_writes_strict_json_with_every_part(quick_all):
    res = json.loads((quick_all / "all.json").read_text(), parse_constant=_strict)
    assert set(res["parts"]) == {"numerics", "blend", "fusion", "gelu"}
    assert res["meta"]["machine"]["device"] == "cpu"
    assert res["ceilings"]["copy"]["gbps"] > 0
    assert all(c["tflops"] > 0 for c in res["ceilings"]["matmul"].values())
    for rec in res["parts"]["gelu"]["records"]:
        assert "error" not in rec, rec
        assert rec["median_us"] > 0 and len(rec["repeats_us"]) == 2
    assert {s["precision"] for s in res["parts"]["gelu"]["speedups"]} == {"fp32", "bf16", "fp16"}
    for rec in res["parts"]["fusion"]["records"]:
        assert rec["forward"]["gelu"]["placement"] not in ("absent", "aten_fallback")
    for rec in res["parts"]["blend"]["speed"]:
        assert rec["median_us"] > 0


def test_quick_all_writes_markdown_tables(quick_all):
    md = (quick_all / "all.md").read_text()
    for heading in ("## numerics", "## blend", "## fusion", "## gelu", "tanh speed-up", "x roofline"):
        assert heading in md


def test_unknown_precision_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["gelu", "--quick", "--precisions", "fp8", "--out", str(tmp_path)])
    assert "unknown precision" in capsys.readouterr().err


def test_seed_flops():
    assert seed_flops("mlp", 384, 65536, "fwd") == 2 * 2 * 65536 * 384 * 1536
    assert seed_flops("mlp_small", 64, 64, "fwdbwd") == 3 * 2 * 2 * 64 * 64 * 128
