"""Attacks on the sandbox through its public API, in bubblewrap mode and in Landlock mode (forced),
as the evaluator's user (root in CI) and, when that is root, again as an ordinary user; each one
passes only if nothing outside the sandbox changed (see `sandbox_attacks.py`: files, a kernel
setting, the evaluator's signals and limits, a canary process, the host's process table, sockets,
the project's files) and no secret came back.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import sandbox_attacks
from mamba_nb import sandbox
from sandbox_attacks import ATTACKS, World, protected_files, run_attack, survivors, wait_gone
from test_sandbox import mode  # noqa: F401  (the fixture: each test once per mode)

USER = 45678  # an unused uid and gid for the evaluator run as an ordinary user (no passwd entry needed)


@pytest.fixture
def world(tmp_path):
    os.chmod(tmp_path, 0o755)
    w = World(tmp_path, protected_files())
    yield w
    w.close()


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_the_attack_changes_nothing_outside(mode, world, attack):
    problems, result = run_attack(world, attack, sandbox.run_python)
    assert result.mode == mode
    assert not problems, (problems, result.status, result.stdout[-2000:], result.stderr[-2000:])


def test_nothing_survives_the_evaluators_death(mode, tmp_path):
    marker = "mnbdeath" + os.urandom(3).hex()
    program = textwrap.dedent(f"""
        import ctypes, os, time
        ctypes.CDLL(None).prctl(15, {marker!r}.encode(), 0, 0, 0)
        try:
            os.fork()
        except OSError:
            pass
        time.sleep(60)
    """)
    evaluator = subprocess.Popen([sys.executable, "-c", "import sys; from mamba_nb.sandbox import run_python; "
                                  "run_python(sys.argv[1], timeout_s=60)", program],
                                 env={**os.environ, sandbox.MODE_ENV: mode})
    try:
        assert not wait_until_running(marker, 15), "the program never started"
        evaluator.kill()
        evaluator.wait()
        assert wait_gone(marker, 5) == [], "the program outlived the evaluator"
    finally:
        evaluator.kill()
        evaluator.wait()


def wait_until_running(marker: str, seconds: float) -> bool:
    """False once a process named `marker` runs (the inverse of `wait_gone`)."""
    import time

    deadline = time.monotonic() + seconds
    while not survivors(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not survivors(marker)


def _user_python() -> str:
    """An interpreter an unprivileged user can run (root's own may live where no one else can read)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{version}", "/usr/bin/python3", sys.executable):
        probe = subprocess.run(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", candidate, "-c",
                                "import json, ctypes"], capture_output=True, cwd="/")
        if probe.returncode == 0:
            return candidate
    return ""


@pytest.fixture
def user_dir():
    """A directory the ordinary user can reach (pytest's own is root's, mode 0700)."""
    d = Path(tempfile.mkdtemp(prefix="mamba_nb_user_"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="already an ordinary user: the tests above ran as one")
def test_the_attacks_change_nothing_when_the_evaluator_is_an_ordinary_user(mode, user_dir):
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed, so the evaluator cannot run as another user")
    python = _user_python()
    if not python:
        pytest.skip("no interpreter here that an unprivileged user can run")
    # The evaluator's own copy of the package and of the attacks, owned (and so writable) by that user:
    # only the sandbox stands between a program and them.
    tmp_path = user_dir
    package = tmp_path / "mamba_nb"
    package.mkdir()
    for src in [sandbox.__file__, *map(str, sandbox.RUNNER_FILES.values()), sandbox.HERE / "__init__.py"]:
        shutil.copy(src, package / Path(src).name)
    shutil.copy(sandbox_attacks.__file__, tmp_path / "sandbox_attacks.py")
    for p in [tmp_path, *tmp_path.rglob("*")]:
        os.chown(p, USER, USER)
    os.chmod(package / "sandbox_runner.py", 0o644)
    out = subprocess.run(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", python,
                          "sandbox_attacks.py", mode], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(tmp_path),
                              "LANG": "C.UTF-8"})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["uid"] == USER
    assert set(report["report"]) == set(ATTACKS)
    assert not {k: v for k, v in report["report"].items() if v}, report["report"]


def test_a_program_cannot_signal_the_evaluator_to_death(mode, world):
    """SIGKILL, unlike SIGUSR1, leaves no one to count it: the test process itself must still be here."""
    src = world.fields() + "import os\nfor s in (9, 15):\n    try: os.kill(EVAL, s)\n    except OSError: pass\n"
    r = sandbox.run_python(src)
    assert r.passed, r.stderr  # it ran to its end, and so did we
    os.kill(os.getpid(), 0)
    assert signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL


def _unsandboxed(source: str, timeout_s: float, **_) -> sandbox.SandboxResult:
    """A plain subprocess, as the control below runs the attacks: no sandbox at all."""
    p = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=timeout_s + 10)
    return sandbox.SandboxResult("passed" if p.returncode == 0 else "failed", p.returncode, p.stdout, p.stderr, 0.0,
                                 "unisolated")


@pytest.mark.parametrize("attack", ["write-outside", "network"])  # (not read-secrets: its ptrace would stop the test)
def test_the_checks_see_the_harm_where_nothing_isolates(world, attack):
    """The control: the same attacks in a plain subprocess do harm, and the checks report it,
    so their silence above means something."""
    try:
        problems, _ = run_attack(world, attack, _unsandboxed)
    finally:
        for d in ("/tmp", "/var/tmp", "/dev/shm"):
            for p in Path(d).glob(world.marker + "*"):
                p.unlink()
    assert problems


def test_one_program_cannot_reach_another_running_beside_it(mode):
    """Two programs at once (as `run_many` runs them, both as uid 65534 under root): the first looks
    for processes around its own pid with harmless probes (signal 0, reading rlimits); none answers."""
    prober = textwrap.dedent("""
        import os, resource
        me, reached = os.getpid(), []
        for pid in range(max(2, me - 64), me + 64):
            if pid == me:
                continue
            for probe in (lambda: os.kill(pid, 0), lambda: resource.prlimit(pid, resource.RLIMIT_NOFILE),
                          lambda: os.sched_getaffinity(pid) and os.sched_setaffinity(pid, os.sched_getaffinity(pid))):
                try:
                    probe()
                    reached.append(pid)
                except (OSError, ValueError):
                    pass
        assert not reached, f"reached {sorted(set(reached))}"
    """)
    sleeper = "import time\ntime.sleep(1.0)\nprint('undisturbed')\n"
    results = sandbox.run_many([sleeper, prober, sleeper], workers=3, timeout_s=10.0)
    assert results[1].passed, results[1].stderr[-500:]
    assert [r.stdout for r in (results[0], results[2])] == ["undisturbed\n"] * 2
