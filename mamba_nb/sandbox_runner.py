"""What runs inside the sandbox, before and after the untrusted program (standard library only).

`python -I -S sandbox_runner.py PROGRAM [--guard WORKDIR]`, with a one-line nonce on stdin:

1. reads the nonce (the parent's proof-of-completion token) and closes stdin;
2. forbids new processes for good with a seccomp filter: fork, vfork and clone without
   CLONE_THREAD fail with EPERM (threads still work), clone3 with ENOSYS (libc falls back to
   clone); other architectures' and ABIs' system calls kill the process. `no_new_privs` first,
   as the kernel requires;
3. with `--guard` (no namespaces available: the fallback), installs the audit-hook guard too
   (`_install_guard`), a speed bump rather than a boundary;
4. runs the program in a fresh `__main__` namespace. Finishing it prints the nonce as the last
   line of stdout; exiting early (`exit()`, `raise SystemExit`, `os._exit`) or raising does not,
   so such a program never counts as passed, whatever its exit status.

Not a secret against a program that reads this interpreter's memory for the nonce: the
boundary is the kernel's (namespaces, read-only mounts, seccomp, rlimits; see `sandbox.py`).
"""
import os
import struct
import sys
import traceback

# --- seccomp ------------------------------------------------------------------------------
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
RET_ALLOW, RET_KILL = 0x7FFF0000, 0x80000000
RET_ERRNO = 0x00050000  # | errno
EPERM, ENOSYS = 1, 38
CLONE_THREAD = 0x00010000
LD_ABS, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
# arch -> (AUDIT_ARCH value, {syscall: what to return}, clone's number); x86-64's x32 calls
# (numbers from 0x40000000) would dodge the table: they are killed.
ARCHES = {
    "x86_64": (0xC000003E, {57: RET_ERRNO | EPERM, 58: RET_ERRNO | EPERM, 435: RET_ERRNO | ENOSYS}, 56),
    "aarch64": (0xC00000B7, {435: RET_ERRNO | ENOSYS}, 220),
}


def seccomp_program(machine: str) -> bytes:
    """The classic-BPF filter as `struct sock_filter` bytes for `machine` (uname -m)."""
    arch, table, clone = ARCHES[machine]
    ops = [(LD_ABS, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, RET_KILL), (LD_ABS, 0, 0, 0),
           (JGE, 0, 1, 0x40000000), (RET, 0, 0, RET_KILL)]
    for nr, ret in table.items():
        ops += [(JEQ, 0, 1, nr), (RET, 0, 0, ret)]
    ops += [(JEQ, 1, 0, clone), (RET, 0, 0, RET_ALLOW),
            (LD_ABS, 0, 0, 16),  # args[0] (clone's flags), low 32 bits (little-endian)
            (JSET, 0, 1, CLONE_THREAD), (RET, 0, 0, RET_ALLOW), (RET, 0, 0, RET_ERRNO | EPERM)]
    return b"".join(struct.pack("HBBI", *op) for op in ops)


def forbid_new_processes() -> str:
    """Install the filter; returns "" or why it could not be."""
    machine = os.uname().machine
    if machine not in ARCHES:
        return f"no seccomp filter for {machine}"
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    code = seccomp_program(machine)
    buf = ctypes.create_string_buffer(code)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return f"prctl(NO_NEW_PRIVS) failed: errno {ctypes.get_errno()}"
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        return f"prctl(SECCOMP) failed: errno {ctypes.get_errno()}"
    return ""


# --- the fallback guard (no namespaces) --------------------------------------------------------


def _install_guard(work: str) -> None:
    """Audit hooks that refuse writes outside `work`, sockets and limit changes. In-process, so a
    program that knows it can undo it: used only where the kernel gives no namespaces."""
    work = os.path.realpath(work)
    forbidden = {"socket.__new__", "socket.connect", "socket.bind", "resource.setrlimit", "resource.prlimit",
                 "os.kill", "os.killpg"}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    path_events = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.rename": 2, "os.chmod": 1, "os.truncate": 1,
                   "os.link": 2, "os.symlink": 2, "os.utime": 1, "shutil.rmtree": 1, "os.chdir": 1}

    def inside(path) -> bool:
        if isinstance(path, int):
            return False  # a directory fd (dir_fd=) could point anywhere
        real = os.path.realpath(os.path.join(work, os.fsdecode(os.fspath(path))))
        return real == work or real.startswith(work + os.sep)

    def hook(event, args):
        if event in forbidden:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & write_flags)
            if writing and path is not None and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the sandbox directory")
        n = path_events.get(event)
        if n is not None and any(isinstance(p, (str, bytes, os.PathLike, int)) and p is not None and not inside(p)
                                 for p in args[:n]):
            raise PermissionError(f"sandbox: {event} outside the sandbox directory")

    sys.addaudithook(hook)


def main() -> int:
    nonce = sys.stdin.readline().strip()
    sys.stdin.close()
    program = sys.argv[1]
    guard = sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--guard" else None
    why = forbid_new_processes()
    if why:
        print(f"sandbox: {why}; new processes are not forbidden", file=sys.stderr)
    with open(program, encoding="utf-8") as f:
        code = compile(f.read(), "program.py", "exec")
    if guard is not None:
        _install_guard(guard)
    import site  # (-S: importing it adds nothing to sys.path) for exit() and quit(), as in plain Python

    site.setquit()
    sys.argv = ["program.py"]
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as e:
        print(f"sandbox: the program exited early (SystemExit: {e.code!r}); it did not finish", file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    sys.stdout.flush()
    print(f"\n{nonce}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
