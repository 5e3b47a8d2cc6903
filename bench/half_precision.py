#!/usr/bin/env python3
"""half_precision.py -- the measurement behind circled's half-precision plan:
compute a float16 / bfloat16 loss in float32 and round the outputs, or
compute in the half format itself?

For every half-precision golden case (tests/golden/half/*.json) it compares,
per_sample value by value, against K = Keras computing in the format (the
golden file's numbers):

  R  Keras in float32 on the same (already rounded) inputs, every output
     then rounded to the format: what circled does;
  E  Keras in float64 on the same inputs, rounded to the format: the
     correctly rounded answer;
  H  the formula evaluated op by op in the format with numpy (float16 or
     ml_dtypes.bfloat16): what "compute in half" would be (self-referenced
     cases only; the similarity product accumulates in float32 as XLA's CPU
     dot does).

It prints max |X - K| and max |X - E| in units of the tolerance
tests/py/test_half_precision.py states (8u (cond_i + |K_i|)), and in ulps of
the format at the value. Usage (from the repository root):

    KERAS_BACKEND=jax build/venv/bin/python bench/half_precision.py
"""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
ROOT = Path(__file__).resolve().parents[1]


def main():
    import jax
    jax.config.update("jax_enable_x64", True)       # E needs float64
    import jax.numpy as jnp
    import keras
    import ml_dtypes
    import numpy as np
    half = {"float16": (np.float16, 2.0 ** -11), "bfloat16": (ml_dtypes.bfloat16, 2.0 ** -8)}

    def keras_per(g, x, rx, dt):
        kw = dict(gamma=g["config"]["gamma"], margin=g["config"]["margin"],
                  remove_diagonal=g["config"]["remove_diagonal"])
        ry = None if g["ref_labels"] is None else np.array(g["ref_labels"])
        return np.asarray(keras.losses.circle(
            np.array(g["labels"]), jnp.asarray(x, dtype=dt), ref_labels=ry,
            ref_embeddings=None if rx is None else jnp.asarray(rx, dtype=dt), **kw),
            np.float64)

    def emulate(g, x, t):
        y = np.array(g["labels"])
        gm, mg = t(g["config"]["gamma"]), t(g["config"]["margin"])
        xh = x.astype(t)
        s = (xh.astype(np.float32) @ xh.astype(np.float32).T).astype(t)
        c = np.maximum(t(1) - s, t(0))
        pos = y[:, None] == y[None, :]
        neg = ~pos
        if g["config"]["remove_diagonal"]:
            pos &= ~np.eye(len(x), dtype=bool)
        pa = np.where(pos, ((-gm * np.maximum(mg + c, t(0))).astype(t) * (mg - c)).astype(t), t(-np.inf)).astype(t)
        na = np.where(neg, ((gm * np.maximum(t(1) + mg - c, t(0))).astype(t) * (t(1) - mg - c)).astype(t), t(-np.inf)).astype(t)

        def lse(a):
            mx = a.max(1, keepdims=True)
            mx = np.where(np.isfinite(mx), mx, t(0)).astype(t)
            with np.errstate(divide="ignore"):
                return (np.log(np.exp((a - mx).astype(t)).astype(t).sum(1, dtype=t)).astype(t) + mx[:, 0]).astype(t)
        z = (lse(pa) + lse(na)).astype(t)
        return np.logaddexp(z.astype(np.float32), np.float32(0)).astype(t).astype(np.float64)

    rows = []
    for p in sorted((ROOT / "tests" / "golden" / "half").glob("*.json")):
        g = json.loads(p.read_text())
        fmt = g["config"]["dtype"]
        t, u = half[fmt]
        n, m, d = g["n"], g["m"], g["d"]
        x = np.array(g["embeddings"]).reshape(n, d)
        rx = None if g["ref_embeddings"] is None else np.array(g["ref_embeddings"]).reshape(m, d)
        K = np.array(g["per_sample"])
        tol = 8 * u * (np.array(g["cond"]) + np.abs(K))
        rnd = lambda a: np.asarray(a).astype(np.float32).astype(t).astype(np.float64)
        R = rnd(keras_per(g, x.astype(np.float32), None if rx is None else rx.astype(np.float32), "float32"))
        E = np.asarray(keras_per(g, x, rx, "float64")).astype(t).astype(np.float64)
        X = {"R": R, "E": E}
        if rx is None:
            X["H"] = emulate(g, x, t)
        spacing = np.array([float(np.spacing(t(abs(v)))) if v else np.inf for v in K])
        line = {"id": g["id"]}
        for k, v in X.items():
            line[f"{k}-K/tol"] = float(np.max(np.abs(v - K) / tol))
            line[f"{k}-K ulps"] = float(np.max(np.abs(v - K) / spacing))
        line["K-E/tol"] = float(np.max(np.abs(K - E) / tol))
        line["R-E/tol"] = float(np.max(np.abs(R - E) / tol))
        if "H" in X:
            line["H-E/tol"] = float(np.max(np.abs(X["H"] - E) / tol))
        rows.append(line)
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{v:40s}" for k, v in line.items()))
    keys = sorted({k for r in rows for k in r if k != "id"})
    print("max over cases:", {k: round(max(r[k] for r in rows if k in r), 3) for k in keys})
    return 0


if __name__ == "__main__":
    sys.exit(main())
