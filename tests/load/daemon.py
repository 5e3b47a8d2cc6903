"""daemon.py -- start and stop a real circled for the load tools (soak.py,
tests/py/test_slowloris.py): loopback only, an ephemeral port read from the
start-up log, optional wrapper command (valgrind), RSS from /proc.

Nothing here needs more than the Python standard library.
"""

import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def circled_binary(path=None):
    """The circled to run: path, else $CIRCLED_BIN, else build/circled."""
    path = path or os.environ.get("CIRCLED_BIN") or str(ROOT / "build" / "circled")
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"circled binary {path} is missing; run `make` (or set CIRCLED_BIN)")
    return path


class Circled:
    """A circled process on 127.0.0.1 with --port 0 and --quiet.

    start() waits for the "listening on" line and a 200 from /healthz;
    stop() sends SIGTERM and returns the exit status (None on a hang, after
    which the process is killed). log() is everything it printed."""

    def __init__(self, args=(), binary=None, wrapper=None, start_timeout=30.0):
        self.cmd = (shlex.split(wrapper) if wrapper else []) + [
            circled_binary(binary), "--bind", "127.0.0.1", "--port", "0",
            "--grpc-port", "0", "--quiet", *args]
        self.start_timeout = start_timeout
        self.proc = None
        self.port = None
        self.grpc_port = None  # None when gRPC is off (--grpc-port off)
        self._log = tempfile.NamedTemporaryFile(prefix="circled-load-", suffix=".log", delete=False)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

    def start(self):
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"circled exited {self.proc.returncode} at start-up:\n{self.log()}")
            if self.port is None:
                m = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.log())
                if m:
                    self.port = int(m.group(1))
            if self.port is not None and self.healthy():
                g = re.search(r"grpc listening on 127\.0\.0\.1:(\d+)", self.log())
                self.grpc_port = int(g.group(1)) if g else None
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"circled did not answer /healthz within {self.start_timeout} s:\n{self.log()}")

    def healthy(self, timeout=2.0):
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=timeout) as r:
                return r.status == 200
        except OSError:
            return False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self):
        """VmRSS of the process in KiB, or None once it is gone."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def stop(self, timeout=60.0):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self):
        self.kill()
        self._log.close()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
