"""The warm job server (declip/cli/job_server.py): a `declip` call is run by a fork of the server with the
caller's argv, environment, working directory and streams, and exits with the child's status; without a
server it runs in-process."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from declip.cli import job_server

DECLIP = shutil.which("declip")
pytestmark = pytest.mark.skipif(DECLIP is None, reason="the `declip` command is not installed (pip install -e .)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server started as Snakemake's onstart starts it (its parent is this test process)."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    job_server.start({"job_server": {"enabled": True}}, str(log))
    path = os.environ[job_server.ENV]
    assert os.path.exists(path), log.read_text()
    yield path, log
    job_server.stop()


def _declip(args, env, cwd):
    return subprocess.run([DECLIP, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_a_call_runs_in_a_fork_of_the_server_with_the_callers_streams_cwd_and_status(server, tmp_path):
    path, log = server
    served_env = {**os.environ, job_server.ENV: path}
    own_env = {k: v for k, v in os.environ.items() if k != job_server.ENV}
    (tmp_path / "a").mkdir()
    out = _declip(["dataset", "mini2d", "--out", "w"], served_env, tmp_path / "a")  # relative to the caller's folder
    assert out.returncode == 0, out.stderr
    assert f"declip dataset in {tmp_path / 'a'}" in log.read_text()
    assert (tmp_path / "a/w/MANIFEST.json").exists()
    direct = _declip(["dataset", "mini2d", "--out", str(tmp_path / "b")], own_env, tmp_path)
    assert direct.returncode == 0, direct.stderr
    files = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(tmp_path / "a/w") for p in (tmp_path / "a/w").rglob("*") if p.is_file())
    for f in files:  # the same world, byte for byte (the manifest names its own folder)
        if f.name != "MANIFEST.json":
            assert (tmp_path / "b" / f).read_bytes() == (tmp_path / "a/w" / f).read_bytes(), f
    # A usage error: argparse's status 2 and its message on the caller's stderr.
    bad = _declip(["evaluate", "--no-such-option"], served_env, tmp_path)
    assert bad.returncode == 2 and "usage: declip evaluate" in bad.stderr
    assert "declip evaluate" in log.read_text()


def test_without_a_server_the_call_runs_in_process(tmp_path):
    env = {**os.environ, job_server.ENV: str(tmp_path / "nothing-listens-here")}
    out = _declip(["score", "--help"], env, tmp_path)
    assert out.returncode == 0 and "usage: declip score" in out.stdout


def test_a_slurm_job_never_uses_the_server(server, tmp_path):
    path, log = server
    env = {**os.environ, job_server.ENV: path, "SLURM_JOB_ID": "1"}
    served = log.read_text()
    out = _declip(["score", "--help"], env, tmp_path)
    assert out.returncode == 0 and "usage: declip score" in out.stdout
    assert log.read_text() == served


def test_sigterm_to_the_caller_reaches_the_child(server, tmp_path):
    path, log = server
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading blocks: the job waits until it is stopped
    caller = subprocess.Popen([DECLIP, "score", "ytvis", "--gt", str(fifo), "--pred", str(fifo)],
                              env={**os.environ, job_server.ENV: path}, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while f"declip score in {tmp_path}" not in log.read_text():
        assert caller.poll() is None and time.monotonic() < deadline, caller.communicate()
        time.sleep(0.1)
    child = int(log.read_text().rsplit("pid ", 1)[1].split(":")[0])
    assert Path(f"/proc/{child}").exists()
    caller.terminate()
    caller.wait(timeout=30)
    assert caller.returncode != 0
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists(), "the forked job outlived its caller"


def test_start_waits_for_the_server_and_stop_removes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(job_server, "_server", None)  # a server of its own, whatever the fixture started
    monkeypatch.delenv(job_server.ENV, raising=False)
    job_server.start({"job_server": {"enabled": False}}, str(tmp_path / "off.log"))
    assert job_server.ENV not in os.environ  # off: nothing started
    job_server.start({"job_server": {"enabled": True}}, str(tmp_path / "logs/job_server.log"))
    try:
        path = os.environ[job_server.ENV]
        assert os.path.exists(path)  # start() returns once the imports are done
        process, _ = job_server._server
        assert process.poll() is None
    finally:
        job_server.stop()
    assert job_server.ENV not in os.environ and not os.path.exists(path)
    assert process.poll() is not None
    assert "ready on" in (tmp_path / "logs/job_server.log").read_text()
