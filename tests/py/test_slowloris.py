"""test_slowloris.py -- slow clients: hundreds of idle and trickling
connections must not keep a normal client waiting; idle connections are
closed after --timeout and trickling ones after --request-timeout, while
slow computations and uploads that finish in time are left alone.

No verdict depends on how fast the machine is: a starved client would wait
for the tricklers to be cut off (seconds), so the latency bound is a
fraction of the timeouts, not a figure for this machine (the worst
latencies are printed); closing is awaited with a deadline that only
guards against a hang, while "not before the timeout" is exact; the long
computation is sized on the machine (tests/load/long_request.py).

Bounded: about 25 s in all, loopback only, one circled per test.
"""

import json
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "load"))
from daemon import Circled  # noqa: E402
import long_request  # noqa: E402

IDLE_TIMEOUT_S = 3
REQUEST_TIMEOUT_S = 4
N_IDLE, N_HEAD, N_BODY = 200, 150, 150
# A normal client starved by the tricklers would wait until they are cut
# off, seconds after it asked: a quarter of the idle timeout cannot be
# mistaken for that, on any machine.
LATENCY_LIMIT_MS = IDLE_TIMEOUT_S * 1000 / 4
CLOSE_DEADLINE_S = REQUEST_TIMEOUT_S + 15  # only a hang guard
TRICKLE_EVERY_S = 0.4

BODY = json.dumps({"labels": [0, 1, 0, 1], "embeddings": [[1, 0], [0, 1], [0.6, 0.8], [-0.8, 0.6]]}).encode()


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setblocking(False)
    return s


def read_response(s):
    """Reads one Content-Length response from a blocking socket; returns
    (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        chunk = s.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    return int(head.split(b" ", 2)[1]), rest[:length]


def post_head(path, length):
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def timed_request(port, method, path, body=b""):
    """One request on a fresh connection; returns (status, ms)."""
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        if body:
            s.sendall(post_head(path, len(body)) + body)
        else:
            s.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        status, _ = read_response(s)
    finally:
        s.close()
    return status, (time.perf_counter() - t0) * 1e3


def closed_by_peer(s):
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_slowloris_does_not_starve_a_normal_client_and_is_closed():
    with Circled(["--timeout", str(IDLE_TIMEOUT_S), "--request-timeout", str(REQUEST_TIMEOUT_S)]) as d:
        t_open = time.monotonic()
        idle = [connect(d.port) for _ in range(N_IDLE)]
        heads = [connect(d.port) for _ in range(N_HEAD)]
        bodies = [connect(d.port) for _ in range(N_BODY)]
        for s in heads:
            s.send(b"POST /v1/loss HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for s in bodies:
            s.send(post_head("/v1/loss", 1000000) + b"[")

        stop = threading.Event()

        def trickle():
            # A byte per connection every 0.4 s: never idle long enough for
            # --timeout, never done.
            while not stop.wait(TRICKLE_EVERY_S):
                for s in heads + bodies:
                    try:
                        s.send(b"1" if s in bodies else b"X")
                    except OSError:
                        pass

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        try:
            time.sleep(0.5)
            # Not one is closed before its timeout (the client's clock
            # started after the server's, so this is on the safe side).
            while time.monotonic() - t_open < IDLE_TIMEOUT_S - 0.5:
                assert not any(closed_by_peer(s) for s in idle + heads + bodies), \
                    f"a connection was closed {time.monotonic() - t_open:.2f} s after opening"
                time.sleep(0.25)
            worst = {"healthz": 0.0, "loss": 0.0}
            n = 0
            # Until well past both timeouts (the reaper sweeps once a second).
            while time.monotonic() - t_open < REQUEST_TIMEOUT_S + 2.5:
                status, ms = timed_request(d.port, "GET", "/healthz")
                assert status == 200
                worst["healthz"] = max(worst["healthz"], ms)
                status, ms = timed_request(d.port, "POST", "/v1/loss", BODY)
                assert status == 200
                worst["loss"] = max(worst["loss"], ms)
                n += 2
                time.sleep(0.05)
            # Every trickler and idle connection is closed, none early.
            early = time.monotonic() - t_open
            closed = {}
            while time.monotonic() - t_open < CLOSE_DEADLINE_S:
                closed = {k: sum(closed_by_peer(s) for s in v)
                          for k, v in (("idle", idle), ("head", heads), ("body", bodies))}
                if sum(closed.values()) == len(idle) + len(heads) + len(bodies):
                    break
                time.sleep(0.2)
            idle_closed, head_closed, body_closed = closed["idle"], closed["head"], closed["body"]
            del early
        finally:
            stop.set()
            t.join()
            for s in idle + heads + bodies:
                s.close()
        print(f"slowloris: {n} requests beside {N_IDLE} idle, {N_HEAD} head- and {N_BODY} "
              f"body-trickling connections; worst /healthz {worst['healthz']:.1f} ms, "
              f"worst /v1/loss {worst['loss']:.1f} ms; closed: {idle_closed}/{N_IDLE} idle, "
              f"{head_closed}/{N_HEAD} head, {body_closed}/{N_BODY} body")
        assert worst["healthz"] < LATENCY_LIMIT_MS, worst
        assert worst["loss"] < LATENCY_LIMIT_MS, worst
        assert idle_closed == N_IDLE, f"{idle_closed} of {N_IDLE} idle connections closed"
        assert head_closed == N_HEAD, f"{head_closed} of {N_HEAD} head tricklers closed"
        assert body_closed == N_BODY, f"{body_closed} of {N_BODY} body tricklers closed"
        assert d.stop() == 0


def test_request_timeout_spares_long_computes_and_timely_uploads():
    # A computation longer than the request timeout: the request was whole
    # long before, so it is answered. long_n's probes are the test: each is
    # answered 200, and the last computed for at least three times the 1 s
    # --request-timeout (sized on this machine, see long_request.py).
    with Circled(["--request-timeout", "1", "--workers", "1"]) as d:
        n, ms = long_request.long_n(d.port, 3000, path="/v1/loss")
        assert ms >= 3000
        assert d.stop() == 0

    timeout_s = 3
    with Circled(["--request-timeout", str(timeout_s)]) as d:
        # Keep-alive: the next request's clock starts at the previous
        # answer; a body sent in four pieces over about 1 s is in time.
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        s.sendall(post_head("/v1/loss", len(BODY)) + BODY)
        assert read_response(s)[0] == 200
        t_answer = time.monotonic()
        time.sleep(0.2)
        s.sendall(post_head("/v1/loss", len(BODY)))
        for i in range(4):
            time.sleep(0.2)
            s.sendall(BODY[i * len(BODY) // 4:(i + 1) * len(BODY) // 4])
        sent_after = time.monotonic() - t_answer
        # The premise, on this client's clock (which started after the
        # server's): the request was whole well inside the timeout.
        assert sent_after < timeout_s - 0.5, \
            f"the pieces took {sent_after:.2f} s to send: too slow to test this"
        assert read_response(s)[0] == 200
        s.close()
        # One that takes longer than that is cut off, with no answer: not
        # before the timeout, and at all (the deadline only guards a hang).
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        s.sendall(post_head("/v1/loss", len(BODY)) + BODY[:10])
        t0 = time.monotonic()
        gone = False
        while not gone and time.monotonic() - t0 < timeout_s + 15:
            try:
                s.sendall(b" ")  # never idle, never done
            except OSError:
                gone = True
                break
            time.sleep(0.25)
            s.setblocking(False)
            gone = closed_by_peer(s)
            s.setblocking(True)
        cut_after = time.monotonic() - t0
        s.close()
        assert gone, f"a request trickled for {cut_after:.0f} s was not cut off"
        assert cut_after > timeout_s - 0.5, f"cut off after {cut_after:.2f} s, before the timeout"
        assert d.stop() == 0
