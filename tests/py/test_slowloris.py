"""test_slowloris.py -- hundreds of idle and trickling connections must not
keep a normal client from an answer within 100 ms, and idle connections are
closed after --timeout.

One circled of its own (--timeout 3). 200 connections open and send nothing,
150 trickle a request head one byte every 0.4 s and never finish it, 150
send a complete head announcing a 1 MB body and trickle that body a byte at
a time. While all 500 are held, a normal client makes fresh-connection
requests (GET /healthz and a small POST /v1/loss) and every one must be
answered within 100 ms. Bounded: about 12 s, loopback only.
"""

import json
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "load"))
from daemon import Circled  # noqa: E402

TIMEOUT_S = 3
N_IDLE, N_HEAD, N_BODY = 200, 150, 150
LATENCY_LIMIT_MS = 100.0
TRICKLE_EVERY_S = 0.4

BODY = json.dumps({"labels": [0, 1, 0, 1], "embeddings": [[1, 0], [0, 1], [0.6, 0.8], [-0.8, 0.6]]}).encode()


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setblocking(False)
    return s


def timed_request(port, method, path, body=b""):
    """One request on a fresh connection; returns (status, ms)."""
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        s.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    ms = (time.perf_counter() - t0) * 1e3
    return int(data.split(b" ", 2)[1]), ms


def closed_by_peer(s):
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_slowloris_does_not_starve_a_normal_client():
    with Circled(["--timeout", str(TIMEOUT_S)]) as d:
        idle = [connect(d.port) for _ in range(N_IDLE)]
        heads = [connect(d.port) for _ in range(N_HEAD)]
        bodies = [connect(d.port) for _ in range(N_BODY)]
        for s in heads:
            s.send(b"POST /v1/loss HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for s in bodies:
            s.send(b"POST /v1/loss HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n[")

        stop = threading.Event()

        def trickle():
            while not stop.wait(TRICKLE_EVERY_S):
                for s in heads:
                    try:
                        s.send(b"X")
                    except OSError:
                        pass
                for s in bodies:
                    try:
                        s.send(b"1")
                    except OSError:
                        pass

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        try:
            time.sleep(0.5)
            worst = {"healthz": 0.0, "loss": 0.0}
            deadline = time.monotonic() + 2 * TIMEOUT_S
            n = 0
            while time.monotonic() < deadline:
                status, ms = timed_request(d.port, "GET", "/healthz")
                assert status == 200
                worst["healthz"] = max(worst["healthz"], ms)
                status, ms = timed_request(d.port, "POST", "/v1/loss", BODY)
                assert status == 200
                worst["loss"] = max(worst["loss"], ms)
                n += 2
                time.sleep(0.05)
            # Past the timeout: every idle connection has been closed.
            idle_closed = sum(closed_by_peer(s) for s in idle)
            head_closed = sum(closed_by_peer(s) for s in heads)
            body_closed = sum(closed_by_peer(s) for s in bodies)
        finally:
            stop.set()
            t.join()
            for s in idle + heads + bodies:
                s.close()
        print(f"slowloris: {n} requests beside {N_IDLE} idle, {N_HEAD} head- and {N_BODY} "
              f"body-trickling connections; worst /healthz {worst['healthz']:.1f} ms, "
              f"worst /v1/loss {worst['loss']:.1f} ms; closed after {2 * TIMEOUT_S} s: "
              f"{idle_closed}/{N_IDLE} idle, {head_closed}/{N_HEAD} head, {body_closed}/{N_BODY} body")
        assert worst["healthz"] < LATENCY_LIMIT_MS, worst
        assert worst["loss"] < LATENCY_LIMIT_MS, worst
        assert idle_closed == N_IDLE, f"only {idle_closed} of {N_IDLE} idle connections were closed"
        assert d.stop() == 0
