"""oip_transport.py -- how much of circled's OIP end-to-end time is the
client's HTTP transport: the same request bytes tritonclient builds (4096 x
512 float32, binary loss + embeddings_grad out), sent over a plain socket
and read back with recv(), interleaved with tritonclient.http's own infer(),
against a running circled.

    build/bench-venv/bin/python bench/compare/oip_transport.py HOST:PORT

Prints the median of 9 of each. (2026-11-29: plain socket 307 ms,
tritonclient 351 ms; the in-process engine took 263-271 ms.)
"""
import socket
import statistics
import sys
import time

import numpy as np
import tritonclient.http as th
from tritonclient.http._utils import _get_inference_request
url, n, d, R = sys.argv[1], 4096, 512, 9
rng = np.random.default_rng(0)
x = rng.standard_normal((n, d)).astype(np.float32); x /= np.linalg.norm(x, axis=1, keepdims=True)
l = rng.integers(0, 64, n).astype(np.int64)
ins = [th.InferInput("labels", [n], "INT64"), th.InferInput("embeddings", [n, d], "FP32")]
ins[0].set_data_from_numpy(l, binary_data=True); ins[1].set_data_from_numpy(x, binary_data=True)
outs = [th.InferRequestedOutput("loss", binary_data=True), th.InferRequestedOutput("embeddings_grad", binary_data=True)]
body, jl = _get_inference_request(inputs=ins, request_id="", outputs=outs, sequence_id=0, sequence_start=False, sequence_end=False, priority=0, timeout=None, custom_parameters=None)
host, port = url.split(":")
head = ("POST /v2/models/circle/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        "Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (jl, len(body))).encode()
s = socket.create_connection((host, int(port)))
ts = []
c = th.InferenceServerClient(url, network_timeout=600, connection_timeout=600)
tt = []
for i in range(R):
    t0 = time.perf_counter()
    s.sendall(head); s.sendall(body)
    buf = bytearray()
    while b"\r\n\r\n" not in buf: buf += s.recv(1 << 20)
    h, rest = bytes(buf).split(b"\r\n\r\n", 1)
    cl = int([x for x in h.split(b"\r\n") if x.lower().startswith(b"content-length")][0].split(b":")[1])
    got = len(rest)
    while got < cl: got += len(s.recv(1 << 20))
    ts.append(time.perf_counter() - t0)
    t0 = time.perf_counter(); c.infer("circle", ins, outputs=outs); tt.append(time.perf_counter() - t0)
print("raw socket %.1f ms, tritonclient %.1f ms (medians of %d, interleaved)" % (statistics.median(ts) * 1e3, statistics.median(tt) * 1e3, R))
