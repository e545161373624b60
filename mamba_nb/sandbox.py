"""Run an untrusted Python program (a model's infill spliced into code) with the kernel as the boundary.

Three modes, chosen once per process: **bwrap** where bubblewrap works, else **landlock** where
the kernel has Landlock, else none: `run_python` then raises `SandboxUnavailable` (one line,
naming the opt-in) instead of running model-written code. `MAMBA_NB_SANDBOX=bwrap|landlock`
forces a mode (an error if it cannot work here); `MAMBA_NB_SANDBOX=unisolated` is the explicit
opt-in to run programs anyway, NOT isolated (rlimits, and the seccomp filter where it exists).
Every result says which mode ran it (`mode`, `isolated`).

In every mode, when the evaluator is root the program runs as uid/gid 65534 with no groups,
dropped before anything else (bubblewrap itself runs as 65534, so its user namespace maps onto
65534, never onto root). What 65534 could not reach is handed over: in Landlock mode the
interpreter and the runner through descriptors root opened (`/proc/self/fd/N`), for bwrap an
interpreter under root's home as a read-only view (`sandbox_python.py`). Then
`sandbox_runner.py` checks the drop, dies with the evaluator, sets the rlimits (memory, CPU,
file size, open files), confines itself with Landlock and the seccomp filter (`seccomp.py`) and
runs the program. Where each mode differs:

- **bwrap**: new user, PID, network, IPC, UTS and cgroup namespaces, `--disable-userns` (no
  nested namespace, so no mount of its own), `--cap-drop ALL`, `--new-session`,
  `--die-with-parent`; bwrap's own `--seccomp` filter covers every process in the namespace, its
  init (PID 1) included, and the runner from its first instruction; `/usr`, `/etc`, the
  interpreter and the runner read-only, a `/proc` of its own PID namespace (nothing in
  `/proc/sys` is writable by 65534, and the runner's Landlock rules hide all of `/proc` from the
  program), `/dev` read-only; the one writable place is `/work`, a tmpfs of `disk_mb`.
- **landlock**: the same program in a plain process (no namespaces): Landlock lets it read only
  the system and the interpreter and write nowhere (its stdout and stderr are descriptors of
  capped size; with no mount namespace there is no kernel cap on a writable directory, so there
  is none), no /proc, no HOME; no TCP; no signal or abstract socket outside its domain; the
  seccomp filter as above.

A program **passes** only if it ran to its end: the runner then writes a one-time nonce on a
pipe of its own (not stdout). The wall-clock limit kills the sandbox (its process, or bwrap and
with it its PID namespace) and waits until it is gone.
"""
from __future__ import annotations

import functools
import json
import os
import secrets
import select
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

HERE = Path(__file__).parent
RUNNER = HERE / "sandbox_runner.py"
#: the runner and the standard-library-only modules it imports, copied read-only into each sandbox
RUNNER_FILES = {"runner.py": RUNNER, "landlock.py": HERE / "landlock.py", "seccomp.py": HERE / "seccomp.py"}
#: How a run ended. Only "passed" counts as a pass; "error": the evaluator could not run it.
STATUSES = ("passed", "failed", "blocked", "timeout", "memory", "output_limit", "error")
MODES = ("bwrap", "landlock", "unisolated")
MODE_ENV = "MAMBA_NB_SANDBOX"
OPEN_FILES = 256
NOBODY = 65534  # uid and gid an evaluator running as root drops the program to
NPROC = 2048  # processes and threads uid 65534 may hold at once, across every program running
RUNNER_PID = 2  # the runner's pid in bwrap's PID namespace (bwrap's own init is 1)
ABORT = 70  # the runner's exit status when it refused to run the program (sandbox_runner.ABORT)
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/etc")
ERRNO_BLOCKED = (1, 13, 30, 101, 99, 28)  # EPERM EACCES EROFS ENETUNREACH EADDRNOTAVAIL ENOSPC
_NOT_ISOLATED = ("the sandbox is NOT isolated ({MODE_ENV}=unisolated): programs run in a plain subprocess with "
                 "rlimits{extra}; a deliberate program can reach your files and processes.")


class SandboxUnavailable(RuntimeError):
    """No isolation works here (and none was opted out of): model-written code is not run."""


@dataclass
class SandboxResult:
    """How one program ended. `passed`: it ran to its end within every limit (the nonce came back)."""

    status: str  # one of STATUSES
    returncode: Optional[int]  # None when killed on timeout
    stdout: str
    stderr: str
    duration_s: float
    mode: str = "bwrap"  # which of MODES isolated it

    @property
    def isolated(self) -> bool:
        return self.mode != "unisolated"

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _interpreter() -> tuple[Path, str]:
    """(the interpreter's prefix, the binary's path inside it): a venv's python is a link to the real
    one, and -s -S ignores every site-packages, so the prefix (the standard library) is all it needs."""
    exe = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    prefix = Path(sys.base_prefix).resolve()
    if len(prefix.parts) < 3 and prefix != Path("/usr") or prefix == Path.home().resolve():
        # the whole prefix becomes readable to the program: not a home directory, not the whole machine
        raise SandboxUnavailable(f"the interpreter's prefix {prefix} is too broad to show a program; run the "
                                 "evaluation with a CPython installed in a directory of its own (pyenv, uv, /usr)")
    try:
        return prefix, str(exe.relative_to(prefix))
    except ValueError:
        raise SandboxUnavailable(f"the interpreter {exe} is not inside its prefix {prefix}; run the evaluation "
                                 "with a regular CPython installation") from None


def _dropped() -> tuple[Optional[int], Optional[int]]:
    """(uid, gid) the program runs as when the evaluator is root; (None, None): no change."""
    return (NOBODY, NOBODY) if os.geteuid() == 0 else (None, None)


def _python_flags() -> list[str]:
    # -s -S: no site-packages; -P: not the runner's directory on sys.path; -B: no .pyc written
    return ["-s", "-S", "-B"] + (["-P"] if sys.version_info >= (3, 11) else [])


def _bwrap_command(prefix: Path, exe: str, inputs: Path, fds: dict, disk_mb: int, cfg: dict) -> list[str]:
    """bwrap's arguments; `fds`: its filter's and its info's descriptors."""
    cmd = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--uid", str(NOBODY), "--gid",
           str(NOBODY), "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--clearenv",
           "--info-fd", str(fds["info"]), "--seccomp", str(fds["seccomp"]), "--proc", "/proc", "--dev", "/dev"]
    for path in SYSTEM:
        p = Path(path)
        if p.is_symlink():
            cmd += ["--symlink", os.readlink(p), path]
        elif p.is_dir():
            cmd += ["--ro-bind", path, path]
    if not any(str(prefix) == s or str(prefix).startswith(s + "/") for s in SYSTEM):
        from mamba_nb.sandbox_python import readable_prefix

        source = readable_prefix(prefix, exe, Path(os.__file__).resolve().parent) if _dropped()[0] else prefix
        cmd += ["--ro-bind", str(source), str(prefix)]  # (where it was: libpython's RUNPATH names that path)
    cmd += ["--ro-bind", str(inputs), "/in", "--size", str(disk_mb * 2**20), "--tmpfs", "/work",
            "--chdir", "/work", "--remount-ro", "/dev", "--remount-ro", "/"]
    for key, value in (("PATH", "/usr/bin:/bin"), ("HOME", "/work"), ("TMPDIR", "/work"), ("LANG", "C.UTF-8"),
                       ("PYTHONHASHSEED", "0")):
        cmd += ["--setenv", key, value]
    cfg.update(program="/in/program.py", read=[*SYSTEM, str(prefix), "/in"], read_fds=[], write=["/work"],
               parent=None, require_landlock=False)
    return cmd + [str(prefix / exe), *_python_flags(), "/in/runner.py", json.dumps(cfg)]


def _plain_command(fds: dict, exe: str, cfg: dict) -> tuple[list[str], dict]:
    """The landlock (and unisolated) command: the interpreter and the runner through the fds (their
    paths where there is no /proc, as on macOS: only the unisolated opt-in runs there)."""
    if Path("/proc/self/fd").is_dir():
        prefix, inputs = f"/proc/self/fd/{fds['prefix']}", f"/proc/self/fd/{fds['inputs']}"
    else:
        prefix, inputs = str(_interpreter()[0]), str(Path(cfg["program_dir"]))
    cfg.update(program=f"{inputs}/program.py", read=list(SYSTEM), read_fds=[fds["prefix"], fds["inputs"]], write=[],
               parent=os.getpid(), require_landlock=cfg["strict"])
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/nonexistent", "TMPDIR": "/nonexistent",
           "PYTHONHOME": prefix, "LD_LIBRARY_PATH": f"{prefix}/lib", "PYTHONHASHSEED": "0"}
    return [f"{prefix}/{exe}", *_python_flags(), f"{inputs}/runner.py", json.dumps(cfg)], env


@dataclass
class _Run:
    """One started sandbox: the process, and the pipes and descriptors the evaluator keeps."""

    proc: subprocess.Popen
    verdict: int  # read end of the verdict pipe
    child: Optional[int] = None  # pidfd of bwrap's PID 1 in the sandbox (its death ends the namespace)
    problem: str = ""  # why the sandbox was stopped before the program could run ("": it was not)


def _write_inputs(inputs: Path, source: str) -> None:
    """The runner, its modules and the program, read-only for everyone (the program included)."""
    inputs.mkdir(mode=0o755)
    for name, path in RUNNER_FILES.items():
        shutil.copyfile(path, inputs / name)
        os.chmod(inputs / name, 0o444)
    # surrogatepass: a lone surrogate is the program's own problem (the runner decodes it alike), not the batch's
    (inputs / "program.py").write_bytes(source.encode("utf-8", "surrogatepass"))
    os.chmod(inputs / "program.py", 0o444)
    os.chmod(inputs, 0o555)


def _start(mode: str, root: Path, source: str, nonce: bytes, limits: dict, disk_mb: int, out, err) -> _Run:
    inputs = root / "in"
    _write_inputs(inputs, source)
    prefix, exe = _interpreter()
    uid, gid = _dropped()
    if uid is not None:  # bwrap, as 65534, binds `inputs` by path: others may pass through (not list) `root`
        os.chmod(root, 0o711)
    passed, ours = [], []  # descriptors the child gets (closed here once it started), and ours to keep

    def pipe(child_reads: bool) -> tuple[int, int]:
        """(our end, the child's end) of a new pipe."""
        r, w = os.pipe()
        mine, theirs = (w, r) if child_reads else (r, w)
        ours.append(mine)
        passed.append(theirs)
        return mine, theirs

    try:
        nonce_w, nonce_r = pipe(child_reads=True)
        os.write(nonce_w, nonce)
        verdict_r, verdict_w = pipe(child_reads=False)
        fds = {}
        cfg = {"uid": uid, "gid": gid, "nonce_fd": nonce_r, "verdict_fd": verdict_w, "limits": limits,
               "strict": mode != "unisolated", "program_dir": str(inputs)}
        info_r = None
        if mode == "bwrap":
            from mamba_nb.seccomp import program

            info_r, fds["info"] = pipe(child_reads=False)
            seccomp_w, fds["seccomp"] = pipe(child_reads=True)
            os.write(seccomp_w, program(os.uname().machine, RUNNER_PID, allow_exec=True))
            cmd, env = _bwrap_command(prefix, exe, inputs, fds, disk_mb, cfg), {"PATH": "/usr/bin:/bin"}
        else:  # the interpreter and the inputs through descriptors opened here (as root, when root)
            path_only = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
            for name, path in (("prefix", prefix), ("inputs", inputs)):
                fds[name] = os.open(path, path_only)
                passed.append(fds[name])
            cmd, env = _plain_command(fds, exe, cfg)
        extra = {"user": uid, "group": gid, "extra_groups": []} if uid is not None else {}
        proc = subprocess.Popen(cmd, cwd="/", env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True, pass_fds=passed, **extra)
    except BaseException:
        for fd in passed + ours:
            os.close(fd)
        raise
    for fd in passed + [fd for fd in ours if fd not in (verdict_r, info_r)]:
        os.close(fd)  # (the nonce and the filter are in their pipes' buffers already)
    os.set_blocking(verdict_r, False)
    run = _Run(proc, verdict_r)
    if info_r is not None:
        pid, run.child = _child(info_r)
        run.problem = _not_dropped(pid, uid)
    return run


def _not_dropped(pid: Optional[int], uid: Optional[int]) -> str:
    """Why the host's process table shows bwrap's sandboxed process with another uid than meant ("" if not:
    the check from outside, which no user namespace can fool)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
    except (OSError, StopIteration, TypeError):
        return ""  # it already exited (or there is no /proc): nothing runs that could use a privilege
    meant = str(os.getuid() if uid is None else uid)
    return "" if set(uids) == {meant} else f"sandbox: it runs as uids {uids} on the host, not {meant}; stopped"


def _child(info_r: int, wait_s: float = 10.0) -> tuple[Optional[int], Optional[int]]:
    """bwrap's `--info-fd` says the pid of the sandboxed process: (that pid, a pidfd on it, to kill it
    and see it gone); (None, None) if it already exited."""
    try:
        data = b""
        deadline = time.monotonic() + wait_s
        while b"}" not in data and time.monotonic() < deadline:
            if not select.select([info_r], [], [], max(deadline - time.monotonic(), 0))[0]:
                break
            chunk = os.read(info_r, 4096)
            if not chunk:
                break
            data += chunk
        pid = json.loads(data.decode()).get("child-pid") if b"}" in data else None
        return (pid, os.pidfd_open(pid)) if pid else (None, None)
    except (OSError, ValueError):
        return None, None  # it already exited
    finally:
        os.close(info_r)


def _stop(run: _Run) -> None:
    """Kill everything the run started and wait until it is gone (from the host's process table too)."""
    for kill in (lambda: os.killpg(run.proc.pid, signal.SIGKILL),
                 lambda: run.child is not None and signal.pidfd_send_signal(run.child, signal.SIGKILL)):
        try:
            kill()
        except (ProcessLookupError, PermissionError, OSError):
            pass
    run.proc.wait()
    if run.child is not None:
        select.select([run.child], [], [], 10.0)  # readable once the process has exited
        os.close(run.child)


def _read_verdict(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except (BlockingIOError, OSError):
        return b""
    finally:
        os.close(fd)


def _limits(memory_mb: int, cpu_s: int, fsize: int) -> dict:
    """The rlimits the runner sets on itself before the program (soft = hard: they cannot be raised)."""
    limits = {"RLIMIT_AS": memory_mb * 2**20, "RLIMIT_CPU": cpu_s, "RLIMIT_FSIZE": fsize,
              "RLIMIT_NOFILE": OPEN_FILES, "RLIMIT_CORE": 0, "RLIMIT_MSGQUEUE": 0}
    if _dropped()[0] is not None:  # threads of every program (uid 65534's, all of them): no thread bomb
        limits["RLIMIT_NPROC"] = NPROC  # (an ordinary user's count includes their whole session: left alone)
    return limits


def _read_capped(path: Path, limit: int) -> tuple[str, bool]:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    return data[:limit].decode("utf-8", errors="replace"), len(data) > limit


def run_python(source: str, *, timeout_s: float = 5.0, memory_mb: int = 512, max_output_bytes: int = 64 * 1024,
               disk_mb: int = 32) -> SandboxResult:
    """Run `source` as a Python program under the limits described in the module docstring.

    Never raises for anything the program does; bad limits raise ValueError, and no isolation
    here (without the opt-in) raises `SandboxUnavailable`.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s={timeout_s!r} must be > 0 seconds")
    if memory_mb < 64:
        raise ValueError(f"memory_mb={memory_mb!r} is too small for a Python interpreter; use at least 64")
    if max_output_bytes < 1:
        raise ValueError(f"max_output_bytes={max_output_bytes!r} must be >= 1")
    if disk_mb < 1:
        raise ValueError(f"disk_mb={disk_mb!r} must be >= 1")
    return _run(mode(), source, timeout_s, memory_mb, max_output_bytes, disk_mb)


def _run(how: str, source: str, timeout_s: float, memory_mb: int, max_output_bytes: int, disk_mb: int) -> SandboxResult:
    nonce = secrets.token_hex(16).encode()
    fsize = max_output_bytes + 4096  # a little over the cap: an overflow is detectable
    limits = _limits(memory_mb, int(timeout_s) + 2, fsize)
    with tempfile.TemporaryDirectory(prefix="mamba_nb_sandbox_") as root:
        root_p = Path(root)
        out_path, err_path = root_p / "stdout", root_p / "stderr"
        start = time.perf_counter()
        private = functools.partial(os.open, mode=0o600)  # (only the evaluator reads them)
        with open(out_path, "wb", opener=private) as out, open(err_path, "wb", opener=private) as err:
            run = _start(how, root_p, source, nonce, limits, disk_mb, out, err)
            timed_out = False
            try:
                if not run.problem:  # (else it is stopped at once)
                    run.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _stop(run)
        duration = time.perf_counter() - start
        verdict = _read_verdict(run.verdict)
        stdout, out_over = _read_capped(out_path, max_output_bytes)
        stderr, err_over = _read_capped(err_path, max_output_bytes)
        os.chmod(root_p / "in", 0o755)  # (read-only for the program; the cleanup removes it)
    rc = None if timed_out else run.proc.returncode
    if how == "bwrap" and rc is not None and rc > 128:
        rc = 128 - rc  # bwrap exits 128 + N when its child died of signal N: as subprocess says it, -N
    if run.problem:
        return SandboxResult("error", rc, "", run.problem, duration, how)
    status = _status(timed_out, rc, verdict == nonce, out_over or err_over, stderr)
    return SandboxResult(status, rc, stdout, stderr, duration, how)


def _status(timed_out: bool, rc: Optional[int], finished: bool, over: bool, stderr: str) -> str:
    if timed_out:
        return "timeout"
    if over or "File too large" in stderr:
        return "output_limit"
    if rc == 0 and finished:
        return "passed"
    if rc == ABORT and stderr.startswith("sandbox: "):
        return "error"  # the runner refused (a privilege not dropped, no confinement): never the program's pass
    if "MemoryError" in stderr or (rc == -signal.SIGKILL and "Traceback" not in stderr):
        return "memory"
    if rc == -signal.SIGXCPU:
        return "timeout"
    last = _last_error(stderr)
    if last.startswith(("PermissionError", "ConnectionRefusedError", "BlockingIOError", "sandbox: ")) or any(
            f"[Errno {n}]" in last for n in ERRNO_BLOCKED):
        return "blocked"
    return "failed"


def _last_error(stderr: str) -> str:
    """The exception line a traceback ends with (or the sandbox's own message)."""
    lines = [line for line in stderr.strip().splitlines() if line and not line.startswith(" ")]
    return lines[-1] if lines else ""


# --- which mode --------------------------------------------------------------------------------------


def _works(how: str) -> str:
    """"" if a trivial program passes in mode `how` here, else why not."""
    try:
        r = _run(how, "pass", 20.0, 256, 4096, 1)
    except (OSError, SandboxUnavailable, subprocess.SubprocessError) as e:
        return f"{how} could not start ({e})"
    return "" if r.passed else f"{how} failed: {(r.stderr.strip().splitlines() or [r.status])[-1][:200]}"


def _why_not(how: str) -> str:
    """Why mode `how` cannot run here ("" when it can)."""
    if not sys.platform.startswith("linux"):
        return f"{sys.platform} has neither bubblewrap namespaces nor Landlock"
    if how == "bwrap" and shutil.which("bwrap") is None:
        return "bwrap (bubblewrap) is not installed"
    if how == "landlock":
        from mamba_nb.landlock import abi
        from mamba_nb.seccomp import ARCHES

        if abi() < 1:
            return "the kernel has no Landlock"
        if os.uname().machine not in ARCHES:
            return f"no seccomp filter for {os.uname().machine}"
    return _works(how)


@functools.lru_cache(maxsize=1)
def mode() -> str:
    """The mode programs run in here (see the module docstring); probed once. Raises
    `SandboxUnavailable` (one line, naming the opt-in) where none works."""
    forced = os.environ.get(MODE_ENV, "")
    if forced and forced not in MODES:
        raise SandboxUnavailable(f"{MODE_ENV}={forced!r} is not one of {', '.join(MODES)} (or unset: the best here)")
    if forced == "unisolated":
        _warn_once()
        return forced
    reasons = []
    for how in [forced] if forced else ["bwrap", "landlock"]:
        why = _why_not(how)
        if not why:
            return how
        reasons.append(why)
    raise SandboxUnavailable(f"model-written programs are not run: no sandbox works here ({'; '.join(reasons)}); "
                             f"apt-get install bubblewrap, or set {MODE_ENV}=unisolated to run them NOT isolated")


def isolation() -> tuple[bool, str]:
    """(isolated, why not): whether programs run isolated here, and the reason when they do not."""
    try:
        return mode() != "unisolated", "" if mode() != "unisolated" else f"{MODE_ENV}=unisolated"
    except SandboxUnavailable as e:
        return False, str(e)


@functools.lru_cache(maxsize=None)
def _warn_once() -> None:
    from mamba_nb.seccomp import ARCHES

    extra = " and the seccomp filter" if sys.platform.startswith("linux") and os.uname().machine in ARCHES else ""
    warnings.warn(_NOT_ISOLATED.format(MODE_ENV=MODE_ENV, extra=extra), RuntimeWarning, stacklevel=4)


def run_many(sources: Iterable[str], *, workers: Optional[int] = None, progress: bool = False,
             **limits) -> list[SandboxResult]:
    """`run_python` on each source, `workers` at a time (default: every core); one result per source,
    in input order, whatever any of them does (an evaluator-side failure is an "error" result).

    Threads only wait on the children, so they cost nothing; each program is its own process.
    Raises `SandboxUnavailable` (before running any) where no sandbox works.
    """
    sources = list(sources)
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers={workers!r} must be >= 1")
    run_python("pass", **limits)  # bad limits and a missing sandbox fail here, once, not as one error per program
    how = mode()
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(sources), desc="sandbox", disable=not progress, leave=False) as bar:
        def one(src):
            try:
                return run_python(src, **limits)
            except Exception as e:  # noqa: BLE001 (the batch's other results must survive)
                return SandboxResult("error", None, "", f"sandbox: the evaluator could not run it ({e!r})", 0.0, how)
            finally:
                bar.update(1)

        return list(pool.map(one, sources))
