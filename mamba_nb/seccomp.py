"""The seccomp filter a sandboxed program runs under (standard library only: it is copied into
the sandbox and imported there by `sandbox_runner.py`).

A classic-BPF program for the kernel's `seccomp(2)`: every system call of another architecture
or ABI (i386 through `int 0x80`, x32) kills the process; the calls below fail with EPERM (or
ENOSYS); everything else is allowed. Refused:

- new processes and programs: fork, vfork, execve, execveat, clone without CLONE_THREAD or with
  any CLONE_NEW* flag (threads still work), clone3 (ENOSYS: libc then falls back to clone);
- reaching other processes: ptrace, process_vm_readv/writev, kcmp, pidfd_open/getfd/send_signal,
  and signals, priorities, affinities and rlimits of any process but its own (the pid is part
  of the filter);
- namespaces and mounts (unshare, setns, mount, the new mount API, pivot_root, chroot);
- kernel attack surface: keyctl, bpf, perf_event_open, userfaultfd, io_uring (which would run
  calls past this filter), modules, kexec, memfd_create (memory outside its address-space cap);
- System V IPC and POSIX message queues (objects that would outlive the program without a
  namespace of their own, and another user's shared memory left open to all);
- sockets: `socket()` entirely (no network, no path or abstract unix socket), `socketpair` only
  for AF_UNIX;
- changes to files' metadata, which Landlock does not cover: chmod, chown, utimes, xattrs,
  truncate by path, chattr ioctls; TIOCSTI (typing into a terminal);
- prctl's PR_SET_PDEATHSIG (it would outlive the evaluator), PR_SET_MM, PR_SET_PTRACER.

It does not restrict which files are opened (that is Landlock's and the mount namespace's job)
and is a denylist, not an allowlist: a call not named here is allowed.
"""
from __future__ import annotations

import os
import struct

RET_KILL_PROCESS, RET_ALLOW, RET_ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
EPERM, ENOSYS = 1, 38
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
PR_SET_PDEATHSIG, PR_SET_MM, PR_SET_PTRACER = 1, 35, 0x59616D61
CLONE_THREAD = 0x00010000
CLONE_NEW_ANY = 0x7E020080  # NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME
AF_UNIX = 1
# TIOCSTI, TIOCLINUX, FS_IOC_SETFLAGS (and its 32-bit form), FS_IOC_FSSETXATTR
IOCTLS_REFUSED = (0x5412, 0x541C, 0x40086602, 0x40046602, 0x401C5820)
LD_ABS, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K

# Calls numbered from 424 on have the same number on every architecture.
_SHARED = {"pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
           "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
           "pidfd_open": 434, "clone3": 435, "pidfd_getfd": 438, "process_madvise": 440, "mount_setattr": 442,
           "quotactl_fd": 443, "memfd_secret": 447, "process_mrelease": 448, "fchmodat2": 452,
           "lsm_set_self_attr": 460, "setxattrat": 463, "removexattrat": 466, "open_tree_attr": 467,
           "file_setattr": 469}
# uname -m -> (AUDIT_ARCH_*, whether x32 numbers exist, the calls' numbers (asm/unistd*.h))
ARCHES = {
    "x86_64": (0xC000003E, True, {
        "fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "clone": 56, "unshare": 272, "setns": 308,
        "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "ptrace": 101, "process_vm_readv": 310,
        "process_vm_writev": 311, "kcmp": 312, "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321,
        "perf_event_open": 298, "userfaultfd": 323, "kexec_load": 246, "kexec_file_load": 320,
        "init_module": 175, "finit_module": 313, "delete_module": 176, "iopl": 172, "ioperm": 173,
        "swapon": 167, "swapoff": 168, "reboot": 169, "sethostname": 170, "setdomainname": 171, "acct": 163,
        "quotactl": 179, "syslog": 103, "fanotify_init": 300, "name_to_handle_at": 303,
        "open_by_handle_at": 304, "personality": 135, "memfd_create": 319, "migrate_pages": 256,
        "move_pages": 279, "vhangup": 153, "lookup_dcookie": 212, "modify_ldt": 154, "uselib": 134,
        "socket": 41, "socketpair": 53, "chmod": 90, "fchmod": 91, "fchmodat": 268, "chown": 92, "fchown": 93,
        "lchown": 94, "fchownat": 260, "utime": 132, "utimes": 235, "futimesat": 261, "utimensat": 280,
        "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190, "removexattr": 197, "lremovexattr": 198,
        "fremovexattr": 199, "truncate": 76, "kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129,
        "rt_tgsigqueueinfo": 297, "prctl": 157, "prlimit64": 302, "setpriority": 141, "sched_setaffinity": 203,
        "sched_setscheduler": 144, "sched_setparam": 142, "sched_setattr": 314, "ioprio_set": 251,
        "ioctl": 16, "shmget": 29, "shmat": 30, "shmctl": 31, "semget": 64, "semop": 65, "semctl": 66,
        "semtimedop": 220, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "mq_open": 240, "mq_unlink": 241,
        "mq_notify": 244, **_SHARED}),
    "aarch64": (0xC00000B7, False, {
        "execve": 221, "execveat": 281, "clone": 220, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39,
        "pivot_root": 41, "chroot": 51, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
        "kcmp": 272, "keyctl": 219, "add_key": 217, "request_key": 218, "bpf": 280, "perf_event_open": 241,
        "userfaultfd": 282, "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
        "delete_module": 106, "swapon": 224, "swapoff": 225, "reboot": 142, "sethostname": 161,
        "setdomainname": 162, "acct": 89, "quotactl": 60, "syslog": 116, "fanotify_init": 262,
        "name_to_handle_at": 264, "open_by_handle_at": 265, "personality": 92, "memfd_create": 279,
        "migrate_pages": 238, "move_pages": 239, "vhangup": 58, "lookup_dcookie": 18, "socket": 198,
        "socketpair": 199, "fchmod": 52, "fchmodat": 53, "fchown": 55, "fchownat": 54, "utimensat": 88,
        "setxattr": 5, "lsetxattr": 6, "fsetxattr": 7, "removexattr": 14, "lremovexattr": 15, "fremovexattr": 16,
        "truncate": 45, "kill": 129, "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240,
        "prctl": 167, "prlimit64": 261, "setpriority": 140, "sched_setaffinity": 122, "sched_setscheduler": 119,
        "sched_setparam": 118, "sched_setattr": 274, "ioprio_set": 30, "ioctl": 29, "shmget": 194, "shmat": 196,
        "shmctl": 195, "semget": 190, "semop": 193, "semctl": 191, "semtimedop": 192, "msgget": 186, "msgsnd": 189,
        "msgrcv": 188, "msgctl": 187, "mq_open": 180, "mq_unlink": 181, "mq_notify": 184, **_SHARED}),
}
_REFUSED = (
    "fork vfork unshare setns mount umount2 pivot_root chroot open_tree open_tree_attr move_mount fsopen "
    "fsconfig fsmount fspick mount_setattr ptrace process_vm_readv process_vm_writev kcmp pidfd_open pidfd_getfd "
    "pidfd_send_signal process_madvise process_mrelease keyctl add_key request_key bpf perf_event_open "
    "userfaultfd io_uring_setup io_uring_enter io_uring_register kexec_load kexec_file_load init_module "
    "finit_module delete_module iopl ioperm swapon swapoff reboot sethostname setdomainname acct quotactl "
    "quotactl_fd syslog fanotify_init name_to_handle_at open_by_handle_at personality memfd_create memfd_secret "
    "migrate_pages move_pages vhangup lookup_dcookie modify_ldt uselib lsm_set_self_attr socket chmod fchmod "
    "fchmodat fchmodat2 chown fchown lchown fchownat utime utimes futimesat utimensat setxattr lsetxattr "
    "fsetxattr setxattrat removexattr lremovexattr fremovexattr removexattrat file_setattr truncate tkill "
    "shmget shmat shmctl semget semop semctl semtimedop msgget msgsnd msgrcv msgctl mq_open mq_unlink mq_notify"
).split()


def rules(pid: int, allow_exec: bool) -> dict[str, tuple]:
    """syscall name -> rule. `pid`: the process's own pid (as it sees it), the only one it may
    signal or re-prioritise. `allow_exec`: execve stays allowed (bubblewrap installs the filter
    just before it executes the interpreter; the runner then adds the filter without it)."""
    self_only = ("allow_if", 0, (0, pid))  # 0 means "myself" for these calls
    table = {name: ("errno", EPERM) for name in _REFUSED}
    table.update({
        "clone": ("clone",), "clone3": ("errno", ENOSYS),
        "kill": self_only, "tgkill": ("allow_if", 0, (pid,)), "rt_sigqueueinfo": ("allow_if", 0, (pid,)),
        "rt_tgsigqueueinfo": ("allow_if", 0, (pid,)), "prlimit64": self_only, "sched_setaffinity": self_only,
        "sched_setscheduler": self_only, "sched_setparam": self_only, "sched_setattr": self_only,
        "setpriority": ("allow_if", 1, (0, pid)), "ioprio_set": ("allow_if", 1, (0, pid)),
        "socketpair": ("allow_if", 0, (AF_UNIX,)),
        "prctl": ("deny_if", 0, (PR_SET_PDEATHSIG, PR_SET_MM, PR_SET_PTRACER)),
        "ioctl": ("deny_if", 1, IOCTLS_REFUSED),
    })
    if not allow_exec:
        table.update({"execve": ("errno", EPERM), "execveat": ("errno", EPERM)})
    return table


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> tuple:
    return (code, jt, jf, k)


def _block(rule: tuple) -> list[tuple]:
    """The instructions for one call, after its number matched; every path ends in a RET."""
    deny = _op(RET, RET_ERRNO | EPERM)
    if rule[0] == "errno":
        return [_op(RET, RET_ERRNO | rule[1])]
    if rule[0] == "clone":  # args[0] = flags (low 32 bits; little-endian)
        return [_op(LD_ABS, 16), _op(JSET, CLONE_NEW_ANY, 2, 0), _op(JSET, CLONE_THREAD, 0, 1),
                _op(RET, RET_ALLOW), deny]
    kind, arg, values = rule
    n = len(values)
    # n comparisons; then [first RET, second RET]; a match jumps to the second (n - k ahead of the k-th)
    ops = [_op(LD_ABS, 16 + 8 * arg)] + [_op(JEQ, v & 0xFFFFFFFF, n - k, 0) for k, v in enumerate(values)]
    return ops + ([deny, _op(RET, RET_ALLOW)] if kind == "allow_if" else [_op(RET, RET_ALLOW), deny])


def program(machine: str, pid: int, allow_exec: bool = False) -> bytes:
    """The filter as `struct sock_filter` bytes for `machine` (uname -m); raises KeyError for an
    architecture without a table."""
    audit_arch, has_x32, numbers = ARCHES[machine]
    ops = [_op(LD_ABS, 4), _op(JEQ, audit_arch, 1, 0), _op(RET, RET_KILL_PROCESS), _op(LD_ABS, 0)]
    if has_x32:  # x32 calls are numbered from 0x40000000 and would dodge the table
        ops += [_op(JGE, 0x40000000, 0, 1), _op(RET, RET_KILL_PROCESS)]
    for name, rule in sorted(rules(pid, allow_exec).items()):
        if name in numbers:  # (aarch64 has no fork, chmod, ...: their *at forms are in the table)
            block = _block(rule)
            ops += [_op(JEQ, numbers[name], 0, len(block))] + block
    ops.append(_op(RET, RET_ALLOW))
    return b"".join(struct.pack("HBBI", *op) for op in ops)


def install(pid: int) -> str:
    """Put this process (single-threaded: prctl filters only the calling thread) under the filter
    for good; "" or why it could not be."""
    machine = os.uname().machine
    if machine not in ARCHES:
        return f"no seccomp filter for {machine}"
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    code = program(machine, pid)
    buf = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return f"prctl(NO_NEW_PRIVS) failed: errno {ctypes.get_errno()}"
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        return f"prctl(SECCOMP) failed: errno {ctypes.get_errno()}"
    return ""
