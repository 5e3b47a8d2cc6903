"""peers.py -- circled side by side with Triton Inference Server and MLServer.

    build/peers-triton-venv/bin/python bench/peers/peers.py
        [--circled build/circled] [--mlserver-venv build/peers-mlserver-venv]
        [--sizes 1024x128,...] [--reps R] [--duration 8] [--rounds 3]
        [--connections 1,8,32] [--out build/bench/peers.md]

Starts, one after the other on loopback ports:

  circled   build/circled, default flags but --quiet
  Triton    tritonserver 2.51 through PyTriton (bench/peers/triton_model.py)
  MLServer  mlserver start bench/peers/mlserver (custom MLModel runtime)

each serving model `circle` (inputs labels INT64 [N], embeddings FP32
[N, D]; outputs loss FP32 [1], embeddings_grad FP32 [N, D]); both peers
compute jax.jit(jax.value_and_grad(...)) around keras.losses.Circle
(bench/peers/circle_jax.py). Start-up time is from the launch to the first
200 from GET /v2/models/circle/ready. Then:

1. Agreement, before anything is timed: the same request at every size goes
   to every contestant, and each loss and gradient must match circled's
   within float32 tolerance (stated in LOSS_RTOL and GRAD_TOL), or the run
   stops.
2. Large requests, median latency of --reps timed rounds (15 at N <= 1024,
   7 above) after 2 warm-ups;
   each round sends one request to every contestant, in an order rotated
   every round, so a change in the machine's load hits all alike.
3. Small requests (N = 64, D = 128), for every connection count: --rounds
   rounds, each running every contestant's load generator for --duration
   seconds in rotated order; the median round's requests/s, p50 and p99.
4. Memory: every 0.1 s a sampler sums Rss and Pss (/proc/PID/smaps_rollup)
   over each server's whole process tree; idle is sampled after start-up,
   peak is the largest sum seen during 1-3.

What goes over the wire:

  OIP HTTP binary  the body tritonclient.http builds
                   (InferenceServerClient.generate_request_body): JSON header,
                   binary INT64/FP32 inputs, binary loss + embeddings_grad
                   outputs requested, parameters {"stats": false} (circled then
                   computes only the loss and gradient, as the peers do; they
                   ignore the parameter). circled and Triton; MLServer's REST
                   answers it with 422, so MLServer gets
  OIP gRPC         ModelInfer with raw_input_contents, as tritonclient.grpc
                   sends it (the same tensors and parameter); Triton and
                   MLServer (circled has no gRPC endpoint).
  MLServer JSON    small requests only: the same tensors as JSON numbers over
                   MLServer's REST (tritonclient.http with binary_data=False).

Load generators: wrk (HTTP/1.1, bench/compare/post.lua) for HTTP bodies,
h2load (nghttp2, HTTP/2 prior knowledge, one stream per connection) for
gRPC; h2load's per-request log gives the percentiles, and the bytes it
received are checked against the size of a correct answer, since h2load
counts HTTP status 200 as success and gRPC reports errors in trailers.
"""

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.grpc import service_pb2

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "bench", "compare"))
from compare import cpu_name, uptime_load  # noqa: E402

# Float32 agreement, stated before any run: the loss to 1e-5 relative, every
# gradient element to 1e-4 of the gradient's largest magnitude. circled sums
# in another order than XLA; with gamma = 80 the exponentials amplify
# rounding, which is why the gradient gets the wider bound.
LOSS_RTOL = 1e-5
GRAD_TOL = 1e-4

GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
PARAMS = {"stats": False}


# ---- process trees and memory ----------------------------------------------

def tree_pids(root):
    """root and all its descendants (by /proc/PID/stat's parent field)."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    parent[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    pids, todo = [], [root]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(c for c, pp in parent.items() if pp == p)
    return pids


def tree_memory(root):
    """(sum of Rss, sum of Pss) in bytes over root's process tree."""
    rss = pss = 0
    for p in tree_pids(root):
        try:
            with open("/proc/%d/smaps_rollup" % p) as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, pss


class Sampler(threading.Thread):
    """Samples every server's tree memory every 0.1 s; keeps the peaks."""

    def __init__(self, servers):
        super().__init__(daemon=True)
        self.servers = servers
        self.peak = {s.name: [0, 0] for s in servers}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.1):
            for s in self.servers:
                rss, pss = tree_memory(s.proc.pid)
                pk = self.peak[s.name]
                pk[0], pk[1] = max(pk[0], rss), max(pk[1], pss)


# ---- servers -----------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server process tree, its ports and its start-up figures."""

    def __init__(self, name, argv, env, cwd, http_port, grpc_port=None):
        self.name, self.argv, self.env, self.cwd = name, argv, env, cwd
        self.http_port, self.grpc_port = http_port, grpc_port
        self.log_path = os.path.join(ROOT, "build", "bench", "peer-%s.log" % name)
        self.proc = None

    def start(self, limit_s=300):
        log = open(self.log_path, "w")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        url = "http://127.0.0.1:%d/v2/models/circle/ready" % self.http_port
        while time.monotonic() - t0 < limit_s:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %d before it was ready; see %s"
                                   % (self.name, self.proc.returncode, self.log_path))
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        self.startup_s = time.monotonic() - t0
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("%s not ready after %d s; see %s" % (self.name, limit_s,
                                                                self.log_path))

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        pids = tree_pids(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        for p in pids:  # stubs a killed parent left behind
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        self.proc.wait()
        # PyTriton names its shared-memory regions after its own pid and
        # leaves them in /dev/shm (26 MB after a run) when stopped by SIGTERM.
        for name in os.listdir("/dev/shm"):
            if name.startswith("pytrtion%d-" % self.proc.pid):
                os.unlink(os.path.join("/dev/shm", name))


def make_servers(args):
    base = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
                KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    cp = free_port()
    circled = Server("circled", [args.circled, "--port", str(cp), "--quiet"],
                     base, ROOT, cp)
    th, tg, tm = free_port(), free_port(), free_port()
    triton = Server("triton",
                    [sys.executable, os.path.join(HERE, "triton_model.py"),
                     "--http-port", str(th), "--grpc-port", str(tg),
                     "--metrics-port", str(tm)], base, ROOT, th, tg)
    mh, mg, mm = free_port(), free_port(), free_port()
    menv = dict(base, PYTHONPATH=HERE, MLSERVER_HTTP_PORT=str(mh),
                MLSERVER_GRPC_PORT=str(mg), MLSERVER_METRICS_PORT=str(mm))
    mlserver = Server("mlserver",
                      [os.path.join(args.mlserver_venv, "bin", "mlserver"), "start", "."],
                      menv, os.path.join(HERE, "mlserver"), mh, mg)
    return [circled, triton, mlserver]


# ---- requests ----------------------------------------------------------------

def make_data(n, d, seed=0):
    rng = np.random.default_rng(seed + 1000003 * n + d)
    labels = rng.integers(0, 64 if n >= 1024 else 8, size=n).astype(np.int64)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return labels, x


def http_inputs(labels, x, binary):
    a = thttp.InferInput("labels", list(labels.shape), "INT64")
    a.set_data_from_numpy(labels, binary_data=binary)
    b = thttp.InferInput("embeddings", list(x.shape), "FP32")
    b.set_data_from_numpy(x, binary_data=binary)
    outs = [thttp.InferRequestedOutput("loss", binary_data=binary),
            thttp.InferRequestedOutput("embeddings_grad", binary_data=binary)]
    return [a, b], outs


def grpc_inputs(labels, x):
    a = tgrpc.InferInput("labels", list(labels.shape), "INT64")
    a.set_data_from_numpy(labels)
    b = tgrpc.InferInput("embeddings", list(x.shape), "FP32")
    b.set_data_from_numpy(x)
    return [a, b], [tgrpc.InferRequestedOutput("loss"),
                    tgrpc.InferRequestedOutput("embeddings_grad")]


class Contestant:
    """One server reached through one protocol by its stock client."""

    def __init__(self, name, title, server, proto):
        self.name, self.title, self.server, self.proto = name, title, server, proto
        if proto == "grpc":
            self.client = tgrpc.InferenceServerClient("127.0.0.1:%d" % server.grpc_port)
        else:
            self.client = thttp.InferenceServerClient("127.0.0.1:%d" % server.http_port,
                                                      network_timeout=600,
                                                      connection_timeout=600)

    def setup(self, labels, x):
        if self.proto == "grpc":
            self.req = grpc_inputs(labels, x)
        else:
            self.req = http_inputs(labels, x, self.proto == "http-binary")

    def run(self):
        """Returns (seconds, loss, gradient) of one request."""
        inputs, outputs = self.req
        t0 = time.perf_counter()
        r = self.client.infer("circle", inputs, outputs=outputs, parameters=PARAMS)
        grad = r.as_numpy("embeddings_grad")
        t = time.perf_counter() - t0
        return t, float(r.as_numpy("loss").reshape(-1)[0]), grad


def agree(ref, other, seen=None):
    """None when other's (loss, grad) matches ref's within tolerance, else why.
    seen, a list, gets (relative loss difference, gradient difference over
    the gradient's largest magnitude)."""
    (l0, g0), (l1, g1) = ref, other
    if g1.shape != g0.shape:
        return "gradient shape %s, expected %s" % (g1.shape, g0.shape)
    err = float(np.max(np.abs(g1 - g0)))
    scale = float(np.max(np.abs(g0)))
    if seen is not None:
        seen.append((abs(l1 - l0) / abs(l0), err / scale))
    if abs(l1 - l0) > LOSS_RTOL * abs(l0):
        return "loss %.9g, circled %.9g" % (l1, l0)
    if err > GRAD_TOL * scale:
        return "gradient max |diff| %.3g > %.0e x max |g| %.3g" % (err, GRAD_TOL, scale)
    return None


# ---- load generators ---------------------------------------------------------

def write_bodies(n, d, workdir):
    """Body files for the small-request runs: {kind: (path, ctype, ihcl, bytes)}."""
    labels, x = make_data(n, d, seed=7)
    bodies = {}
    for kind, binary in (("http-binary", True), ("http-json", False)):
        inputs, outputs = http_inputs(labels, x, binary)
        body, json_size = thttp.InferenceServerClient.generate_request_body(
            inputs, outputs=outputs, parameters=PARAMS)
        ihcl = "" if json_size is None else str(json_size)
        ctype = "application/octet-stream" if json_size is not None else "application/json"
        bodies[kind] = (body, ctype, ihcl)
    req = service_pb2.ModelInferRequest(model_name="circle")
    for name, arr, dt in (("labels", labels, "INT64"), ("embeddings", x, "FP32")):
        t = req.inputs.add(name=name, datatype=dt)
        t.shape.extend(arr.shape)
        req.raw_input_contents.append(arr.tobytes())
    for name in ("loss", "embeddings_grad"):
        req.outputs.add(name=name)
    req.parameters["stats"].bool_param = False
    msg = req.SerializeToString()
    bodies["grpc"] = (b"\x00" + len(msg).to_bytes(4, "big") + msg, "application/grpc", "")
    out = {}
    for kind, (body, ctype, ihcl) in bodies.items():
        path = os.path.join(workdir, "peers-small-%s.body" % kind)
        with open(path, "wb") as f:
            f.write(body)
        out[kind] = (path, ctype, ihcl, len(body))
    return out, (labels, x)


def grpc_raw_answer(port, path):
    """Sends a prepared gRPC body's message and returns the response bytes."""
    import grpc
    with open(path, "rb") as f:
        msg = f.read()[5:]
    with grpc.insecure_channel("127.0.0.1:%d" % port) as ch:
        call = ch.unary_unary(GRPC_PATH, request_serializer=None,
                              response_deserializer=None)
        return call(msg, timeout=60)


def run_wrk(port, route, body, conns, duration):
    path, ctype, ihcl, _ = body
    env = dict(os.environ, BODY_FILE=path, CONTENT_TYPE=ctype, IHCL=ihcl)
    cmd = ["wrk", "-t%d" % min(conns, 2), "-c%d" % conns, "-d%ds" % duration,
           "--timeout", "10s", "-s", os.path.join(ROOT, "bench", "compare", "post.lua"),
           "http://127.0.0.1:%d%s" % (port, route)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60)
    m = re.search(r"^RESULT (.*)$", p.stdout, re.M)
    if not m:
        raise RuntimeError("wrk said:\n%s\n%s" % (p.stdout, p.stderr))
    w = {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    return {"rps": w["rps"], "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"],
            "errors": int(w["socket_errors"] + w["non2xx"])}


def run_h2load(port, body, conns, duration, answer_bytes):
    path = body[0]
    with tempfile.NamedTemporaryFile(prefix="h2load-", suffix=".log") as log:
        cmd = ["h2load", "-c%d" % conns, "-t%d" % min(conns, 2), "-m1",
               "-D%d" % duration, "-d", path, "--log-file", log.name,
               "-H", "content-type: application/grpc", "-H", "te: trailers",
               "http://127.0.0.1:%d%s" % (port, GRPC_PATH)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
        lat = []
        with open(log.name) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] == "200":
                    lat.append(int(parts[2]) / 1e3)
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored", p.stdout)
    d = re.search(r"traffic: .* \((\d+)\) total, .* \((\d+)\) headers .*, .* \((\d+)\) data",
                  p.stdout)
    if not m or not d or not lat:
        raise RuntimeError("h2load said:\n%s\n%s" % (p.stdout, p.stderr))
    ok = int(m.group(4))
    # Each good answer carries the framed ModelInferResponse as DATA; an
    # answer with a gRPC error status in its trailers carries none.
    good = int(d.group(3)) // answer_bytes
    lat.sort()
    return {"rps": min(ok, good) / duration,
            "p50_ms": lat[len(lat) // 2], "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "errors": int(m.group(5)) + int(m.group(6)) + max(0, ok - good)}


# ---- main --------------------------------------------------------------------

def rotated(items, r):
    return items[r % len(items):] + items[:r % len(items)]


def fmt_ms(t):
    return "%.1f" % (t * 1e3) if t < 1 else "%.0f" % (t * 1e3)


def mib(b):
    return "%.0f" % (b / 2**20)


def versions(args, servers_meta):
    v = {}
    v["circled"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                  capture_output=True, text=True).stdout.strip()
    v["tritonserver"] = servers_meta.get("triton", "?")
    v["mlserver"] = servers_meta.get("mlserver", "?")
    import importlib.metadata as md
    sys.path.insert(0, HERE)
    v["triton venv"] = "nvidia-pytriton %s, jax %s, keras %s, numpy %s, tritonclient %s" % (
        md.version("nvidia-pytriton"), md.version("jax"), md.version("keras"),
        md.version("numpy"), md.version("tritonclient"))
    py = os.path.join(args.mlserver_venv, "bin", "python")
    v["mlserver venv"] = subprocess.run(
        [py, "-c", "import importlib.metadata as m; print(', '.join('%s %s' % (p, m.version(p))"
         " for p in ('mlserver', 'jax', 'keras', 'numpy', 'uvloop')))"],
        capture_output=True, text=True).stdout.strip()
    v["load generators"] = "%s, %s" % (
        subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("[")[0].strip(),
        subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip())
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--circled", default=os.path.join(ROOT, "build", "circled"))
    ap.add_argument("--mlserver-venv", default=os.path.join(ROOT, "build", "peers-mlserver-venv"))
    ap.add_argument("--sizes", default="1024x128,1024x512,4096x128,4096x512")
    # 15 rounds at N <= 1024, where one request takes tens of ms and the
    # medians of 7 moved by 1.3-2x between two runs on the loaded machine
    # (1024 x 512: Triton gRPC / circled 0.95x in one, 2.01x in the next).
    ap.add_argument("--reps", type=int, default=0,
                    help="timed rounds (default 15 at N <= 1024, 7 above)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--gap-s", type=float, default=0.5, help="pause before every large request")
    ap.add_argument("--duration", type=int, default=8, help="seconds a small-request run")
    ap.add_argument("--rounds", type=int, default=3, help="small-request rounds")
    ap.add_argument("--connections", default="1,8,32")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "peers.md"))
    args = ap.parse_args()
    args.circled = os.path.abspath(args.circled)
    args.mlserver_venv = os.path.abspath(args.mlserver_venv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    conns = [int(c) for c in args.connections.split(",")]
    workdir = os.path.join(ROOT, "build", "bench", "data")
    os.makedirs(workdir, exist_ok=True)

    load = {"before": uptime_load()}
    servers = make_servers(args)
    by = {s.name: s for s in servers}
    idle = {}
    sampler = None
    try:
        for s in servers:  # one at a time: start-up times do not overlap
            s.start()
            time.sleep(3)
            idle[s.name] = tree_memory(s.proc.pid)
            s.nproc = len(tree_pids(s.proc.pid))
            print("%s ready in %.1f s, idle tree RSS %s MiB, PSS %s MiB"
                  % (s.name, s.startup_s, mib(idle[s.name][0]), mib(idle[s.name][1])),
                  flush=True)
        meta = {}
        for name in ("triton", "mlserver"):
            with urllib.request.urlopen("http://127.0.0.1:%d/v2" % by[name].http_port) as r:
                meta[name] = json.load(r).get("version", "?")
        sampler = Sampler(servers)
        sampler.start()

        contestants = [
            Contestant("circled", "circled, OIP HTTP binary", by["circled"], "http-binary"),
            Contestant("triton_http", "Triton, OIP HTTP binary", by["triton"], "http-binary"),
            Contestant("triton_grpc", "Triton, OIP gRPC", by["triton"], "grpc"),
            Contestant("mlserver_grpc", "MLServer, OIP gRPC", by["mlserver"], "grpc"),
        ]

        # 1. agreement, and the first answer's time (jit compiles for the peers).
        first = {}
        seen = []
        for n, d in [(64, 128)] + sizes:
            labels, x = make_data(n, d)
            ref = None
            for c in contestants:
                c.setup(labels, x)
                t, loss, grad = c.run()
                first.setdefault(c.name, t)
                if ref is None:
                    ref = (loss, grad)
                    continue
                why = agree(ref, (loss, grad), seen)
                if why:
                    raise SystemExit("%s disagrees with circled at %dx%d: %s; nothing timed"
                                     % (c.title, n, d, why))
            print("agree at %dx%d: loss %.7g" % (n, d, ref[0]), flush=True)

        # 2. large requests.
        large = {}
        reps = {}
        for n, d in sizes:
            labels, x = make_data(n, d)
            for c in contestants:
                c.setup(labels, x)
            times = {c.name: [] for c in contestants}
            reps[(n, d)] = args.reps or (15 if n <= 1024 else 7)
            for r in range(args.warmup + reps[(n, d)]):
                for c in rotated(contestants, r):
                    time.sleep(args.gap_s)
                    t, _, _ = c.run()
                    if r >= args.warmup:
                        times[c.name].append(t)
            large["%dx%d" % (n, d)] = {k: statistics.median(v) for k, v in times.items()}
            print("%dx%d: " % (n, d) + ", ".join("%s %s ms" % (k, fmt_ms(v)) for k, v in
                                                 large["%dx%d" % (n, d)].items()), flush=True)

        # 3. small requests.
        bodies, (labels, x) = write_bodies(64, 128, workdir)
        contestants[0].setup(labels, x)
        _, l0, g0 = contestants[0].run()
        answers = {}
        for name in ("triton", "mlserver"):
            raw = grpc_raw_answer(by[name].grpc_port, bodies["grpc"][0])
            resp = service_pb2.ModelInferResponse.FromString(raw)
            outs = {o.name: i for i, o in enumerate(resp.outputs)}
            loss = float(np.frombuffer(resp.raw_output_contents[outs["loss"]], np.float32)[0])
            grad = np.frombuffer(resp.raw_output_contents[outs["embeddings_grad"]],
                                 np.float32).reshape(64, 128)
            why = agree((l0, g0), (loss, grad))
            if why:
                raise SystemExit("%s's answer to the prepared gRPC body: %s" % (name, why))
            answers[name] = 5 + len(raw)
        small_kinds = [
            ("circled", "circled, OIP HTTP binary (wrk)",
             lambda c: run_wrk(by["circled"].http_port, "/v2/models/circle/infer",
                               bodies["http-binary"], c, args.duration)),
            ("triton_http", "Triton, OIP HTTP binary (wrk)",
             lambda c: run_wrk(by["triton"].http_port, "/v2/models/circle/infer",
                               bodies["http-binary"], c, args.duration)),
            ("triton_grpc", "Triton, OIP gRPC (h2load)",
             lambda c: run_h2load(by["triton"].grpc_port, bodies["grpc"], c, args.duration,
                                  answers["triton"])),
            ("mlserver_grpc", "MLServer, OIP gRPC (h2load)",
             lambda c: run_h2load(by["mlserver"].grpc_port, bodies["grpc"], c, args.duration,
                                  answers["mlserver"])),
            ("mlserver_json", "MLServer, OIP HTTP JSON (wrk)",
             lambda c: run_wrk(by["mlserver"].http_port, "/v2/models/circle/infer",
                               bodies["http-json"], c, args.duration)),
        ]
        small = {}
        for c in conns:
            res = {k: [] for k, _, _ in small_kinds}
            for r in range(args.rounds):
                for k, _, fn in rotated(small_kinds, r):
                    time.sleep(1)
                    w = fn(c)
                    res[k].append(w)
                    print("c=%d %-14s %7.0f req/s p50 %.2f ms p99 %.2f ms errors %d"
                          % (c, k, w["rps"], w["p50_ms"], w["p99_ms"], w["errors"]),
                          flush=True)
            small[c] = {k: dict(sorted(v, key=lambda w: w["rps"])[len(v) // 2],
                                errors_all=sum(w["errors"] for w in v), rounds=v)
                        for k, v in res.items()}
    finally:
        if sampler is not None:
            sampler.stop.set()
            sampler.join()
        for s in servers:
            s.stop()
    load["after"] = uptime_load()
    peak = sampler.peak
    vers = versions(args, meta)

    # ---- the report ------------------------------------------------------
    L = []
    L.append("Peers: circled, Triton Inference Server (PyTriton) and MLServer serving "
             "model `circle` on loopback; both peers run jax.jit(jax.value_and_grad(...)) "
             "around keras.losses.Circle. Every server's loss and gradient matched "
             "circled's at every size (loss to %g relative, gradient to %g of its largest "
             "element) before anything was timed; the largest differences seen were %.1e and %.1e."
             % (LOSS_RTOL, GRAD_TOL, max(a for a, _ in seen), max(b for _, b in seen)))
    L.append("")
    L.append("Large requests: median ms of %s interleaved rounds after %d warm-ups "
             "(stock tritonclient, one request at a time, loss + embeddings_grad back as "
             "a numpy array)." % (", ".join("%d at %dx%d" % (r, n, d) for (n, d), r in
                                            reps.items()), args.warmup))
    L.append("")
    head = ["N", "D"] + [c.title for c in contestants] + [
        "fastest peer / circled"]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "|".join(["---:"] * len(head)) + "|")
    for n, d in sizes:
        cell = large["%dx%d" % (n, d)]
        best = min(v for k, v in cell.items() if k != "circled")
        L.append("| %d | %d | " % (n, d) + " | ".join(fmt_ms(cell[c.name]) for c in contestants)
                 + " | %.2fx |" % (best / cell["circled"]))
    L.append("")
    L.append("Small requests, N = 64, D = 128: requests/s (p50 / p99 ms) of the median of "
             "%d interleaved %d s rounds; wrk and h2load use min(connections, 2) threads "
             "on the same cores as the servers." % (args.rounds, args.duration))
    L.append("")
    head = ["connections"] + [t for _, t, _ in small_kinds] + ["circled / fastest binary peer"]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "|".join(["---:"] * len(head)) + "|")
    for c in conns:
        cell = small[c]
        best = max(cell[k]["rps"] for k in ("triton_http", "triton_grpc", "mlserver_grpc"))
        L.append("| %d | " % c + " | ".join(
            "%.0f (%.2f / %.2f)" % (cell[k]["rps"], cell[k]["p50_ms"], cell[k]["p99_ms"])
            for k, _, _ in small_kinds) + " | %.2fx |" % (cell["circled"]["rps"] / best))
    errs = {k: sum(small[c][k]["errors_all"] for c in conns) for k, _, _ in small_kinds}
    L.append("")
    L.append("Errors over all small-request rounds: " + ", ".join(
        "%s %d" % (k, v) for k, v in errs.items()) + ".")
    L.append("")
    L.append("| server | start-up s (to model ready) | first answer ms (64 x 128; JIT) | "
             "idle RSS MiB (PSS) | peak RSS MiB (PSS) | processes |")
    L.append("|---|---:|---:|---:|---:|---:|")
    firsts = {"circled": first["circled"], "triton": first["triton_http"],
              "mlserver": first["mlserver_grpc"]}
    nproc = {s.name: s.nproc for s in servers}
    for s in servers:
        L.append("| %s | %.1f | %s | %s (%s) | %s (%s) | %d |" % (
            s.name, s.startup_s, fmt_ms(firsts[s.name]), mib(idle[s.name][0]),
            mib(idle[s.name][1]), mib(peak[s.name][0]), mib(peak[s.name][1]), nproc[s.name]))
    L.append("")
    L.append("Memory: sums over each server's whole process tree, sampled every 0.1 s "
             "(RSS counts shared pages once per process; PSS divides them).")
    L.append("")
    L.append("Machine: %s, %d cores (%s), %s; load average %s before, %s after." % (
        platform.machine(), os.cpu_count(), cpu_name(), platform.platform(),
        load["before"], load["after"]))
    L.append("Versions: " + "; ".join("%s %s" % kv for kv in vers.items()) + ".")
    text = "\n".join(L) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    with open(args.out.replace(".md", ".json"), "w") as f:
        json.dump({"large": large, "small": small, "first": first, "idle": idle,
                   "peak": peak, "startup": {s.name: s.startup_s for s in servers},
                   "processes": nproc, "load": load, "versions": vers,
                   "answers": answers, "agreement": seen}, f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
