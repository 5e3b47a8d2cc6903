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

N, D, REPS = 4096, 512, 9


def read_answer(s):
    """Reads one Content-Length response from socket s (body discarded)."""
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        buf += s.recv(1 << 20)
    head, rest = bytes(buf).split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    got = len(rest)
    while got < length:
        got += len(s.recv(1 << 20))


def main():
    url = sys.argv[1]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = rng.integers(0, 64, N).astype(np.int64)
    inputs = [th.InferInput("labels", [N], "INT64"), th.InferInput("embeddings", [N, D], "FP32")]
    inputs[0].set_data_from_numpy(labels, binary_data=True)
    inputs[1].set_data_from_numpy(x, binary_data=True)
    outputs = [th.InferRequestedOutput("loss", binary_data=True),
               th.InferRequestedOutput("embeddings_grad", binary_data=True)]
    # The very bytes tritonclient sends for this request.
    body, json_len = _get_inference_request(
        inputs=inputs, request_id="", outputs=outputs, sequence_id=0, sequence_start=False,
        sequence_end=False, priority=0, timeout=None, custom_parameters=None)
    head = ("POST /v2/models/circle/infer HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/octet-stream\r\n"
            "Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n"
            % (json_len, len(body))).encode()
    host, port = url.split(":")
    sock = socket.create_connection((host, int(port)))
    client = th.InferenceServerClient(url, network_timeout=600, connection_timeout=600)
    plain, triton = [], []
    for _ in range(REPS):
        t0 = time.perf_counter()
        sock.sendall(head)
        sock.sendall(body)
        read_answer(sock)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        client.infer("circle", inputs, outputs=outputs)
        triton.append(time.perf_counter() - t0)
    print("raw socket %.1f ms, tritonclient %.1f ms (medians of %d, interleaved)"
          % (statistics.median(plain) * 1e3, statistics.median(triton) * 1e3, REPS))


if __name__ == "__main__":
    main()
