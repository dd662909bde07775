"""Search spaces: YAML files declaring the metric, scale variables and hyperparameters.

A governed hyperparameter has a scaling law; given a law and a target scale, its range is
narrowed to the law's interval (clipped to the hard bounds). Free hyperparameters are searched
over their declared range. The same space yields a Ray Tune ``param_space`` and Optuna
distributions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from optuna import distributions as od

from raylaw.errors import RaylawError

if TYPE_CHECKING:
    from raylaw.law import ScalingLaw

RESERVED = {"scale"}
TOP_FIELDS = {"name", "metric", "mode", "scale", "governed", "free", "fidelity", "budget",
              "trainable", "noise", "description"}
PARAM_FIELDS = {"type", "low", "high", "log", "choices", "depends_on", "units", "seq_len",
                "role", "description"}


@dataclass(frozen=True)
class Param:
    """One hyperparameter: float or int (optionally log-scaled) in [low, high], or choices.

    Args:
        name: its key in a trial's config.
        type: "float" or "int".
        low: the hard range's lower end (None with ``choices``).
        high: its upper end.
        log: searched and fitted on a log scale.
        choices: a categorical hyperparameter's values (None: a range).
        depends_on: the scale variables its law depends on (empty: a free hyperparameter).
        units: a batch size's units, "sequences" or "tokens" (for published priors).
        seq_len: tokens per sequence, when ``units`` is "sequences".
        role: "lr" or "batch_size", when the name does not say which (for published priors).
    """

    name: str
    type: str = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    depends_on: tuple[str, ...] = ()
    units: str | None = None
    seq_len: int | None = None
    role: str | None = None

    @property
    def governed(self) -> bool:
        return bool(self.depends_on)

    def bounded(self, low: float, high: float) -> Param:
        """A copy with the range [low, high] (rounded outward for ints)."""
        if self.type == "int":
            low, high = math.floor(low), math.ceil(high)
        return Param(self.name, self.type, low, high, self.log, self.choices, self.depends_on,
                     self.units, self.seq_len, self.role)

    def optuna(self) -> od.BaseDistribution:
        """This parameter as an Optuna distribution."""
        if self.choices is not None:
            return od.CategoricalDistribution(self.choices)
        if self.type == "int":
            return od.IntDistribution(int(self.low), int(self.high), log=self.log)
        return od.FloatDistribution(float(self.low), float(self.high), log=self.log)

    def tune(self) -> Any:
        """This parameter as a Ray Tune sampling domain."""
        from ray import tune

        if self.choices is not None:
            return tune.choice(list(self.choices))
        if self.type == "int":  # Ray's integer upper bounds are exclusive
            f = tune.lograndint if self.log else tune.randint
            return f(int(self.low), int(self.high) + 1)
        return (tune.loguniform if self.log else tune.uniform)(self.low, self.high)


@dataclass(frozen=True)
class SearchSpace:
    """A parsed search-space file (``SearchSpace.load``; the format: docs/search.md).

    Args:
        name: the space's name, recorded with every sweep and law.
        metric: the metric trials report.
        mode: "min" or "max".
        scale: the scale variables and what each means, e.g. ``{"N": "parameters"}``.
        governed: the hyperparameters with a scaling law.
        free: the hyperparameters searched over their declared range.
        fidelity: the result key ASHA stops trials on (None: no early stopping).
        budget: the scale variable a full-length trial's fidelity reaches, e.g. "D".
        trainable: the default ``module:function`` to sweep.
        path: the file it was loaded from.
        noise: the metric's relative sd from run to run, if measured.
    """

    name: str
    metric: str
    mode: str
    scale: dict[str, str]
    governed: dict[str, Param]
    free: dict[str, Param]
    fidelity: str | None = None
    budget: str | None = None
    trainable: str | None = None
    path: str | None = None
    noise: float | None = None  # the metric's relative sd from run to run, if measured

    @property
    def params(self) -> dict[str, Param]:
        return {**self.governed, **self.free}

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        """Parse a YAML search-space file (safe YAML: data only, never executed)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise RaylawError(f"{path}: cannot read search space ({e.strerror})") from e
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise RaylawError(f"{path}: not valid YAML{where} ({str(e).splitlines()[0]})") from e
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, d: Any, where: str = "space") -> SearchSpace:
        """Validate a parsed search space; errors name ``where`` and the field."""
        if not isinstance(d, dict):
            raise RaylawError(f"{where}: expected a mapping at the top level")
        unknown = set(d) - TOP_FIELDS
        if unknown:
            raise RaylawError(f"{where}: unknown field '{sorted(unknown)[0]}' "
                              f"(expected some of {sorted(TOP_FIELDS)})")
        name = _str(d, "name", where)
        metric = _str(d, "metric", where)
        mode = d.get("mode", "min")
        if mode not in ("min", "max"):
            raise RaylawError(f"{where}: field 'mode' must be 'min' or 'max', got {mode!r}")
        scale = d.get("scale")
        if not isinstance(scale, dict) or not scale:
            raise RaylawError(f"{where}: field 'scale' must map scale variable names to "
                              "descriptions, e.g. {N: parameters, D: tokens}")
        scale = {str(k): "" if v is None else str(v) for k, v in scale.items()}
        governed = _params(d.get("governed"), "governed", where, scale, governed=True)
        free = _params(d.get("free") or {}, "free", where, scale, governed=False)
        names = set(governed) | set(free)
        clash = (set(governed) & set(free)) | (names & (set(scale) | RESERVED))
        if clash:
            raise RaylawError(f"{where}: name '{sorted(clash)[0]}' is used twice (hyperparameter "
                              "names must differ from each other, from scale variables and "
                              "from 'scale')")
        budget = d.get("budget")
        if budget is not None and budget not in scale:
            raise RaylawError(f"{where}: field 'budget' must name a scale variable "
                              f"{sorted(scale)}, got {budget!r}")
        fidelity = d.get("fidelity")
        if fidelity is not None and not isinstance(fidelity, str):
            raise RaylawError(f"{where}: field 'fidelity' must be a metric name")
        trainable = d.get("trainable")
        if trainable is not None and (not isinstance(trainable, str) or ":" not in trainable):
            raise RaylawError(f"{where}: field 'trainable' must be 'module:function'")
        noise = d.get("noise")
        if noise is not None:
            try:
                noise = float(noise)
            except (TypeError, ValueError):
                noise = math.nan
            if isinstance(d["noise"], bool) or not 0 < noise < 1:
                raise RaylawError(f"{where}: field 'noise' must be the metric's relative sd from "
                                  f"run to run, a number in (0, 1) such as 0.006, got "
                                  f"{d['noise']!r}")
        return cls(name, metric, mode, scale, governed, free, fidelity, budget, trainable,
                   None if where == "space" else where, noise)

    def fix(self, values: dict[str, Any]) -> SearchSpace:
        """A copy without the free hyperparameters named in ``values`` (held at those values).

        Other names pass through (plain trial constants). A governed hyperparameter cannot be
        fixed: the law sets its range, and a sweep that never varies it cannot refit the law.
        """
        for name, value in values.items():
            if name in self.governed:
                raise RaylawError(f"constant {name}={value!r}: {name} is governed by the law "
                                  f"of space {self.name!r}, so the sweep must search it")
            p = self.free.get(name)
            if p is None:
                continue
            ok = value in p.choices if p.choices is not None else (
                isinstance(value, (int, float)) and not isinstance(value, bool)
                and p.low <= value <= p.high)
            if not ok:
                want = (f"one of {list(p.choices)}" if p.choices is not None
                        else f"a number in [{p.low:g}, {p.high:g}]")
                raise RaylawError(f"constant {name}={value!r}: expected {want}, the range of "
                                  f"free hyperparameter {name} in space {self.name!r}")
        return replace(self, free={k: p for k, p in self.free.items() if k not in values})

    # narrowing --------------------------------------------------------------------------------
    def check_law(self, law: ScalingLaw) -> None:
        """Refuse a law fitted for another space, or one without this space's governed terms."""
        if law.space_name != self.name:
            raise RaylawError(f"law fitted for space '{law.space_name}', not '{self.name}'")
        for name, hp in self.governed.items():
            term = law.terms.get(name)
            if term is None or set(term.depends_on) != set(hp.depends_on):
                raise RaylawError(f"law has no term for '{name}' on {list(hp.depends_on)} as "
                                  f"space '{self.name}' declares")

    def narrowed(self, law: ScalingLaw | None = None, scale: dict[str, float] | None = None,
                 coverage: float = 0.9) -> dict[str, Param]:
        """Every hyperparameter, governed ones narrowed to the law's interval at ``scale``.

        The interval is for an optimum a sweep will measure there (``observed=True``: the law's
        uncertainty and the scales' scatter around it), clipped to the hard bounds; a governed
        hyperparameter keeps its full range when there is no law (or the law does not cover it).
        """
        preds = {}
        if law is not None:
            if scale is None:
                raise RaylawError("narrowing with a law needs a target scale")
            self.check_law(law)
            preds = law.predict(scale, coverage, observed=True)
        out = {}
        for name, p in self.governed.items():
            pred = preds.get(name)
            out[name] = p if pred is None else p.bounded(*clip_interval(pred.low, pred.high, p))
        out.update(self.free)
        return out

    def tune_space(self, law: ScalingLaw | None = None, scale: dict[str, float] | None = None,
                   coverage: float = 0.9) -> dict[str, Any]:
        """A Ray Tune ``param_space``; the target scale is passed to trials as ``scale``."""
        space = {n: p.tune() for n, p in self.narrowed(law, scale, coverage).items()}
        if scale is not None:
            space["scale"] = dict(scale)
        return space

    def optuna_distributions(self, law: ScalingLaw | None = None,
                             scale: dict[str, float] | None = None,
                             coverage: float = 0.9) -> dict[str, od.BaseDistribution]:
        """Optuna distributions, governed ones narrowed to the law's interval."""
        return {n: p.optuna() for n, p in self.narrowed(law, scale, coverage).items()}

    def check_scale(self, scale: dict[str, Any], where: str = "--scale") -> dict[str, float]:
        """Validate a target scale: every scale variable present, positive and finite."""
        unknown = set(scale) - set(self.scale)
        if unknown:
            raise RaylawError(f"{where}: unknown scale variable '{sorted(unknown)[0]}' for space "
                              f"'{self.name}' (expected {sorted(self.scale)})")
        missing = [k for k in self.scale if k not in scale]
        if missing:
            raise RaylawError(f"{where}: missing scale variable '{missing[0]}' for space "
                              f"'{self.name}' (give {' '.join(f'{k}=VALUE' for k in self.scale)})")
        out = {}
        for k, v in scale.items():
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise RaylawError(f"{where}: {k}={v!r} is not a number") from None
            if not math.isfinite(f) or f <= 0:
                raise RaylawError(f"{where}: {k}={v!r} must be positive and finite")
            out[k] = f
        return out


def clip_interval(low: float, high: float, p: Param) -> tuple[float, float]:
    """Clip [low, high] to p's hard bounds; if it falls outside, keep its width at the edge."""
    lo_b, hi_b = float(p.low), float(p.high)
    lo, hi = max(low, lo_b), min(high, hi_b)
    if lo < hi:
        return lo, hi
    width = math.log(high / low) if p.log else high - low
    if high <= lo_b:  # interval entirely below the hard range: hug the lower bound
        return lo_b, min(hi_b, lo_b * math.exp(width) if p.log else lo_b + width)
    return max(lo_b, hi_b / math.exp(width) if p.log else hi_b - width), hi_b


def _str(d: dict, key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v:
        raise RaylawError(f"{where}: field '{key}' must be a non-empty string")
    return v


def _params(d: Any, section: str, where: str, scale: dict[str, str],
            governed: bool) -> dict[str, Param]:
    if not isinstance(d, dict) or (governed and not d):
        raise RaylawError(f"{where}: field '{section}' must map hyperparameter names to their "
                          "settings")
    return {str(n): _param(str(n), v, f"{where}: {section}.{n}", scale, governed)
            for n, v in d.items()}


def _param(name: str, d: Any, where: str, scale: dict[str, str], governed: bool) -> Param:
    if not isinstance(d, dict):
        raise RaylawError(f"{where}: expected a mapping with low/high or choices")
    unknown = set(d) - PARAM_FIELDS
    if unknown:
        raise RaylawError(f"{where}: unknown field '{sorted(unknown)[0]}' "
                          f"(expected some of {sorted(PARAM_FIELDS)})")
    if "choices" in d:
        if governed:
            raise RaylawError(f"{where}.choices: a governed hyperparameter must be numeric")
        ch = d["choices"]
        if not isinstance(ch, list) or not ch:
            raise RaylawError(f"{where}.choices: expected a non-empty list")
        return Param(name, "categorical", choices=tuple(ch))
    typ = d.get("type", "float")
    if typ not in ("float", "int"):
        raise RaylawError(f"{where}.type: expected 'float' or 'int', got {typ!r}")
    low, high = (_num(d, k, where) for k in ("low", "high"))
    log = d.get("log", False)
    if not isinstance(log, bool):
        raise RaylawError(f"{where}.log: expected true or false, got {log!r}")
    if not low < high:
        raise RaylawError(f"{where}: low ({low:g}) must be below high ({high:g})")
    if (log or governed) and low <= 0:
        raise RaylawError(f"{where}.low: must be positive for a log-scaled or governed "
                          f"hyperparameter, got {low:g}")
    if typ == "int" and (low != int(low) or high != int(high)):
        raise RaylawError(f"{where}: int bounds must be whole numbers")
    deps: tuple[str, ...] = ()
    units = d.get("units")
    seq_len = d.get("seq_len")
    if governed:
        raw = d.get("depends_on")
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            raise RaylawError(f"{where}.depends_on: expected a list of scale variables "
                              f"from {sorted(scale)}")
        bad = [k for k in raw if k not in scale]
        if bad:
            raise RaylawError(f"{where}.depends_on: '{bad[0]}' is not a scale variable "
                              f"(expected some of {sorted(scale)})")
        deps = tuple(str(k) for k in raw)
    elif "depends_on" in d:
        raise RaylawError(f"{where}.depends_on: only governed hyperparameters depend on scale")
    if units is not None and units not in ("sequences", "tokens"):
        raise RaylawError(f"{where}.units: expected 'sequences' or 'tokens', got {units!r}")
    if units == "sequences":
        if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len <= 0:
            raise RaylawError(f"{where}.seq_len: batch size in sequences needs a positive "
                              f"integer seq_len, got {seq_len!r}")
    role = d.get("role")
    if role is not None and role not in ("lr", "batch_size"):
        raise RaylawError(f"{where}.role: expected 'lr' or 'batch_size', got {role!r}")
    return Param(name, typ, low, high, log, None, deps, units, seq_len, role)


def _num(d: dict, key: str, where: str) -> float:
    if key not in d:
        raise RaylawError(f"{where}: missing field '{key}'")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:  # YAML reads 1e-4 (no dot) as a string
            v = float(v)
        except (TypeError, ValueError):
            raise RaylawError(f"{where}.{key}: expected a number, got {d[key]!r}") from None
    if not math.isfinite(v):
        raise RaylawError(f"{where}.{key}: expected a finite number, got {d[key]!r}")
    return float(v)
