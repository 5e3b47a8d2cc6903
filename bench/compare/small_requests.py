"""small_requests.py -- requests/s and latency of small requests under wrk.

    build/bench-venv/bin/python bench/compare/small_requests.py
        [--n 64] [--d 128] [--connections 32] [--threads 2] [--duration 10]
        [--rounds 3] [--out build/bench/small.md]

Starts build/circled (--quiet, default workers and network threads) on a
free loopback port and drives it with wrk (Debian package `wrk`) and
bench/compare/post.lua, 32 connections kept alive. Bodies, all N x D float32
embeddings with labels of 8 classes:

  json        POST /v1/loss, numbers as Python's json.dumps writes a float32
              array's tolist() (about 20 characters each); default outputs
              (loss, per-sample values, gradient, stats)
  json-loss   the same body with "outputs": ["loss"] (a tiny response)
  oip         POST /v2/models/circle/infer with binary INT64/FP32 tensors and
              binary loss + embeddings_grad outputs, as tritonclient sends

Every variant runs --rounds times, interleaved (json, json-loss, oip, json,
...), --duration seconds each; the table gives the median round's
requests/s with its p50 and p99 latency, and the server's CPU time per
request (from /proc/PID/stat). wrk runs on the same 2 cores as the server:
its own CPU use is part of the picture.
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

import numpy as np
import requests

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from compare import start_circled, uptime_load  # noqa: E402


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def bodies(n, d, workdir):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 8, size=n).astype(np.int64)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = {}
    js = json.dumps({"labels": labels.tolist(), "embeddings": x.tolist()})
    out["json"] = (js.encode(), "application/json", "/v1/loss", "")
    jl = json.dumps({"labels": labels.tolist(), "embeddings": x.tolist(),
                     "outputs": ["loss"]})
    out["json-loss"] = (jl.encode(), "application/json", "/v1/loss", "")
    header = json.dumps({
        "inputs": [
            {"name": "labels", "shape": [n], "datatype": "INT64",
             "parameters": {"binary_data_size": n * 8}},
            {"name": "embeddings", "shape": [n, d], "datatype": "FP32",
             "parameters": {"binary_data_size": n * d * 4}}],
        "outputs": [{"name": "loss", "parameters": {"binary_data": True}},
                    {"name": "embeddings_grad",
                     "parameters": {"binary_data": True}}]}).encode()
    oip = header + labels.tobytes() + x.tobytes()
    out["oip"] = (oip, "application/octet-stream",
                  "/v2/models/circle/infer", str(len(header)))
    paths = {}
    for k, (b, ctype, route, ihcl) in out.items():
        p = os.path.join(workdir, "small-%s.body" % k)
        with open(p, "wb") as f:
            f.write(b)
        paths[k] = (p, ctype, route, ihcl, len(b))
    return paths


def check(url, path, ctype, route, ihcl):
    with open(path, "rb") as f:
        body = f.read()
    h = {"Content-Type": ctype}
    if ihcl:
        h["Inference-Header-Content-Length"] = ihcl
    r = requests.post("http://%s%s" % (url, route), data=body, headers=h)
    r.raise_for_status()
    return len(r.content)


def run_wrk(url, path, ctype, route, ihcl, threads, conns, duration):
    env = dict(os.environ, BODY_FILE=path, CONTENT_TYPE=ctype, IHCL=ihcl)
    cmd = ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration,
           "--timeout", "10s", "-s", os.path.join(HERE, "post.lua"),
           "http://%s%s" % (url, route)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True,
                       timeout=duration + 60)
    m = re.search(r"^RESULT (.*)$", p.stdout, re.M)
    if not m:
        raise RuntimeError("wrk said:\n%s\n%s" % (p.stdout, p.stderr))
    return {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", help="comma list of json,json-loss,oip")
    ap.add_argument("--circled", default=os.path.join(ROOT, "build", "circled"))
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "small.md"))
    args = ap.parse_args()
    workdir = os.path.join(ROOT, "build", "bench", "data")
    os.makedirs(workdir, exist_ok=True)
    variants = bodies(args.n, args.d, workdir)
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}

    load_before = uptime_load()
    server, url, _ = start_circled(args.circled)
    try:
        resp_len = {k: check(url, p, c, r, i) for k, (p, c, r, i, _) in variants.items()}
        res = {k: [] for k in variants}
        for _ in range(args.rounds):
            for k, (p, c, r, i, _) in variants.items():
                c0 = cpu_seconds(server.pid)
                w = run_wrk(url, p, c, r, i, args.threads, args.connections, args.duration)
                w["cpu_ms_per_req"] = (cpu_seconds(server.pid) - c0) * 1e3 / max(w["requests"], 1)
                res[k].append(w)
                print("%-9s %8.0f req/s  p50 %.2f ms  p99 %.2f ms  server CPU %.3f ms/req"
                      "  errors %d non-2xx %d" % (k, w["rps"], w["p50_ms"], w["p99_ms"],
                                                   w["cpu_ms_per_req"], w["socket_errors"],
                                                   w["non2xx"]), flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    load_after = uptime_load()

    lines = ["wrk -t%d -c%d, %d s per round, %d rounds interleaved; N = %d, D = %d float32;"
             " median round shown." % (args.threads, args.connections, args.duration,
                                       args.rounds, args.n, args.d), "",
             "| request | body bytes | response bytes | requests/s | p50 ms | p99 ms |"
             " server CPU ms/request | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    names = {"json": "/v1 JSON, default outputs (loss, per-sample, gradient, stats)",
             "json-loss": "/v1 JSON, outputs [\"loss\"]",
             "oip": "OIP binary, loss + embeddings_grad"}
    summary = {}
    for k, rounds in res.items():
        med = sorted(rounds, key=lambda w: w["rps"])[len(rounds) // 2]
        errors = sum(w["socket_errors"] + w["non2xx"] for w in rounds)
        summary[k] = med
        lines.append("| %s | %d | %d | %.0f | %.2f | %.2f | %.3f | %d |"
                     % (names[k], variants[k][4], resp_len[k], med["rps"], med["p50_ms"],
                        med["p99_ms"], statistics.median(w["cpu_ms_per_req"] for w in rounds),
                        errors))
    lines.append("")
    lines.append("Load average %s before, %s after (2 cores)." % (load_before, load_after))
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    with open(args.out.replace(".md", ".json"), "w") as f:
        json.dump({"rounds": res, "load_before": load_before, "load_after": load_after}, f,
                  indent=1)
    print(text)


if __name__ == "__main__":
    main()
