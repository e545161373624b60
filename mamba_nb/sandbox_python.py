"""The interpreter a sandboxed program runs, at a path that uid 65534 can read (for bubblewrap).

An evaluator running as root drops the program, and bubblewrap itself, to uid 65534 before
anything else. An interpreter under root's home (pyenv's /root/.pyenv; /root is mode 0700) is
then out of bwrap's reach, and a descriptor opened by root does not help: a bind mount cannot be
made from a mount of another namespace. So where the prefix is not open to others,
`readable_prefix` builds, once per process, a read-only view of what `python -s -S` needs: the
binary, libpython and the standard library (without site-packages and the test suite): hard
links where the temporary directory is on the same file system, else copies; owned by root,
mode 0755 (files keep their own modes, none writable by others), removed at exit, and a view
left by a killed process is removed by the next one that builds its own.

It does not widen what a program sees (bwrap binds the view where the prefix is, read-only) and
is not used otherwise (the Landlock mode reaches the interpreter through a descriptor).
"""
from __future__ import annotations

import atexit
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path

SKIPPED = {"site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip"}
_views: dict[Path, Path] = {}
_lock = threading.Lock()


def open_to_others(path: Path) -> bool:
    """Whether a uid with no claim on `path` can reach it: x on every directory up to it, r on it."""
    try:
        if not all(d.stat().st_mode & stat.S_IXOTH for d in [path, *path.parents]):
            return False
        return bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def _place(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # (root-owned, mode as it was: readable, not writable, by 65534)
    except OSError:
        shutil.copy2(src, dst)


def _remove_stale() -> None:
    """Views of processes that are gone (killed before their exit handler ran), if they are ours."""
    for d in Path(tempfile.gettempdir()).glob("mamba_nb_python_*_*"):
        try:
            pid = int(d.name.split("_")[3])
            st = os.lstat(d)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or pid == os.getpid():
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError, IndexError):
            pass


def _build(prefix: Path, exe: str, stdlib: Path) -> Path:
    _remove_stale()
    view = Path(tempfile.mkdtemp(prefix=f"mamba_nb_python_{os.getpid()}_"))
    atexit.register(shutil.rmtree, view, True)
    (view / exe).parent.mkdir(parents=True)
    _place(prefix / exe, view / exe)
    libdir = prefix / "lib"
    (view / "lib").mkdir(exist_ok=True)
    for lib in libdir.glob("libpython*.so*"):
        _place(lib, view / "lib" / lib.name)
    for here, dirs, files in os.walk(stdlib):
        dirs[:] = [d for d in dirs if d not in SKIPPED]
        target = view / Path(here).relative_to(prefix)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            _place(Path(here) / name, target / name)
    for d in [view, *(p for p in view.rglob("*") if p.is_dir())]:
        os.chmod(d, 0o755)
    return view


def readable_prefix(prefix: Path, exe: str, stdlib: Path) -> Path:
    """`prefix` itself where others can read it; else its read-only view (built once per process).
    `exe`: the binary's path inside `prefix`; `stdlib`: the standard library's directory."""
    if open_to_others(prefix) and open_to_others(stdlib):
        return prefix
    with _lock:
        if prefix not in _views:
            _views[prefix] = _build(prefix, exe, stdlib)
        return _views[prefix]
