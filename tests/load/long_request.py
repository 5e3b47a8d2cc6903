"""long_request.py -- loss-only requests that compute for at least a given
time on the machine the test runs on, for tests whose premise is "a
computation longer than X" (a timeout, a queue slot held).

Such a test never picks a fixed size and hopes the machine is slow enough:
long_n() measures the daemon the test will use, as that daemon's own
Server-Timing "compute" phase reports it, and grows n (the work grows as
n^2 at a fixed d) until one request computes for at least target_ms. The
largest n is the most the default limits accept (--max-n 65536, --max-pairs
2^32, a body under --max-body-mb 64); a machine so fast that even that
computes in less than the target fails the test loudly with the figures,
never skips it. Tests check their premise again on the requests they then
make, since a later request can run faster than the probe did.

Nothing here needs more than the Python standard library.
"""

import http.client
import json
import math
import random
import struct

D = 128
N_FIRST = 2048
N_MAX = 65536
_BLOCK_ROWS = 1021  # rows of distinct values, repeated to make n rows


def _rows():
    rng = random.Random(11)
    return [[round(rng.uniform(-1, 1), 3) for _ in range(D)] for _ in range(_BLOCK_ROWS)]


_ROWS = _rows()


def body(path, n):
    """(body bytes, extra headers) of a loss-only request of n rows x D on
    path: /v1/loss (JSON) or an OIP infer route (binary tensors)."""
    if path.startswith("/v1"):
        row_text = [json.dumps(r, separators=(",", ":")) for r in _ROWS]
        rows = ",".join(row_text[i % _BLOCK_ROWS] for i in range(n))
        labels = ",".join(str(i % 50) for i in range(n))
        text = f'{{"labels":[{labels}],"embeddings":[{rows}],"outputs":["loss"]}}'
        return text.encode(), {"Content-Type": "application/json"}
    head = json.dumps({
        "inputs": [
            {"name": "labels", "datatype": "INT64", "shape": [n],
             "parameters": {"binary_data_size": 8 * n}},
            {"name": "embeddings", "datatype": "FP32", "shape": [n, D],
             "parameters": {"binary_data_size": 4 * n * D}}],
        "outputs": [{"name": "loss", "parameters": {"binary_data": True}}]}).encode()
    labels = struct.pack(f"<{n}q", *(i % 50 for i in range(n)))
    block = struct.pack(f"<{_BLOCK_ROWS * D}f", *(x for r in _ROWS for x in r))
    reps, rest = divmod(n, _BLOCK_ROWS)
    emb = block * reps + block[:rest * D * 4]
    return head + labels + emb, {"Inference-Header-Content-Length": str(len(head))}


def compute_ms(headers):
    """The "compute" duration of a Server-Timing header value, or None."""
    for item in (headers.get("Server-Timing") or "").split(","):
        name, _, dur = item.strip().partition(";dur=")
        if name == "compute":
            return float(dur)
    return None


def post(port, path, data, headers, timeout=600):
    """One request on a fresh connection: (status, headers, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", path, body=data, headers=headers)
        r = c.getresponse()
        return r.status, r.headers, r.read()
    finally:
        c.close()


def long_n(port, target_ms, path="/v2/models/circle/infer"):
    """(n, compute ms) of the first probe on path whose loss-only request
    computes for at least target_ms; every probe must be answered 200.
    Raises AssertionError when N_MAX is not enough."""
    n, ms = N_FIRST, 0.0
    for _ in range(12):
        data, headers = body(path, n)
        status, rh, raw = post(port, path, data, headers)
        assert status == 200, f"probe n = {n}: {status} {raw[:300]!r}"
        ms = compute_ms(rh)
        assert ms is not None, f"probe n = {n}: no compute phase in Server-Timing"
        if ms >= target_ms:
            print(f"long_n: n = {n} x d = {D} computes in {ms:.0f} ms (>= {target_ms:.0f})")
            return n, ms
        if n == N_MAX:
            break
        # Aim a quarter past the target; grow at least 1.25x, at most 4x.
        f = min(4.0, max(1.25, math.sqrt(target_ms / ms) * 1.25 if ms > 0 else 4.0))
        n = min(N_MAX, int(n * f))
    raise AssertionError(f"n = {n} x d = {D} computes in {ms:.0f} ms on this machine: no request "
                         f"within the default limits reaches the {target_ms:.0f} ms this test needs")
