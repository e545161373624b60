"""The sandbox's behaviour in each isolating mode (bubblewrap, and Landlock forced), its limits,
its mode choice and refusal, and the seccomp filter's decisions.

Each mode's tests skip where that mode cannot work here, unless MAMBA_NB_REQUIRE_SANDBOX=1
(CI) makes that a failure. Attacks, with a look at the world outside, are in
`test_sandbox_attacks.py`.
"""
from __future__ import annotations

import functools
import os
import struct
import textwrap
import threading
import time
import warnings

import pytest
from hypothesis import given, strategies as st

from mamba_nb import landlock, sandbox, seccomp
from mamba_nb.sandbox import MODE_ENV, SandboxUnavailable, run_many, run_python

REQUIRE = os.environ.get("MAMBA_NB_REQUIRE_SANDBOX", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def why_not(how: str) -> str:
    return sandbox._why_not(how)


def use_mode(how: str, monkeypatch) -> str:
    """Force mode `how` for one test (skip, or fail under MAMBA_NB_REQUIRE_SANDBOX=1, where it cannot work)."""
    why = why_not(how)
    if why:
        if REQUIRE:
            pytest.fail(f"MAMBA_NB_REQUIRE_SANDBOX=1 but the {how} sandbox does not work here: {why}")
        pytest.skip(f"the {how} sandbox does not work here: {why}")
    monkeypatch.setenv(MODE_ENV, how)
    sandbox.mode.cache_clear()
    return how


@pytest.fixture(params=["bwrap", "landlock"])
def mode(request, monkeypatch):
    yield use_mode(request.param, monkeypatch)
    sandbox.mode.cache_clear()


def _run(src: str, **kw):
    return run_python(textwrap.dedent(src), **kw)


def test_a_good_program_passes_and_says_which_mode_ran_it(mode):
    r = _run("""
        import math, threading, json, decimal
        assert math.gcd(12, 18) == 6
        t = threading.Thread(target=lambda: None)   # threads are allowed
        t.start(); t.join()
        print("hello")
    """)
    assert r.passed, r.stderr
    assert r.stdout == "hello\n"
    assert r.mode == mode and r.isolated


def test_only_bubblewrap_gives_a_scratch_directory(mode):
    r = _run("with open('scratch.txt', 'w') as f:\n    f.write('ok')\nprint(open('scratch.txt').read())\n")
    if mode == "bwrap":  # /work: a tmpfs of disk_mb, gone afterwards
        assert r.passed and r.stdout == "ok\n", r.stderr
    else:  # without a mount namespace no directory's total size can be capped: none is writable
        assert r.status == "blocked" and "Permission denied" in r.stderr, (r.status, r.stderr)


def test_a_failing_assertion_fails(mode):
    r = _run("assert 1 + 1 == 3")
    assert r.status == "failed" and not r.passed
    assert "AssertionError" in r.stderr


@pytest.mark.parametrize("src", [
    "exit(0)", "quit()", "raise SystemExit(0)", "import sys; sys.exit()", "import os; os._exit(0)",
    "print('0' * 32)",  # a guess at the nonce
    "import sys; sys.stdin.read()",
    "import os\nfor fd in range(64):\n    try: os.write(fd, b'0' * 32)\n    except OSError: pass\nos._exit(0)",
], ids=["exit", "quit", "SystemExit", "sys.exit", "os._exit", "fake-nonce", "stdin", "every-fd"])
def test_a_program_that_does_not_run_to_its_end_never_passes(mode, src):
    r = run_python(src + "\nraise AssertionError('the tests below the exit would fail')\n")
    assert not r.passed, (r.status, r.stdout, r.stderr)


def test_infinite_loop_is_killed_at_the_time_limit(mode):
    r = _run("while True:\n    pass\n", timeout_s=1.0)
    assert r.status == "timeout" and not r.passed and r.returncode is None


@pytest.mark.parametrize("src", [
    "import os\nos.fork()\n",
    "import subprocess\nsubprocess.run(['true'])\n",
    "import multiprocessing as mp\np = mp.Process(target=print)\np.start()\np.join()\n",
    "import pty\npty.spawn(['true'])\n",
    "import ctypes\nassert ctypes.CDLL(None).fork() >= 0, 'fork refused'\n",
    "import os\nassert os.system('true') == 0, 'system refused'\n",
    "import os\nos.posix_spawn('/bin/true', ['true'], {})\n",
    "import os\nos.execv('/bin/true', ['true'])\n",
], ids=["fork", "subprocess", "multiprocessing", "pty", "ctypes-fork", "system", "posix_spawn", "exec"])
def test_new_processes_are_refused(mode, src):
    r = _run(src)
    assert not r.passed
    assert r.status in ("blocked", "failed"), (r.status, r.stderr)
    refusals = ("PermissionError", "refused", "Operation not permitted", "out of pty devices")  # (pty: no /dev/ptmx)
    assert any(s in r.stderr for s in refusals), r.stderr


def test_a_fork_bomb_that_swallows_the_refusal_still_ends(mode):
    r = _run("""
        import os
        while True:
            try:
                os.fork()
            except Exception:
                pass
    """, timeout_s=1.0)
    assert r.status == "timeout" and not r.passed


def test_unbounded_allocation_is_stopped(mode):
    r = _run("""
        chunks = []
        while True:
            chunks.append(bytearray(50 * 2**20))
    """, memory_mb=256, timeout_s=10)
    assert r.status == "memory", (r.status, r.stderr[-300:])


def test_huge_output_is_capped(mode):
    r = _run("""
        while True:
            print("x" * 10000)
    """, max_output_bytes=10_000, timeout_s=5)
    assert r.status == "output_limit" and not r.passed, r.status
    assert len(r.stdout) <= 10_000


def test_limits_cannot_be_raised(mode):
    r = _run("""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY
    """)
    assert not r.passed and r.status in ("blocked", "failed"), (r.status, r.stderr)


def test_total_disk_use_is_capped(mode):
    r = _run("""
        import os
        for i in range(20000):
            with open(f"f{i}", "wb") as f:
                f.write(b"x" * 60_000)
    """, disk_mb=4, timeout_s=20)
    assert r.status == "blocked", (r.status, r.stderr[-300:])
    assert ("No space left" if mode == "bwrap" else "Permission denied") in r.stderr, r.stderr[-300:]


def test_outside_every_process_of_the_sandbox_is_filtered_and_as_root_runs_as_nobody(mode):
    """The host's process table, not the program, says how it runs: each process in the sandbox
    (in bwrap mode: every one in its PID namespace) under seccomp with no_new_privs and no
    capability; when the evaluator is root, as uid and gid 65534 with no groups."""
    marker = "mnbuid" + os.urandom(3).hex()
    src = f"import ctypes, time\nctypes.CDLL(None).prctl(15, {marker!r}.encode(), 0, 0, 0)\ntime.sleep(20)\n"
    t = threading.Thread(target=run_python, args=(src,), kwargs={"timeout_s": 3.0})
    t.start()
    try:
        deadline = time.monotonic() + 5
        while not _named(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        found = _named(marker)
        assert found, "the program never showed up in the host's process table"
        members = found
        if mode == "bwrap":  # everything in its PID namespace, bwrap's own processes included
            ns = os.readlink(f"/proc/{found[0]}/ns/pid")
            members = [p for p in os.listdir("/proc") if p.isdigit() and _ns(p) == ns]
        for pid in members:
            status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines())
            assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1", (pid, status)
            assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, (pid, status)
            if os.geteuid() == 0:
                assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4, status
                assert status["Groups"].strip() == "", status
    finally:
        t.join()


def _named(marker: str) -> list[str]:
    return [p for p in os.listdir("/proc") if p.isdigit() and _comm(p) == marker]


def _ns(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


def _comm(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/comm").read().strip()
    except OSError:
        return ""


def test_one_bad_program_never_loses_the_batch(mode):
    srcs = ["while True: pass", "import os; os.fork()", "x = bytearray(2**40)",
            "s = '\ud800'",  # a lone surrogate in the source itself
            "print('\\ud800')",  # ... and in the output
            "import sys; sys.stdout.buffer.write(bytes(range(256)))",
            "import ctypes; ctypes.string_at(0)",  # a segfault
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
            "print('fine')"]
    results = run_many(srcs, workers=2, timeout_s=1.5, memory_mb=256)
    assert len(results) == len(srcs)
    assert [r.passed for r in results] == [False, False, False, False, False, True, False, False, True]
    assert results[-1].stdout == "fine\n"
    assert all(r.mode == mode for r in results)


def test_bad_limits_are_named():
    with pytest.raises(ValueError, match="timeout_s"):
        run_python("pass", timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        run_python("pass", memory_mb=1)
    with pytest.raises(ValueError, match="disk_mb"):
        run_python("pass", disk_mb=0)
    with pytest.raises(ValueError, match="workers"):
        run_many(["pass"], workers=-1)


def test_running_programs_after_lance_is_imported_warns_nothing():
    """Lance warns at every fork; the sandbox's children exec at once, so notebooks must not show it."""
    import lance  # noqa: F401  (registers lance's at-fork warning)

    if not any(not why_not(m) for m in ("bwrap", "landlock")):
        pytest.skip("no sandbox works here")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", append=True)  # every other warning is recorded, every time
        r = sandbox.run_python("print('ok')", timeout_s=10.0)
    assert r.passed
    assert not [w for w in caught if "fork-safe" in str(w.message)], [str(w.message) for w in caught]


# --- choosing the mode, and refusing ------------------------------------------------------------------


@pytest.fixture
def nothing_works(monkeypatch):
    monkeypatch.delenv(MODE_ENV, raising=False)
    monkeypatch.setattr(sandbox, "_why_not", lambda how: f"no {how} in this test")
    sandbox.mode.cache_clear()
    yield
    sandbox.mode.cache_clear()


def test_without_any_sandbox_programs_are_refused_in_one_line_naming_the_opt_in(nothing_works):
    with pytest.raises(SandboxUnavailable) as e:
        run_python("print('hi')")
    message = str(e.value)
    assert "\n" not in message and f"{MODE_ENV}=unisolated" in message and "no bwrap" in message, message
    with pytest.raises(SandboxUnavailable):
        run_many(["print('hi')"] * 3)


def test_the_reports_say_not_run_with_the_reason(nothing_works):
    from mamba_nb.benchmark import format_results
    from mamba_nb.evaluate import format_table

    why = str(pytest.raises(SandboxUnavailable, run_python, "pass").value)
    assert f"not run ({why})" in format_table({"mode": "spm", "humaneval": {"tasks": 3, "not_run": why}})
    shown = format_results([{"benchmark": "humaneval-single", "tasks": 3, "n_samples": 1, "mode": "spm",
                             "not_run": why, "exact_match": 0.0, "edit_similarity": 0.0, "model_s": 1.0}])
    assert f"not run ({why})" in shown


def test_the_opt_in_runs_programs_and_says_they_are_not_isolated(nothing_works, monkeypatch):
    monkeypatch.setenv(MODE_ENV, "unisolated")
    sandbox.mode.cache_clear()
    sandbox._warn_once.cache_clear()
    with pytest.warns(RuntimeWarning, match="NOT isolated"):
        r = run_python("print('ok')")
    assert r.passed and not r.isolated and r.mode == "unisolated"
    assert not run_python("exit(0)").passed


def test_an_unknown_mode_is_named(monkeypatch):
    monkeypatch.setenv(MODE_ENV, "guard")
    sandbox.mode.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match=r"MAMBA_NB_SANDBOX='guard' is not one of bwrap, landlock"):
            run_python("pass")
    finally:
        sandbox.mode.cache_clear()


def test_a_forced_mode_that_cannot_work_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setenv(MODE_ENV, "landlock")
    monkeypatch.setattr(sandbox, "_why_not", lambda how: "the kernel has no Landlock")
    sandbox.mode.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="the kernel has no Landlock"):
            run_python("pass")
    finally:
        sandbox.mode.cache_clear()


# --- the seccomp filter, run by a small classic-BPF interpreter ------------------------------------


def bpf_run(code: bytes, nr: int, arch: int, args: tuple) -> int:
    """What the kernel would return for a call: the filter run on `struct seccomp_data`."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *args)
    ops = [struct.unpack("HBBI", code[i:i + 8]) for i in range(0, len(code), 8)]
    pc, acc = 0, 0
    while True:
        op, jt, jf, k = ops[pc]
        if op == seccomp.LD_ABS:
            acc = struct.unpack_from("<I", data, k)[0]
        elif op == seccomp.RET:
            return k
        else:
            taken = {seccomp.JEQ: acc == k, seccomp.JGE: acc >= k, seccomp.JSET: bool(acc & k)}[op]
            pc += jt if taken else jf
        pc += 1


def expected(rule, args) -> int:
    """The decision `seccomp.rules` describes, computed directly."""
    allow, deny = seccomp.RET_ALLOW, seccomp.RET_ERRNO | seccomp.EPERM
    if rule is None:
        return allow
    if rule[0] == "errno":
        return seccomp.RET_ERRNO | rule[1]
    if rule[0] == "clone":
        flags = args[0] & 0xFFFFFFFF
        return allow if flags & seccomp.CLONE_THREAD and not flags & seccomp.CLONE_NEW_ANY else deny
    kind, i, values = rule
    hit = args[i] & 0xFFFFFFFF in [v & 0xFFFFFFFF for v in values]
    return allow if hit == (kind == "allow_if") else deny


@given(machine=st.sampled_from(sorted(seccomp.ARCHES)), pid=st.integers(1, 2**22),
       allow_exec=st.booleans(), data=st.data())
def test_the_filter_decides_every_call_as_its_rules_say(machine, pid, allow_exec, data):
    audit_arch, has_x32, numbers = seccomp.ARCHES[machine]
    code = seccomp.program(machine, pid, allow_exec)
    table = seccomp.rules(pid, allow_exec)
    by_number = {n: name for name, n in numbers.items()}
    nr = data.draw(st.one_of(st.sampled_from(sorted(by_number)), st.integers(0, 600)))
    values = [0, pid, seccomp.AF_UNIX, seccomp.CLONE_THREAD, seccomp.PR_SET_PDEATHSIG, 0x5412]
    args = tuple(data.draw(st.one_of(st.sampled_from(values), st.integers(0, 2**64 - 1))) for _ in range(6))
    assert bpf_run(code, nr, audit_arch, args) == expected(table.get(by_number.get(nr)), args)
    assert bpf_run(code, nr, 0x40000003, args) == seccomp.RET_KILL_PROCESS  # another architecture (i386)
    if has_x32:
        assert bpf_run(code, nr | 0x40000000, audit_arch, args) == seccomp.RET_KILL_PROCESS


def test_the_rules_refuse_what_the_module_promises():
    table = seccomp.rules(1234, allow_exec=False)
    for name in ("fork", "vfork", "execve", "ptrace", "unshare", "mount", "bpf", "io_uring_setup", "socket",
                 "chmod", "process_vm_readv", "pidfd_open", "memfd_create", "keyctl"):
        assert table[name] == ("errno", seccomp.EPERM), name
    assert seccomp.rules(1234, allow_exec=True).get("execve") is None  # bubblewrap's own filter execs the runner


@given(st.integers(0, 12))
def test_newer_landlock_versions_handle_more_never_less(version):
    older, newer = landlock.handled(version), landlock.handled(version + 1)
    assert all(o & n == o for o, n in zip(older, newer))
    assert landlock.handled(version)[0] & landlock.READ_FILE if version >= 1 else True


def test_the_runner_refuses_to_run_a_program_with_a_privilege_not_dropped(tmp_path):
    """The check behind the drop: a runner told to run as another uid than it has stops first."""
    import json
    import subprocess
    import sys

    from mamba_nb import sandbox_runner

    program = tmp_path / "program.py"
    program.write_text("print('ran')\n")
    nonce_r, nonce_w = os.pipe()
    os.write(nonce_w, b"nonce")
    os.close(nonce_w)
    verdict_r, verdict_w = os.pipe()
    cfg = {"uid": os.getuid() + 1, "gid": os.getgid() + 1, "parent": None, "nonce_fd": nonce_r,
           "verdict_fd": verdict_w, "program": str(program), "limits": {}, "read": [], "read_fds": [], "write": [],
           "require_landlock": True, "strict": True}
    p = subprocess.run([sys.executable, "-s", "-S", str(sandbox.RUNNER), json.dumps(cfg)],
                       pass_fds=[nonce_r, verdict_w], capture_output=True, text=True, timeout=60)
    for fd in (nonce_r, verdict_w):
        os.close(fd)
    assert os.read(verdict_r, 100) == b""  # every write end closed, and no verdict written
    os.close(verdict_r)
    assert p.returncode == sandbox_runner.ABORT == sandbox.ABORT
    assert "privileges were not dropped" in p.stderr and "ran" not in p.stdout
