"""hostile_load.py -- two server fairness measurements, before and after.

    python3 bench/compare/hostile_load.py short-lane BINARY [BINARY...]
    python3 bench/compare/hostile_load.py metrics-pollers BINARY [BINARY...]

short-lane: do small requests wait behind long computations? For each
circled binary (default flags): sizes an OIP binary job (d = 16, loss only)
from the fastest of three probes at n = 2048 so that it computes for about
2 s, sends four at once, and half a second later 20 sequential 4-row
/v1/loss requests, each on a fresh connection. Prints the small requests'
p50 and worst latency and the long jobs' makespan.

metrics-pollers: do /metrics scrapes slow down health checks? With
--max-tags 1000, makes 1000 tiny computations with distinct tags (so
/metrics is many MB), then 6 threads fetch /metrics back to back while the
main thread sends 200 GET /healthz on fresh connections, 10 ms apart.
Prints the /metrics size and time and the /healthz p50, p99 and worst.

Run the binaries in one invocation so they see the same machine load.
Standard library only.
"""

import http.client
import json
import re
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

SMALL = json.dumps({"labels": [0, 1, 0, 1],
                    "embeddings": [[1, 0], [0, 1], [0.6, 0.8], [-0.8, 0.6]]}).encode()
SMALL_REQ = b"POST /v1/loss HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(SMALL) + SMALL


def start(binary, *args):
    p = subprocess.Popen([binary, "--port", "0", "--quiet", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    line = ""
    while "listening on" not in line:
        line = p.stdout.readline()
        if not line and p.poll() is not None:
            sys.exit(f"{binary} did not start")
    return p, int(line.rsplit(":", 1)[1])


def oip(n, d=16):
    emb = struct.pack(f"<{n * d}f", *[((i * 37) % 11) / 20.0 for i in range(n * d)])
    lab = struct.pack(f"<{n}q", *[i % 3 for i in range(n)])
    hdr = json.dumps({"inputs": [
        {"name": "labels", "datatype": "INT64", "shape": [n],
         "parameters": {"binary_data_size": len(lab)}},
        {"name": "embeddings", "datatype": "FP32", "shape": [n, d],
         "parameters": {"binary_data_size": len(emb)}}],
        "outputs": [{"name": "loss", "parameters": {"binary_data": True}}]}).encode()
    body = hdr + lab + emb
    return (b"POST /v2/models/circle/infer HTTP/1.1\r\nHost: x\r\n"
            b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n"
            % (len(hdr), len(body)) + body)


def exchange(port, request):
    """(ms, response head) of one request on a fresh connection."""
    s = socket.create_connection(("127.0.0.1", port))
    t0 = time.perf_counter()
    s.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"\nContent-Length: (\d+)", head).group(1))
    while len(rest) < length:
        rest += s.recv(65536)
    s.close()
    return (time.perf_counter() - t0) * 1e3, head


def short_lane(binaries):
    for binary in binaries:
        p, port = start(binary)
        probe = min(float(re.search(rb"compute;dur=([\d.]+)", exchange(port, oip(2048))[1]).group(1))
                    for _ in range(3))
        n = int(2048 * (2000 / probe) ** 0.5)
        long_ms = {}

        def long_job(i):
            long_ms[i] = exchange(port, oip(n))[0]

        threads = [threading.Thread(target=long_job, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        small = sorted(exchange(port, SMALL_REQ)[0] for _ in range(20))
        for t in threads:
            t.join()
        p.terminate()
        p.wait()
        print(f"{binary}: long jobs n={n} (probe {probe:.0f} ms at n=2048), makespan "
              f"{max(long_ms.values()) / 1e3:.1f} s; 20 small requests: p50 "
              f"{statistics.median(small):.1f} ms, worst {small[-1]:.1f} ms")


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    t0 = time.perf_counter()
    c.request("GET", path)
    body = c.getresponse().read()
    c.close()
    return (time.perf_counter() - t0) * 1e3, len(body)


def metrics_pollers(binaries):
    for binary in binaries:
        p, port = start(binary, "--max-tags", "1000")
        c = http.client.HTTPConnection("127.0.0.1", port)
        for t in range(1000):
            c.request("POST", "/v1/loss", json.dumps(
                {"labels": [0, 1, 0], "embeddings": [[1, 0], [0, 1], [0.6, 0.8]], "tag": f"t{t}"}),
                {"Content-Type": "application/json"})
            c.getresponse().read()
        c.close()
        stop = threading.Event()
        scrapes = []

        def poll():
            while not stop.is_set():
                scrapes.append(get(port, "/metrics"))

        pollers = [threading.Thread(target=poll) for _ in range(6)]
        for t in pollers:
            t.start()
        time.sleep(0.5)
        health = []
        for _ in range(200):
            health.append(get(port, "/healthz")[0])
            time.sleep(0.01)
        stop.set()
        for t in pollers:
            t.join()
        p.terminate()
        p.wait()
        health.sort()
        print(f"{binary}: /metrics {scrapes[0][1] / 1e6:.1f} MB, median "
              f"{statistics.median(s[0] for s in scrapes):.0f} ms ({len(scrapes)} scrapes); "
              f"/healthz p50 {statistics.median(health):.1f} ms, p99 "
              f"{health[int(len(health) * 0.99) - 1]:.1f} ms, worst {health[-1]:.1f} ms")


def main():
    modes = {"short-lane": short_lane, "metrics-pollers": metrics_pollers}
    if len(sys.argv) < 3 or sys.argv[1] not in modes:
        sys.exit(__doc__)
    modes[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
