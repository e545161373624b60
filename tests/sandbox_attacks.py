"""Hostile programs against `mamba_nb.sandbox`, each followed by a look at the world outside.

Every attack tries several routes to one kind of harm; `World` snapshots what the harm would
change outside the sandbox (a world-writable victim directory, a kernel setting, the evaluator's
signals, rlimits and priority, a canary process, the host's process table, listening sockets,
scratch places of the host, the project's own files) and `check` reports every difference, every
secret found in the output and every broken promise of that attack. Standard library only, so an
unprivileged user's interpreter runs it too (`tests/test_sandbox_attacks.py` does, as root):

    python sandbox_attacks.py MODE    # prints JSON {attack: [problems]}; [] everywhere: contained
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PRINTK = Path("/proc/sys/kernel/printk_ratelimit")
MiB = 2**20
DISK_MB = 2

# Each program gets: VICTIM (a world-writable directory with a world-writable file `keep`),
# EVAL (the evaluator's pid), CANARY (a process of the evaluator's), MARKER (a name its
# processes and files take), PORT (TCP), UNIX (a path socket), ABSTRACT, SECRET_FILE, PROTECTED
# (the project's files), SECRET (in the evaluator's environment).
PRELUDE = """
import ctypes, os, resource, signal, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(15, MARKER.encode(), 0, 0, 0)  # PR_SET_NAME: its processes are findable by name
def attempt(what, f):
    try:
        print(what, "->", repr(f())[:200], flush=True)
    except BaseException as e:
        print(what, "xx", repr(e)[:200], flush=True)
"""

ATTACKS = {
    "write-outside": """
        k = os.path.join(VICTIM, "keep")
        attempt("create", lambda: open(os.path.join(VICTIM, "new"), "w").write("x"))
        attempt("append", lambda: open(k, "a").write("x"))
        attempt("rename", lambda: os.rename(k, os.path.join(VICTIM, "moved")))
        attempt("unlink", lambda: os.unlink(k))
        attempt("mkdir", lambda: os.mkdir(os.path.join(VICTIM, "d")))
        attempt("symlink", lambda: os.symlink("/etc/passwd", os.path.join(VICTIM, "s")))
        attempt("link", lambda: os.link(k, os.path.join(VICTIM, "hard")))
        attempt("truncate", lambda: os.truncate(k, 0))
        attempt("chmod", lambda: os.chmod(k, 0o600))
        attempt("utime", lambda: os.utime(k, (0, 0)))
        attempt("dir_fd", lambda: os.open("new2", os.O_WRONLY | os.O_CREAT, dir_fd=os.open(VICTIM, os.O_RDONLY)))
        attempt("chdir", lambda: (os.chdir(VICTIM), open("new3", "w").write("x")))
        attempt("tmp", lambda: open("/tmp/" + MARKER, "w").write("x"))
        attempt("var-tmp", lambda: open("/var/tmp/" + MARKER, "w").write("x"))
        attempt("shm", lambda: open("/dev/shm/" + MARKER, "w").write("x"))
        attempt("xattr", lambda: os.setxattr(k, "user.x", b"1"))
    """,
    "persist": """
        for p in PROTECTED:
            if os.path.isdir(p):  # site-packages: a .pth there runs at every start of that interpreter
                attempt("pth in " + p, lambda: open(os.path.join(p, MARKER + ".pth"), "w").write("import os\\n"))
                continue
            attempt("write " + p, lambda: open(p, "a").write("\\nraise SystemExit(0)\\n"))
            attempt("replace " + p, lambda: os.rename(p, p + ".old"))
        for fd in range(3, 20):
            attempt(f"runner via fd {fd}", lambda: open(f"/proc/self/fd/{fd}/runner.py", "a").write("x"))
            attempt(f"pth via fd {fd}", lambda: open(f"/proc/self/fd/{fd}/lib/evil.pth", "w").write("x"))
        attempt("/in/runner.py", lambda: open("/in/runner.py", "a").write("x"))
        attempt("sysv shm", lambda: libc.shmget(0x6D6E62, 4096, 0o1000 | 0o666))  # IPC_CREAT: outlives the process
        attempt("sysv msg", lambda: libc.msgget(0x6D6E62, 0o1000 | 0o666))
        attempt("mqueue", lambda: libc.mq_open(b"/" + MARKER.encode(), 0o100 | 2, 0o666, None))
        attempt("usr", lambda: open("/usr/lib/" + MARKER, "w").write("x"))
    """,
    "kernel-settings": """
        attempt("printk", lambda: open("/proc/sys/kernel/printk_ratelimit", "w").write("77"))
        attempt("printk-fd", lambda: os.write(os.open("/proc/sys/kernel/printk_ratelimit", os.O_WRONLY), b"77"))
        attempt("hostname", lambda: socket.sethostname("owned"))
        attempt("mount", lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) or ctypes.get_errno())
    """,
    "read-secrets": """
        for p in ["/etc/shadow", SECRET_FILE, f"/proc/{EVAL}/environ", "/proc/1/environ", f"/proc/{EVAL}/cmdline",
                  os.path.expanduser("~/.bash_history"), "/root/.bashrc"]:
            attempt("read " + p, lambda: open(p, "rb").read())
        for fd in range(3, 20):
            attempt(f"up from fd {fd}", lambda: os.listdir(f"/proc/self/fd/{fd}/../../.."))
        attempt("environ", lambda: dict(os.environ))
        def mem():
            maps = open(f"/proc/{EVAL}/maps").read().splitlines()
            start, end = (int(x, 16) for x in maps[0].split()[0].split("-"))
            with open(f"/proc/{EVAL}/mem", "rb") as m:
                m.seek(start)
                return m.read(min(end - start, 4096))
        attempt("mem", mem)
        buf = ctypes.create_string_buffer(4096)
        iov = (ctypes.c_void_p * 2)(ctypes.cast(buf, ctypes.c_void_p), 4096)
        attempt("process_vm_readv", lambda: libc.process_vm_readv(EVAL, iov, 1, iov, 1, 0) or ctypes.get_errno())
        attempt("ptrace", lambda: libc.ptrace(16, EVAL, 0, 0) or ctypes.get_errno())
    """,
    "signal": """
        for pid in (EVAL, CANARY):
            attempt(f"kill {pid}", lambda: os.kill(pid, signal.SIGUSR1 if pid == EVAL else signal.SIGSTOP))
            attempt(f"pidfd {pid}", lambda: signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGUSR1))
            attempt(f"tgkill-raw {pid}", lambda: libc.syscall(234, pid, pid, signal.SIGUSR1) or ctypes.get_errno())
            attempt(f"prlimit {pid}", lambda: resource.prlimit(pid, resource.RLIMIT_NOFILE, (3, 3)))
            attempt(f"nice {pid}", lambda: os.setpriority(os.PRIO_PROCESS, pid, 19))
            attempt(f"affinity {pid}", lambda: os.sched_setaffinity(pid, {0}))
            attempt(f"ptrace {pid}", lambda: libc.ptrace(16, pid, 0, 0) or ctypes.get_errno())
        attempt("kill group", lambda: os.killpg(os.getpgid(EVAL), signal.SIGUSR1))
        attempt("kill -1", lambda: os.kill(-1, signal.SIGUSR1))
    """,
    "processes": """
        attempt("fork", os.fork)
        attempt("subprocess", lambda: __import__("subprocess").Popen(["sleep", "30"]))
        attempt("posix_spawn", lambda: os.posix_spawn("/bin/sleep", ["sleep", "30"], {}))
        attempt("libc fork", lambda: libc.fork())
        attempt("vfork", lambda: libc.vfork())
        attempt("clone", lambda: libc.syscall(56, 17, 0, 0, 0, 0))  # SIGCHLD only: a new process
        attempt("clone newns", lambda: libc.syscall(56, 0x00010000 | 0x800 | 0x100 | 0x20000, 0, 0, 0, 0))
        attempt("unshare", lambda: libc.unshare(0x10000000 | 0x20000) or ctypes.get_errno())
        attempt("io_uring", lambda: libc.syscall(425, 8, ctypes.create_string_buffer(120)))
        attempt("bpf", lambda: libc.syscall(321, 0, 0, 0))
        attempt("keyctl", lambda: libc.syscall(250, 0, -3, 0))
        attempt("exec", lambda: os.execv("/bin/sleep", ["sleep", "30"]))
        attempt("pdeathsig off", lambda: libc.prctl(1, 0, 0, 0, 0) or ctypes.get_errno())
        time.sleep(0.5)
    """,
    "outlive-timeout": """
        import threading
        attempt("fork", lambda: os.fork() == 0 and (os.setsid(), time.sleep(30)))
        attempt("pdeathsig off", lambda: libc.prctl(1, 0, 0, 0, 0))
        threading.Thread(target=time.sleep, args=(30,), daemon=False).start()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(30)
    """,
    "disk": """
        total = 0
        places = [os.getcwd(), "/tmp", "/var/tmp", "/dev/shm", os.environ.get("HOME", "/"),
                  os.environ.get("TMPDIR", "/"), "/work", "/dev", "/"]
        for n, place in enumerate(places):  # (each place its own names: rewriting a file frees its space)
            for i in range(64):
                try:
                    with open(os.path.join(place, f"{MARKER}-{n}-{i}"), "wb") as f:
                        f.write(b"x" * (256 * 1024))
                        f.flush()
                    total += 256 * 1024
                except OSError:
                    break
        try:
            fd = os.memfd_create("m")
            for i in range(64):
                os.write(fd, b"x" * 65536)
                total += 65536
        except OSError:
            pass
        print("WROTE", total)
    """,
    "network": """
        attempt("tcp", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=1).sendall(b"leak"))
        attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"leak", ("127.0.0.1", PORT)))
        def unix(addr):
            s = socket.socket(socket.AF_UNIX)
            s.connect(addr)
            s.sendall(b"leak")
        attempt("unix", lambda: unix(UNIX))
        attempt("abstract", lambda: unix("\\0" + ABSTRACT))
        attempt("netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))
        attempt("socketpair", lambda: socket.socketpair())
    """,
    "fake-pass": """
        for fd in range(0, 40):
            attempt(f"fd {fd}", lambda: os.write(fd, b"0" * 32 + b"\\n"))
        print("0" * 32)
        attempt("stdin", lambda: sys.stdin.read())
        os._exit(0)
    """,
}
# What an attack must leave as it was, beyond the world: (its own promise, checked on the result)
PROMISES = {
    "fake-pass": lambda r: "" if not r.passed else "a program that exits early passed",
    "disk": lambda r: "" if _wrote(r) <= DISK_MB * MiB + 256 * 1024 else f"wrote {_wrote(r)} B with disk_mb={DISK_MB}",
    "outlive-timeout": lambda r: "" if r.status == "timeout" else f"status {r.status}, not timeout",
}
TIMEOUT_S = {"outlive-timeout": 1.5}


def _wrote(r) -> int:
    lines = [line for line in r.stdout.splitlines() if line.startswith("WROTE ")]
    return int(lines[-1].split()[1]) if lines else 0


class World:
    """The things outside the sandbox an attack could change, made and watched by the evaluator."""

    def __init__(self, base: Path, protected: list[str]):
        self.marker = "mnb" + os.urandom(4).hex()
        self.victim = base / "victim"
        self.victim.mkdir()
        (self.victim / "keep").write_text("keep me")
        os.chmod(self.victim, 0o777)  # writable by anyone: only the sandbox can stop a write here
        os.chmod(self.victim / "keep", 0o666)
        self.secret = "s3cr3t-" + os.urandom(6).hex()
        os.environ["MAMBA_NB_TEST_SECRET"] = self.secret
        secret_dir = base / "home"
        secret_dir.mkdir(mode=0o755)
        self.secret_file = secret_dir / "secret.txt"
        self.secret_file.write_text(self.secret)
        os.chmod(self.secret_file, 0o644)  # readable by anyone: only the sandbox can stop a read
        self.protected = protected
        self.canary = subprocess.Popen(["sleep", "600"])
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(8)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.tcp.getsockname()[1]))
        self.unix_path = str(base / "unix.sock")
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(self.unix_path)
        os.chmod(self.unix_path, 0o777)
        os.chmod(base, 0o755)
        self.unix.listen(8)
        self.abstract_name = self.marker + "-abstract"
        self.abstract = socket.socket(socket.AF_UNIX)
        self.abstract.bind("\0" + self.abstract_name)
        self.abstract.listen(8)
        for s in (self.tcp, self.udp, self.unix, self.abstract):
            s.setblocking(False)
        self.signals = 0
        self._old = signal.signal(signal.SIGUSR1, self._got_signal)

    def _got_signal(self, *_):
        self.signals += 1

    def fields(self) -> str:
        values = dict(VICTIM=str(self.victim), EVAL=os.getpid(), CANARY=self.canary.pid, MARKER=self.marker,
                      PORT=self.tcp.getsockname()[1], UNIX=self.unix_path, ABSTRACT=self.abstract_name,
                      SECRET_FILE=str(self.secret_file), PROTECTED=self.protected)
        return "".join(f"{k} = {v!r}\n" for k, v in values.items())

    def snapshot(self) -> dict:
        tree = {str(p.relative_to(self.victim)): (p.stat().st_mode, p.read_bytes() if p.is_file() else b"",
                                                  p.stat().st_mtime_ns)
                for p in sorted(self.victim.rglob("*"))}
        return {"victim": tree, "printk": PRINTK.read_text() if PRINTK.exists() else None,
                "canary": _state(self.canary.pid) in ("R", "S", "D"),  # running or asleep: not stopped, not gone
                "rlimit": resource.getrlimit(resource.RLIMIT_NOFILE),
                "nice": os.getpriority(os.PRIO_PROCESS, 0), "affinity": sorted(os.sched_getaffinity(0)),
                "protected": {p: _digest(p) for p in self.protected},
                "ipc": sorted(line.split()[0] + ":" + line.split()[1] for kind in ("shm", "msg", "sem")
                              for line in _lines(f"/proc/sysvipc/{kind}")[1:]),
                "mqueue": sorted(os.listdir("/dev/mqueue")) if os.path.isdir("/dev/mqueue") else []}

    def check(self, before: dict, result, name: str) -> list[str]:
        """Everything the attack `name` changed or leaked (empty: contained)."""
        problems = [f"{k} changed: {before[k]!r:.200} -> {v!r:.200}" for k, v in self.snapshot().items()
                    if v != before[k]]
        problems += [f"received {self.signals} SIGUSR1"] if self.signals else []
        for s, what in ((self.tcp, "tcp"), (self.unix, "unix"), (self.abstract, "abstract")):
            try:
                s.accept()
                problems.append(f"a {what} connection arrived")
            except BlockingIOError:
                pass
        try:
            self.udp.recv(100)
            problems.append("a udp datagram arrived")
        except BlockingIOError:
            pass
        problems += [f"still running: {p}" for p in survivors(self.marker)]
        problems += [f"left {p}" for d in ("/tmp", "/var/tmp", "/dev/shm") for p in Path(d).glob(self.marker + "*")]
        output = result.stdout + result.stderr
        shadow = _shadow_secrets()
        problems += ["the evaluator's secret is in the output"] if self.secret in output else []
        problems += ["/etc/shadow's hashes are in the output"] if any(h in output for h in shadow) else []
        promise = PROMISES.get(name, lambda r: "")(result)
        return problems + ([promise] if promise else [])

    def close(self):
        signal.signal(signal.SIGUSR1, self._old)
        self.canary.kill()
        self.canary.wait()
        for s in (self.tcp, self.udp, self.unix, self.abstract):
            s.close()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]  # R, S, T (stopped), ...
    except OSError:
        return "gone"


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def _digest(path: str) -> str:
    p = Path(path)
    if p.is_dir():
        return ",".join(sorted(x.name for x in p.iterdir()))
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "absent"


def _shadow_secrets() -> list[str]:
    try:
        fields = [line.split(":")[1] for line in Path("/etc/shadow").read_text().splitlines() if ":" in line]
    except OSError:
        return []
    return [f for f in fields if len(f) > 3]


def survivors(marker: str) -> list[str]:
    """Processes in the host's process table named `marker` (the attacks name theirs so)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == marker[:15]:
                    found.append(f"pid {d.name}: {(d / 'status').read_text().splitlines()[2]}")
            except OSError:
                pass
    return found


def wait_gone(marker: str, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while survivors(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    return survivors(marker)


def run_attack(world: World, name: str, run_python) -> tuple[list[str], object]:
    source = world.fields() + textwrap.dedent(PRELUDE) + textwrap.dedent(ATTACKS[name])
    before = world.snapshot()
    world.signals = 0
    result = run_python(source, timeout_s=TIMEOUT_S.get(name, 10.0), disk_mb=DISK_MB, max_output_bytes=256 * 1024)
    wait_gone(world.marker, 0.5)  # (the run already waited for its processes; this is only a margin)
    return world.check(before, result, name), result


def protected_files() -> list[str]:
    """The project's files a program must not change: the sandbox, its runner, the interpreter's prefix."""
    import mamba_nb.sandbox as sandbox

    paths = [str(p) for p in sandbox.RUNNER_FILES.values()] + [sandbox.__file__]
    import sysconfig

    venv = Path(sys.prefix)
    paths += [str(venv / "pyvenv.cfg")] if (venv / "pyvenv.cfg").exists() else []
    site = Path(sysconfig.get_paths()["purelib"])
    return paths + ([str(site)] if site.is_dir() else [])


def main(mode: str) -> int:
    os.environ["MAMBA_NB_SANDBOX"] = mode
    from mamba_nb.sandbox import run_python

    report = {}
    with tempfile.TemporaryDirectory() as d:
        world = World(Path(d), protected_files())
        try:
            for name in ATTACKS:
                report[name], _ = run_attack(world, name, run_python)
        finally:
            world.close()
    print(json.dumps({"uid": os.getuid(), "report": report}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
