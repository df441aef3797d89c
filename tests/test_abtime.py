"""experiments/abtime.py: two whole commands timed side by side, interleaved, each run's own figures."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("abtime", ROOT / "experiments" / "abtime.py")
abtime = importlib.util.module_from_spec(spec)
spec.loader.exec_module(abtime)


def _appender(path: Path, letter: str, code: int = 0) -> str:
    return f"{sys.executable} -c \"import sys; open(r'{path}', 'a').write('{letter}'); sys.exit({code})\""


def test_runs_alternate_a_then_b_and_warmup_pairs_are_not_counted(tmp_path, capsys):
    log = tmp_path / "order.txt"
    assert abtime.main(["-n", "3", "--warmup", "1", "--a", _appender(log, "A"), "--b", _appender(log, "B", 3)]) == 0
    assert log.read_text() == "ABABABAB"  # one warm-up pair, then three counted ones, A first in each
    out = capsys.readouterr().out
    assert "pairs counted: 3" in out
    assert "exit codes seen: [0, 3]" in out  # a command's own exit status is reported, not acted on
    rows = [r for r in out.splitlines() if r.startswith("| ") and not r.startswith("| figure")]
    assert [r.split(" | ")[0][2:] for r in rows] == list(abtime.FIGURES)


def test_each_run_reports_its_own_cpu_time_not_its_siblings():
    busy = [sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"]
    idle = [sys.executable, "-c", "pass"]
    a, b = abtime.run_once(busy), abtime.run_once(idle)
    assert a["user_s"] + a["sys_s"] >= 0.3  # the busy child's own CPU seconds (os.wait4), at least what it spun
    assert b["user_s"] + b["sys_s"] < a["user_s"] + a["sys_s"]
    assert a["rc"] == 0 and a["peak_mib"] > 0


def test_bad_arguments_exit_2_with_one_line_naming_the_value(capsys):
    assert abtime.main(["-n", "0", "--a", "true", "--b", "true"]) == 2
    assert "-n 0 is out of range; allowed 1 to 100" in capsys.readouterr().err
    assert abtime.main(["--warmup", "11", "--a", "true", "--b", "true"]) == 2
    assert abtime.main(["--a", "", "--b", "true"]) == 2
    assert "--a is empty" in capsys.readouterr().err
    assert abtime.main(["--a", "/nonexistent/cmd", "--b", "true"]) == 2
    assert "cannot start a command" in capsys.readouterr().err
