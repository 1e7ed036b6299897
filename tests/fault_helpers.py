"""Helpers for tests/test_faults.py.

:class:`ForkServer`: a process that imports torch and bicycle once, then forks a fresh child per ``bicycle``
command (``bicycle.cli.main`` with the given argv, output to a log file). Each child is a real, separate
process that the test can SIGKILL; the fork only saves the ~5 s of imports a ``python -m bicycle.cli`` start
costs on a small CPU machine (torch, torch._dynamo via Adam, the bench command). The server refuses to fork
once it holds a second thread, so no child inherits a lock held by a thread that does not exist in it.

:func:`deny_writes_in`: a folder whose entries cannot be created, renamed or removed (what ``chmod 0o500``
does) for a process where chmod does not bind (root, CAP_DAC_OVERRIDE): the same ``PermissionError``
(EACCES, naming the path) from ``os.open``/``open``/``os.mkdir``/``os.replace``... for paths directly in it.

Run as ``python fault_helpers.py --serve``: the server side of :class:`ForkServer`.
"""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def single_thread_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


class ForkServer:
    """Client side: ``spawn`` a bicycle command (returns the child's pid), ``wait`` for its exit code
    (negative: killed by that signal). Threads may share it: a lock guards the pipe, and ``wait`` polls, so
    several children run at once."""

    def __init__(self, env: dict[str, str], ready_timeout: float = 120.0) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HERE), "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, bufsize=1)
        self._lock = threading.Lock()
        self._ready_timeout = ready_timeout
        self._ready = False

    def ready(self) -> None:
        if self._ready:
            return
        line = self.proc.stdout.readline()  # the server prints "ready" once imports are done
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"fork server failed to start: {line!r} {self.proc.stderr.read()[-3000:]}")
        self._ready = True

    def _call(self, msg: dict) -> dict:
        with self._lock:
            self.ready()
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fork server died: {self.proc.stderr.read()[-3000:]}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"fork server: {reply['error']}")
        return reply

    def spawn(self, args: list[str], log: Path, cwd: Path) -> int:
        return self._call({"op": "spawn", "args": args, "log": str(log), "cwd": str(cwd)})["pid"]

    def wait(self, pid: int, timeout: float = 300.0, poll_s: float = 0.005) -> int:
        deadline = time.monotonic() + timeout
        while (code := self._call({"op": "poll", "pid": pid})["code"]) is None:
            if time.monotonic() > deadline:  # a hung child: kill it, reap it, say so
                os.kill(pid, 9)
                while self._call({"op": "poll", "pid": pid})["code"] is None:
                    time.sleep(poll_s)
                raise TimeoutError(f"bicycle child {pid} still running after {timeout:.0f} s")
            time.sleep(poll_s)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except Exception:  # noqa: BLE001
                self.proc.kill()
                self.proc.wait()


def alive(pid: int) -> bool:
    """Running (not exited, not a zombie awaiting its parent's wait)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _child(cmd: dict) -> None:
    code = 1
    try:
        fd = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(null)
        os.chdir(cmd["cwd"])
        sys.argv = ["bicycle", *cmd["args"]]
        from bicycle.cli import main
        main(args=cmd["args"], prog_name="bicycle", standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - what `python -m bicycle.cli` would print: the traceback, exit 1
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import bicycle.cli  # noqa: F401 - the CLI, its bench command, and what `bicycle train` imports
    import bicycle.train.loop  # noqa: F401
    import bicycle.build  # noqa: F401
    import PIL.Image  # noqa: F401
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])  # imports torch._dynamo (no RNG draw, no threads)
    out = sys.stdout
    if _threads() != 1 or threading.active_count() != 1:
        print(f"not forking with {_threads()} threads", flush=True)
        return
    print("ready", file=out, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["op"] == "spawn":
                if _threads() != 1:
                    raise RuntimeError(f"{_threads()} threads: refusing to fork")
                pid = os.fork()
                if pid == 0:
                    _child(cmd)
                reply: dict = {"pid": pid}
            elif cmd["op"] == "poll":  # reaps the child once it has exited; until then it stays visible in /proc
                done, status = os.waitpid(cmd["pid"], os.WNOHANG)
                reply = {"code": os.waitstatus_to_exitcode(status) if done else None}
            else:
                reply = {"error": f"unknown op {cmd['op']!r}"}
        except Exception as exc:  # noqa: BLE001
            reply = {"error": repr(exc)}
        print(json.dumps(reply), file=out, flush=True)


# --- a read-only folder where chmod does not bind ---------------------------------------------------------

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def chmod_binds(folder: Path) -> bool:
    """Whether ``chmod 0o500`` on a folder stops this process from creating files in it (not as root)."""
    probe = folder / "chmod-probe"
    probe.mkdir()
    try:
        probe.chmod(0o500)
        try:
            (probe / "x").write_bytes(b"")
        except PermissionError:
            return True
        (probe / "x").unlink()
        return False
    finally:
        probe.chmod(0o700)
        probe.rmdir()


def deny_writes_in(monkeypatch, folder: Path) -> list[str]:
    """Make entries directly in ``folder`` impossible to create, rename or delete (EACCES), as chmod 0o500
    does; existing files keep their own permissions. Returns the list of denied paths (appended to)."""
    folder = Path(os.path.realpath(folder))
    denied: list[str] = []

    def inside(path) -> bool:
        if isinstance(path, int):
            return False
        p = Path(os.path.realpath(os.fspath(path)))
        return p.parent == folder

    def refuse(path):
        denied.append(os.fspath(path))
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    real_os_open, real_open, real_io_open = os.open, builtins.open, io.open
    real_mkdir, real_replace, real_rename = os.mkdir, os.replace, os.rename
    real_unlink, real_remove, real_rmdir = os.unlink, os.remove, os.rmdir

    def os_open(path, flags, mode=0o777, *, dir_fd=None):
        if dir_fd is None and inside(path) and flags & _WRITE_FLAGS and (
                flags & os.O_EXCL or (flags & os.O_CREAT and not os.path.exists(path))):
            refuse(path)
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    def make_open(real):
        def opener(file, mode="r", *args, **kwargs):
            if inside(file) and any(c in mode for c in "wax") and ("x" in mode or not os.path.exists(file)):
                refuse(file)
            return real(file, mode, *args, **kwargs)
        return opener

    def mkdir(path, mode=0o777, *, dir_fd=None):
        if dir_fd is None and inside(path) and not os.path.exists(path):
            refuse(path)
        return real_mkdir(path, mode, dir_fd=dir_fd)

    def moving(real):
        def move(src, dst, *args, **kwargs):
            for p in (src, dst):
                if inside(p):
                    refuse(p)
            return real(src, dst, *args, **kwargs)
        return move

    def removing(real):
        def remove(path, *args, **kwargs):
            if inside(path):
                refuse(path)
            return real(path, *args, **kwargs)
        return remove

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", make_open(real_open))
    monkeypatch.setattr(io, "open", make_open(real_io_open))
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "replace", moving(real_replace))
    monkeypatch.setattr(os, "rename", moving(real_rename))
    monkeypatch.setattr(os, "unlink", removing(real_unlink))
    monkeypatch.setattr(os, "remove", removing(real_remove))
    monkeypatch.setattr(os, "rmdir", removing(real_rmdir))
    return denied


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        sys.exit("usage: fault_helpers.py --serve")
