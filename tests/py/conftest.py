"""conftest.py -- shared fixtures for the Python tests: one real circled for
the whole session.

`circled` starts build/circled (or $CIRCLED_BIN) on 127.0.0.1 with --port 0
and --quiet, reads the port it chose from its start-up log (no race with
another process taking a port we picked), waits for /healthz, and yields the
base URL ("http://127.0.0.1:PORT"). At the end of the session it sends
SIGTERM and fails the session unless circled exits 0 within the drain time,
so a crash or a hang anywhere in the run is reported, with circled's log.
"""

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 15
STOP_TIMEOUT_S = 30


def circled_binary():
    path = os.environ.get("CIRCLED_BIN") or str(ROOT / "build" / "circled")
    if not os.access(path, os.X_OK):
        pytest.fail(f"circled binary {path} is missing; run `make` (or set CIRCLED_BIN)")
    return path


def _healthy(url):
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class DaemonURL(str):
    """A base URL ("http://127.0.0.1:PORT") that also carries the gRPC
    listener's "127.0.0.1:PORT" as .grpc (None when gRPC is off) and the
    process id as .pid."""
    grpc = None
    pid = None


@contextlib.contextmanager
def run_circled(*args, env=None, log_prefix="circled-"):
    """circled on 127.0.0.1 with --port 0, --grpc-port 0, --quiet and the
    given flags; yields its base URL (a DaemonURL) once /healthz answers. At
    the end it sends SIGTERM and fails unless circled exits 0 within the
    drain time, with its log."""
    log = tempfile.NamedTemporaryFile(prefix=log_prefix, suffix=".log", delete=False)
    proc = subprocess.Popen(
        [circled_binary(), "--bind", "127.0.0.1", "--port", "0", "--grpc-port", "0",
         "--quiet", *args],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)

    def log_text():
        log.flush()
        return Path(log.name).read_text(errors="replace")

    url = None
    flags = [a for a in args if a.startswith("--")]
    grpc_on = not ({"--no-grpc", "--grpc=false", "--grpc-port=off"} & set(flags)) and not any(
        a == "--grpc-port" and b == "off" for a, b in zip(args, args[1:]))
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"circled exited {proc.returncode} at start-up:\n{log_text()}")
            if url is None:
                m = re.search(r"listening on 127\.0\.0\.1:(\d+)", log_text())
                if m:
                    url = f"http://127.0.0.1:{m.group(1)}"
            g = re.search(r"grpc listening on 127\.0\.0\.1:(\d+)", log_text())
            if g is None and grpc_on:  # the line follows the HTTP one
                time.sleep(0.05)
                continue
            if url is not None and _healthy(url):
                url = DaemonURL(url)
                url.grpc = f"127.0.0.1:{g.group(1)}" if g else None
                url.pid = proc.pid
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"circled did not answer /healthz within {START_TIMEOUT_S} s:\n{log_text()}")

        yield url

        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"circled did not exit within {STOP_TIMEOUT_S} s of SIGTERM:\n{log_text()}")
        assert rc == 0, f"circled exited {rc} after SIGTERM:\n{log_text()}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(log.name)


@pytest.fixture(scope="session")
def circled():
    """Base URL of a circled running for the whole test session."""
    with run_circled() as url:
        yield url
