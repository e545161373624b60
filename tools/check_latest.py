"""`make check-latest`: would the newest releases pass? A scratch environment, the suite, a table.

It builds `.venv-latest` from scratch with the newest version of every package that
pyproject.toml's ranges allow (no lock), runs the unit suite there (tests/ less the browser
tests), and prints one row per direct dependency: the locked version, the newest the range
allowed (what was installed), the newest released, and the suite's result. `--beyond` drops the
upper bounds first, to see what the next releases would do before widening a range. It is not
part of CI: a release upstream must never fail a commit of ours. How a maintainer upgrades:
README, "Upgrading the locked packages".

    python tools/check_latest.py [--beyond] [--python /path/to/python3.12] [-- extra pytest args]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lock  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / ".venv-latest"


def direct_requirements(beyond: bool) -> list[str]:
    """The default install's direct requirements, upper bounds dropped when `beyond`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = project["dependencies"] + extras["dev"] + extras["scale"]
    if beyond:
        reqs = [",".join(p for p in r.split(",") if "<" not in p) for r in reqs]
    return reqs


def build(python: str, beyond: bool) -> Path:
    shutil.rmtree(SCRATCH, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(SCRATCH)], check=True)
    py = SCRATCH / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--require-hashes", "-r", str(ROOT / "requirements" / "pip.txt")], check=True)
    subprocess.run([*pip, "--upgrade", "--upgrade-strategy", "eager", *direct_requirements(beyond)], check=True)
    subprocess.run([*pip, "--no-deps", "--no-build-isolation", "-e", str(ROOT)], check=True)
    return py


def installed(py: Path) -> dict[str, str]:
    out = subprocess.run([str(py), "-m", "pip", "list", "--format", "json"], check=True, capture_output=True,
                         text=True).stdout
    return {lock.normalize(p["name"]): p["version"] for p in json.loads(out)}


def newest_released(py: Path, name: str) -> str:
    """The newest release on the index (`pip index versions`), or "?" where it cannot tell."""
    run = subprocess.run([str(py), "-m", "pip", "index", "versions", name], capture_output=True, text=True)
    found = re.search(rf"^{re.escape(name)} \((\S+)\)", run.stdout, re.M | re.I)
    return found[1] if found else "?"


def run_suite(py: Path, extra: list[str]) -> tuple[bool, str]:
    run = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not browser", "-rf",
                          "tests", *extra], cwd=ROOT, capture_output=True, text=True)
    lines = run.stdout.strip().splitlines()
    failed = [line.split(" - ")[0].removeprefix("FAILED ") for line in lines if line.startswith(("FAILED", "ERROR"))]
    summary = lines[-1] if lines else run.stderr.strip()[-300:]
    return run.returncode == 0, summary + ("".join(f"\n  {f}" for f in failed[:30]))


def table(py: Path, beyond: bool, passed: bool) -> str:
    locked: dict[str, list[str]] = {}
    for entry in lock.read_lock(ROOT / "requirements" / "lock.txt"):
        locked.setdefault(entry.name, []).append(entry.version)
    now = installed(py)
    rows = ["| package | locked | newest " + ("released (no upper bound)" if beyond else "the range allows")
            + " | newest released | suite |", "|---|---|---|---|---|"]
    for req in direct_requirements(beyond=False):
        name = lock.normalize(re.split(r"[\s<>=!~\[;]", req, maxsplit=1)[0])
        got = now.get(name, "not installed")
        mark = " (new)" if got not in locked.get(name, []) else ""
        rows.append(f"| {name} `{req.removeprefix(name)}` | {' / '.join(locked.get(name, ['-']))} | {got}{mark} "
                    f"| {newest_released(py, name)} | {'passed' if passed else 'FAILED'} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beyond", action="store_true", help="drop the ranges' upper bounds first")
    parser.add_argument("--python", default=sys.executable, help="the interpreter of the scratch environment")
    args, extra = parser.parse_known_args(argv)
    py = build(args.python, args.beyond)
    passed, summary = run_suite(py, [a for a in extra if a != "--"])
    print(table(py, args.beyond, passed))
    print(f"\nunit suite on the newest versions ({'no upper bounds' if args.beyond else 'inside the ranges'}), "
          f"Python {subprocess.run([str(py), '-c', 'import sys; print(sys.version.split()[0])'], capture_output=True, text=True).stdout.strip()}: "
          f"{'passed' if passed else 'FAILED'}: {summary}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
