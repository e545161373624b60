"""How the course is installed: the lock (requirements/lock.txt) agrees with pyproject.toml's
ranges, the conda environment installs the same lock, the supported Pythons are one list, and a
wheel carries what it needs."""
import re
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import lock  # noqa: E402  (tools/lock.py: the same reader the Makefile's install uses)


def _name(requirement: str) -> str:
    # "transformers>=5.0,<6" -> "transformers"; names compare case- and dash/underscore-blind
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _declared() -> dict[str, SpecifierSet]:
    """Every direct dependency of the default install (torch, the library, the dev and scale extras)."""
    project = _project()
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"] + project["optional-dependencies"]["scale"]
    return {lock.normalize(Requirement(r).name): Requirement(r).specifier for r in reqs}


def _locked() -> dict[str, list[lock.Entry]]:
    entries: dict[str, list[lock.Entry]] = {}
    for entry in lock.read_lock(ROOT / "requirements" / "lock.txt"):
        entries.setdefault(entry.name, []).append(entry)
    return entries


def test_every_direct_dependency_is_locked_inside_its_declared_range():
    locked = _locked()
    for name, spec in _declared().items():
        assert name in locked, f"{name} is in pyproject.toml but not in requirements/lock.txt: run `make lock`"
        for entry in locked[name]:  # one per Python version where the lock splits (numpy ...)
            assert spec.contains(entry.version, prereleases=True), (
                f"{name}=={entry.version} is locked outside pyproject.toml's {spec}: run `make lock`")


def test_the_lock_was_made_from_these_ranges_and_nothing_else():
    """Every locked package is needed by a declared dependency, requirements/lock.in, or another locked one."""
    locked = _locked()
    for name, entries in locked.items():
        for entry in entries:
            assert entry.via, f"{name} has no `# via` in the lock"
            for via in entry.via:
                assert via in locked or via.startswith("-r requirements/lock.in") or "pyproject.toml" in via, (
                    name, via)
            assert all(line.strip().startswith(("--hash=sha256:", "#")) or i == 0
                       for i, line in enumerate(entry.lines)), f"{name}: a line that is neither a hash nor a comment"
            assert any("--hash=sha256:" in line for line in entry.lines), f"{name} has no hash"


def test_the_lock_pins_the_makefiles_torch_and_the_installer():
    locked = _locked()
    lock_in = (ROOT / "requirements" / "lock.in").read_text()
    torch_pin = re.search(r"^torch==(\S+)", lock_in, re.M)[1]
    assert [e.version for e in locked["torch"]] == [torch_pin]
    pip = lock.read_lock(ROOT / "requirements" / "pip.txt")
    assert [e.name for e in pip] == ["pip"] and len(pip[0].lines) > 1


def test_the_supported_pythons_agree_makefile_pyproject_ci_and_conda():
    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r"^SUPPORTED_PYTHONS := (.+)$", makefile, re.M)[1].split()
    requires = SpecifierSet(_project()["requires-python"])
    admitted = [f"3.{minor}" for minor in range(8, 20) if f"3.{minor}.0" in requires]
    assert listed == admitted, (listed, str(requires))
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert conda_python.removeprefix("python=") in listed
    assert "make -s print-supported-pythons" in (ROOT / ".ci" / "run").read_text(), "CI runs the unit suite on each"


def test_environment_yml_installs_the_lock_hash_checked():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pip == ["--require-hashes", "-r requirements/lock.txt"]


def test_the_cuda_packages_a_cpu_torch_does_not_ask_for_are_left_out_and_nothing_else():
    entries = lock.read_lock(ROOT / "requirements" / "lock.txt")
    cpu_torch_wants = {"filelock", "typing-extensions", "sympy", "networkx", "jinja2", "fsspec", "setuptools"}
    out = lock.left_out(entries, cpu_torch_wants)
    assert out and all(n.startswith(("nvidia-", "cuda-")) or n == "triton" for n in out), sorted(out)
    assert not out & cpu_torch_wants
    # a CUDA torch asks for them all: nothing is left out
    assert not lock.left_out(entries, {e.name for e in entries})


def test_cuda_extra_names_both_kernel_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_name(r) for r in project["optional-dependencies"]["cuda"]}
    assert names == {"mamba-ssm", "causal-conv1d"}


def test_a_wheel_carries_the_scan_kernel_source(tmp_path):
    """A non-editable install must ship scan_kernel.c, or every user falls back to the slower recurrence.
    Built from a copy, so setuptools' build/ and egg-info land in tmp_path, not in the checkout."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(ROOT / "mamba_nb", src / "mamba_nb", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(src)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("mamba_nb-*.whl"))
    assert "mamba_nb/scan/scan_kernel.c" in zipfile.ZipFile(wheel).namelist()
