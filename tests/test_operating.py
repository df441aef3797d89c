"""experiments/mujoco_gelu_amp/operating/operating.py: simulated studies judged by the registered rule
(esper_exp.analysis.decision.judge_all), the scores drawn with a planted tanh effect and a pairing correlation."""

import importlib.util
from pathlib import Path

import numpy as np
from esper_exp.analysis.rule import Rule

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("operating", ROOT / "experiments/mujoco_gelu_amp/operating/operating.py")
operating = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(operating)
RULE = Rule.from_dict(operating.registered_rule())


def test_draw_has_the_asked_sd_pairing_and_planted_effect():
    s = operating.draw(np.random.default_rng(0), {"hopper": 0.2}, 20_000, 0.3, 0.5)["hopper"]
    a, b = (np.array(list(s[c].values())) for c in ("exact/fp32", "tanh/fp32"))
    assert abs(a.std() - 0.2) < 0.005 and abs(b.std() - 0.2) < 0.005
    assert abs(np.corrcoef(a, b)[0, 1] - 0.5) < 0.03
    assert abs((b - a).mean() - 0.3) < 0.01
    bf16 = np.array(list(s["exact/bf16"].values()))
    assert abs((bf16 - a).mean()) < 0.01  # the precision effect is zero


def test_tight_scores_give_equivalent_without_an_effect_and_different_with_a_large_one():
    sds = {"halfcheetah": 0.02, "hopper": 0.02}
    counts = operating.simulate(RULE, sds, 20, [0.0, 0.5], [0.0], sims=3, reps=300, seed=1)
    scopes = {k[2] for k in counts}
    assert scopes == {"all envs", "halfcheetah", "hopper"}
    for (rho, effect, scope, contrast), c in counts.items():
        assert sum(c.values()) == 3
        gelu = contrast.startswith("tanh/") and "exact/" in contrast
        want = "different" if (effect == 0.5 and gelu) else "equivalent"
        assert c[want] == 3, (effect, scope, contrast, c)


def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys):
    assert operating.main(["--sims", "0", "--out", str(tmp_path / "o")]) == 2
    assert operating.main(["--rhos", "1.0", "--out", str(tmp_path / "o")]) == 2
    assert operating.main(["--effects", "x", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("operating.py: --") for line in err)
    assert not (tmp_path / "o").exists()
