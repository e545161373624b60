"""Run an untrusted Python program (a model's infill spliced into code) with the kernel as the boundary.

Why bubblewrap (`bwrap`, Debian/Ubuntu package `bubblewrap`; what Flatpak runs apps in): it
is a small, audited tool made for exactly this, unprivileged, that puts one command in fresh
Linux namespaces; nsjail does the same with more configuration and is not packaged for
Debian 12, and hand-written `unshare` code would re-implement bwrap. Each program runs as

    bwrap (new user, PID, network, IPC, UTS and cgroup namespaces; dies with its parent)
      /usr, /etc and the interpreter read-only; /proc of its own PID namespace (it sees no
      other process: not the evaluator, not its /proc/<pid>/environ); an empty environment;
      /work: a size-capped tmpfs, its only writable place (total disk use capped, gone after)
      python -I -S sandbox_runner.py  (seccomp: no new processes; threads allowed)

under rlimits set before it starts (and that it cannot raise: no privileges survive): address
space (memory), CPU seconds, size of any file, open files, no core dumps. No network device
exists in its namespace (not even loopback that reaches the host). The wall-clock limit kills
the whole sandbox: bwrap is PID 1 of the namespace, and when it dies every process in it dies.

A program **passes** only if it ran to its end: the runner then prints a one-time nonce the
evaluator gave it (see `sandbox_runner.py`); `exit()`, `raise SystemExit` or `os._exit(0)`
before the end is a failure whatever the exit status.

Where bwrap is missing or the kernel refuses namespaces (some containers, macOS), the program
runs in a plain subprocess with the same rlimits, the seccomp filter where available, and an
in-process audit-hook guard: NOT isolated, and it says so (a warning, and `isolated=False` on
every result). `MAMBA_NB_SANDBOX=guard` chooses that fallback on purpose (tests use it).
"""
from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

# Lance warns at every fork of a process that imported it. Each program here starts through a fork
# (preexec_fn sets its limits) that execs at once and never touches a Lance handle, so the warning
# is noise, dozens of times per evaluation in a notebook. Only that message is silenced, at each
# start (a warnings context entered since, e.g. a test runner's, would have dropped a filter set once).
_LANCE_FORK = dict(action="ignore", message="lance is not fork-safe", category=UserWarning)

RUNNER = Path(__file__).with_name("sandbox_runner.py")
#: How a run ended. Only "passed" counts as a pass.
STATUSES = ("passed", "failed", "blocked", "timeout", "memory", "output_limit")
OPEN_FILES = 256
# The last exception of a program stopped by the sandbox rather than by its own bug.
# (Its own network namespace has a loopback of its own: a connection to "localhost" is refused there.)
_BLOCKED = re.compile(r"^(PermissionError|ConnectionRefusedError|OSError: \[Errno (1|13|30|101|99|28)\]|"
                      r"BlockingIOError)|sandbox: ", re.M)
_NOT_ISOLATED = ("the sandbox is NOT isolated here ({why}): programs run in a plain subprocess with rlimits and "
                 "an in-process guard that a deliberate program can undo. Install bubblewrap (apt-get install "
                 "bubblewrap) on a Linux kernel that allows user namespaces to isolate them.")


@dataclass
class SandboxResult:
    """How one program ended. `passed`: it ran to its end within every limit (the nonce came back)."""

    status: str  # one of STATUSES
    returncode: Optional[int]  # None when killed on timeout
    stdout: str
    stderr: str
    duration_s: float
    isolated: bool = True  # ran in namespaces (False: the fallback guard)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _base_python() -> Path:
    """The real interpreter binary (a venv's python is a link to it; -I -S ignores site-packages)."""
    return Path(getattr(sys, "_base_executable", sys.executable)).resolve()


def _bwrap_command(inputs: Path, disk_mb: int) -> list[str]:
    python = _base_python()
    # nobody in its own user namespace, no capabilities even when the evaluator is root
    cmd = ["bwrap", "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL",
           "--die-with-parent", "--new-session", "--clearenv", "--proc", "/proc", "--dev", "/dev"]
    # The system (read-only): /usr and, where they are real directories, /bin /lib /lib64 /etc.
    for path in ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/etc"):
        p = Path(path)
        if p.is_symlink():
            cmd += ["--symlink", os.readlink(p), path]
        elif p.is_dir():
            cmd += ["--ro-bind", path, path]
    prefix = Path(sys.base_prefix).resolve()
    if not str(prefix).startswith("/usr/"):
        cmd += ["--ro-bind", str(prefix), str(prefix)]
    cmd += ["--ro-bind", str(inputs), "/in", "--size", str(disk_mb * 2**20), "--tmpfs", "/work", "--chdir", "/work",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/work", "--setenv", "TMPDIR", "/work",
            "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
            "--setenv", "PYTHONHASHSEED", "0", "--remount-ro", "/",
            str(python), "-I", "-S", "/in/runner.py", "/in/program.py"]
    return cmd


@functools.lru_cache(maxsize=1)
def isolation() -> tuple[bool, str]:
    """(isolated, why not): whether programs can run in bwrap namespaces here. Probed once."""
    if os.environ.get("MAMBA_NB_SANDBOX") == "guard":
        return False, "MAMBA_NB_SANDBOX=guard"
    if not sys.platform.startswith("linux"):
        return False, f"{sys.platform} has no Linux namespaces"
    if shutil.which("bwrap") is None:
        return False, "bwrap (bubblewrap) is not installed"
    with tempfile.TemporaryDirectory(prefix="mamba_nb_probe_") as d:
        Path(d, "runner.py").write_text("")
        Path(d, "program.py").write_text("")
        cmd = _bwrap_command(Path(d), 1)
        try:
            probe = subprocess.run(cmd[:-3] + ["-c", "pass"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            return False, f"bwrap could not start ({e})"
    if probe.returncode != 0:
        return False, f"bwrap failed: {probe.stderr.strip()[:200] or probe.returncode}"
    return True, ""


def _limits(memory_mb: int, cpu_s: int, fsize: int):
    def apply():  # in the child, before exec: inherited by bwrap and the program
        import resource

        for lim, val in ((resource.RLIMIT_AS, memory_mb * 2**20), (resource.RLIMIT_CPU, cpu_s),
                         (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_NOFILE, OPEN_FILES),
                         (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(lim, (val, val))

    return apply


def _read_capped(path: Path, limit: int) -> tuple[str, bool]:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    return data[:limit].decode("utf-8", errors="replace"), len(data) > limit


def run_python(source: str, *, timeout_s: float = 5.0, memory_mb: int = 512, max_output_bytes: int = 64 * 1024,
               disk_mb: int = 32) -> SandboxResult:
    """Run `source` as a Python program under the limits described in the module docstring.

    Never raises for anything the program does; bad limits raise ValueError.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s={timeout_s!r} must be > 0 seconds")
    if memory_mb < 64:
        raise ValueError(f"memory_mb={memory_mb!r} is too small for a Python interpreter; use at least 64")
    if max_output_bytes < 1:
        raise ValueError(f"max_output_bytes={max_output_bytes!r} must be >= 1")
    if disk_mb < 1:
        raise ValueError(f"disk_mb={disk_mb!r} must be >= 1")
    isolated, why = isolation()
    if not isolated:
        _warn_once(why)
    nonce = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="mamba_nb_sandbox_") as root:
        root_p = Path(root)
        inputs, work = root_p / "in", root_p / "work"
        inputs.mkdir()
        work.mkdir()
        shutil.copyfile(RUNNER, inputs / "runner.py")
        (inputs / "program.py").write_text(source, encoding="utf-8")
        out_path, err_path = root_p / "stdout", root_p / "stderr"
        if isolated:
            cmd, cwd = _bwrap_command(inputs, disk_mb), work
        else:
            cmd = [str(_base_python()), "-I", "-S", str(inputs / "runner.py"), str(inputs / "program.py"),
                   "--guard", str(work)]
            cwd = work
        fsize = max_output_bytes + 4096  # a little over the cap: an overflow is detectable
        start = time.perf_counter()
        warnings.filterwarnings(**_LANCE_FORK)
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, cwd=cwd, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work),
                                                       "TMPDIR": str(work), "PYTHONDONTWRITEBYTECODE": "1"},
                                    stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True,
                                    preexec_fn=_limits(memory_mb, int(timeout_s) + 2, fsize))
            timed_out = False
            try:
                proc.stdin.write(f"{nonce}\n".encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:  # the whole group (and with bwrap, its PID namespace) goes
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        duration = time.perf_counter() - start
        stdout, out_over = _read_capped(out_path, max_output_bytes + len(nonce) + 2)
        stderr, err_over = _read_capped(err_path, max_output_bytes)
    finished = stdout.endswith(f"\n{nonce}\n")
    if finished:  # what the program printed, without the runner's last line
        stdout = stdout[: -len(nonce) - 2]
    rc = proc.returncode
    if timed_out:
        status, rc = "timeout", None
    elif out_over or err_over or "File too large" in stderr:
        status = "output_limit"
    elif rc == 0 and finished:
        status = "passed"
    elif "MemoryError" in stderr or (rc == -signal.SIGKILL and "Traceback" not in stderr):
        status = "memory"
    elif rc == -signal.SIGXCPU:
        status = "timeout"
    elif _BLOCKED.search(_last_error(stderr)):
        status = "blocked"
    else:
        status = "failed"
    return SandboxResult(status, rc, stdout, stderr, duration, isolated)


def _last_error(stderr: str) -> str:
    """The exception line a traceback ends with (or the sandbox's own message)."""
    lines = [line for line in stderr.strip().splitlines() if line and not line.startswith(" ")]
    return "\n".join(lines[-2:])


@functools.lru_cache(maxsize=None)
def _warn_once(why: str) -> None:
    warnings.warn(_NOT_ISOLATED.format(why=why), RuntimeWarning, stacklevel=3)


def run_many(sources: Iterable[str], *, workers: Optional[int] = None, progress: bool = False,
             **limits) -> list[SandboxResult]:
    """`run_python` on each source, `workers` at a time (default: every core); results in input order.

    Threads only wait on the children, so they cost nothing; each program is its own process.
    """
    sources = list(sources)
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers={workers!r} must be >= 1")
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(sources), desc="sandbox", disable=not progress, leave=False) as bar:
        def one(src):
            r = run_python(src, **limits)
            bar.update(1)
            return r

        return list(pool.map(one, sources))
