"""codecs_memory.py -- JSON against binary: codec throughput and server memory.

    build/bench-venv/bin/python bench/compare/codecs_memory.py [--skip-big]
        [--out build/bench/codecs.md]

1. Throughput. Runs build/bench/bench_codec (one thread, no network): the
   /v1 JSON decode (body text -> arrays) and encode (loss, per-sample values
   and gradient -> JSON text) in MB/s of JSON and millions of numbers/s, next
   to the OIP binary decode and encode, for bodies written as Python's
   json.dumps writes a float32 array's tolist().
2. Memory. What decoding takes, in bytes per input number (bench_codec
   --mem: peak RSS growth while decoding, in a fresh process, the body
   already resident): JSON through the fast path, JSON through cJSON alone,
   OIP binary. Then, end to end, a fresh build/circled (default flags,
   --quiet) gets ONE request; the growth of its peak resident set (VmHWM in
   /proc/PID/status, minus VmRSS before the request) is what that request
   cost the server, body, decode, engine scratch and response included.
3. The big one: N = M = 65,536 (a self-referenced batch), D = 128 float32,
   loss + embeddings_grad over OIP binary (tritonclient), against a fresh
   circled with default flags: wall time and the server's VmHWM, which must
   stay under 2 GB.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import requests

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from compare import uptime_load  # noqa: E402


def status_kb(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def data(n, d, seed=3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 64, size=n).astype(np.int64)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return labels, x


def oip_request(url, labels, x, timeout=900):
    import tritonclient.http as httpclient
    client = httpclient.InferenceServerClient(url, connection_timeout=timeout,
                                              network_timeout=timeout)
    inputs = [httpclient.InferInput("labels", list(labels.shape), "INT64"),
              httpclient.InferInput("embeddings", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(labels, binary_data=True)
    inputs[1].set_data_from_numpy(x, binary_data=True)
    outputs = [httpclient.InferRequestedOutput("loss", binary_data=True),
               httpclient.InferRequestedOutput("embeddings_grad", binary_data=True)]
    r = client.infer("circle", inputs, outputs=outputs)
    g = r.as_numpy("embeddings_grad")
    assert g.shape == x.shape and np.isfinite(g).all()
    return float(r.as_numpy("loss").reshape(-1)[0])


def json_request(url, labels, x):
    body = json.dumps({"labels": labels.tolist(), "embeddings": x.tolist()})
    r = requests.post("http://%s/v1/loss" % url, data=body,
                      headers={"Content-Type": "application/json"}, timeout=900)
    r.raise_for_status()
    return len(body), float(r.json()["loss"])


def one_request_memory(circled, proto, labels, x):
    """(body bytes or 0, RSS before, peak after, seconds) for one request
    against a fresh server."""
    server, url, _ = start_circled_plain(circled)
    try:
        time.sleep(0.3)
        before = status_kb(server.pid, "VmRSS") * 1024
        t0 = time.perf_counter()
        nbytes = 0
        if proto == "json":
            nbytes, _ = json_request(url, labels, x)
        else:
            oip_request(url, labels, x)
        t = time.perf_counter() - t0
        peak = status_kb(server.pid, "VmHWM") * 1024
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    return nbytes, before, peak, t


def start_circled_plain(circled):
    """circled with its default flags (the limits a user gets), quiet."""
    proc = subprocess.Popen([circled, "--port", "0", "--grpc-port", "0", "--quiet"], stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"listening on .*:(\d+)", line or "")
        if m:
            import threading
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, "127.0.0.1:%s" % m.group(1), None
        if not line:
            break
    proc.kill()
    raise RuntimeError("circled did not start")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--circled", default=os.path.join(ROOT, "build", "circled"))
    ap.add_argument("--bench-codec", default=os.path.join(ROOT, "build", "bench", "bench_codec"))
    ap.add_argument("--skip-big", action="store_true", help="leave out N = M = 65,536")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "codecs.md"))
    args = ap.parse_args()
    load_before = uptime_load()
    out = []

    # 1. Throughput.
    p = subprocess.run([args.bench_codec, "--n", "64,1024,4096", "--d", "128,512",
                        "--reps", "7"], capture_output=True, text=True, check=True)
    rows = [l for l in p.stdout.splitlines() if re.match(r"\| \d", l)]
    out.append("Codec throughput, one thread, no network (build/bench/bench_codec; "
               "JSON numbers as Python writes float32 data, about 20 characters "
               "each; median of 7):")
    out.append("")
    out.append("| N | D | JSON body MB | JSON decode ms | decode MB/s | decode M numbers/s "
               "| compute ms | JSON encode ms | response MB | encode MB/s | encode M numbers/s "
               "| OIP decode ms | OIP encode ms |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for l in rows:
        c = [v.strip() for v in l.strip("|").split("|")]
        # bench_codec's first 14 columns; the later ones (cJSON-only decode,
        # the fast reader alone) are diagnostics this table leaves out.
        n, d, _, body_kb, dec, dec_mbs, dec_mn, cmp_, enc, resp_kb, enc_mbs, enc_mn, odec, oenc = c[:14]
        out.append("| %s | %s | %.2f | %s | %s | %s | %s | %s | %.2f | %s | %s | %s | %s |"
                   % (n, d, float(body_kb) / 1e3, dec, dec_mbs, dec_mn, cmp_, enc,
                      float(resp_kb) / 1e3, enc_mbs, enc_mn, odec, oenc))
    out.append("")

    # 2. Memory: decoding, then one whole request.
    p = subprocess.run([args.bench_codec, "--mem", "--n", "64,1024,4096", "--d", "128,512"],
                       capture_output=True, text=True, check=True)
    out.append("Decoding memory, bytes per input number (bench_codec --mem; peak RSS growth "
               "while decoding, the body already resident):")
    out.append("")
    out.append("| N | D | JSON body | JSON decode | JSON decode through cJSON alone "
               "| OIP body | OIP decode |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|")
    out += [l for l in p.stdout.splitlines() if re.match(r"\| \d", l)]
    out.append("")
    out.append("Server memory for one request (fresh circled, default flags; peak RSS "
               "growth over the idle server, VmHWM - VmRSS):")
    out.append("")
    out.append("| N | D | protocol | body MB | peak RSS growth MB | wall s |")
    out.append("|---:|---:|---|---:|---:|---:|")
    mem = {}
    for n, d in ((1024, 128), (4096, 128), (4096, 512)):
        labels, x = data(n, d)
        for proto in ("json", "oip"):
            nbytes, before, peak, t = one_request_memory(args.circled, proto, labels, x)
            if proto == "oip":
                nbytes = n * 8 + n * d * 4
            grow = peak - before
            mem["%dx%d %s" % (n, d, proto)] = {"body": nbytes, "grow": grow, "s": t}
            out.append("| %d | %d | %s | %.1f | %.1f | %.2f |"
                       % (n, d, "/v1 JSON" if proto == "json" else "OIP binary",
                          nbytes / 1e6, grow / 2**20, t))
            print(out[-1], flush=True)
    out.append("")

    # 3. N = M = 65,536 over OIP binary.
    big = None
    if not args.skip_big:
        n, d = 65536, 128
        labels, x = data(n, d)
        server, url, _ = start_circled_plain(args.circled)
        try:
            time.sleep(0.3)
            before = status_kb(server.pid, "VmRSS") * 1024
            t0 = time.perf_counter()
            loss = oip_request(url, labels, x)
            t = time.perf_counter() - t0
            peak = status_kb(server.pid, "VmHWM") * 1024
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=300)
        big = {"n": n, "d": d, "seconds": t, "vmhwm": peak, "rss_before": before, "loss": loss}
        out.append("N = M = 65,536, D = 128 float32 over OIP binary (tritonclient, loss + "
                   "embeddings_grad; circled with default flags): %.1f s end to end, server "
                   "peak RSS (VmHWM) %.0f MiB (%.0f MiB idle before), %s the 2 GB target."
                   % (t, peak / 2**20, before / 2**20, "under" if peak < 2e9 else "OVER"))
        out.append("")
        print(out[-2], flush=True)
    load_after = uptime_load()
    out.append("Load average %s before, %s after (2 cores)." % (load_before, load_after))
    text = "\n".join(out) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    with open(args.out.replace(".md", ".json"), "w") as f:
        json.dump({"memory": mem, "big": big, "load_before": load_before,
                   "load_after": load_after}, f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
