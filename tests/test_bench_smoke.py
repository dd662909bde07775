"""Every benchmark runs end to end: its ``--smoke`` mode (a tiny model, a few trials, a few
scales of the Step Law data, 3 trivial trials a side).

The scripts start together with the session's first test, each in its own process (the
``smokes`` fixture, tests/conftest.py), and these tests run last: the CPU-bound runs use the
cores the Ray tests leave idle. None writes BENCHMARKS.md.
"""

from __future__ import annotations

import json
import math
import re


def test_lm_ladder_smoke(smokes):
    rc, text = smokes("lm_ladder")
    assert rc == 0, text[-3000:]
    assert "## LM ladder on CPU (bench/lm_ladder.py)" in text
    res = json.loads((smokes.out / "result.json").read_text())
    assert [r["N"] for r in res["rungs"]] == [3e3, 6e3]
    answers = res["answers"]
    assert set(answers) == {"law", "raylaw", "raylaw-best", "asha", "tpe"}
    for key, a in answers.items():
        lr, bs = a["params"]["lr"], a["params"]["batch_size"]
        assert 1e-4 <= lr <= 0.3 and isinstance(bs, int) and 1 <= bs <= 256, (key, a)
        assert len(a["scores"]) == 2 and all(math.isfinite(x) for x in a["scores"]), (key, a)
        assert (a["tokens"] > 0) == (key != "law"), (key, a)
    # the law's prediction is the target sweep's first trial, which ASHA never stops
    assert answers["law"]["params"]["lr"] > 0
    assert res["rungs"][-1]["counts"].get("completed", 0) >= 1
    assert (smokes.out / "lm_ladder.png").stat().st_size > 0


def test_lm_noise_smoke(smokes):
    rc, text = smokes("lm_noise")
    assert rc == 0, text[-3000:]
    assert "Pooled run-to-run sd" in text
    assert "| 0.004 | 1 | 2 |" in text and "| 0.004 | 2 | 2 |" in text  # 2 seeds each


def test_lm_throughput_smoke(smokes):
    rc, text = smokes("lm_throughput")
    assert rc == 0, text[-3000:]
    assert "## LM training throughput (bench/lm_throughput.py)" in text
    assert "| 32 | 1 | 1 |" in text  # width 32, one layer, one head


def test_law_accuracy_smoke(smokes):
    rc, text = smokes("law_accuracy")
    assert rc == 0, text[-3000:]
    for version in ("smooth", "raw", "noisy"):  # each version's mean regret per method, in %
        line = next(x for x in text.splitlines() if x.startswith(version + " "))
        regrets = json.loads(line.split(" ", 1)[1].replace("'", '"'))
        assert set(regrets) == {"raylaw", "prior", "published", "ols"}
        assert all(0 <= v < 1 for v in regrets.values()), line


def test_hpo_efficiency_smoke(smokes):
    rc, text = smokes("hpo_efficiency")
    assert rc == 0, text[-3000:]
    lines = [x for x in text.splitlines()
             if x.split(" ")[0] in ("raylaw", "wrong-declared", "center", "tpe", "floor")
             and " {" in x]
    assert len(lines) == 10  # 5 methods x 2 held-out scales, answers after 1..8 trials
    assert all("8:" in x for x in lines)
    assert re.search(r"raylaw vs center: paired difference [+-]\d\.\d{3}%, 90% interval "
                     r"\[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]", text), text[-2000:]


def test_overhead_smoke(smokes):
    rc, text = smokes("overhead")
    assert rc == 0, text[-3000:]
    assert "## Sweep overhead against raw Ray Tune (bench/overhead.py)" in text
    row = next(x for x in text.splitlines() if x.startswith("| 1 |"))  # replicate 1
    assert row.count("x") >= 2  # raylaw / raw and raylaw-fresh / raw ratios
