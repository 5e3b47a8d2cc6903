#!/usr/bin/env python3
"""soak.py -- load and soak test for circled (run by `make soak`).

Starts circled on loopback, then for --duration seconds keeps --connections
clients busy with a mix of requests over both protocols:

    valid      /v1 JSON (some gzip'd, some chunked, some asking for a
               gzip'd answer), OIP JSON tensors, OIP binary tensors with
               binary outputs
    invalid    bad JSON, wrong types, duplicate keys, ragged rows, unknown
               keys, binary sizes that do not add up, bad Content-Encoding,
               a deflate bomb, N over --max-n, 404 and 405
    truncated  JSON cut short in a complete HTTP message (400), bodies cut
               off mid-upload by a client that hangs up (no answer), and
               whole requests whose client hangs up before the answer
               (dropped or cancelled, no answer)
    framing    smuggling primitives (Content-Length twice, with
               Transfer-Encoding, a space before the colon, folded), a
               NUL in a header or the path, a missing Host (400
               bad_request), Transfer-Encoding identity (501), each with a
               request smuggled behind it; circled closes the connection
    oversize   a Content-Length over --max-body-mb (413 before the body)
    auth       with --api-key-file, every request carries the token but a
               few that carry none or a wrong one (401, WWW-Authenticate)
    gRPC       --grpc-clients more clients (grpc.aio, one channel each) send
               ModelInfer with raw and typed contents, requests that must get
               INVALID_ARGUMENT (wrong datatype, raw size short) and
               RESOURCE_EXHAUSTED (N over --max-n), the health check, and
               with a token, a few calls without it (UNAUTHENTICATED)

Every answer is checked against what that request must get (status, error
code, and for 200s the response's shape). The run fails on any 5xx (but
the 501 a framing request asks for), any other unexpected status (for
gRPC: status code), a request that hangs, circled dying, RSS growing
10% or more between the first and last ten seconds (VmRSS peaks of the two
windows), or circled not exiting 0 on SIGTERM afterwards.

503: with the limits used here (queue 1024, 2 GiB in flight, requests of at
most a few hundred KiB, 64 connections) circled has no reason to shed load,
so a 503 is a failure. --allow-503 accepts 503 "overloaded" when it carries
Retry-After (for runs with tighter limits); a 503 without it always fails.

    build/venv/bin/python tests/load/soak.py [--duration 60] [--connections 64]
        [--grpc-clients 8] [--circled build/circled] [--wrapper "valgrind ..."] [--no-rss]
        [--api-key-file key.txt] [--json-out figures.json] [--seed 1]

The gRPC clients need grpcio and tritonclient's messages (the test venv
has both); --grpc-clients 0 runs HTTP only.

Bounded: every loop ends at the deadline, every request has a timeout, and
nothing leaves 127.0.0.1.
"""

import argparse
import asyncio
import gzip
import json
import math
import random
import struct
import sys
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon import Circled  # noqa: E402

REQUEST_TIMEOUT_S = 30.0
TOKEN = None               # bearer token of the run (--api-key-file), or None
MAX_N = 256                # circled --max-n for the run
MAX_BODY_MB = 1            # circled --max-body-mb
MAX_INFLATED_MB = 1        # circled --max-inflated-mb
RSS_WINDOW_S = 10.0
RSS_LIMIT = 0.10


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------

class Req:
    """One request and what it must get back.

    expect: the status; code: the error code (/v1 shape) or None; check: a
    function of (headers, body) returning an error string or None; cut: send
    only this many body bytes and hang up (no answer expected); close: the
    server closes the connection after answering; chunked: send the body
    with Transfer-Encoding: chunked; auth: send the bearer token (when the
    run has one). A Content-Length in headers is sent as given (a body that
    is announced and never sent)."""

    __slots__ = ("kind", "method", "path", "headers", "body", "expect", "code", "check",
                 "cut", "close", "chunked", "auth", "raw")

    def __init__(self, kind, method, path, body=b"", headers=None, expect=200, code=None,
                 check=None, cut=None, close=False, chunked=False, auth=True):
        self.kind, self.method, self.path, self.body = kind, method, path, body
        self.headers = headers or {}
        self.expect, self.code, self.check, self.cut, self.close = expect, code, check, cut, close
        self.chunked, self.auth = chunked, auth
        self.raw = None  # the whole request as bytes, sent as is

    def wire(self, send_body=True):
        if self.raw is not None:
            return self.raw
        headers = dict(self.headers)
        if TOKEN and self.auth:
            headers["Authorization"] = f"Bearer {TOKEN}"
        if self.chunked:
            headers["Transfer-Encoding"] = "chunked"
        elif "Content-Length" not in headers and (self.body or self.method == "POST"):
            headers["Content-Length"] = str(len(self.body))
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = f"{self.method} {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode()
        if not send_body:
            return head
        if not self.chunked:
            return head + self.body
        step = max(1, len(self.body) // 3)
        parts = [self.body[i:i + step] for i in range(0, len(self.body), step)]
        return head + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def rand_problem(rng, n=None, d=None, ref=False):
    n = n or rng.randint(4, 64)
    d = d or rng.randint(8, 64)
    k = rng.randint(2, 6)
    labels = [rng.randrange(k) for _ in range(n)]
    emb = [[round(rng.uniform(-1, 1), 6) for _ in range(d)] for _ in range(n)]
    p = {"labels": labels, "embeddings": emb}
    if ref:
        m = rng.randint(2, 32)
        p["ref_labels"] = [rng.randrange(k) for _ in range(m)]
        p["ref_embeddings"] = [[round(rng.uniform(-1, 1), 6) for _ in range(d)] for _ in range(m)]
    return p


def check_v1_ok(n, outputs):
    def check(headers, body):
        try:
            r = json.loads(body)
        except ValueError as e:
            return f"response is not JSON: {e}"
        if r.get("n") != n:
            return f"n is {r.get('n')}, sent {n}"
        loss = r.get("loss")
        vals = loss if isinstance(loss, list) else [loss]
        if "loss" in outputs and not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
            return f"loss is {str(loss)[:80]}"
        for o in outputs:
            if o not in r:
                return f"{o} missing"
        return None
    return check


def v1_valid(rng):
    ref = rng.random() < 0.3
    p = rand_problem(rng, ref=ref)
    n = len(p["labels"])
    outputs = ["loss", "per_sample_loss", "embeddings_grad", "stats"]
    if rng.random() < 0.5:
        outputs = ["loss", "per_sample_loss", "stats"]
        p["outputs"] = outputs
    if rng.random() < 0.3:
        p["config"] = {"gamma": rng.choice([32.0, 80.0, 256.0]), "margin": rng.choice([0.1, 0.25, 0.4]),
                       "reduction": rng.choice(["sum", "sum_over_batch_size", "none", None]),
                       "dtype": rng.choice(["float32", "float64"])}
    if rng.random() < 0.2:
        p["sample_weight"] = [round(rng.uniform(0, 2), 3) for _ in range(n)]
    if rng.random() < 0.3:
        p["tag"] = rng.choice(["soak", "soak-a", "run.1"])
    body = json.dumps(p).encode()
    headers = {"Content-Type": "application/json"}
    kind = "v1"
    if rng.random() < 0.2:
        body = gzip.compress(body, mtime=0)
        headers["Content-Encoding"] = "gzip"
        kind = "v1_gzip"
    if rng.random() < 0.2:
        headers["Accept-Encoding"] = "gzip"
    return Req(kind, "POST", "/v1/loss", body, headers, 200, check=check_v1_ok(n, outputs))


def oip_inputs(p):
    n, d = len(p["labels"]), len(p["embeddings"][0])
    ins = [{"name": "labels", "datatype": "INT64", "shape": [n], "data": p["labels"]},
           {"name": "embeddings", "datatype": "FP32", "shape": [n, d],
            "data": [x for row in p["embeddings"] for x in row]}]
    if "ref_labels" in p:
        m = len(p["ref_labels"])
        ins += [{"name": "ref_labels", "datatype": "INT64", "shape": [m], "data": p["ref_labels"]},
                {"name": "ref_embeddings", "datatype": "FP32", "shape": [m, d],
                 "data": [x for row in p["ref_embeddings"] for x in row]}]
    return ins


def check_oip_ok(names):
    def check(headers, body):
        ihcl = headers.get("inference-header-content-length")
        hlen = int(ihcl) if ihcl is not None else len(body)
        if hlen > len(body):
            return f"Inference-Header-Content-Length {hlen} > body {len(body)}"
        try:
            r = json.loads(body[:hlen])
        except ValueError as e:
            return f"header is not JSON: {e}"
        got = [o.get("name") for o in r.get("outputs", [])]
        if got != names:
            return f"outputs {got}, expected {names}"
        binary = sum(o.get("parameters", {}).get("binary_data_size", 0) for o in r["outputs"])
        if binary != len(body) - hlen:
            return f"binary outputs announce {binary} bytes, {len(body) - hlen} follow"
        return None
    return check


def oip_json_valid(rng):
    p = rand_problem(rng, ref=rng.random() < 0.3)
    req = {"id": f"soak-{rng.randrange(1 << 30)}", "inputs": oip_inputs(p),
           "outputs": [{"name": "loss"}, {"name": "per_sample_loss"}],
           "parameters": {"gamma": 64, "margin": 0.25}}
    return Req("oip_json", "POST", "/v2/models/circle/infer", json.dumps(req).encode(),
               {"Content-Type": "application/json"}, 200,
               check=check_oip_ok(["loss", "per_sample_loss"]))


def oip_binary_request(rng, corrupt=False):
    p = rand_problem(rng)
    n, d = len(p["labels"]), len(p["embeddings"][0])
    lab = struct.pack(f"<{n}q", *p["labels"])
    emb = struct.pack(f"<{n * d}f", *[x for row in p["embeddings"] for x in row])
    header = json.dumps({
        "inputs": [{"name": "labels", "datatype": "INT64", "shape": [n],
                    "parameters": {"binary_data_size": len(lab)}},
                   {"name": "embeddings", "datatype": "FP32", "shape": [n, d],
                    "parameters": {"binary_data_size": len(emb)}}],
        "outputs": [{"name": "loss", "parameters": {"binary_data": True}},
                    {"name": "embeddings_grad", "parameters": {"binary_data": True}}]}).encode()
    body = header + lab + emb
    if corrupt:
        body = body[:-4]  # four bytes short of what the header announces
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": str(len(header))}
    return body, headers


def oip_binary_valid(rng):
    body, headers = oip_binary_request(rng)
    return Req("oip_binary", "POST", "/v2/models/circle/infer", body, headers, 200,
               check=check_oip_ok(["loss", "embeddings_grad"]))


def check_oip_error(headers, body):
    try:
        r = json.loads(body)
    except ValueError as e:
        return f"error body is not JSON: {e}"
    if not isinstance(r.get("error"), str) or not r["error"]:
        return f"error body {body[:80]!r}"
    return None


def invalid(rng):
    """A request circled must refuse, with the status and code it must use."""
    ok = '{"labels": [0, 1], "embeddings": [[1, 0], [0, 1]]'
    v1 = [
        ('{"labels": [0, 1], "embeddings": [[1, 0], [0, 1]],}', 400, "invalid_json"),
        ('{"labels": [0, 1], "labels": [0, 1], "embeddings": [[1, 0], [0, 1]]}', 400, "duplicate_key"),
        ('{"labels": [0, 1], "embeddings": [[1, 0], [0]]}', 400, "ragged_rows"),
        (ok + ', "gama": 1}', 400, "unknown_key"),
        ('{"labels": "0", "embeddings": [[1]]}', 400, "wrong_type"),
        (ok + ', "config": {"gamma": -1}}', 400, "bad_config"),
        ('{"labels": [], "embeddings": []}', 400, "empty_batch"),
        ('{"labels": [0], "embeddings": [[1e999]]}', 400, "non_finite"),
        (ok + ', "ref_labels": [0]}', 400, "half_reference"),
        ('{"labels": [0], "embeddings": ' + "[" * 100 + "]" * 100 + "}", 400, "limit_exceeded"),
        (json.dumps({"labels": list(range(MAX_N + 1)), "embeddings": [[1.0]] * (MAX_N + 1)}), 413,
         "limit_exceeded"),
    ]
    r = rng.random()
    if r < 0.55:
        body, status, code = rng.choice(v1)
        return Req("invalid_v1", "POST", "/v1/loss", body.encode(),
                   {"Content-Type": "application/json"}, status, code)
    if r < 0.7:
        body, headers = oip_binary_request(rng, corrupt=True)
        return Req("invalid_oip", "POST", "/v2/models/circle/infer", body, headers, 400,
                   check=check_oip_error)
    if r < 0.78:
        return Req("invalid_oip", "POST", "/v2/models/circle/infer",
                   b'{"inputs": [{"name": "labels", "datatype": "FP32", "shape": [1], "data": [0]}]}',
                   {"Content-Type": "application/json"}, 400, check=check_oip_error)
    if r < 0.84:
        # 2 MiB of blanks in about 2 KiB: refused at the 1 MiB inflate cap.
        return Req("bomb", "POST", "/v1/loss", BOMB, {"Content-Encoding": "gzip"}, 413, "limit_exceeded")
    if r < 0.88:
        return Req("invalid_v1", "POST", "/v1/loss", b"{}", {"Content-Encoding": "br"}, 415,
                   "bad_encoding")
    if r < 0.94:
        return Req("not_found", "GET", "/v1/nope", expect=404, code="not_found")
    return Req("method", "GET", "/v1/loss", expect=405, code="method_not_allowed")


BOMB = gzip.compress(b" " * (2 << 20), mtime=0)


def truncated(rng):
    """JSON cut short inside a complete HTTP message: a 400, not a hang."""
    full = v1_valid(rng)
    plain = full.body if "Content-Encoding" not in full.headers else gzip.decompress(full.body)
    cut = rng.randrange(1, len(plain) - 1)
    return Req("truncated_json", "POST", "/v1/loss", plain[:cut], {"Content-Type": "application/json"},
               400, "invalid_json")


def hangup(rng):
    """A client that sends half its body and hangs up: no answer to wait for."""
    full = rng.choice([v1_valid, oip_binary_valid])(rng)
    full.kind = "hangup"
    full.cut = len(full.body) // 2
    return full


def gone(rng):
    """A whole request whose client hangs up before the answer: circled
    drops it, or stops it between row blocks; nothing to wait for."""
    full = rng.choice([v1_valid, oip_binary_valid])(rng)
    full.kind = "gone"
    full.cut = len(full.body)
    return full


SMUGGLED = b"GET /dashboard HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
FRAMING = [
    (b"POST /v1/loss HTTP/1.1\r\nHost: x\r\n%sContent-Length: 0\r\nContent-Length: 45\r\n\r\n",
     400, "bad_request"),
    (b"POST /v1/loss HTTP/1.1\r\nHost: x\r\n%sContent-Length: 45\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n", 400, "bad_request"),
    (b"POST /v1/loss HTTP/1.1\r\nHost: x\r\n%sContent-Length : 45\r\n\r\n", 400, "bad_request"),
    (b"POST /v1/loss HTTP/1.1\r\nHost: x\r\n%sContent-Length:\r\n 45\r\n\r\n", 400, "bad_request"),
    (b"GET /config HTTP/1.1\r\nHost: x\r\n%sX-A: a\x00b\r\n\r\n", 400, "bad_request"),
    (b"GET /config%%00x HTTP/1.1\r\nHost: x\r\n%s\r\n", 400, "bad_request"),
    (b"GET /config HTTP/1.1\r\n%s\r\n", 400, "bad_request"),
    (b"POST /v1/loss HTTP/1.1\r\nHost: x\r\n%sTransfer-Encoding: identity\r\n\r\n",
     501, "not_implemented"),
]


def framing(rng):
    """A request whose framing a proxy could read otherwise, with a request
    smuggled behind it: refused, and the connection closed."""
    head, status, code = rng.choice(FRAMING)
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode() if TOKEN else b""
    req = Req("framing", "POST", "/v1/loss", expect=status, code=code, close=True)
    req.raw = head % auth + SMUGGLED
    return req


def oversize(rng):
    """Content-Length over --max-body-mb: 413 from the headers alone; the
    body is never sent and circled closes the connection."""
    return Req("oversize", "POST", "/v1/loss", b"", {"Content-Type": "application/json",
               "Content-Length": str((MAX_BODY_MB << 20) + 1)}, 413, "body_too_large", close=True)


def chunked(rng):
    """A valid /v1 request with a chunked body (counted as it arrives)."""
    req = v1_valid(rng)
    req.kind, req.chunked = "v1_chunked", True
    return req


def unauthorized(rng):
    """With --api-key-file: no token, or a wrong one, gets 401 with
    WWW-Authenticate; without it, a plain valid request."""
    if TOKEN is None:
        return v1_valid(rng)

    def check(headers, body):
        return None if headers.get("www-authenticate", "").startswith("Bearer") else \
            "401 without WWW-Authenticate: Bearer"
    if rng.random() < 0.5:
        return Req("unauthorized", "GET", "/config", expect=401, code="unauthorized",
                   check=check, auth=False)
    return Req("unauthorized", "POST", "/v1/loss", b'{"labels": [0], "embeddings": [[1]]}',
               {"Authorization": f"Bearer {TOKEN}x"}, 401, "unauthorized", check=check, auth=False)


MIX = [(v1_valid, 40), (oip_json_valid, 12), (oip_binary_valid, 12), (invalid, 20),
       (truncated, 8), (hangup, 4), (gone, 2), (framing, 3), (oversize, 4), (chunked, 4),
       (unauthorized, 3)]


# ---------------------------------------------------------------------------
# gRPC requests (ModelInferRequest and the health check), each with the
# status code it must get
# ---------------------------------------------------------------------------

def grpc_infer_request(rng, typed=False, n=None):
    from tritonclient.grpc import service_pb2
    p = rand_problem(rng, n=n)
    n, d = len(p["labels"]), len(p["embeddings"][0])
    flat = [x for row in p["embeddings"] for x in row]
    r = service_pb2.ModelInferRequest(model_name="circle", id=f"soak-{rng.randrange(1 << 30)}")
    lab = r.inputs.add(name="labels", datatype="INT64", shape=[n])
    emb = r.inputs.add(name="embeddings", datatype="FP32", shape=[n, d])
    if typed:
        lab.contents.int64_contents.extend(p["labels"])
        emb.contents.fp32_contents.extend(flat)
    else:
        r.raw_input_contents.extend([struct.pack(f"<{n}q", *p["labels"]),
                                     struct.pack(f"<{n * d}f", *flat)])
    for o in ("loss", "embeddings_grad"):
        r.outputs.add(name=o)
    return r, n, d


def check_grpc_infer(n, d):
    def check(resp):
        from tritonclient.grpc import service_pb2
        r = service_pb2.ModelInferResponse.FromString(resp)
        if [o.name for o in r.outputs] != ["loss", "embeddings_grad"]:
            return f"outputs {[o.name for o in r.outputs]}"
        if [len(b) for b in r.raw_output_contents] != [4, n * d * 4]:
            return f"raw output sizes {[len(b) for b in r.raw_output_contents]} for n={n} d={d}"
        return None
    return check


def grpc_pick(rng):
    """(kind, method, request bytes, expected code name, check, send token)."""
    infer = "/inference.GRPCInferenceService/ModelInfer"
    x = rng.random()
    if x < 0.45:
        r, n, d = grpc_infer_request(rng)
        return "grpc_raw", infer, r.SerializeToString(), "OK", check_grpc_infer(n, d), True
    if x < 0.6:
        r, n, d = grpc_infer_request(rng, typed=True)
        return "grpc_typed", infer, r.SerializeToString(), "OK", check_grpc_infer(n, d), True
    if x < 0.7:
        r, _, _ = grpc_infer_request(rng)
        r.inputs[0].datatype = "FP32"
        return "grpc_invalid", infer, r.SerializeToString(), "INVALID_ARGUMENT", None, True
    if x < 0.78:
        r, _, _ = grpc_infer_request(rng)
        r.raw_input_contents[1] = r.raw_input_contents[1][:-4]
        return "grpc_invalid", infer, r.SerializeToString(), "INVALID_ARGUMENT", None, True
    if x < 0.84:
        r, _, _ = grpc_infer_request(rng, n=MAX_N + 1)
        return "grpc_limit", infer, r.SerializeToString(), "RESOURCE_EXHAUSTED", None, True
    if x < 0.96 or TOKEN is None:
        return ("grpc_health", "/grpc.health.v1.Health/Check", b"", "OK",
                lambda resp: None if resp == b"\x08\x01" else f"health {resp!r}", False)
    r, _, _ = grpc_infer_request(rng)
    return "grpc_unauth", infer, r.SerializeToString(), "UNAUTHENTICATED", None, False


async def grpc_client(ix, port, deadline, seed, stats, allow_503):
    import grpc
    rng = random.Random(seed * 7919 + ix)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        calls = {}
        while time.monotonic() < deadline:
            kind, method, body, want, check, auth = grpc_pick(rng)
            if method not in calls:
                calls[method] = ch.unary_unary(method, request_serializer=lambda b: b,
                                               response_deserializer=lambda b: b)
            md = (("authorization", f"Bearer {TOKEN}"),) if auth and TOKEN else None
            stats.count[kind] += 1
            t0 = time.perf_counter()
            try:
                resp = await calls[method](body, metadata=md, timeout=REQUEST_TIMEOUT_S)
                code = "OK"
            except grpc.aio.AioRpcError as e:
                resp, code = None, e.code().name
            stats.status[f"grpc:{code}"] += 1
            stats.latency[kind].append((time.perf_counter() - t0) * 1e3)
            if code == "RESOURCE_EXHAUSTED" and allow_503 and want == "OK":
                stats.retry_after_503 += 1
                continue
            if code != want:
                stats.fail(kind, f"status {code}, expected {want}")
            elif check is not None and resp is not None:
                why = check(resp)
                if why:
                    stats.fail(kind, why)


# ---------------------------------------------------------------------------
# A minimal HTTP/1.1 client (keep-alive, Content-Length answers)
# ---------------------------------------------------------------------------

class Conn:
    def __init__(self, port):
        self.port = port
        self.reader = self.writer = None

    async def ensure(self):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    def drop(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def exchange(self, req):
        """Sends req; returns (status, headers, body) or None for a hang-up
        request. Raises on connection trouble."""
        await self.ensure()
        if req.cut is not None:
            self.writer.write(req.wire(send_body=False) + req.body[:req.cut])
            await self.writer.drain()
            self.drop()
            return None
        self.writer.write(req.wire())
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0"))
        body = await self.reader.readexactly(length) if req.method != "HEAD" else b""
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        elif headers.get("content-encoding") == "deflate":
            body = zlib.decompress(body)
        if req.close or headers.get("connection", "").lower() == "close":
            self.drop()
        return status, headers, body


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------

class Stats:
    def __init__(self):
        self.count = Counter()          # requests by kind
        self.status = Counter()         # answers by status
        self.failures = []              # (kind, what)
        self.latency = defaultdict(list)
        self.retry_after_503 = 0
        self.conn_errors = Counter()

    def fail(self, kind, what):
        if len(self.failures) < 200:
            self.failures.append((kind, what))


def pick(rng):
    total = sum(w for _, w in MIX)
    x = rng.uniform(0, total)
    for fn, w in MIX:
        x -= w
        if x <= 0:
            return fn
    return MIX[-1][0]


async def client(ix, port, deadline, seed, stats, allow_503):
    rng = random.Random(seed * 1000003 + ix)
    conn = Conn(port)
    while time.monotonic() < deadline:
        req = pick(rng)(rng)
        stats.count[req.kind] += 1
        t0 = time.perf_counter()
        try:
            res = await asyncio.wait_for(conn.exchange(req), REQUEST_TIMEOUT_S)
        except asyncio.TimeoutError:
            stats.fail(req.kind, f"no answer within {REQUEST_TIMEOUT_S} s")
            conn.drop()
            continue
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as e:
            # A keep-alive connection the server closed between requests
            # (idle timeout) is retried once on a fresh one; anything else
            # is a failure.
            conn.drop()
            stats.conn_errors[type(e).__name__] += 1
            try:
                res = await asyncio.wait_for(conn.exchange(req), REQUEST_TIMEOUT_S)
            except (ConnectionError, asyncio.IncompleteReadError, OSError, asyncio.TimeoutError) as e2:
                stats.fail(req.kind, f"connection failed twice: {e!r}, {e2!r}")
                conn.drop()
                continue
        ms = (time.perf_counter() - t0) * 1e3
        if res is None:
            continue
        status, headers, body = res
        stats.status[status] += 1
        stats.latency[req.kind].append(ms)
        if status == 503 and allow_503 and headers.get("retry-after"):
            stats.retry_after_503 += 1
            continue
        if status >= 500 and status != req.expect:
            stats.fail(req.kind, f"{status}: {body[:200]!r}")
            continue
        if status != req.expect:
            stats.fail(req.kind, f"status {status}, expected {req.expect}: {body[:200]!r}")
            continue
        if req.code is not None:
            try:
                code = json.loads(body)["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = None
            if code != req.code:
                stats.fail(req.kind, f"error code {code}, expected {req.code}: {body[:200]!r}")
                continue
        if req.check is not None:
            why = req.check(headers, body)
            if why:
                stats.fail(req.kind, why)
    conn.drop()


async def sample_rss(daemon, t_start, deadline, samples, dead):
    while time.monotonic() < deadline:
        rss = daemon.rss_kib()
        if rss is None or not daemon.alive():
            dead.append(time.monotonic() - t_start)
            return
        samples.append((time.monotonic() - t_start, rss))
        await asyncio.sleep(0.25)


async def run_load(daemon, duration, connections, seed, allow_503, measure_rss, grpc_clients):
    stats = Stats()
    samples, dead = [], []
    t_start = time.monotonic()
    deadline = t_start + duration
    tasks = [client(i, daemon.port, deadline, seed, stats, allow_503) for i in range(connections)]
    tasks += [grpc_client(i, daemon.grpc_port, deadline, seed, stats, allow_503)
              for i in range(grpc_clients)]
    if measure_rss:
        tasks.append(sample_rss(daemon, t_start, deadline, samples, dead))
    await asyncio.gather(*tasks)
    return stats, samples, dead, time.monotonic() - t_start


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--grpc-clients", type=int, default=8,
                    help="gRPC clients besides the HTTP connections (0: HTTP only)")
    ap.add_argument("--circled", default=None, help="binary (default $CIRCLED_BIN or build/circled)")
    ap.add_argument("--wrapper", default=None, help='command to run circled under, e.g. "valgrind -q"')
    ap.add_argument("--no-rss", action="store_true", help="do not check RSS growth (under a wrapper)")
    ap.add_argument("--allow-503", action="store_true",
                    help="accept 503 with Retry-After (runs with tighter limits)")
    ap.add_argument("--api-key-file", default=None,
                    help="run circled with this bearer token file; requests carry the token, "
                         "and some deliberately do not (401)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json-out", default=None)
    ap.add_argument("circled_args", nargs="*", help="extra circled flags, after --")
    a = ap.parse_args()
    if a.duration < 2 * RSS_WINDOW_S and not a.no_rss:
        ap.error(f"--duration must be at least {2 * RSS_WINDOW_S:.0f} s to compare RSS windows")

    if a.grpc_clients:
        try:
            import grpc  # noqa: F401
            from tritonclient.grpc import service_pb2  # noqa: F401
        except ImportError as e:
            ap.error(f"the gRPC clients need grpcio and tritonclient[grpc] ({e}); run with "
                     "the test venv's python (make deps-py), or --grpc-clients 0")

    global TOKEN
    args = ["--max-n", str(MAX_N), "--max-body-mb", str(MAX_BODY_MB),
            "--max-inflated-mb", str(MAX_INFLATED_MB), *a.circled_args]
    if a.api_key_file:
        TOKEN = Path(a.api_key_file).read_text().strip()
        args += ["--api-key-file", a.api_key_file]
    daemon = Circled(args, binary=a.circled, wrapper=a.wrapper,
                     start_timeout=120 if a.wrapper else 30)
    ok = True
    try:
        daemon.start()
        print(f"soak: circled pid {daemon.pid} on {daemon.url} (gRPC {daemon.grpc_port}); "
              f"{a.connections} connections and {a.grpc_clients} gRPC clients for "
              f"{a.duration:.0f} s (seed {a.seed})", flush=True)
        if a.grpc_clients and daemon.grpc_port is None:
            raise RuntimeError("circled did not log 'grpc listening on'")
        stats, samples, dead, elapsed = asyncio.run(
            run_load(daemon, a.duration, a.connections, a.seed, a.allow_503, not a.no_rss,
                     a.grpc_clients))
        alive_after = daemon.alive() and daemon.healthy(timeout=10)
        # circled's drain waits up to its --drain-timeout (30 s) for requests
        # still open, then exits 0: only longer than that is a hang.
        t_stop = time.monotonic()
        rc = daemon.stop(timeout=120 if a.wrapper else 45)
        drain_s = time.monotonic() - t_stop
        log = daemon.log()
    finally:
        daemon.close()

    answered = sum(stats.status.values())
    sent = sum(stats.count.values())
    fig = {
        "duration_s": round(elapsed, 1), "connections": a.connections,
        "grpc_clients": a.grpc_clients, "requests": sent,
        "answered": answered, "req_per_s": round(answered / elapsed, 1),
        "by_kind": dict(stats.count), "by_status": {str(k): v for k, v in sorted(stats.status.items(), key=lambda kv: str(kv[0]))},
        "failures": len(stats.failures), "reconnects": dict(stats.conn_errors),
        "exit_code": rc, "drain_s": round(drain_s, 1),
    }
    lat = [x for k in ("v1", "v1_gzip", "v1_chunked", "oip_json", "oip_binary", "grpc_raw",
                       "grpc_typed")
           for x in stats.latency[k]]
    fig["valid_latency_ms"] = {"p50": round(pct(lat, 50), 2), "p99": round(pct(lat, 99), 2),
                               "max": round(max(lat), 2) if lat else None}
    print(f"soak: {sent} requests ({answered} answered, {answered / elapsed:.0f}/s) in {elapsed:.1f} s")
    print(f"soak: by kind {dict(sorted(stats.count.items()))}")
    print(f"soak: by status {dict(sorted(stats.status.items(), key=lambda kv: str(kv[0])))}")
    print(f"soak: valid requests p50 {fig['valid_latency_ms']['p50']} ms, "
          f"p99 {fig['valid_latency_ms']['p99']} ms, max {fig['valid_latency_ms']['max']} ms")
    print(f"soak: circled took {drain_s:.1f} s to drain and exit after SIGTERM")
    if stats.conn_errors:
        print(f"soak: connections the server closed before a request, retried: {dict(stats.conn_errors)}")

    if not a.no_rss:
        first = [r for t, r in samples if t < RSS_WINDOW_S]
        last = [r for t, r in samples if t >= elapsed - RSS_WINDOW_S]
        if first and last:
            growth = max(last) / max(first) - 1
            fig["rss_kib"] = {"first_peak": max(first), "last_peak": max(last),
                              "first_mean": round(sum(first) / len(first)),
                              "last_mean": round(sum(last) / len(last)),
                              "growth_pct": round(growth * 100, 2),
                              "trace": [[round(t, 1), r] for t, r in samples[::4]]}
            print(f"soak: VmRSS peak {max(first) / 1024:.1f} MiB in the first {RSS_WINDOW_S:.0f} s, "
                  f"{max(last) / 1024:.1f} MiB in the last (growth {growth * 100:+.1f}%, limit "
                  f"{RSS_LIMIT * 100:.0f}%)")
            if growth >= RSS_LIMIT:
                ok = False
                print("soak: FAIL: RSS grew too much")
        else:
            ok = False
            print("soak: FAIL: no RSS samples")
    if dead:
        ok = False
        print(f"soak: FAIL: circled died {dead[0]:.1f} s into the run")
    if not alive_after:
        ok = False
        print("soak: FAIL: circled did not answer /healthz after the run")
    if rc != 0:
        ok = False
        print(f"soak: FAIL: circled exited {rc} after SIGTERM (None: hung)\n{log[-4000:]}")
    if stats.failures:
        ok = False
        print(f"soak: FAIL: {len(stats.failures)} requests got the wrong answer; the first ones:")
        for kind, what in stats.failures[:15]:
            print(f"  {kind}: {what}")
    if stats.retry_after_503:
        print(f"soak: {stats.retry_after_503} answers were 503 with Retry-After (--allow-503)")
    fig["ok"] = ok
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(fig, indent=2) + "\n")
    print("soak: PASS" if ok else "soak: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
