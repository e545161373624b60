"""Landlock: the kernel's unprivileged file-system (and TCP, signal, abstract-socket) sandbox for
the calling process, through its three system calls (standard library only: it is copied into
the sandbox and imported there by `sandbox_runner.py`).

`abi()` says which version the kernel has (0: none). `restrict(read, write)` makes the rest of
this process's life, and its threads', see only `read` (read and execute) and `write` (also
create, write, rename, remove inside); every other path is refused with EACCES, whatever the
file's mode bits. Handled, by ABI: the file rights of v1 (v2 adds moving files between
directories, v3 truncation, v5 device ioctls), TCP bind and connect refused outright (v4), and
scoping (v6): no signal to, and no abstract unix socket of, a process outside the domain. A
process in the domain cannot ptrace one outside it (any version).

It does not restrict what is done to files already open, metadata changes (chmod, chown,
utimes, xattrs: the seccomp filter refuses those) or anything but TCP on the network.
"""
from __future__ import annotations

import ctypes
import os
import stat
import struct

# The calls are numbered alike on every architecture.
CREATE_RULESET, ADD_RULE, RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR, MAKE_REG = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM, REFER, TRUNCATE, IOCTL_DEV = (1 << i for i in range(9, 16))
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
PR_SET_NO_NEW_PRIVS = 38
O_PATH = getattr(os, "O_PATH", 0o10000000)

_READ = EXECUTE | READ_FILE | READ_DIR
_WRITE = (WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SYM | MAKE_FIFO | MAKE_SOCK | REFER
          | TRUNCATE)
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # all a rule on a file (not a directory) holds


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def abi() -> int:
    """The kernel's Landlock ABI version; 0 where there is none (not Linux, too old, disabled)."""
    if not os.uname().sysname == "Linux":
        return 0
    try:
        version = _libc().syscall(ctypes.c_long(CREATE_RULESET), None, ctypes.c_size_t(0),
                                  ctypes.c_uint32(CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(int(version), 0)


def handled(version: int) -> tuple[int, int, int]:
    """(file-system rights, network rights, scopes) this version can refuse."""
    fs = (1 << 13) - 1  # v1: EXECUTE .. MAKE_SYM
    fs |= REFER if version >= 2 else 0
    fs |= TRUNCATE if version >= 3 else 0
    fs |= IOCTL_DEV if version >= 5 else 0
    net = NET_BIND_TCP | NET_CONNECT_TCP if version >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if version >= 6 else 0
    return fs, net, scoped


def _add_rule(libc, ruleset: int, target, rights: int, fs: int) -> None:
    """Allow `rights` beneath `target` (a path or an open fd); a missing path is skipped."""
    fd = target if isinstance(target, int) else None
    if fd is None:
        try:
            fd = os.open(target, O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            return
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= _FILE_RIGHTS
        attr = struct.pack("=Qi", rights & fs, fd)  # struct landlock_path_beneath_attr (packed)
        if libc.syscall(ctypes.c_long(ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH),
                        ctypes.c_char_p(attr), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule({target!r})")
    finally:
        if not isinstance(target, int):
            os.close(fd)


def restrict(read, write=(), read_write_files=()) -> int:
    """Confine this process for good to `read` (paths or fds: read, list, execute) and `write`
    (those plus every change inside), and `read_write_files` (single files, e.g. /dev/null).
    Returns the ABI version used; raises OSError where Landlock is missing or refuses."""
    version = abi()
    if version < 1:
        raise OSError("Landlock is not available in this kernel")
    fs, net, scoped = handled(version)
    # struct landlock_ruleset_attr grew a field with v4 (net) and v6 (scoped): pass the size this kernel knows
    attr = struct.pack("=QQQ", fs, net, scoped)[: 24 if version >= 6 else 16 if version >= 4 else 8]
    libc = _libc()
    ruleset = libc.syscall(ctypes.c_long(CREATE_RULESET), ctypes.c_char_p(attr), ctypes.c_size_t(len(attr)),
                           ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        for target in read:
            _add_rule(libc, ruleset, target, _READ, fs)
        for target in write:
            _add_rule(libc, ruleset, target, _READ | _WRITE, fs)
        for target in read_write_files:
            _add_rule(libc, ruleset, target, READ_FILE | WRITE_FILE, fs)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(ctypes.c_long(RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return version
