"""compare.py -- circled against Keras 3 + JAX and PyTorch on this machine.

    build/bench-venv/bin/python bench/compare/compare.py [--quick]
        [--sizes 256x128,1024x512,...] [--only engine,keras_jax,...]
        [--reps R] [--limit-s 60] [--mem-gb 12] [--out build/bench/compare.md]

For every size N x D (float32) it writes one data file (labels of 64
classes, L2-normalized Gaussian embeddings, fixed seed), hands it to every
contestant (bench/compare/workers.py, one process each, so frameworks do not
share a heap or a thread pool), and then times them INTERLEAVED: round r runs
each contestant once, in an order rotated every round, so a change in the
machine's load hits all of them alike. Two warm-up runs (jit compilation,
allocator, connections) come first and are not counted. Reported: the
median of the timed runs, and ratios against the in-process engine.

A contestant whose run takes longer than --limit-s is killed and its cell
reads "skipped (>60 s)"; its larger-N cells with the same D are skipped too
(they would take longer). One whose resident memory passes --mem-gb is
killed likewise ("skipped (>12 GB)"), so a framework that materializes many
N x N matrices cannot take the shared machine down.

circled is started twice (build/circled on free ports, --quiet, --workers 1
and --workers 2) and serves the two end-to-end contestants, each of which
uses the faster server at each size, as the engine and torch use the faster
thread count.
"""

import argparse
import json
import os
import platform
import re
import select
import signal
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

ALL = ["engine", "circled_oip", "circled_grpc", "circled_json", "keras_jax",
       "torch_keras", "torch_pml"]
TITLES = {
    "engine": "engine in-process (ctypes)",
    "circled_oip": "circled OIP binary (tritonclient)",
    "circled_grpc": "circled OIP gRPC (tritonclient)",
    "circled_json": "circled /v1 JSON (requests)",
    "keras_jax": "Keras 3 + JAX jit",
    "torch_keras": "PyTorch, Keras formula",
    "torch_pml": "PyTorch, PML CircleLoss",
}
DEFAULT_SIZES = [(n, d) for n in (256, 1024, 4096, 16384) for d in (128, 512)]


def blas_coretype(lib_path):
    """The OPENBLAS_CORETYPE circled would force on this CPU, or None (set
    already, or OpenBLAS' detection is right): libcircle's own choice
    (circle_blas_pick_coretype) from the detected core and the CPU flags."""
    if os.environ.get("OPENBLAS_CORETYPE"):
        return None
    import ctypes
    lib = ctypes.CDLL(lib_path)
    lib.circle_blas_corename.restype = ctypes.c_char_p
    lib.circle_blas_pick_coretype.restype = ctypes.c_char_p
    lib.circle_blas_pick_coretype.argtypes = [ctypes.c_char_p, ctypes.c_bool,
                                              ctypes.c_bool]
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    pick = lib.circle_blas_pick_coretype(lib.circle_blas_corename(),
                                         {"avx512f", "avx512vl", "avx512bw",
                                          "avx512dq"} <= flags, "avx2" in flags)
    return pick.decode() if pick else None


def rss_bytes(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def uptime_load():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Skip(Exception):
    pass


class Worker:
    """One contestant process and its command pipe."""

    def __init__(self, kind, env, limit_s, mem_bytes):
        self.kind, self.env = kind, env
        self.limit_s, self.mem_bytes = limit_s, mem_bytes
        self.proc = None
        self.versions = {}

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "workers.py"), self.kind],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=open(os.path.join(ROOT, "build", "bench",
                                     "worker-%s.log" % self.kind), "a"),
            env=self.env, cwd=ROOT, text=True, bufsize=1)
        self.versions = self.ask({"cmd": "hello"}, 300).get("versions", {})

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.proc is not None:
            try:
                self.proc.kill()
            except OSError:
                pass
            self.proc.wait()
            self.proc = None

    def ask(self, msg, limit_s, what="skipped (>%d s)"):
        """Sends msg; returns the answer or raises Skip on time or memory."""
        if not self.alive():
            self.start()
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + limit_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise Skip(what % limit_s)
            r, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.05))
            if r:
                line = self.proc.stdout.readline()
                if not line:
                    self.kill()
                    raise Skip("failed (worker died; see build/bench/worker-%s.log)" % self.kind)
                ans = json.loads(line)
                if not ans.get("ok"):
                    raise Skip("failed (%s)" % ans.get("error", "?")[:80])
                return ans
            if self.mem_bytes and rss_bytes(self.proc.pid) > self.mem_bytes:
                self.kill()
                raise Skip("skipped (>%.0f GB)" % (self.mem_bytes / 2**30))


def start_circled(binary, workers=None):
    args = [binary, "--port", "0", "--grpc-port", "0", "--quiet", "--max-body-mb", "2048",
            "--max-inflated-mb", "4096", "--max-inflight-mb", "16384",
            "--timeout", "600"]
    if workers:
        args += ["--workers", str(workers)]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    port = None
    deadline = time.monotonic() + 30
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"circled: listening on .*:(\d+)", line)
        if m:
            port = int(m.group(1))
        if port is not None and "grpc listening on" in line:
            break
    if port is None:
        proc.kill()
        raise RuntimeError("circled did not start: %s" % "".join(lines))
    # Keep draining stderr so the server never blocks on a full pipe.
    import threading

    def drain():
        for line in proc.stderr:
            lines.append(line)
    threading.Thread(target=drain, daemon=True).start()
    return proc, "127.0.0.1:%d" % port, lines


def grpc_address(lines):
    """The "127.0.0.1:PORT" of the gRPC listener start_circled's log names."""
    for line in lines:
        m = re.search(r"grpc listening on .*:(\d+)", line)
        if m:
            return "127.0.0.1:%s" % m.group(1)
    return None


def make_data(n, d, path, seed=0):
    rng = np.random.default_rng(seed + 1000003 * n + d)
    labels = rng.integers(0, 64, size=n).astype(np.int64)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.savez(path, labels=labels, embeddings=x.astype(np.float32))


def fmt_ms(t):
    if isinstance(t, str):
        return t
    ms = t * 1e3
    return "%.1f" % ms if ms < 1000 else "%.0f" % ms


def fmt_ratio(a, b):
    if isinstance(a, str) or isinstance(b, str) or not b:
        return "-"
    return "%.2fx" % (a / b)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", help="comma list of NxD (default: N 256..16384, D 128, 512)")
    ap.add_argument("--only", help="comma list of contestants (default: all)")
    ap.add_argument("--reps", type=int, default=0, help="timed runs (default 7; 3 at N >= 16384)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--limit-s", type=float, default=60.0)
    # 1 s, not 0.2: with all six contestants alive, circled's OIP column
    # (two processes handing a request back and forth) read 1.17-1.28x the
    # engine after 0.2 s pauses and 1.09-1.14x after 1 s (4096 x 512, five
    # and four runs); the previous contestant's thread pools were still
    # awake. Each subset of contestants read 1.13-1.15x either way.
    ap.add_argument("--gap-s", type=float, default=1.0, help="pause before every run")
    ap.add_argument("--mem-gb", type=float, default=12.0)
    ap.add_argument("--quick", action="store_true", help="N 1024 and 4096 only, 3 runs")
    ap.add_argument("--circled", default=os.path.join(ROOT, "build", "circled"))
    ap.add_argument("--lib", default=os.path.join(ROOT, "build", "libcircle.so"))
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "compare.md"))
    args = ap.parse_args()

    sizes = DEFAULT_SIZES
    if args.quick:
        sizes = [(n, d) for n in (1024, 4096) for d in (128, 512)]
    if args.sizes:
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    kinds = args.only.split(",") if args.only else list(ALL)
    for k in kinds:
        if k not in ALL:
            ap.error("unknown contestant %s (know %s)" % (k, ", ".join(ALL)))
    os.makedirs(os.path.join(ROOT, "build", "bench", "data"), exist_ok=True)

    env = dict(os.environ, KERAS_BACKEND="jax", CIRCLE_LIB=args.lib,
               PROBE_LIMIT_S=str(args.limit_s),
               JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    # The in-process engine cannot re-execute itself as circled does
    # (circle_blas_ensure_kernel), so the kernels it would pick are set here
    # for every worker before OpenBLAS loads in any of them.
    core = blas_coretype(args.lib)
    if core:
        env["OPENBLAS_CORETYPE"] = core
        print("OPENBLAS_CORETYPE=%s for the workers (OpenBLAS detected a "
              "generic core)" % core, flush=True)
    load_before = uptime_load()
    # One circled per compute-thread count the engine is tried with
    # (--workers 1 and 2 here); each end-to-end contestant, like the engine
    # and torch, runs against the faster one at each size.
    servers = []
    urls, grpc_urls = {}, {}
    if any(k.startswith("circled") for k in kinds):
        for th in sorted({1, os.cpu_count() or 1}):
            proc, u, lines = start_circled(args.circled, th)
            servers.append(proc)
            urls[str(th)] = u
            grpc_urls[str(th)] = grpc_address(lines)
    workers = {k: Worker(k, env, args.limit_s, int(args.mem_gb * 2**30)) for k in kinds}
    versions = {}
    for k, w in workers.items():
        try:
            w.start()
            versions.update(w.versions)
        except Skip as e:
            print("%s: %s" % (k, e), file=sys.stderr)

    results = {}       # (n, d) -> kind -> median seconds or "skipped ..."
    losses = {}        # (n, d) -> kind -> loss
    skipped_from = {}  # (kind, d) -> message: larger N skipped
    notes = {}         # (n, d) -> kind -> "threads 1"
    print("load average before: %s" % load_before, flush=True)
    for n, d in sizes:
        path = os.path.join(ROOT, "build", "bench", "data", "n%d_d%d.npz" % (n, d))
        make_data(n, d, path)
        reps = args.reps or (3 if n >= 16384 else 7)
        cell = {}
        live = []
        for k in kinds:
            if (k, d) in skipped_from:
                cell[k] = skipped_from[(k, d)]
                continue
            try:
                ans = workers[k].ask({"cmd": "setup", "data": path, "urls": urls,
                                      "grpc_urls": grpc_urls},
                                     4 * args.limit_s + 120, "skipped (set-up >%d s)")
                if ans.get("note"):
                    notes.setdefault((n, d), {})[k] = ans["note"]
                live.append(k)
            except Skip as e:
                cell[k] = str(e)
        times = {k: [] for k in live}
        loss = {}
        # Warm-up rounds, then timed rounds; the order rotates every round.
        for r in range(args.warmup + reps):
            order = live[r % len(live):] + live[:r % len(live)] if live else []
            for k in order:
                if k in cell:
                    continue
                # Let the previous contestant's thread pools go idle (JAX's
                # and OpenMP's workers spin for a while after a run).
                time.sleep(args.gap_s)
                try:
                    ans = workers[k].ask({"cmd": "run"}, args.limit_s)
                except Skip as e:
                    cell[k] = str(e)
                    if str(e).startswith("skipped"):
                        skipped_from[(k, d)] = str(e)
                    continue
                loss[k] = ans["loss"]
                if r >= args.warmup:
                    times[k].append(ans["t"])
        for k in live:
            if k not in cell:
                cell[k] = float(np.median(times[k]))
        results[(n, d)] = cell
        losses[(n, d)] = loss
        line = "N=%d D=%d: " % (n, d) + ", ".join(
            "%s %s" % (k, fmt_ms(cell[k])) for k in kinds)
        print(line, flush=True)
        # The same loss from everyone computing Keras' numbers.
        ref = loss.get("engine")
        for k in ("keras_jax", "torch_keras", "circled_oip", "circled_grpc", "circled_json"):
            if ref is not None and k in loss:
                rel = abs(loss[k] - ref) / max(abs(ref), 1e-30)
                if rel > 1e-4:
                    print("  WARNING: %s loss %.8g differs from the engine's %.8g (rel %.1e)"
                          % (k, loss[k], ref, rel), flush=True)
    load_after = uptime_load()
    for w in workers.values():
        if w.alive():
            try:
                w.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                w.proc.stdin.flush()
                w.proc.wait(timeout=30)
            except Exception:
                w.kill()
    for server in servers:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

    # ---- the table ------------------------------------------------------
    cols = [k for k in ALL if k in kinds]
    out = []
    out.append("Loss + gradient w.r.t. the embeddings, float32, self-referenced "
               "batch (64 classes), gamma 80, margin 0.4; median ms of %s "
               "interleaved runs after %d warm-ups (3 at N = 16384)."
               % ("the" if args.reps else "7", args.warmup))
    out.append("")
    head = ["N", "D"] + [TITLES[k] for k in cols]
    ratio_cols = []
    if "engine" in cols:
        for k in ("keras_jax", "torch_keras", "torch_pml", "circled_oip", "circled_grpc"):
            if k in cols:
                ratio_cols.append(k)
    head += ["%s / engine" % {"keras_jax": "JAX", "torch_keras": "torch (Keras)",
                              "torch_pml": "torch (PML)", "circled_oip": "OIP",
                              "circled_grpc": "gRPC"}[k] for k in ratio_cols]
    grpc_vs_http = "circled_oip" in cols and "circled_grpc" in cols
    if grpc_vs_http:
        head.append("gRPC / OIP binary")
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["---:"] * len(head)) + "|")
    for (n, d) in sizes:
        cell = results[(n, d)]
        row = [str(n), str(d)] + [fmt_ms(cell.get(k, "-")) for k in cols]
        row += [fmt_ratio(cell.get(k, "-"), cell.get("engine")) for k in ratio_cols]
        if grpc_vs_http:
            row.append(fmt_ratio(cell.get("circled_grpc", "-"), cell.get("circled_oip")))
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    th = []
    for (n, d) in sizes:
        nt = notes.get((n, d), {})
        if nt:
            th.append("%dx%d: %s" % (n, d, ", ".join(
                "%s %s" % (k, v.replace("threads ", "")) for k, v in sorted(nt.items()))))
    if th:
        out.append("Threads (the faster of 1 and %d, picked per size: compute threads for "
                   "the engine and torch, circled's --workers for the end-to-end columns; "
                   "JAX uses all cores): %s." % (os.cpu_count(), "; ".join(th)))
        out.append("")
    vers = ", ".join("%s %s" % (k, v) for k, v in versions.items())
    out.append("Machine: %s, %d cores (%s); load average %s before, %s after. %s."
               % (platform.machine(), os.cpu_count(), cpu_name(), load_before,
                  load_after, vers))
    text = "\n".join(out) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    with open(args.out.replace(".md", ".json"), "w") as f:
        json.dump({"sizes": ["%dx%d" % s for s in sizes],
                   "results": {"%dx%d" % s: results[s] for s in sizes},
                   "losses": {"%dx%d" % s: losses[s] for s in sizes},
                   "notes": {"%dx%d" % s: notes.get(s, {}) for s in sizes},
                   "versions": versions, "load_before": load_before,
                   "load_after": load_after}, f, indent=1)
    print(text)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


if __name__ == "__main__":
    main()
