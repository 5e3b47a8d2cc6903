"""triton_model.py -- Triton Inference Server (through PyTriton) serving
model `circle`: inputs labels (INT64 [N]) and embeddings (FP32 [N, D]),
outputs loss (FP32 [1]) and embeddings_grad (FP32 [N, D]).

    build/peers-triton-venv/bin/python bench/peers/triton_model.py
        --http-port P --grpc-port Q --metrics-port R [--warm 64x128,...]

PyTriton starts the tritonserver binary its wheel ships and a Python
"proxy" stub (one model instance, no dynamic batching) that hands each
request over shared memory to infer() below, in this process. Binds
127.0.0.1 only. Prints "READY" on stdout once the model answers. Stop it
with SIGTERM.
"""

import argparse
import os
import signal
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from pytriton.model_config import ModelConfig, Tensor  # noqa: E402
from pytriton.triton import Triton, TritonConfig  # noqa: E402

import circle_jax  # noqa: E402


def infer(requests):
    out = []
    for r in requests:
        loss, grad = circle_jax.loss_and_grad(r["labels"], r["embeddings"])
        out.append({"loss": loss, "embeddings_grad": grad})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--metrics-port", type=int, required=True)
    ap.add_argument("--warm", default="", help="comma list of NxD to compile first")
    args = ap.parse_args()
    if args.warm:
        circle_jax.compile([tuple(int(v) for v in s.split("x"))
                            for s in args.warm.split(",")])
    cfg = TritonConfig(http_address="127.0.0.1", http_port=args.http_port,
                       grpc_address="127.0.0.1", grpc_port=args.grpc_port,
                       metrics_port=args.metrics_port, log_verbose=0)
    # SIGTERM (how peers.py stops it) leaves through the with block, so
    # PyTriton stops tritonserver and removes its workspace and /dev/shm
    # regions; killed outright it leaves them behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with Triton(config=cfg) as triton:
        triton.bind(
            model_name="circle",
            infer_func=infer,
            inputs=[Tensor(name="labels", dtype=np.int64, shape=(-1,)),
                    Tensor(name="embeddings", dtype=np.float32, shape=(-1, -1))],
            outputs=[Tensor(name="loss", dtype=np.float32, shape=(1,)),
                     Tensor(name="embeddings_grad", dtype=np.float32, shape=(-1, -1))],
            config=ModelConfig(batching=False),
            strict=False,
        )
        print("READY", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
