"""Write one benchmark's section of BENCHMARKS.md, keeping every other section (atomically)."""

from __future__ import annotations

from pathlib import Path

from raylaw.files import atomic_write_text


def replace_section(text: str, header: str, new: str) -> str:
    """``text`` with the section ``header`` (to the next ``## `` line or EOF) replaced/appended."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, x in enumerate(lines) if x.rstrip() == header), None)
    if start is None:
        return text.rstrip("\n") + "\n\n" + new
    end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")),
               len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + new + ("\n" + tail if tail else "")


def update_section(path: Path, header: str, new: str) -> None:
    """Re-read ``path`` (others may have written it) and replace our section, atomically."""
    old = path.read_text() if path.exists() else "# raylaw benchmarks\n"
    atomic_write_text(path, replace_section(old, header, new))


def publish(text: str, path: Path, header: str, write: bool = True) -> None:
    """Print a benchmark's section and (unless ``write`` is False) put it in ``path``."""
    print(text)
    if write:
        update_section(path, header, text)
        print(f"wrote {path}")
