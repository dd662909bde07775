"""The command line on the real Step Law data, and every bad-input case: one line, no output."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from raylaw import ScalingLaw
from raylaw.cli import main
from tests.conftest import LM_SPACE, ROOT, STEPLAW_CSV, STEPLAW_SPACE

FIT = ["fit", "--csv", str(STEPLAW_CSV), "--space", str(STEPLAW_SPACE), "--prior", "none",
       "--rename", "smooth loss=loss"]


@pytest.fixture(scope="module")
def law_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("law") / "law.json"
    assert main(FIT + ["--out", str(out)]) == 0
    return out


def test_fit_predict_show_plot_end_to_end(law_path, tmp_path):
    """The README's exact command line, through the real entry point."""
    r = subprocess.run(
        [sys.executable, "-m", "raylaw.tune", "predict", "--law", str(law_path),
         "--scale", "N=1e9", "--scale", "D=2e10", "--json"],
        capture_output=True, text=True, cwd=ROOT, check=True)
    pred = json.loads(r.stdout)
    assert set(pred) == {"lr", "bs"}
    for p in pred.values():
        assert p["low"] < p["center"] < p["high"]
    # the Step Law paper's formula at this scale: lr ~ 1.0e-3, bs ~ 0.58 D^0.571 / 2048 ~ 225
    assert 5e-4 < pred["lr"]["center"] < 2e-3
    assert 100 < pred["bs"]["center"] < 450
    law = json.loads(law_path.read_text())
    assert len(law["optima"]) == 17 and law["provenance"]["prior"] == "none"
    r = subprocess.run([sys.executable, "-m", "raylaw.tune", "show", str(law_path)],
                       capture_output=True, text=True, cwd=ROOT, check=True)
    assert "b_N" in r.stdout and "scatter" in r.stdout and "bowl" in r.stdout
    png = tmp_path / "law.png"
    assert main(["plot", str(law_path), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_with_published_prior(tmp_path):
    out = tmp_path / "law.json"
    args = [a if a != "none" else "steplaw" for a in FIT]
    assert main(args + ["--out", str(out)]) == 0
    assert json.loads(out.read_text())["provenance"]["prior"] == "steplaw"


def run_bad(capsys, argv, out=None):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and err.startswith("raylaw: error:")
    if out is not None:
        assert not out.exists()
    return err


def edited_csv(tmp_path, fn):
    import pandas as pd

    df = pd.read_csv(STEPLAW_CSV)
    df = fn(df)
    p = tmp_path / "edited.csv"
    df.to_csv(p, index=False)
    return str(p)


@pytest.mark.parametrize("case, expect", [
    ("missing_csv", "no such file"),
    ("unknown_rename", "no column 'smoothed'"),
    ("missing_column", "no column 'N'"),
    ("nonpositive_scale", "column 'D' row 2"),
    ("nonnumeric_scale", "column 'N' row 3"),
    ("nan_lr", "column 'lr' row 4"),
    ("too_few_scales", "at least 4 scales"),
    ("missing_space", "cannot read search space"),
    ("no_rows", "no trials"),
    ("out_under_a_file", "cannot write"),
])
def test_fit_bad_input(tmp_path, capsys, case, expect):
    out = tmp_path / "out.json"
    csv = str(STEPLAW_CSV)
    rename = ["--rename", "smooth loss=loss"]
    space = str(STEPLAW_SPACE)
    if case == "missing_csv":
        csv = str(tmp_path / "nope.csv")
    elif case == "unknown_rename":
        rename = ["--rename", "smoothed=loss"]
    elif case == "missing_column":
        csv = edited_csv(tmp_path, lambda d: d.drop(columns=["N"]))
    elif case == "nonpositive_scale":
        csv = edited_csv(tmp_path, lambda d: d.assign(D=[0] + list(d.D[1:])))
    elif case == "nonnumeric_scale":
        csv = edited_csv(tmp_path, lambda d: d.astype({"N": object}).assign(
            N=[d.N[0], "big"] + list(d.N[2:])))
    elif case == "nan_lr":
        csv = edited_csv(tmp_path, lambda d: d.assign(lr=list(d.lr[:2]) + [float("nan")]
                                                         + list(d.lr[3:])))
    elif case == "too_few_scales":
        csv = edited_csv(tmp_path, lambda d: d[d.N.isin(sorted(d.N.unique())[:1])
                                                & d.D.isin(sorted(d.D.unique())[:3])])
    elif case == "missing_space":
        space = str(tmp_path / "nope.yaml")
    elif case == "no_rows":
        csv = edited_csv(tmp_path, lambda d: d.iloc[:0])
    elif case == "out_under_a_file":
        (tmp_path / "a_file").write_text("")
        out = tmp_path / "a_file" / "law.json"
    err = run_bad(capsys, ["fit", "--csv", csv, "--space", space, "--out", str(out),
                           "--prior", "none", *rename], out)
    assert expect in err


def test_predict_bad_input(tmp_path, capsys, law_path):
    err = run_bad(capsys, ["predict", "--law", str(law_path), "--scale", "N=-1",
                           "--scale", "D=2e10"])
    assert "N=-1" in err and "positive" in err
    err = run_bad(capsys, ["predict", "--law", str(law_path), "--scale", "N=abc",
                           "--scale", "D=2e10"])
    assert "not a number" in err
    err = run_bad(capsys, ["predict", "--law", str(law_path), "--scale", "N=1e9"])
    assert "missing ['D']" in err
    bad = tmp_path / "v9.json"
    d = json.loads(law_path.read_text())
    d["format_version"] = 9
    bad.write_text(json.dumps(d))
    err = run_bad(capsys, ["predict", "--law", str(bad), "--scale", "N=1e9", "--scale", "D=1e10"])
    assert str(bad) in err and "format_version 9" in err
    err = run_bad(capsys, ["show", str(tmp_path / "missing.json")])
    assert "cannot read law file" in err
    err = run_bad(capsys, ["plot", str(law_path), "--out", str(tmp_path / "law.txt")],
                  tmp_path / "law.txt")
    assert "expected a .png file" in err
    err = run_bad(capsys, ["history", str(tmp_path / "missing.json")])
    assert "missing.json: no such law file" in err
    err = run_bad(capsys, ["predict", "--law", str(law_path), "--scale", "N=1e9",
                           "--scale", "D=2e10", "--scale", "N=2e9"])
    assert "--scale N: given twice" in err


def test_a_trials_file_without_a_governed_column_fits_the_others_and_says_so(tmp_path, capsys):
    csv = edited_csv(tmp_path, lambda d: d[d.N.isin(sorted(d.N.unique())[:4])].drop(
        columns=["lr"]))
    out = tmp_path / "law.json"
    assert main(["fit", "--csv", csv, "--space", str(STEPLAW_SPACE), "--out", str(out),
                 "--rename", "smooth loss=loss", "--prior", "none"]) == 0
    assert "has no column 'lr'" in capsys.readouterr().err
    law = ScalingLaw.load(out)
    assert law.terms["bs"].fitted and not law.terms["lr"].fitted


def test_written_files_keep_their_mode_or_take_the_umasks(tmp_path, law_path):
    law = ScalingLaw.load(law_path)
    old = os.umask(0o022)
    try:
        law.save(tmp_path / "new.json")
        kept = tmp_path / "kept.json"
        kept.write_text("{}")
        kept.chmod(0o640)
        law.save(kept)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o644
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and ScalingLaw.load(kept).optima


def test_failed_fit_keeps_previous_output(tmp_path, capsys, law_path):
    out = tmp_path / "law.json"
    shutil.copy(law_path, out)
    before = out.read_bytes()
    run_bad(capsys, ["fit", "--csv", str(tmp_path / "nope.csv"), "--space", str(STEPLAW_SPACE),
                     "--out", str(out)])
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["law.json"]  # no temp files left behind


@pytest.mark.parametrize("store_env", [None, "sqlite:///team.db"])
def test_sweep_config_defaults_are_the_cli_defaults(monkeypatch, store_env):
    """A Python-API sweep with nothing set runs as ``sweep`` with no optional flag: every field
    the CLI fills (max_failures, the store from $RAYLAW_STORE, the law file, ...) agrees."""
    from dataclasses import fields

    from raylaw.cli import build_parser, sweep_config
    from raylaw.sweep import SweepConfig

    if store_env is None:
        monkeypatch.delenv("RAYLAW_STORE", raising=False)
    else:
        monkeypatch.setenv("RAYLAW_STORE", store_env)
    scale = {"N": 1e5, "D": 1e6}
    args = build_parser().parse_args(["sweep", "--space", str(LM_SPACE), "--scale", "N=1e5",
                                      "--scale", "D=1e6"])
    cli = sweep_config(args, scale)
    api = SweepConfig(space=cli.space, scale=scale)
    assert len(fields(SweepConfig)) > 20
    assert {f.name: getattr(api, f.name) for f in fields(SweepConfig)} == {
        f.name: getattr(cli, f.name) for f in fields(SweepConfig)}
    assert api.max_failures == 1 and api.law_path == "lm.law.json"
    assert api.store == (store_env or "sqlite:///raylaw.db")
