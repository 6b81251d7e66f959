"""Warm job server (config `job_server.enabled`; the mini preset's choice, local runs only).

A mini job computes for a few seconds but pays ~7 CPU-s importing torch, torchvision (which imports
torch._dynamo) and open_clip (which imports transformers). The Snakefile's onstart starts one server
per `snakemake` invocation that imports them once; each `declip <verb>` call of a job then connects to
it, and the server forks a child that already holds those modules and runs the verb with the caller's
argv, environment, working directory and standard streams (passed as file descriptors). The caller
waits, forwards SIGTERM/SIGINT/SIGHUP to the child and exits with its status, so Snakemake sees an
ordinary job. Without a reachable server (none started, a SLURM job, a server still importing) the
verb runs in-process as before. Outputs are identical either way: the child is a fresh copy of a
process that has only imported modules (no tensor op has run in it, so no thread pool is forked).

Caveat: Snakemake's `benchmark:` files measure the calling process, so under the server their CPU and
memory columns cover the caller only (their wall time is the job's).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

ENV = "DECLIP_JOB_SERVER"
# What a job would import anyway; tqdm reads TQDM_* at import, so the server sets the job-log interval first.
PRELOAD = ("numpy", "torch", "torch._inductor.config", "torchvision", "open_clip", "PIL.Image", "scipy.optimize", "declip.cli")
_HEADER = struct.Struct("!Q")
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


# ---------------------------------------------------------------- caller side (light: no torch)
def run_remote(argv: list[str]) -> int | None:
    """Run `declip argv` in the server's fork; None when no server is reachable (run in-process)."""
    path = os.environ.get(ENV)
    if not path or os.environ.get("SLURM_JOB_ID"):  # a SLURM job's work belongs to its own allocation
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None
    request = json.dumps({"argv": list(argv), "env": dict(os.environ), "cwd": os.getcwd()}).encode()
    streams = [_open_stream(fd) for fd in (0, 1, 2)]
    socket.send_fds(conn, [_HEADER.pack(len(request))], streams)
    conn.sendall(request)
    replies = conn.makefile("rb")
    child = _reply(replies, "pid")
    if child is None:
        print("declip: the job server closed the connection before starting the job", file=sys.stderr)
        return 1
    for sig in _FORWARDED:
        signal.signal(sig, lambda number, _frame: _forward(child, number))
    status = _reply(replies, "status")
    if status is None:
        print(f"declip: job process {child} ended without an exit status (killed by a signal?)", file=sys.stderr)
        return 1
    return status


def _open_stream(fd: int) -> int:
    try:
        os.fstat(fd)
        return fd
    except OSError:  # a closed standard stream: the child gets /dev/null there
        return os.open(os.devnull, os.O_RDWR)


def _reply(replies, key: str):
    line = replies.readline()
    return json.loads(line)[key] if line else None


def _forward(child: int, number: int) -> None:
    try:
        os.kill(child, number)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------- server side
def serve(path: str, parent: int) -> None:
    """Import PRELOAD, listen on `path`, fork a child per connection; exit when `parent` (snakemake) is gone."""
    import importlib

    os.environ.setdefault("TQDM_MININTERVAL", "10")  # as `declip` sets it for a job log (see declip.cli.main)
    for name in PRELOAD:
        importlib.import_module(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = f"{path}.{os.getpid()}"
    listener.bind(tmp)
    listener.listen(64)
    os.replace(tmp, path)  # callers connect only once the imports are done
    listener.settimeout(1.0)
    print(f"declip job server {os.getpid()}: ready on {path}", flush=True)
    while os.getppid() == parent and os.path.exists(path):
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            listener.close()
            _child(conn)  # never returns
        conn.close()
    listener.close()


def _child(conn) -> None:
    code = 1
    try:
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        (size,) = _HEADER.unpack(header)
        request = json.loads(_receive(conn, size))
        verb = " ".join(request["argv"][1:2])
        print(f"pid {os.getpid()}: declip {verb} in {request['cwd']}", flush=True)  # the server's log
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = request["argv"]
        conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        from declip.cli import main

        code = main(request["argv"][1:])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported to the job log, as an uncaught error would be
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        import logging

        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        status = int(code or 0)
        try:
            conn.sendall(json.dumps({"status": status}).encode() + b"\n")
        except OSError:
            pass
        os._exit(status)


def _receive(conn, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = conn.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the caller closed the connection mid-request")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------- started and stopped by the Snakefile
_server = None  # (process, socket path) of this invocation's server


def start(config: dict, log_path: str) -> None:
    """Start the server for this invocation (onstart, local executor) and export its socket to the jobs."""
    import subprocess
    import tempfile
    import time

    global _server
    if not config.get("job_server", {}).get("enabled", False) or _server is not None:
        return
    folder = tempfile.mkdtemp(prefix="declip-js-")  # short path: a socket path has ~100 characters at most
    path = os.path.join(folder, "socket")
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "a") as log:
        process = subprocess.Popen([sys.executable, "-m", "declip.cli.job_server", path, str(os.getpid())],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    _server = (process, path)
    os.environ[ENV] = path
    # Wait for its imports, so the first jobs are served too (a job meanwhile would import on its own).
    deadline = time.monotonic() + 120
    while not os.path.exists(path) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)


def stop() -> None:
    """Stop the server (onsuccess / onerror); jobs already forked finish on their own."""
    import shutil
    import subprocess

    global _server
    if _server is None:
        return
    process, path = _server
    _server = None
    os.environ.pop(ENV, None)
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
