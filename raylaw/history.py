"""Law versions: every law a sweep writes is kept as a numbered file beside the current one.

``law.json`` is the current law; ``law.json.history/v0001.json``, ``v0002.json``, ... are
every version ever written (the newest equals ``law.json``). Both are written atomically,
the numbered version first, so a crash leaves the previous version valid.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from raylaw.errors import RaylawError
from raylaw.files import atomic_write_text
from raylaw.law import ScalingLaw


def history_dir(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".history")


def versions(path: str | Path) -> list[Path]:
    """The numbered versions of a law file, oldest first."""
    d = history_dir(path)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if re.fullmatch(r"v\d{4,}\.json", p.name)),
                  key=lambda p: int(p.stem[1:]))


def save_version(law: ScalingLaw, path: str | Path, note: str = "") -> int:
    """Write ``law`` as the next numbered version and as the current file; returns its number."""
    path = Path(path)
    existing = versions(path)
    number = int(existing[-1].stem[1:]) + 1 if existing else 1
    history_dir(path).mkdir(parents=True, exist_ok=True)
    if not existing and path.exists():  # a law made before versioning: keep it as v0001
        atomic_write_text(history_dir(path) / "v0001.json", path.read_text())
        number = 2
    if note:
        law.provenance["note"] = note
    while True:  # claim the number first: two sweeps refitting at once get distinct versions
        try:
            fd = os.open(history_dir(path) / f"v{number:04d}.json",
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            number += 1
            continue
        os.close(fd)
        break
    law.provenance["version"] = number
    text = json.dumps(law.to_dict(), indent=2, allow_nan=False) + "\n"
    atomic_write_text(history_dir(path) / f"v{number:04d}.json", text)
    atomic_write_text(path, text)
    return number


def history_rows(path: str | Path) -> list[dict[str, Any]]:
    """One row per version: number, time, optima count, note and each term's coefficients."""
    rows = []
    for p in versions(path):
        try:
            law = ScalingLaw.load(p)
        except RaylawError as e:
            rows.append({"version": p.stem, "error": str(e)})
            continue
        coefs = {n: s.get("coef") for n, s in law.summary().items() if s.get("fitted")}
        rows.append({
            "version": p.stem, "when": law.provenance.get("fitted_at", ""),
            "optima": len(law.optima), "note": law.provenance.get("note", ""), "coef": coefs,
        })
    return rows
