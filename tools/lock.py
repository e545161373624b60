"""The lock file (requirements/lock.txt): read it, and pick what this machine installs from it.

The lock is `uv pip compile --universal --generate-hashes` output (see DESIGN.md, "The lock"):
one block per package, `name==version ; marker` with its hashes and `# via` lines naming what
needs it. pip installs it with `--require-hashes`. One thing is chosen here, not by markers: the
CUDA libraries PyPI's Linux build of torch lists (nvidia-*, triton, ...). A machine that installed
a CPU build of the same torch (this course's machines have one on disk) needs none of them, so
they are left out when the installed torch does not ask for them; everything else is installed as
locked. Standard library only: it runs before anything is installed.

    python tools/lock.py for-this-torch requirements/lock.txt > selected.txt
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


@dataclass
class Entry:
    name: str  # normalized (PEP 503)
    version: str
    marker: str  # "" when none
    via: set[str] = field(default_factory=set)  # normalized names, or "-r FILE" / "NAME (pyproject.toml)"
    lines: list[str] = field(default_factory=list)  # the block as written, hashes included


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> list[Entry]:
    """Every package block of the lock, in order."""
    entries: list[Entry] = []
    in_via = False
    for line in Path(path).read_text().splitlines():
        pin = _PIN.match(line)
        if pin:
            entries.append(Entry(normalize(pin[1]), pin[2], (pin[3] or "").strip()))
            in_via = False
        elif not entries:
            continue  # header comments
        stripped = line.strip()
        if stripped.startswith("# via"):
            rest = stripped[len("# via"):].strip()
            if rest:
                entries[-1].via.add(_via_name(rest))
            in_via = not rest
        elif in_via and stripped.startswith("#   "):
            entries[-1].via.add(_via_name(stripped[4:]))
        if entries:
            entries[-1].lines.append(line)
    return entries


def _via_name(text: str) -> str:
    return text if text.startswith("-r ") or "(" in text else normalize(text)


def torch_requires() -> set[str]:
    """The names the installed torch's metadata asks for (empty when torch is not installed)."""
    try:
        requires = metadata.requires("torch") or []
    except metadata.PackageNotFoundError:
        return set()
    return {normalize(re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0]) for r in requires}


def left_out(entries: list[Entry], wanted_by_torch: set[str]) -> set[str]:
    """Packages locked only for torch's sake that the installed torch does not want, and what
    only they pull in (nvidia-cudnn -> nvidia-cublas, ...)."""
    out: set[str] = set()
    changed = True
    while changed:
        changed = False
        for entry in entries:
            if entry.name in out or not entry.via:
                continue
            needed_by = {v for v in entry.via if v not in out}
            if needed_by == {"torch"} and entry.name not in wanted_by_torch:
                needed_by = set()
            if not needed_by:
                out.add(entry.name)
                changed = True
    return out


def for_this_torch(path: Path) -> str:
    """The lock's text less the CUDA packages the installed torch does not ask for."""
    entries = read_lock(path)
    if not _torch_installed():
        return Path(path).read_text()
    skip = left_out(entries, torch_requires())
    kept = [line for e in entries if e.name not in skip for line in e.lines]
    note = f"# selected by tools/lock.py for this machine's torch: left out {', '.join(sorted(skip)) or 'nothing'}"
    return "\n".join([note, *kept]) + "\n"


def _torch_installed() -> bool:
    try:
        metadata.version("torch")
        return True
    except metadata.PackageNotFoundError:
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "for-this-torch":
        print("usage: python tools/lock.py for-this-torch requirements/lock.txt", file=sys.stderr)
        return 2
    sys.stdout.write(for_this_torch(Path(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
