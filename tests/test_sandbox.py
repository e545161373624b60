"""The sandbox against hostile programs: each is stopped and scored failed, and the run goes on."""
from __future__ import annotations

import socket
import textwrap

import pytest

from mamba_nb.sandbox import run_many, run_python


def _run(src: str, **kw):
    return run_python(textwrap.dedent(src), **kw)


def test_a_good_program_passes_and_its_output_comes_back():
    r = _run("""
        import math
        assert math.gcd(12, 18) == 6
        print("hello")
        with open("scratch.txt", "w") as f:   # its own directory is writable
            f.write("ok")
    """)
    assert r.passed, r.stderr
    assert r.stdout.strip() == "hello"


def test_a_failing_assertion_fails():
    r = _run("assert 1 + 1 == 3")
    assert r.status == "failed" and not r.passed
    assert "AssertionError" in r.stderr


def test_infinite_loop_is_killed_at_the_time_limit():
    r = _run("while True:\n    pass\n", timeout_s=1.0)
    assert r.status == "timeout" and not r.passed
    assert r.duration_s < 10


@pytest.mark.parametrize(
    "src",
    [
        "import os\nwhile True:\n    os.fork()\n",
        "import subprocess\nsubprocess.run(['true'])\n",
        "import os\nos.system('true')\n",
        "import multiprocessing as mp\np = mp.Process(target=print)\np.start()\np.join()\n",
        "import ctypes\n",
    ],
    ids=["fork", "subprocess", "system", "multiprocessing", "ctypes"],
)
def test_new_processes_are_refused(src):
    r = _run(src)
    assert not r.passed
    assert r.status == "blocked", (r.status, r.stderr)


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


def test_network_connect_is_refused_and_nothing_arrives():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
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


@pytest.mark.parametrize("how", ["open", "pathlib", "os_open", "rename", "relative"])
def test_writing_outside_its_directory_is_refused(tmp_path, how):
    target = tmp_path / "escaped.txt"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    src = {
        "open": f"open({str(target)!r}, 'w').write('x')",
        "pathlib": f"import pathlib; pathlib.Path({str(target)!r}).write_text('x')",
        "os_open": f"import os; os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)",
        "rename": f"import os; os.rename({str(victim)!r}, {str(target)!r})",
        "relative": "open('../escaped.txt', 'w').write('x')",
    }[how]
    r = _run(src)
    assert r.status == "blocked", (r.status, r.stderr)
    assert not target.exists()
    assert victim.read_text() == "keep me"


def test_huge_output_is_capped():
    r = _run("""
        while True:
            print("x" * 10000)
    """, max_output_bytes=10_000, timeout_s=5)
    assert r.status in ("output_limit", "timeout") and not r.passed
    assert len(r.stdout) <= 10_000


def test_limits_cannot_be_raised():
    r = _run("""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    """)
    assert r.status == "blocked"


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
