"""grpc_vs_http.py -- the same Open Inference Protocol request over gRPC
(tritonclient.grpc, raw tensors) and over HTTP with binary tensors
(tritonclient.http), back to back, against one circled (--workers 1) it
starts: loss + embeddings_grad of an N x D float32 batch, stats off.

    python bench/compare/grpc_vs_http.py [--circled build/circled]
        [--sizes 64x128:400,4096x512:9] [--gap-s 0]

Each size runs REPS rounds after 3 warm-ups; each round runs both, in an
order that alternates; the medians and their ratio are printed. --gap-s
pauses before every call (compare.py pauses 1 s, which lets both
protocols' threads fall asleep between calls).
"""
import argparse
import os
import signal
import statistics
import sys
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import ROOT, grpc_address, start_circled  # noqa: E402


def call(mod, client, y, x):
    ins = [mod.InferInput("labels", list(y.shape), "INT64"),
           mod.InferInput("embeddings", list(x.shape), "FP32")]
    if mod is httpclient:
        ins[0].set_data_from_numpy(y, binary_data=True)
        ins[1].set_data_from_numpy(x, binary_data=True)
        outs = [mod.InferRequestedOutput(o, binary_data=True) for o in ("loss", "embeddings_grad")]
    else:
        ins[0].set_data_from_numpy(y)
        ins[1].set_data_from_numpy(x)
        outs = [mod.InferRequestedOutput(o) for o in ("loss", "embeddings_grad")]
    r = client.infer("circle", ins, outputs=outs, parameters={"stats": False})
    assert r.as_numpy("embeddings_grad").shape == x.shape


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--circled", default=os.path.join(ROOT, "build", "circled"))
    ap.add_argument("--sizes", default="64x128:400,4096x512:9", help="NxD:REPS,...")
    ap.add_argument("--gap-s", type=float, default=0.0)
    a = ap.parse_args()
    proc, url, lines = start_circled(a.circled, 1)
    try:
        g = grpcclient.InferenceServerClient(grpc_address(lines))
        h = httpclient.InferenceServerClient(url)
        rng = np.random.default_rng(0)
        for spec in a.sizes.split(","):
            shape, reps = spec.split(":")
            n, d = (int(v) for v in shape.split("x"))
            x = rng.standard_normal((n, d)).astype(np.float32)
            y = (np.arange(n) % 64).astype(np.int64)
            times = {"grpc": [], "http": []}
            pairs = [("grpc", grpcclient, g), ("http", httpclient, h)]
            for i in range(int(reps) + 3):
                for name, mod, client in pairs if i % 2 else pairs[::-1]:
                    if a.gap_s:
                        time.sleep(a.gap_s)
                    t0 = time.perf_counter()
                    call(mod, client, y, x)
                    if i >= 3:
                        times[name].append((time.perf_counter() - t0) * 1e3)
            mg, mh = statistics.median(times["grpc"]), statistics.median(times["http"])
            print(f"{n}x{d}: gRPC {mg:.3f} ms, HTTP binary {mh:.3f} ms, gRPC / HTTP "
                  f"{mg / mh:.2f}x (medians of {reps} interleaved rounds, gap {a.gap_s} s)",
                  flush=True)
        g.close()
        h.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
