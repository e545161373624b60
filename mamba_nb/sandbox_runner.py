"""What runs inside the sandbox, before and after the untrusted program (standard library only).

`python -s -S -P -B runner.py CONFIG` (CONFIG: JSON from `sandbox.py`), beside copies of
`landlock.py` and `seccomp.py` in a read-only directory. Before the program runs, it:

1. checks that it holds no privilege it should have dropped (the evaluator was root: every uid
   and gid is the unprivileged one, no supplementary group) and stops otherwise;
2. dies with the evaluator (PR_SET_PDEATHSIG, checked against the parent it was given);
3. reads the pass nonce from a pipe and closes it; compiles the program;
4. sets the rlimits (memory, CPU seconds, size of any file, open files, no core dumps);
5. confines itself with Landlock (read-only system and interpreter, writable only where told;
   no /proc, no HOME, no signals or abstract sockets outside) and then the seccomp filter
   (`seccomp.py`: no new process or program, no ptrace, no sockets, ...), and closes every
   other file descriptor;

then runs the program in a fresh `__main__`. Only if the program ran to its end does the runner
write the nonce to the verdict pipe, a descriptor other than stdout/stderr: printing anything,
`exit()`, `os._exit(0)` or raising is not a pass. Not a secret against a program that looks for
the nonce in this interpreter's memory (its frames, `ctypes`): the boundary is the kernel's,
and a program can only fake its own result, never another's or the evaluator's.
"""
import json
import os
import resource
import signal
import sys
import traceback

ABORT = 70  # exit status when the sandbox could not be set up: never a pass


def _abort(why: str) -> None:
    print(f"sandbox: {why}", file=sys.stderr, flush=True)
    os._exit(ABORT)


def check_privileges(uid, gid) -> None:
    """Stop unless every uid/gid is the one the evaluator dropped to (when it dropped). (Inside
    bubblewrap these are the namespace's; the evaluator checks the host's view itself.)"""
    if uid is not None:
        if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
            _abort(f"privileges were not dropped (uids {os.getresuid()}, gids {os.getresgid()}, "
                   f"groups {os.getgroups()}); refusing to run the program")


def die_with_parent(parent: int, strict: bool) -> None:
    """SIGKILL when the evaluator dies (bubblewrap does this itself: `--die-with-parent`)."""
    import ctypes

    try:
        failed = ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0) != 0  # PR_SET_PDEATHSIG
    except AttributeError:  # not Linux (only the unisolated opt-in runs there)
        failed = True
    if failed and strict:
        _abort("prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the evaluator died before the line above
        _abort("the evaluator is gone")


def set_limits(limits: dict) -> None:
    for name, value in limits.items():  # e.g. {"RLIMIT_AS": bytes}; soft = hard: no raising them back
        resource.setrlimit(getattr(resource, name), (value, value))


def confine(cfg: dict) -> None:
    """Landlock (where the kernel has it; required outside bubblewrap) and then seccomp."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import landlock
    import seccomp

    del sys.path[0]
    try:  # (in the unisolated opt-in too: whatever confinement this machine has, it gets)
        landlock.restrict(cfg["read"] + cfg["read_fds"], cfg["write"], ["/dev/null", "/dev/zero"])
    except OSError as e:
        if cfg["require_landlock"]:
            _abort(f"Landlock could not confine the program ({e})")
    why = seccomp.install(os.getpid())
    if why and cfg["strict"]:
        _abort(f"{why}; refusing to run the program without it")
    keep = {0, 1, 2, cfg["verdict_fd"], *cfg["read_fds"]}
    for fd in range(3, max(keep) + 1):
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    os.closerange(max(keep) + 1, 1 << 16)


def main() -> int:
    cfg = json.loads(sys.argv[1])
    check_privileges(cfg["uid"], cfg["gid"])
    if cfg["parent"] is not None:
        die_with_parent(cfg["parent"], cfg["strict"])
    nonce = os.read(cfg["nonce_fd"], 256)
    os.close(cfg["nonce_fd"])
    with open(cfg["program"], "rb") as f:  # (a lone surrogate written by the evaluator comes back as it was)
        source = f.read().decode("utf-8", "surrogatepass")
    try:
        code = compile(source, "program.py", "exec")
    except (SyntaxError, ValueError):
        traceback.print_exc()
        return 1
    set_limits(cfg["limits"])
    confine(cfg)
    import site  # (-S: importing it adds nothing to sys.path) for exit() and quit(), as in plain Python

    site.setquit()
    sys.argv = ["program.py"]
    verdict_fd = cfg["verdict_fd"]
    del cfg
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as e:
        print(f"sandbox: the program exited early (SystemExit: {e.code!r}); it did not finish", file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(verdict_fd, nonce)
    return 0


if __name__ == "__main__":
    sys.exit(main())
