"""obs_util.py -- helpers for the observability tests (test_prometheus.py,
test_dashboard.py): a circled of their own with chosen flags, free ports,
bounded waits, and requests that carry a tag.

These tests need a daemon whose counters only they touch (the session-wide
one in conftest.py serves every other test), so they start their own.
"""

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, circled_binary  # one definition of where circled is


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=30):
    """(status, headers, body bytes) of one request; HTTP errors are answers too."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def wait_for(what, fn, timeout_s=30.0, every_s=0.2):
    """Calls fn until it returns something truthy; fails after timeout_s with
    the last value fn returned."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}; last: {last!r}")


@contextlib.contextmanager
def circled(*args):
    """circled on 127.0.0.1 with --port 0 and the given flags; yields its base
    URL. It must exit 0 on SIGTERM at the end."""
    log = tempfile.NamedTemporaryFile(prefix="circled-obs-", suffix=".log", delete=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCLED_")}
    proc = subprocess.Popen([circled_binary(), "--bind", "127.0.0.1", "--port", "0", "--quiet", *args],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)

    def log_text():
        log.flush()
        return Path(log.name).read_text(errors="replace")

    try:
        def started():
            if proc.poll() is not None:
                pytest.fail(f"circled exited {proc.returncode}:\n{log_text()}")
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", log_text())
            return m and f"http://127.0.0.1:{m.group(1)}"
        url = wait_for("circled to listen", started, 15, 0.05)
        yield url
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(log.name)


def batch(rng, n=16, d=8, classes=4, noise=0.3):
    """A batch of n labelled, roughly clustered, L2-normalized embeddings."""
    centers = [[rng.gauss(0, 1) for _ in range(d)] for _ in range(classes)]
    labels, emb = [], []
    for i in range(n):
        c = i % classes
        v = [x + rng.gauss(0, noise) for x in centers[c]]
        norm = sum(x * x for x in v) ** 0.5
        labels.append(c)
        emb.append([x / norm for x in v])
    return labels, emb


def post_loss(url, tag=None, seed=0, **extra):
    """POST /v1/loss with a random batch; returns (status, parsed body)."""
    labels, emb = batch(random.Random(seed))
    body = {"labels": labels, "embeddings": emb, **extra}
    if tag is not None:
        body["tag"] = tag
    status, _, raw = http("POST", url + "/v1/loss", body)
    return status, json.loads(raw)


def post_infer(url, tag=None, seed=0):
    """POST /v2/models/circle/infer (JSON tensors) with a random batch."""
    labels, emb = batch(random.Random(seed))
    body = {"inputs": [
        {"name": "labels", "shape": [len(labels)], "datatype": "INT64", "data": labels},
        {"name": "embeddings", "shape": [len(emb), len(emb[0])], "datatype": "FP32",
         "data": [x for row in emb for x in row]}]}
    if tag is not None:
        body["parameters"] = {"tag": tag}
    status, _, raw = http("POST", url + "/v2/models/circle/infer", body)
    return status, json.loads(raw)
