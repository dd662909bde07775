"""A sweep's console output that fits a screen: its progress (a Ray Tune callback) and its
end-of-sweep summary.

One line per finished trial (its Optuna number, status, metric, fidelity reached and governed
hyperparameters) with the best completed trial so far and what the law's own prediction
reached, and a status line every ``every`` seconds while trials run. It replaces Ray Tune's
per-trial boxes and tables (``--verbose 2`` brings those back).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ray.tune import Callback

from raylaw.search import LawSearch, trial_status

if TYPE_CHECKING:
    from raylaw.sweep import SweepResult

STATUS_EVERY_S = 30.0


@contextlib.contextmanager
def tune_console(verbose: int) -> Iterator[None]:
    """Around ``Tuner.fit``: below ``verbose`` 2 (Tune's verbose 0), Ray Tune prints nothing.

    Ray 2.x's default output engine prints an experiment header and paths even at verbose 0;
    its older engine (``RAY_AIR_NEW_OUTPUT=0``) prints nothing there, so it is used meanwhile.
    Tune's traceback of every failed trial is left to ``SweepProgress`` (the first in full).
    """
    if verbose >= 2:
        yield
        return
    quiet = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0"}
    old = {k: os.environ.get(k) for k in quiet}
    os.environ.update(quiet)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class SweepProgress(Callback):
    """Print a sweep's progress as its trials finish (see the module docstring).

    Args:
        search: the sweep's ``LawSearch`` (Optuna numbers, the law's trial).
        governed: the hyperparameters shown per trial.
        total: the sweep's trials.
        done: how many of them finished before (a resumed sweep).
        label: starts the header and every status line, e.g. "ladder step 2 of 5".
        every: seconds without a line before a status line (default 30).
        out: where lines go (default: stdout).
    """

    def __init__(self, search: LawSearch, governed: list[str], *, total: int, done: int = 0,
                 label: str = "", every: float | None = None, out: TextIO | None = None
                 ) -> None:
        self.search = search
        self.governed = list(governed)
        self.total, self.done, self.label = total, done, label
        self.every = STATUS_EVERY_S if every is None else every
        self.out = out
        self.best: tuple[float, int] | None = None  # (metric, number) of the best completed
        self.law: str | None = None  # what the law's own prediction reached, when it finished
        self._start = self._last = time.monotonic()
        self._header = False
        self._errors = False  # a crash was shown in full

    # output ----------------------------------------------------------------------------------
    def _print(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)
        self._last = time.monotonic()

    def _head(self) -> None:
        if self._header:
            return
        self._header = True
        s = self.search
        where = f"{self.label}: " if self.label else ""
        self._print(f"{where}sweep {s.study.study_name}: {self.total} trials"
                    + (f", {self.done} finished before" if self.done else "")
                    + (f", {s.fidelity} budget {_si(s.budget)}" if s.budget else "")
                    + "; * the law's prediction (never stopped early)")
        cols = "".join(f"{n:>12}" for n in self.governed)
        self._print(f"{'#':>5}  {'status':<10}{s.metric:>9}  {s.fidelity or 'iter':<11}{cols}"
                    f"  {'best so far':>14}  {'law *':>8}")

    def _vs(self) -> str:
        best = f"{self.best[0]:.5g} #{self.best[1]}" if self.best else "-"
        return f"  {best:>14}  {self.law or '-':>8}"

    # Tune hooks ------------------------------------------------------------------------------
    def setup(self, **info: Any) -> None:
        self._head()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished(trial, error=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._head()
        self._first_error(trial)
        number = self.search.numbers.get(trial.trial_id, "?")
        self._print(f"{number:>5}  crashed, retried ({trial.num_failures} of "
                    f"{trial.max_failures}): {_error_line(trial)}")

    def _first_error(self, trial: Any) -> None:
        """The first crash of the sweep in full (its traceback); later ones in a line each."""
        if self._errors:
            return
        self._errors = True
        text = _error_text(trial)
        if text:
            number = self.search.numbers.get(trial.trial_id, "?")
            self._print(f"trial {number} crashed; its error in full (later ones in a line each, "
                        f"all in the trials' error.txt under Tune's results):\n{text.rstrip()}")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        running = [t for t in trials if t.status == "RUNNING"]
        if not running:
            return
        s = self.search
        parts = []
        for t in running[:4]:
            r = t.last_result or {}
            at = _reached(r.get(s.fidelity) if s.fidelity else r.get("training_iteration"),
                          s.budget)
            value = r.get(s.metric)
            parts.append(f"#{s.numbers.get(t.trial_id, '?')} "
                         + (f"{value:.4g} at {at}" if isinstance(value, (int, float))
                            else "starting"))
        more = f" (+{len(running) - 4})" if len(running) > 4 else ""
        where = f"{self.label}, " if self.label else ""
        self._print(f"  [{where}{_clock(now - self._start)}] {self.done} of {self.total} "
                    f"finished; running {', '.join(parts)}{more}" + self._vs())

    # one finished trial ----------------------------------------------------------------------
    def _finished(self, trial: Any, error: bool) -> None:
        self._head()
        s = self.search
        result = trial.last_result or {}
        status = trial_status(result, error, s.metric, s.fidelity, s.budget)
        self.done += 1
        number = s.numbers.get(trial.trial_id, "?")
        value = result.get(s.metric)
        shown = f"{value:.5g}" if status in ("completed", "stopped") else "-"
        if status == "completed" and isinstance(value, (int, float)) and math.isfinite(value):
            sign = 1.0 if s.mode == "min" else -1.0
            if self.best is None or sign * value < sign * self.best[0]:
                self.best = (float(value), number)
        if trial.trial_id in s.keep:  # the law's own prediction
            self.law = shown if status == "completed" else status
        reached = _reached(result.get(s.fidelity) if s.fidelity else
                           result.get("training_iteration"), s.budget)
        hps = "".join(f"{_fmt(trial.config.get(n)):>12}" for n in self.governed)
        tail = ""
        if status == "errored":
            self._first_error(trial)
            tail = f"  {_error_line(trial)}"
        mark = "*" if trial.trial_id in s.keep else " "
        self._print(f"{number:>5}{mark} {status:<10}{shown:>9}  {reached:<11}{hps}"
                    + self._vs() + tail)


# the end-of-sweep summary ----------------------------------------------------------------
def format_summary(r: SweepResult) -> str:
    """The end-of-sweep summary: prediction vs optimum, best trial, law before/after, cost."""
    lines = [f"\n== sweep {r.study_name}{' (resumed)' if r.resumed else ''} ==",
             "trials: " + ", ".join(f"{k} {v}" for k, v in sorted(r.counts.items()))]
    if r.resources:
        lines.append(resources_line(r.resources))
    if r.best_value is not None:
        lines.append(f"best trial: {r.best_value:.5g}  " + ", ".join(
            f"{k}={_fmt(v)}" for k, v in r.best_params.items()))
    if r.center_value is not None:
        lines.append(f"law's prediction, trained to full length: {r.center_value:.5g}")
    if r.recommended is not None:
        rec = r.recommended
        parts = [f"{k}={_fmt(v)}" + (f" [{rec['low'][k]:.3g}, {rec['high'][k]:.3g}]"
                                     if k in rec["low"] else "")
                 for k, v in rec["params"].items()]
        noise = f"; metric noise ~{rec['noise']:.2%}" if rec.get("noise") is not None else ""
        lines.append(f"answer (the landscape model's pick; [the optimum's {rec['coverage']:.0%} "
                     "interval]): "
                     + ", ".join(parts) + noise)
    if r.optimum is not None:
        lines.append(f"{'hp':<14}{'predicted':>11}{'interval':>24}{'found':>11}"
                     f"{'log err':>9}  inside")
        for name, v in r.optimum.values.items():
            p = r.prediction.get(name)
            if p is None:
                lines.append(f"{name:<14}{'-':>11}{'-':>24}{v:>11.4g}")
                continue
            err = math.log(v / p.center)
            inside = r.optimum.inside(name, p.low, p.high)  # one-sided for a bound
            found = r.optimum.mark(name) + f"{v:.4g}"
            lines.append(f"{name:<14}{p.center:>11.4g}{f'[{p.low:.3g}, {p.high:.3g}]':>24}"
                         f"{found:>11}{err:>+9.3f}  {'yes' if inside else 'NO'}")
    else:
        lines.append("no completed full-length trial: no optimum at this scale")
    for label, law in (("law before", r.law_before), ("law after", r.law_after)):
        if law is None:
            continue
        parts = []
        for name, s in law.summary().items():
            if s.get("fitted"):
                parts.append(f"{name}: " + " ".join(f"{k}={v:+.3f}" for k, v in s["coef"].items()))
        lines.append(f"{label}: " + ("; ".join(parts) or "nothing fitted (no prior, no optima)"))
    if r.law_version is not None:
        lines.append(f"law version {r.law_version} written")
    if r.tokens_full:
        lines.append(f"tokens trained: {r.tokens_trained:.3g} vs {r.tokens_full:.3g} for a "
                     f"full-length run of every trial ({r.tokens_trained / r.tokens_full:.0%})")
    return "\n".join(lines)


def resources_line(res: dict[str, float]) -> str:
    """What each trial asked Ray for, e.g. "2 workers x (0.5 CPU, 0 GPU)" per trial."""
    each = f"{res['cpu']:g} CPU, {res['gpu']:g} GPU"
    if res.get("workers"):
        return (f"resources per trial: {res['workers']:g} Ray Train workers x ({each}) "
                f"= {res['workers'] * res['cpu']:g} CPU, {res['workers'] * res['gpu']:g} GPU")
    return f"resources per trial: {each}"


def _error_text(trial: Any) -> str:
    """What Tune wrote to the trial's error file (its latest failure's traceback)."""
    path = getattr(trial, "error_file", None)
    if not path or not Path(path).is_file():
        return ""
    text = re.sub(r"\x1b\[[0-9;]*m", "", Path(path).read_text(errors="replace"))  # colours
    return text[text.rfind("Failure # "):] if "Failure # " in text else text


def _error_line(trial: Any) -> str:
    """The last line of a trial's error (e.g. ``RuntimeError: ...``), shortened."""
    lines = [ln.strip() for ln in _error_text(trial).splitlines() if ln.strip()]
    text = lines[-1] if lines else ""
    return (text[:77] + "...") if len(text) > 80 else text or "(no error message)"


def _reached(value: Any, budget: float | None) -> str:
    """``501k 100%`` (fidelity and share of the budget), ``501k``, or ``-``."""
    if not isinstance(value, (int, float)):
        return "-"
    return f"{_si(value)} {value / budget:.0%}" if budget else _si(value)


def _si(x: float) -> str:
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
