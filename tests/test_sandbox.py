"""The sandbox against hostile programs, including ones that know how it works.

Each hostile program tries one escape and then *asserts that it worked*, so a program that
is stopped fails; the test checks the specific outcome (blocked, killed, contained) and that
nothing outside the sandbox changed. Tests that need the kernel's isolation (bubblewrap,
namespaces) skip where it is missing, unless MAMBA_NB_REQUIRE_SANDBOX=1 (CI) makes that a
failure; the fallback guard has tests of its own.
"""
from __future__ import annotations

import os
import socket
import sys
import textwrap
import warnings

import pytest

from mamba_nb import sandbox
from mamba_nb.sandbox import run_many, run_python

ISOLATED, WHY_NOT = sandbox.isolation()
if not ISOLATED and os.environ.get("MAMBA_NB_REQUIRE_SANDBOX", "0") not in ("", "0"):
    raise RuntimeError(f"MAMBA_NB_REQUIRE_SANDBOX=1 but the sandbox is not isolated here: {WHY_NOT}")
isolated = pytest.mark.skipif(not ISOLATED, reason=f"no isolation here ({WHY_NOT}); apt-get install bubblewrap")


def _run(src: str, **kw):
    return run_python(textwrap.dedent(src), **kw)


def test_a_good_program_passes_and_its_output_comes_back():
    r = _run("""
        import math, threading
        assert math.gcd(12, 18) == 6
        t = threading.Thread(target=lambda: None)   # threads are allowed
        t.start(); t.join()
        print("hello")
        with open("scratch.txt", "w") as f:   # its own directory is writable
            f.write("ok")
    """)
    assert r.passed, r.stderr
    assert r.stdout == "hello\n"
    assert r.isolated == ISOLATED


def test_a_failing_assertion_fails():
    r = _run("assert 1 + 1 == 3")
    assert r.status == "failed" and not r.passed
    assert "AssertionError" in r.stderr


@pytest.mark.parametrize("src", [
    "exit(0)", "quit()", "raise SystemExit(0)", "import sys; sys.exit()", "import os; os._exit(0)",
    "print('0' * 32)",  # a guess at the nonce
    "import sys; sys.stdin.read()",  # the nonce was read and stdin closed before the program ran
], ids=["exit", "quit", "SystemExit", "sys.exit", "os._exit", "fake-nonce", "stdin"])
def test_a_program_that_does_not_run_to_its_end_never_passes(src):
    r = run_python(src + "\nraise AssertionError('the tests below the exit would fail')\n")
    assert not r.passed, (r.status, r.stdout, r.stderr)


def test_infinite_loop_is_killed_at_the_time_limit():
    r = _run("while True:\n    pass\n", timeout_s=1.0)
    assert r.status == "timeout" and not r.passed
    assert r.duration_s < 10


@pytest.mark.parametrize("src", [
    "import os\nos.fork()\n",
    "import subprocess\nsubprocess.run(['true'])\n",
    "import multiprocessing as mp\np = mp.Process(target=print)\np.start()\np.join()\n",
    "import pty\npty.spawn(['true'])\n",
    "import ctypes\nassert ctypes.CDLL(None).fork() >= 0, 'fork refused'\n",
    "import os\nassert os.system('true') == 0, 'system refused'\n",
    "import os\nos.posix_spawn('/bin/true', ['true'], {})\n",
], ids=["fork", "subprocess", "multiprocessing", "pty", "ctypes-fork", "system", "posix_spawn"])
def test_new_processes_are_refused(src):
    r = _run(src)
    assert not r.passed
    assert r.status in ("blocked", "failed"), (r.status, r.stderr)
    assert "PermissionError" in r.stderr or "refused" in r.stderr or "Operation not permitted" in r.stderr, r.stderr


def test_a_fork_bomb_that_swallows_the_refusal_still_ends():
    r = _run("""
        import os
        while True:
            try:
                os.fork()
            except Exception:
                pass
    """, timeout_s=1.0)
    assert r.status == "timeout" and not r.passed


def test_unbounded_allocation_is_stopped():
    r = _run("""
        chunks = []
        while True:
            chunks.append(bytearray(50 * 2**20))
    """, memory_mb=256, timeout_s=10)
    assert r.status == "memory", (r.status, r.stderr[-300:])


def test_network_connect_to_the_host_is_refused_and_nothing_arrives():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.3)
    port = server.getsockname()[1]
    try:
        r = _run(f"""
            import socket
            s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
            s.sendall(b"leak")
        """)
        assert r.status == "blocked", (r.status, r.stderr)
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


def test_huge_output_is_capped():
    r = _run("""
        while True:
            print("x" * 10000)
    """, max_output_bytes=10_000, timeout_s=5)
    assert r.status in ("output_limit", "timeout") and not r.passed
    assert len(r.stdout) <= 10_000 + 40


def test_limits_cannot_be_raised():
    r = _run("""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY
    """)
    assert not r.passed and r.status in ("blocked", "failed"), (r.status, r.stderr)


# --- escapes that only the kernel stops ------------------------------------------------------


@isolated
def test_undoing_the_guard_gains_nothing(tmp_path):
    """The old in-process guard could be switched off from the program; here there is none to undo."""
    target = tmp_path / "escaped"
    r = _run(f"""
        import __main__ as g, os
        getattr(g, "_FORBIDDEN", set()).clear()
        g._inside = lambda p: True
        assert os.system("touch {target}") == 0, "system refused"
    """)
    assert not r.passed and not target.exists()


@isolated
def test_setsid_double_fork_does_not_outlive_the_run(tmp_path):
    marker = tmp_path / "still-alive"
    r = _run(f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(3)
                open({str(marker)!r}, "w").write("alive")
            os._exit(0)
        time.sleep(10)
    """, timeout_s=1.0)
    assert not r.passed
    import time

    time.sleep(3.5)
    assert not marker.exists()


@isolated
@pytest.mark.parametrize("how", ["chdir-relative", "absolute", "dir_fd-write", "dir_fd-unlink", "rename"])
def test_nothing_outside_its_directory_can_be_written(tmp_path, how):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    src = {
        "chdir-relative": "import os; os.chdir('/tmp'); open('escaped.txt', 'w').write('x')",
        "absolute": f"open({str(tmp_path / 'escaped.txt')!r}, 'w').write('x')",
        # what the sandbox can see of the machine is read-only: its own runner, /usr, the interpreter
        "dir_fd-write": "import os; fd = os.open('/in', os.O_RDONLY); os.open('escaped', os.O_WRONLY | os.O_CREAT, dir_fd=fd)",
        "dir_fd-unlink": "import os; fd = os.open('/in', os.O_RDONLY); os.unlink('runner.py', dir_fd=fd)",
        "rename": "import os, sys; os.rename(sys.executable, '/work/python')",
    }[how]
    r = _run(src)
    assert not r.passed
    assert r.status in ("blocked", "failed"), (r.status, r.stderr)
    assert victim.read_text() == "keep me" and not (tmp_path / "escaped.txt").exists()
    assert not os.path.exists("/tmp/escaped.txt")
    assert sandbox.RUNNER.exists()


@isolated
def test_the_evaluator_is_invisible_and_cannot_be_signalled(monkeypatch):
    monkeypatch.setenv("MAMBA_NB_TEST_SECRET", "s3cr3t-value")
    r = _run(f"""
        import os, signal
        found = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if b"s3cr3t-value" in open(f"/proc/{{pid}}/environ", "rb").read():
                        found.append(pid)
                except OSError:
                    pass
        assert os.getpid() < 10  # numbered in its own PID namespace: the evaluator is not in it
        try:
            signal.pidfd_send_signal(os.pidfd_open({os.getpid()}), signal.SIGTERM)
        except OSError:
            pass
        assert found, "no process holds the secret in its environment"
    """)
    assert not r.passed and "no process holds the secret" in r.stderr, r.stderr


@isolated
def test_total_disk_use_is_capped():
    r = _run("""
        for i in range(20000):
            with open(f"f{i}", "wb") as f:
                f.write(b"x" * 60_000)
    """, disk_mb=16, timeout_s=20)
    assert r.status == "blocked" and "No space left" in r.stderr, (r.status, r.stderr[-300:])


# --- without namespaces: the fallback says so, and still stops the simple cases -------------------


@pytest.fixture
def guard_only(monkeypatch):
    monkeypatch.setenv("MAMBA_NB_SANDBOX", "guard")
    sandbox.isolation.cache_clear()
    sandbox._warn_once.cache_clear()
    yield
    monkeypatch.delenv("MAMBA_NB_SANDBOX")
    sandbox.isolation.cache_clear()


def test_the_fallback_warns_that_it_is_not_isolated(guard_only, tmp_path):
    with pytest.warns(RuntimeWarning, match="NOT isolated"):
        r = run_python("print('ok')")
    assert r.passed and not r.isolated
    r = run_python(f"open({str(tmp_path / 'escaped')!r}, 'w').write('x')")
    assert r.status == "blocked" and not (tmp_path / "escaped").exists()
    r = run_python("import os\nos.fork()\n")
    assert r.status == "blocked"
    r = run_python("exit(0)\n")
    assert not r.passed


def test_the_evaluation_goes_on_after_hostile_programs():
    srcs = ["while True: pass", "import os; os.fork()", "x = bytearray(2**40)", "print('fine')"]
    results = run_many(srcs, workers=2, timeout_s=1.0, memory_mb=256)
    assert [r.passed for r in results] == [False, False, False, True]
    assert results[3].stdout.strip() == "fine"


def test_bad_limits_are_named():
    with pytest.raises(ValueError, match="timeout_s"):
        run_python("pass", timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        run_python("pass", memory_mb=1)
    with pytest.raises(ValueError, match="disk_mb"):
        run_python("pass", disk_mb=0)


def test_running_programs_after_lance_is_imported_warns_nothing():
    """Lance warns at every fork; the sandbox's fork execs at once, so notebooks must not show it."""
    import lance  # noqa: F401  (registers lance's at-fork warning)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", append=True)  # every other warning is recorded, every time
        r = sandbox.run_python("print('ok')", timeout_s=10.0)
    assert r.passed
    assert not [w for w in caught if "fork-safe" in str(w.message)], [str(w.message) for w in caught]
