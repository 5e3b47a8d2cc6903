"""obs_util.py -- helpers for the observability tests (test_prometheus.py,
test_dashboard.py): a circled of their own with chosen flags, free ports,
bounded waits, and requests that carry a tag.

These tests need a daemon whose counters only they touch (the session-wide
one in conftest.py serves every other test), so they start their own.
"""

import json
import os
import random
import socket
import time
import urllib.error
import urllib.request

import pytest

from conftest import ROOT, run_circled  # one way to start circled


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


def circled(*args):
    """circled with the given flags (conftest.run_circled), with no CIRCLED_*
    variables of the caller's environment; yields its base URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCLED_")}
    return run_circled(*args, env=env, log_prefix="circled-obs-")


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


# /v1 "outputs" for everything the default gives plus the retrieval figures
# (which are asked for by name only).
RETRIEVAL_OUTPUTS = ["loss", "per_sample_loss", "embeddings_grad", "stats", "retrieval"]


def post_infer(url, tag=None, seed=0, **parameters):
    """POST /v2/models/circle/infer (JSON tensors) with a random batch; the
    keyword arguments are request parameters (retrieval=True)."""
    labels, emb = batch(random.Random(seed))
    body = {"inputs": [
        {"name": "labels", "shape": [len(labels)], "datatype": "INT64", "data": labels},
        {"name": "embeddings", "shape": [len(emb), len(emb[0])], "datatype": "FP32",
         "data": [x for row in emb for x in row]}]}
    if tag is not None:
        parameters["tag"] = tag
    if parameters:
        body["parameters"] = parameters
    status, _, raw = http("POST", url + "/v2/models/circle/infer", body)
    return status, json.loads(raw)
