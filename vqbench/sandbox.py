"""Containing a submission: the process its code runs in, and the files it must not touch.

- `run_in_child(target, args, ...)`: a forked child (forkserver: torch is imported once, a fork
  costs milliseconds) with a wall-clock limit, a memory limit (`contain`), a scratch cwd and
  bounded output (`bounded_output`), in a process group of its own that dies with its parent.
  It talks to its supervisor (the serial driver, or a Ray worker) in length-limited JSON, never
  pickle: whatever the submission does in its process cannot make the supervisor run code or
  hold unbounded data. Every job and every `vqbench validate` check runs this way; scripts that
  call into it need the usual `if __name__ == "__main__":` guard (children import __main__).
- `Guard`: the driver alone writes results; a guard snapshots results/, submissions/, tasks/ and
  leaderboard/ and, after every job, reports and undoes any change the driver did not make.
"""
from __future__ import annotations

import ctypes
import fcntl
import gc
import json
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from vqbench.paths import cache_home

LOCK_FILE = ".vqbench-run.lock"

DEFAULT_MEMORY_GB = 8.0  # address space a job may add on top of the loaded runtime (torch, Ray)
MAX_MESSAGE_BYTES = 16 << 20  # one message from a child; a bigger one is a fault, not data
MAX_BLOB_BYTES = 4 << 30  # one binary payload (weights, codes) from a child
OUTPUT_TAIL_CHARS = 2000  # how much of a job's stdout/stderr a failed result keeps
SCRATCH_MB = 1024  # size of a confined job's private scratch (and /dev/shm): it lives in memory
NO_NAMESPACES_ENV = "VQBENCH_NO_NAMESPACES"  # set: run jobs without namespaces (the guard still undoes writes)
SCRATCH = os.path.join(tempfile.gettempdir(), ".vqbench-scratch")  # a mount point; each job mounts its own tmpfs

_context = None


def _ctx():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        # Import torch, the harness and every family once in the fork server; each child is then a
        # cheap fork (a family imported per child costs ~0.3 s: torchvision, torchmetrics, ...).
        from vqbench.families import list_families
        families = [f"vqbench.families.{name}" for name in list_families()]
        # "__main__" too: each child would otherwise re-import the driver's main module (a script,
        # the CLI, a Ray worker's entry point), ~0.3 s a process.
        _context.set_forkserver_preload(["__main__", "vqbench.job", "vqbench.validate", *families])
    return _context


def memory_limit_gb(task) -> float:
    gb = getattr(task.resources, "memory_gb", None) if task is not None else None
    return DEFAULT_MEMORY_GB if gb is None else gb


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def limit_memory(gb: float) -> None:
    """RLIMIT_AS = the address space already mapped (torch alone maps ~4 GB, a Ray worker more:
    its object store) + `gb`. A fixed absolute limit would be wrong on every machine but one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_size() + int(gb * (1 << 30))
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def is_out_of_memory(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, MemoryError) or "can't allocate memory" in text or "not enough memory" in text


@dataclass
class Tail:
    text: str = ""
    total_bytes: int = 0


@contextmanager
def bounded_output(limit: int = OUTPUT_TAIL_CHARS) -> Iterator[Tail]:
    """Point fds 1 and 2 (C extensions included) at a pipe a thread drains, keeping only the last
    `limit` characters: a submission that floods stdout fills neither the terminal, nor a log, nor
    memory, nor the result file."""
    tail, kept = Tail(), bytearray()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    read_fd, write_fd = os.pipe()
    saved = os.dup(1), os.dup(2)
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    old_streams = sys.stdout, sys.stderr
    sys.stdout = open(1, "w", buffering=1, closefd=False, errors="replace")
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="replace")

    def drain() -> None:
        while chunk := os.read(read_fd, 1 << 16):
            tail.total_bytes += len(chunk)
            kept.extend(chunk)
            del kept[:-4 * limit]

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        yield tail
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        sys.stdout, sys.stderr = old_streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        reader.join(timeout=2)  # a grandchild may still hold the pipe open: don't wait for it
        tail.text = bytes(kept).decode(errors="replace")[-limit:]


@contextmanager
def _main_hidden_unless_needed(target: Callable) -> Iterator[None]:
    """While a child starts, hide the parent's main module from multiprocessing unless the target
    lives there. Otherwise each child re-runs the parent's main script by path or module name
    (Python 3.11 never preloads it in the fork server): a Ray worker's default_worker.py imports ray
    (0.23 s a process, 0.7 s a job: bench/ray_fanout.py), the `vqbench` console script or a bench
    script about 0.03 s a process (bench/job_overhead.py)."""
    main = sys.modules["__main__"]
    if getattr(target, "__module__", None) == "__main__":
        yield
        return
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if name in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None  # read as an attribute: it must exist
    try:
        yield
    finally:
        main.__dict__.update(saved)


def start_fork_server() -> None:
    """Start this process's fork server now, without waiting for it: it imports torch and the
    harness (seconds) while the caller goes on (a Ray worker: its handshake with the driver).
    Idempotent."""
    from multiprocessing import forkserver
    _ctx()
    forkserver.ensure_running()


def contain(memory_gb: float) -> None:
    """Limits for a process about to run submission code: memory, a scratch cwd (relative paths
    land there, not in the project), no bytecode writes (a .pyc in a submission folder would be
    a write the guard has to flag)."""
    import torch
    sys.dont_write_bytecode = True
    os.chdir(tempfile.mkdtemp(prefix="vqbench-job-"))
    # A CUDA context reserves virtual address space far beyond any sane RLIMIT_AS (unified
    # addressing), so GPU jobs are bounded by the card's memory and the time limit instead.
    if not torch.cuda.is_available():
        limit_memory(memory_gb)


CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWUSER = 0x00020000, 0x20000000, 0x40000000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18


def _libc_call(name: str, *args) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        raise OSError(ctypes.get_errno(), f"{name}: {os.strerror(ctypes.get_errno())}")


def _mount(source, target, fstype, flags: int, data: str | None = None) -> None:
    enc = lambda v: v.encode() if isinstance(v, str) else v  # noqa: E731
    _libc_call("mount", enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    return [m for m in dict.fromkeys(points) if not m.startswith(KERNEL_MOUNTS)]


KERNEL_MOUNTS = ("/proc", "/sys", "/dev")  # left as they are: a user namespace cannot write to them anyway


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def confine() -> str:
    """Linux namespaces around a process about to run submission code:
    - every file system read-only (the project, the venv, the cache, home, /tmp), a private tmpfs
      as scratch ($TMPDIR, $HOME) and on /dev/shm: the remounts are made in a mount namespace of their own, then a user namespace
      locks them, so the job cannot make anything writable again;
    - no network: a fresh network namespace has only a downed loopback;
    - a PID namespace whose init is the job: every process it starts, setsid or not, dies with it.
    Returns what is in force; where the platform refuses namespaces it says so, and the job runs
    under the time, memory and output limits alone (a root supervisor whose user namespace is refused
    after its own mount namespace worked keeps the read-only remounts: "partial").
    tests/test_confinement_refused.py has the kernel refuse them for real."""
    if os.environ.get(NO_NAMESPACES_ENV):
        return f"none: ${NO_NAMESPACES_ENV} is set; time, memory and output limits only"
    uid, gid = os.geteuid(), os.getegid()
    remounted = False
    try:
        os.makedirs(SCRATCH, exist_ok=True)
        if uid == 0:  # a root supervisor remounts in a namespace of its own; otherwise the user ns does
            _libc_call("unshare", CLONE_NEWNS)
            _remount_read_only()
            remounted = True
            _libc_call("unshare", CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET)
        else:
            _libc_call("unshare", CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET)
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
        if uid != 0:
            _remount_read_only()
    except OSError as e:
        if not remounted:
            return f"none: namespaces refused ({e.strerror or e}); time, memory and output limits only"
        _use_scratch()  # the file systems are read-only already: the job needs somewhere to write
        return (f"partial: read-only file systems (root: not locked), private scratch; user, PID and network "
                f"namespaces refused ({e.strerror or e}); time, memory and output limits")
    _use_scratch()
    return "namespaces: read-only file systems, private scratch, no network, own PID namespace"


def _use_scratch() -> None:
    os.environ["HOME"] = os.environ["XDG_CACHE_HOME"] = os.environ["TMPDIR"] = SCRATCH
    tempfile.tempdir = SCRATCH


def _remount_read_only() -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here leaks back to the host
    for point in _mount_points():
        try:  # per-mount flags of this namespace's copy: the host's mounts stay as they are
            _mount(None, point, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        except OSError:
            if point == "/":
                raise
    for scratch in (SCRATCH, "/dev/shm"):  # private to this namespace, gone with it
        if os.path.isdir(scratch):
            _mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, f"size={SCRATCH_MB}m,mode=1777")


def _exit_like(pid: int, signal_as_status: bool) -> None:
    """Wait for `pid`, then end this process as it ended (exit status, or the same signal)."""
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)  # -N: killed by signal N
    if not signal_as_status and code > 128:  # a namespace init's way of saying "killed by code - 128"
        code = 128 - code
    if code < 0:
        if signal_as_status:  # an init cannot be killed by its own signal: encode it as a status
            os._exit(128 - code)
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # those two have no handler to reset
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def _enter_pid_namespace() -> bool:
    """After unshare(CLONE_NEWPID) the next child is the namespace's init (PID 1), which ignores
    signals it has no handler for (abort() included). So: a waiter here, a minimal init, and the job
    as PID 2; when the job ends, its init ends, and the kernel kills whatever else the job started.
    The init mounts a /proc of the new namespace: under the host's, getpid() (2) names another
    process's /proc entry, and the CUDA driver fails to start (error 304; seen on an H100, where
    the user, mount and network namespaces alone let it run). Returns whether that mount worked."""
    if pid := os.fork():
        _exit_like(pid, signal_as_status=False)
    _die_with_parent()
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        own_proc = True
    except OSError:  # a /proc with masked entries (some containers) cannot be mounted afresh in a user ns
        own_proc = False
    if pid := os.fork():
        _exit_like(pid, signal_as_status=True)
    _die_with_parent()
    return own_proc


def _die_with_parent() -> None:
    try:  # PR_SET_PDEATHSIG: a SIGKILLed driver takes its fork server, and so its jobs, with it
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


_CONNECTION = None  # the child's pipe to its supervisor (a child runs one target)


def _send(conn, message: Any) -> None:
    conn.send_bytes(json.dumps(message, allow_nan=False, default=str).encode())


def send_blob(name: str, data: bytes) -> None:
    """From a child: a named binary payload for the supervisor (ChildOutcome.blobs). The supervisor
    keeps the first of each name, so what was sent cannot be taken back or replaced later."""
    _send(_CONNECTION, ["blob", name, len(data)])
    _CONNECTION.send_bytes(data)


def _child_main(conn, env: dict, memory_gb: float, target: Callable, args: tuple, confined: bool) -> None:
    global _CONNECTION
    _CONNECTION = conn
    gc.freeze()  # the fork server's objects (torch, the harness) are never collected here: no 0.25 s scans
    os.setsid()  # its own process group: the driver kills the job and anything it spawned
    _die_with_parent()
    os.environ.clear()  # the fork server's environment is from when it started; use the driver's now
    os.environ.update(env)
    if confined:  # before any submission code exists in this process
        state = confine()
        if state.startswith("namespaces") and not _enter_pid_namespace():
            state += " (the host's /proc: CUDA cannot start)"
        _send(conn, ["confinement", state])
    try:
        import torch
        torch.set_num_threads(1)  # results identical to a Ray worker's
        contain(memory_gb)
        with bounded_output() as tail:
            value = target(*args, emit=lambda message: _send(conn, ["progress", message]))
        _send(conn, ["done", value, tail.text])
    except BaseException as e:  # noqa: BLE001 - anything the target let out is the child's fault
        try:
            _send(conn, ["error", f"{type(e).__name__}: {e}"])
        except BrokenPipeError:  # the supervisor is gone (its driver was stopped): nobody to tell
            pass
    finally:
        conn.close()


@dataclass
class ChildOutcome:
    value: Any = None
    failure: str | None = None  # why no value came back: timeout, crash, bad message
    kind: str | None = None  # JobTimeout | WorkerCrashedError | ChildError
    output_tail: str = ""
    wall_time_s: float = 0.0
    progress: list = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)
    confinement: str | None = None  # what the child reported before the target ran (None: not asked)


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def run_in_child(target: Callable, args: tuple, timeout_s: float, memory_gb: float = DEFAULT_MEMORY_GB,
                 on_progress: Callable[[Any], None] | None = None, confined: bool = False) -> ChildOutcome:
    """Run `target(*args, emit=...)` in a contained child; never raises for the child's faults.
    `confined`: the child also enters namespaces (`confine`) before the target runs."""
    ctx = _ctx()
    receive, send = ctx.Pipe(duplex=False)
    # the cache is named by path: a confined child's $HOME is its scratch, so ~/.cache would move
    env = {**os.environ, "VQBENCH_HOME": str(cache_home())}
    proc = ctx.Process(target=_child_main, args=(send, env, memory_gb, target, args, confined), daemon=True)
    start = time.monotonic()
    with _main_hidden_unless_needed(target):
        proc.start()
    send.close()
    outcome = ChildOutcome()
    try:
        while True:
            left = timeout_s - (time.monotonic() - start)
            if left <= 0:
                outcome.failure, outcome.kind = f"timeout: job exceeded {timeout_s:.0f} s", "JobTimeout"
                break
            if not receive.poll(min(left, 1.0)):
                continue
            try:
                message = json.loads(receive.recv_bytes(MAX_MESSAGE_BYTES))
            except EOFError:
                proc.join(5)
                code = proc.exitcode
                how = f"killed by {_signal_name(code)}" if code is not None and code < 0 else f"exit status {code}"
                outcome.failure = (f"worker crashed: the job's process died ({how}: segfault, abort, "
                                   "out of memory or exit)")
                outcome.kind = "WorkerCrashedError"
                break
            except (OSError, ValueError) as e:  # oversized or not JSON: the child is not playing fair
                outcome.failure, outcome.kind = f"bad message from the job's process: {e}", "ChildError"
                break
            if not isinstance(message, list) or not message:
                outcome.failure, outcome.kind = "bad message from the job's process", "ChildError"
                break
            if message[0] == "confinement" and outcome.confinement is None and len(message) == 2:
                outcome.confinement = str(message[1])[:200]
            elif message[0] == "progress":
                outcome.progress.append(message[1])
                if on_progress:
                    on_progress(message[1])
            elif message[0] == "blob":
                name = message[1] if len(message) == 3 and isinstance(message[1], str) else None
                if name is None or name in outcome.blobs:
                    outcome.failure, outcome.kind = (f"bad message from the job's process: payload "
                                                     f"{str(name)[:40]!r} sent twice or malformed"), "ChildError"
                    break
                try:
                    outcome.blobs[name] = receive.recv_bytes(MAX_BLOB_BYTES)
                except (OSError, EOFError) as e:
                    outcome.failure, outcome.kind = f"bad payload from the job's process: {e or 'cut off'}", "ChildError"
                    break
            elif message[0] == "done" and len(message) == 3:
                outcome.value, outcome.output_tail = message[1], str(message[2])[-OUTPUT_TAIL_CHARS:]
                break
            else:
                outcome.failure, outcome.kind = str(message[1] if len(message) > 1 else message)[:500], "ChildError"
                break
    finally:
        receive.close()
        _kill_group(proc)
    outcome.wall_time_s = time.monotonic() - start
    return outcome


def confinement_warning(state: str) -> str | None:
    """What a user must know when `state` (from confinement_in_force) is not full confinement."""
    if state.startswith("namespaces"):
        return None
    return ("warning: submission code is not fully confined on this machine: the guard still detects "
            "and undoes changes to results/, submissions/, tasks/ and leaderboard/, but a process a job "
            "detaches can outlive it and the network is reachable; run untrusted submissions where user "
            "namespaces are allowed (docs/trust.md)")


def _nothing(emit) -> None:
    return None


def confinement_in_force() -> str:
    """What `confined=True` gives on this machine now (a child is started to find out)."""
    outcome = run_in_child(_nothing, (), 60.0, confined=True)
    return outcome.confinement or f"unknown: {outcome.failure}"


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.join(5)


class Guard:
    """Snapshot of the folders only the driver may change; `check()` names and undoes any other change.

    Stat (size, mtime, inode: a rename-over gets a new inode) and content (an in-place edit that
    restores size and times), with the bytes kept to restore. With namespaces (`confine`) a job cannot
    write there at all; the guard is the defence where the platform refuses them.
    """

    def __init__(self, folders: list[Path]):
        self.folders = list(dict.fromkeys(Path(f).resolve() for f in folders))
        self.state = self._scan()
        self.backup = {p: p.read_bytes() for p in self.state}

    def _scan(self) -> dict[Path, tuple]:
        state = {}
        for folder in self.folders:
            if not folder.exists():
                continue
            for dirpath, _, files in os.walk(folder):
                for name in files:
                    path = Path(dirpath) / name
                    try:
                        st = path.lstat()
                    except FileNotFoundError:
                        continue
                    state[path] = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode)
        return state

    def accept(self, path: Path) -> None:
        """The driver wrote `path` itself."""
        path = Path(path).resolve()
        st = path.lstat()
        self.state[path] = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode)
        self.backup[path] = path.read_bytes()

    def check(self) -> list[str]:
        """Paths changed since the snapshot by anyone else, each restored; empty when none."""
        now = self._scan()
        changed = sorted({p for p in now if now[p] != self.state.get(p) or self._content_differs(p)}
                         | (set(self.state) - set(now)))
        for path in changed:
            if path.is_symlink() or path.exists():
                path.unlink()
            if path in self.backup:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(self.backup[path])
                st = path.lstat()
                self.state[path] = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode)
        return [self._show(p) for p in changed]

    def _content_differs(self, path: Path) -> bool:
        """An edit can keep size, mtime (os.utime) and inode: compare the bytes too."""
        try:
            return path.read_bytes() != self.backup.get(path)
        except OSError:
            return True

    def _show(self, path: Path) -> str:
        for folder in self.folders:
            if path.is_relative_to(folder):
                return f"{folder.name}/{path.relative_to(folder).as_posix()}"
        return str(path)


@contextmanager
def exclusive_project(root: Path) -> Iterator[None]:
    """One driver (run or validate) per project at a time. The guard undoes every write into the
    protected folders that its own driver did not make; a second, legitimate driver writing results
    beside it would have its files undone, so it is refused instead, with the holder's pid."""
    from vqbench.schema import ConfigError
    path = Path(root) / LOCK_FILE
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise ConfigError(None, "project", f"{holder} is already running vqbench run/validate in {root}",
                              "wait for it to finish (one driver per project keeps the tamper guard exact)") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        yield  # the kernel drops the lock when this process ends, SIGKILL included


def protected_folders(root: Path, results_dir: Path | None = None) -> list[Path]:
    """What only the driver may write: results (the run's and the project's), code, tasks, leaderboard."""
    return [*([results_dir] if results_dir else []), root / "results", root / "submissions", root / "tasks",
            root / "leaderboard"]


def tamper_reason(paths: list[str]) -> str:
    shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    return f"tampering: the job changed files only the driver may write ({shown}); restored"


