"""Run an untrusted Python program (a model's infill spliced into code) in a subprocess with limits.

Each program runs in a fresh `python -I` child, in its own process group, with its own
temporary directory as the working directory, and with these limits:

- wall-clock time: the whole process group is SIGKILLed when `timeout_s` passes
  (plus RLIMIT_CPU as a backstop);
- memory: RLIMIT_AS, so an unbounded allocation raises MemoryError in the child;
- output: stdout and stderr go to files capped by RLIMIT_FSIZE, and only the first
  `max_output_bytes` are read back;
- no new processes: an audit hook (`sys.addaudithook`) refuses `os.fork`, `os.system`,
  `os.exec*`, `os.posix_spawn`, `subprocess.Popen`, `os.kill`, and imports of `ctypes` /
  `_posixsubprocess` (through which the hook could be bypassed). RLIMIT_NPROC is not
  used because it does not apply to root, which is who runs this in containers;
  the process-group kill cleans up anything that slipped through;
- no network: the hook refuses to create sockets at all;
- no writes outside its directory: the hook refuses `open` for writing, and
  remove/rename/mkdir/chmod/..., on any path outside the sandbox directory;
- no raising its own limits: `resource.setrlimit`/`prlimit` are refused.

What it does not do: it is not a security boundary against a determined attacker (no
seccomp, namespaces or containers; CPython audit hooks can be outrun by C extensions).
It keeps model-written code from doing accidental harm and keeps an evaluation going
when a program loops, forks, allocates without end, or floods its output. Reading
files is allowed (tests import the standard library).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

# Runs inside the child before the untrusted program. Written as source (not imported from
# this package) so the child needs nothing but the interpreter: `python -I` ignores
# PYTHONPATH and the user's site-packages.
_GUARD = r'''
import os, sys, resource

_work = os.path.realpath(sys.argv[1])
_program = sys.argv[2]
_mem, _cpu, _fsize = (int(v) for v in sys.argv[3:6])

# Lower soft and hard limits together: a process can always lower its limits, and the
# hook below stops the program from raising them again (root could otherwise).
for _lim, _val in ((resource.RLIMIT_AS, _mem), (resource.RLIMIT_CPU, _cpu),
                   (resource.RLIMIT_FSIZE, _fsize), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(_lim, (_val, _val))


class SandboxViolation(PermissionError):
    pass


_FORBIDDEN = {
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
    "os.startfile", "subprocess.Popen", "os.kill", "os.killpg", "pty.spawn",
    "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo",
    "socket.gethostbyname", "resource.setrlimit", "resource.prlimit",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
}
_FORBIDDEN_IMPORTS = ("ctypes", "_ctypes", "_posixsubprocess", "cffi")
# Events whose leading string arguments are paths that get modified.
_PATH_EVENTS = {
    "os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.rename": 2, "os.chmod": 1, "os.chown": 1,
    "os.truncate": 1, "os.link": 2, "os.symlink": 2, "os.utime": 1, "os.chflags": 1,
    "os.lchmod": 1, "os.lchown": 1, "os.setxattr": 1, "os.removexattr": 1, "shutil.rmtree": 1,
    "os.mkfifo": 1, "os.mknod": 1,
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _inside(path):
    if isinstance(path, int):  # an fd: it came from an open this hook already checked
        return True
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    real = os.path.realpath(os.path.join(_work, os.fspath(path)))
    return real == _work or real.startswith(_work + os.sep)


def _hook(event, args):
    if event in _FORBIDDEN:
        raise SandboxViolation(f"sandbox: {event} is not allowed")
    if event == "import" and args and str(args[0]).split(".")[0] in _FORBIDDEN_IMPORTS:
        raise SandboxViolation(f"sandbox: importing {args[0]} is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and path is not None and not _inside(path):
            raise SandboxViolation(f"sandbox: writing {path!r} outside the sandbox directory")
    n = _PATH_EVENTS.get(event)
    if n is not None:
        for p in args[:n]:
            if isinstance(p, (str, bytes, os.PathLike)) and not _inside(p):
                raise SandboxViolation(f"sandbox: {event} on {p!r} outside the sandbox directory")


# Modules the hook cannot stop once loaded: drop them so a re-import goes through it.
for _m in _FORBIDDEN_IMPORTS:
    sys.modules.pop(_m, None)
with open(_program, encoding="utf-8") as _f:
    _code = compile(_f.read(), "program.py", "exec")
sys.addaudithook(_hook)
sys.argv = ["program.py"]
del _f, _lim, _val, _m
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
'''

#: How a run ended, from best to worst. Only "passed" counts as a pass.
STATUSES = ("passed", "failed", "blocked", "timeout", "memory", "output_limit")


@dataclass
class SandboxResult:
    """How one program ended. `passed` is True only for exit status 0 within every limit."""

    status: str  # one of STATUSES
    returncode: Optional[int]  # None when killed on timeout
    stdout: str
    stderr: str
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _read_capped(path: Path, limit: int) -> tuple[str, bool]:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    return data[:limit].decode("utf-8", errors="replace"), len(data) > limit


def run_python(
    source: str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    max_output_bytes: int = 64 * 1024,
) -> SandboxResult:
    """Run `source` as a Python program under the limits described in the module docstring.

    Never raises for anything the program does; bad limits raise ValueError.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s={timeout_s!r} must be > 0 seconds")
    if memory_mb < 64:
        raise ValueError(f"memory_mb={memory_mb!r} is too small for a Python interpreter; use at least 64")
    if max_output_bytes < 1:
        raise ValueError(f"max_output_bytes={max_output_bytes!r} must be >= 1")
    with tempfile.TemporaryDirectory(prefix="mamba_nb_sandbox_") as root:
        root_p = Path(root)
        work = root_p / "work"  # the program's cwd and the only place it may write
        work.mkdir()
        (root_p / "guard.py").write_text(_GUARD)
        (root_p / "program.py").write_text(source, encoding="utf-8")
        out_path, err_path = root_p / "stdout", root_p / "stderr"
        # A little more than the cap so an overflow is detectable; the file limit also stops
        # an endless print from filling the disk.
        fsize = max_output_bytes + 4096
        cpu = int(timeout_s) + 2
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        cmd = [sys.executable, "-I", str(root_p / "guard.py"), str(work), str(root_p / "program.py"),
               str(memory_mb * 2**20), str(cpu), str(fsize)]
        start = time.perf_counter()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True)  # own process group
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # Kill the group whether or not the main process ended: anything it started dies too.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        duration = time.perf_counter() - start
        stdout, out_over = _read_capped(out_path, max_output_bytes)
        stderr, err_over = _read_capped(err_path, max_output_bytes)
        rc = proc.returncode
    if timed_out:
        status, rc = "timeout", None
    elif out_over or err_over or "File too large" in stderr:
        status = "output_limit"
    elif rc == 0:
        status = "passed"
    elif "SandboxViolation" in stderr:
        status = "blocked"
    elif "MemoryError" in stderr or (rc == -signal.SIGKILL and "Traceback" not in stderr):  # OOM killer
        status = "memory"
    elif rc == -signal.SIGXCPU:
        status = "timeout"
    else:
        status = "failed"
    return SandboxResult(status, rc, stdout, stderr, duration)


def run_many(sources: Iterable[str], *, workers: int = 2, **limits) -> list[SandboxResult]:
    """`run_python` on each source, `workers` at a time; results in input order.

    Threads only wait on the children, so they cost nothing; each child is its own process.
    """
    sources = list(sources)
    if workers < 1:
        raise ValueError(f"workers={workers!r} must be >= 1")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: run_python(s, **limits), sources))
