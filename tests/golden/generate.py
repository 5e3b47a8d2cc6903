#!/usr/bin/env python3
"""generate.py -- writes the golden files that prove the C engine against real Keras 3.

Every number in tests/golden/*.json comes from Keras 3 itself (jax backend) and
jax.grad through Keras' own code; nothing here re-derives the loss. What must
stay true:

  * the loss is what the Keras class machinery returns:
      self-referenced:  keras.losses.Circle(gamma, margin, remove_diagonal,
                                            reduction, dtype)(y, x, sw)
      reference set:    keras.losses.LossFunctionWrapper(keras.losses.circle,
                            reduction=..., dtype=..., gamma=..., margin=...,
                            remove_diagonal=..., ref_labels=r_y,
                            ref_embeddings=r_x)(y, x, sw)
    (Circle is a LossFunctionWrapper around keras.losses.circle, so both go
    through Loss.__call__: the `loss > 0` Keras mask set by circle, apply_mask
    and reduce_values decide the divisors);
  * per_sample is keras.losses.circle(...) itself (unweighted, unmasked);
  * grad / ref_grad are jax.grad of the class call's output with respect to
    y_pred / ref_embeddings; for the "none" and None reductions, of the sum of
    the returned values;
  * with normalize, the embeddings stored are the raw ones, both the batch and
    the reference set go through keras.layers.UnitNormalization(dtype=dtype)
    before the loss, and the gradients are with respect to the raw inputs;
  * float32 cases run with JAX's default configuration (x64 off), float64
    cases in a separate process with jax_enable_x64 turned on before any use;
  * numbers are written with repr() (shortest round-trip form), so a float32
    value read back as a double and cast to float is exactly Keras' value.

Half precision (OUT_DIR/half/*.json): the same Keras calls with dtype
"float16" or "bfloat16", so Keras computes the loss, per_sample and jax.grad
in that format (x64 off). The inputs are stored already rounded to the
format (through float32, exact), so Keras and circled see the same values.
Each file adds "cond": [n], row i's largest |logit| (the -gamma a_p (m - c)
and gamma a_n (1 - m - c) terms over its pairs) plus 1, in float64 on those
inputs: the magnitude at which Keras rounds row i's logsumexp, the condition
factor of the tolerance tests/py/test_half_precision.py states.

Usage: KERAS_BACKEND=jax python generate.py OUT_DIR   (the Makefile's `make golden`)

The file layout, one JSON object per case, named <id>.json:
  {"id", "keras_version", "jax_version", "numpy_version", "note",
   "config": {"gamma", "margin", "remove_diagonal", "reduction" (string or
              null), "dtype", "normalize"},
   "n", "m", "d", "labels", "embeddings" (flat n*d), "sample_weight" or null,
   "ref_labels" or null, "ref_embeddings" (flat m*d) or null,
   "loss" (scalar, or [n] for "none"/null), "per_sample" [n],
   "grad" (flat n*d), "ref_grad" (flat m*d) or null}
m is 0 when there is no reference set.
"""

import json
import os
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

REDUCTIONS = ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight",
              "none", None]


# ---------------------------------------------------------------------------
# Case definitions (pure numpy; the same in both phases)
# ---------------------------------------------------------------------------

def _unit(x):
    import numpy as np
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clustered(rng, labels, d, noise):
    """Unit embeddings scattered around one random unit centre per label."""
    import numpy as np
    uniq = sorted(set(int(v) for v in labels))
    centres = {u: _unit(rng.normal(size=(1, d)))[0] for u in uniq}
    x = np.stack([centres[int(v)] for v in labels])
    x = x + noise * rng.normal(size=x.shape)
    return _unit(x)


def _separated(rng, labels, d, bad_labels):
    """Labels not in bad_labels sit exactly on their own axis e_k (so their
    similarities are exactly 0 or 1 in any arithmetic and, at large gamma,
    softplus underflows to exactly 0: Keras masks those rows). Rows of a bad
    label are random unit vectors in the span of the axes no good label uses,
    so they have large losses and still meet the good rows at exactly 0."""
    import numpy as np
    good = sorted(set(int(v) for v in labels) - set(bad_labels))
    axis = {u: k for k, u in enumerate(good)}
    free = list(range(len(good), d))
    assert len(free) >= 2, "need spare axes for the bad rows"
    x = np.zeros((len(labels), d))
    for i, v in enumerate(labels):
        v = int(v)
        if v in axis:
            x[i, axis[v]] = 1.0
        else:
            x[i, free] = _unit(rng.normal(size=(1, len(free))))[0]
    return x


def _raw(rng, n, d):
    """Unnormalized embeddings with norms spread over 1e-2 .. 1e2."""
    import numpy as np
    x = rng.normal(size=(n, d))
    scale = 10.0 ** rng.uniform(-2, 2, size=(n, 1))
    return x * scale


def _labels(rng, n, k):
    import numpy as np
    return rng.integers(0, k, size=n).astype(np.int64)


def cases():
    """Yields dicts: id, note, dtype, config fields, and the input arrays."""
    import numpy as np

    def case(cid, note, seed, dtype, labels, x, gamma=80.0, margin=0.4,
             remove_diagonal=True, reduction="sum_over_batch_size",
             sw=None, ref_labels=None, ref_x=None, normalize=False):
        return dict(id=cid, note=note, seed=seed, dtype=dtype,
                    labels=np.asarray(labels, dtype=np.int64),
                    x=np.asarray(x, dtype=np.float64),
                    gamma=float(gamma), margin=float(margin),
                    remove_diagonal=bool(remove_diagonal),
                    reduction=reduction,
                    sw=None if sw is None else np.asarray(sw, np.float64),
                    ref_labels=None if ref_labels is None
                    else np.asarray(ref_labels, dtype=np.int64),
                    ref_x=None if ref_x is None
                    else np.asarray(ref_x, dtype=np.float64),
                    normalize=bool(normalize))

    out = []

    # 1. Every reduction spelling x with/without sample weight x dtype, on a
    #    clustered batch of 32 whose label 9 is a singleton: its row has no
    #    positive pair, circle gives exactly 0 and Keras masks it, so every
    #    divisor is exercised (sample weights include zeros).
    for dtype in ("float32", "float64"):
        for with_sw in (False, True):
            for r in REDUCTIONS:
                seed = 1000 + len(out)
                rng = np.random.default_rng(seed)
                y = _labels(rng, 32, 5)
                y[7] = 9
                x = _clustered(rng, y, 8, 0.35)
                sw = None
                if with_sw:
                    sw = rng.uniform(0.0, 2.0, size=32)
                    sw[[3, 11]] = 0.0
                rname = "null" if r is None else r
                out.append(case(
                    f"red_{rname}_{'sw' if with_sw else 'nosw'}_{dtype[-2:]}",
                    "clustered, one singleton label (masked row)",
                    seed, dtype, y, x, reduction=r, sw=sw))

    # 2. Reference set: every reduction, alternating dtype and sample weight;
    #    remove_diagonal drops pairs (i, i) even against the reference set.
    for k, r in enumerate(REDUCTIONS):
        seed = 2000 + k
        rng = np.random.default_rng(seed)
        y = _labels(rng, 24, 4)
        ry = _labels(rng, 40, 5)          # label 4 only in the reference set
        ry[:24] = y                        # rows i and ref i share a label
        allx = _clustered(rng, np.concatenate([y, ry]), 12, 0.4)
        dtype = "float64" if k % 2 == 0 else "float32"
        sw = rng.uniform(0.1, 3.0, size=24) if k % 3 != 1 else None
        rname = "null" if r is None else r
        out.append(case(f"ref_{rname}_{dtype[-2:]}",
                        "reference set, batch labels reused in ref rows 0..n-1",
                        seed, dtype, y, allx[:24], reduction=r, sw=sw,
                        ref_labels=ry, ref_x=allx[24:]))

    # 3. remove_diagonal off: self-referenced (the diagonal becomes a
    #    positive pair) and with a reference set.
    for dtype in ("float32", "float64"):
        seed = 3000 + (dtype == "float64")
        rng = np.random.default_rng(seed)
        y = _labels(rng, 20, 4)
        y[0] = 17                                      # singleton
        x = _clustered(rng, y, 6, 0.3)
        out.append(case(f"nodiag_self_{dtype[-2:]}",
                        "remove_diagonal off, singleton keeps its (i,i) pair",
                        seed, dtype, y, x, remove_diagonal=False,
                        reduction="sum"))
        rng = np.random.default_rng(seed + 10)
        y = _labels(rng, 10, 3)
        ry = _labels(rng, 15, 3)
        allx = _clustered(rng, np.concatenate([y, ry]), 5, 0.3)
        out.append(case(f"nodiag_ref_{dtype[-2:]}",
                        "remove_diagonal off with a reference set",
                        seed + 10, dtype, y, allx[:10], remove_diagonal=False,
                        reduction="sum_over_batch_size", ref_labels=ry,
                        ref_x=allx[10:],
                        sw=rng.uniform(0.5, 1.5, size=10)))

    # 4. Singleton classes: every label distinct.
    for rd in (True, False):
        seed = 4000 + rd
        rng = np.random.default_rng(seed)
        y = np.arange(12, dtype=np.int64) * 3 - 7      # negative labels too
        x = _unit(rng.normal(size=(12, 5)))
        out.append(case(f"singletons_{'diag' if rd else 'nodiag'}_64",
                        "all labels distinct" + (
                            ": no positives, every row masked, loss 0"
                            if rd else ": the diagonal is the only positive"),
                        seed, "float64", y, x, remove_diagonal=rd,
                        reduction="sum_over_batch_size"))

    # 5. A single class: no negatives anywhere.
    for dtype, rd in (("float32", True), ("float64", False)):
        seed = 4100 + rd
        rng = np.random.default_rng(seed)
        y = np.full(9, 5, dtype=np.int64)
        x = _clustered(rng, y, 4, 0.5)
        out.append(case(f"one_class_{'diag' if rd else 'nodiag'}_{dtype[-2:]}",
                        "single class: no negative pair, every row masked",
                        seed, dtype, y, x, remove_diagonal=rd,
                        reduction="mean_with_sample_weight",
                        sw=rng.uniform(0.5, 2.0, size=9)))

    # 6. N = 1.
    rng = np.random.default_rng(4200)
    out.append(case("n1_self_64", "N=1 self-referenced: nothing to compare",
                    4200, "float64", [3], _unit(rng.normal(size=(1, 6))),
                    reduction="sum_over_batch_size"))
    out.append(case("n1_self_nodiag_32", "N=1, the diagonal as only positive",
                    4201, "float32", [3], _unit(rng.normal(size=(1, 6))),
                    remove_diagonal=False, reduction="none"))
    y = [1]
    ry = [1, 1, 2, 0, 2, 1, 3]
    allx = _clustered(rng, np.array(y + ry), 6, 0.4)
    out.append(case("n1_ref_64", "N=1 against a reference set of 7",
                    4202, "float64", y, allx[:1], reduction="sum",
                    ref_labels=ry, ref_x=allx[1:], sw=[0.7]))

    # 7. D = 1: embeddings are +-1 (or raw scalars with normalize).
    rng = np.random.default_rng(4300)
    y = _labels(rng, 16, 3)
    x = np.where(rng.uniform(size=(16, 1)) < 0.5, -1.0, 1.0)
    out.append(case("d1_64", "D=1, embeddings +-1", 4300, "float64", y, x,
                    gamma=32.0, reduction="sum_over_batch_size"))
    # (Not with normalize: at D=1 normalize maps x to sign(x), whose gradient
    # is exactly 0, and Keras' float rounding noise would be the "answer".)
    x = rng.uniform(-1.3, 1.3, size=(16, 1))
    out.append(case("d1_raw_32", "D=1 raw scalars: products above 1 hit the "
                    "clamp max(1 - s, 0)", 4301, "float32", y, x, gamma=32.0,
                    reduction="mean"))

    # 8. gamma 256, margin 0.25.
    for dtype in ("float32", "float64"):
        seed = 4400 + (dtype == "float64")
        rng = np.random.default_rng(seed)
        y = _labels(rng, 48, 6)
        x = _clustered(rng, y, 16, 0.45)
        out.append(case(f"gamma256_m025_{dtype[-2:]}", "gamma 256, margin 0.25",
                        seed, dtype, y, x, gamma=256.0, margin=0.25,
                        reduction="sum_over_batch_size",
                        sw=rng.uniform(0.0, 1.0, size=48)))

    # 9. normalize: raw embeddings of wildly different norms.
    for k, (dtype, r, ref) in enumerate((("float32", "sum_over_batch_size", False),
                                         ("float64", "sum", False),
                                         ("float64", "none", True),
                                         ("float32", "mean_with_sample_weight", True))):
        seed = 4500 + k
        rng = np.random.default_rng(seed)
        y = _labels(rng, 20, 4)
        x = _raw(rng, 20, 7)
        kw = {}
        if ref:
            kw = dict(ref_labels=_labels(rng, 14, 4), ref_x=_raw(rng, 14, 7))
        out.append(case(f"normalize_{'ref_' if ref else ''}{dtype[-2:]}",
                        "raw embeddings through UnitNormalization"
                        + (" (batch and reference set)" if ref else ""),
                        seed, dtype, y, x, gamma=40.0, reduction=r,
                        sw=rng.uniform(0.2, 2.0, size=20) if k % 2 else None,
                        normalize=True, **kw))

    # 10. softplus underflow: separated classes at large gamma give rows whose
    #     circle value is exactly 0 without any missing pair; Keras masks them.
    for dtype, gamma in (("float32", 1024.0), ("float64", 4096.0)):
        seed = 4600 + (dtype == "float64")
        rng = np.random.default_rng(seed)
        y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 7, 7, 7, 7], dtype=np.int64)
        x = _separated(rng, y, 8, bad_labels={7})
        for r in ("sum_over_batch_size", "mean_with_sample_weight"):
            sw = rng.uniform(0.5, 1.5, size=12) if r != "sum_over_batch_size" else None
            out.append(case(f"underflow_{r}_{dtype[-2:]}",
                            "labels 0-2 on exact axes: softplus underflows to 0"
                            " and Keras masks those rows; label 7 rows are lossy",
                            seed, dtype, y, x, gamma=gamma, reduction=r, sw=sw))

    # 11. Every row masked with a ref set (no batch label in the reference
    #     set): divide_no_nan gives 0 for every divisor.
    rng = np.random.default_rng(4700)
    out.append(case("ref_all_masked_32",
                    "no batch label occurs in the reference set: all masked",
                    4700, "float32", [0, 1, 1, 2], _unit(rng.normal(size=(4, 3))),
                    reduction="mean_with_sample_weight", sw=[1.0, 2.0, 0.5, 1.0],
                    ref_labels=[5, 6, 6], ref_x=_unit(rng.normal(size=(3, 3)))))

    # 12. All sample weights zero: mean_with_sample_weight divides by 0.
    rng = np.random.default_rng(4800)
    y = _labels(rng, 10, 3)
    out.append(case("sw_all_zero_64", "all sample weights 0: divide_no_nan",
                    4800, "float64", y, _clustered(rng, y, 4, 0.4),
                    reduction="mean_with_sample_weight", sw=np.zeros(10)))

    # 13. Other margins, random (unclustered) embeddings.
    for k, (dtype, margin, gamma) in enumerate((("float64", 0.1, 64.0),
                                                ("float32", 0.6, 16.0),
                                                ("float64", 0.0, 80.0))):
        seed = 4900 + k
        rng = np.random.default_rng(seed)
        y = _labels(rng, 30, 3)
        out.append(case(f"margin_{str(margin).replace('.', '')}_{dtype[-2:]}",
                        "random unit embeddings, other margin and gamma",
                        seed, dtype, y, _unit(rng.normal(size=(30, 10))),
                        gamma=gamma, margin=margin, reduction="sum"))

    # 14. Default Keras configuration.
    rng = np.random.default_rng(5000)
    y = _labels(rng, 64, 8)
    out.append(case("defaults_32", "Keras defaults: gamma 80, margin 0.4, "
                    "remove_diagonal, sum_over_batch_size, float32",
                    5000, "float32", y, _clustered(rng, y, 32, 0.5)))

    # 15. Large batches: N = 512.
    for dtype, ref in (("float32", False), ("float64", True)):
        seed = 5100 + ref
        rng = np.random.default_rng(seed)
        y = _labels(rng, 512, 40)
        y[:5] = [1000, 1001, 1002, 1003, 1004]          # singletons
        kw = {}
        if ref:
            ry = _labels(rng, 256, 40)
            allx = _clustered(rng, np.concatenate([y, ry]), 24, 0.6)
            x = allx[:512]
            kw = dict(ref_labels=ry, ref_x=allx[512:])
        else:
            x = _clustered(rng, y, 24, 0.6)
        out.append(case(f"n512_{'ref_' if ref else ''}{dtype[-2:]}",
                        "N=512, 40 classes plus 5 singletons",
                        seed, dtype, y, x,
                        reduction="mean_with_sample_weight" if ref else
                        "sum_over_batch_size",
                        sw=rng.uniform(0.0, 1.0, size=512) if ref else None,
                        **kw))
    # 16. The subnormal boundary of softplus. A row's value is softplus(L)
    #     = log1p(exp(L)); XLA on CPU flushes a subnormal exp(L) to 0, so
    #     Keras gives the row exactly 0 (and masks it) from L < ln(tiny) on:
    #     about -87.34 in float32, -708.40 in float64. Every coordinate here
    #     is 0, +-0.5 or 1, so similarities are exact and the inputs are
    #     exact in FP16 and BF16 too.
    #     a) The 4-row shape of the bug report: rows 0, 1 (label 0, on e0)
    #        have L = -2 gamma margin^2 + ln 2 and rows 2, 3 are lossy. At
    #        margin 0.25 the gammas are adjacent floats (doubles) that
    #        bisection against Keras 3.15.1 found on either side of the
    #        flip: Keras keeps rows 0, 1 at the first (v = tiny) and gives 0
    #        at the second. Every reduction, sample weights given.
    half = 0.5
    four = np.array([[1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 1, 0, 0, 0],
                     [0, half, half, half, half]])
    boundary = {"float32": (704.2374877929688, 704.237548828125),
                "float64": (5672.716525702593, 5672.716525702594)}
    for dtype in ("float32", "float64"):
        for side, gamma in zip(("kept", "flushed"), boundary[dtype]):
            for r in REDUCTIONS:
                rname = "null" if r is None else r
                out.append(case(
                    f"flush_{side}_{rname}_{dtype[-2:]}",
                    f"softplus at the subnormal boundary, rows 0-1 {side}: "
                    f"gamma {gamma!r} is the {'last' if side == 'kept' else 'first'}"
                    " gamma (margin 0.25) at which Keras keeps (flushes) them",
                    0, dtype, [0, 0, 1, 1], four, gamma=gamma, margin=0.25,
                    reduction=r, sw=[0.5, 2.0, 1.0, 1.5]))
    #     a') The same rows at fixed gamma, at adjacent double margins that
    #        bisection found on either side of the flip: they pin down how
    #        1 + margin and 1 - margin are rounded (in double, then to the
    #        dtype, as JAX rounds a Python float).
    margins = {("float32", 256.0): (0.41464802622795094, 0.414648026227951),
               ("float32", 1024.0): (0.20732399821281425, 0.20732399821281428),
               ("float64", 4096.0): (0.29420874371278244, 0.2942087437127825)}
    for (dtype, gamma), pair in margins.items():
        for side, margin in zip(("kept", "flushed"), pair):
            out.append(case(
                f"flush_margin_{side}_g{int(gamma)}_{dtype[-2:]}",
                f"softplus at the subnormal boundary, rows 0-1 {side}: margin "
                f"{margin!r} is the {'last' if side == 'kept' else 'first'} "
                f"margin (gamma {gamma!r}) at which Keras keeps (flushes) them",
                0, dtype, [0, 0, 1, 1], four, gamma=gamma, margin=margin))
    #     b) 24 rows, so the engine's vector lanes and several blocks see
    #        the boundary: labels 0-7 on axes e0..e7 in classes of 2 rows
    #        (P = 1, N = 22) and 3 rows (P = 2, N = 21), label 9 four lossy
    #        rows of +-0.5 on the spare axes. L = -2 gamma margin^2 +
    #        ln(P N) puts the classes of 2 about 0.32 below the flip and
    #        the classes of 3 about 0.33 above it (float64: 0.45 / 0.19).
    sizes = [2, 3, 2, 3, 2, 3, 3, 2]
    good = np.repeat(np.arange(8), sizes)
    lossy = np.array([[1, 1, 1, 1], [1, 1, 1, -1], [1, -1, 1, 1],
                      [-1, 1, 1, 1]]) * half
    x24 = np.zeros((24, 12))
    x24[np.arange(20), good] = 1.0
    x24[20:, 8:] = lossy
    y24 = np.concatenate([good, [9, 9, 9, 9]])
    for dtype, gamma, margin, r in (
            ("float32", 1024.0, 0.2105, "sum_over_batch_size"),
            ("float32", 256.0, 0.421, "mean_with_sample_weight"),
            ("float64", 4096.0, 0.2948, "sum_over_batch_size"),
            ("float64", 2048.0, 0.4169, "mean_with_sample_weight")):
        seed = 5200 + len(out)
        rng = np.random.default_rng(seed)
        sw = rng.uniform(0.5, 1.5, size=24) if r != "sum_over_batch_size" else None
        out.append(case(f"flush_mixed_g{int(gamma)}_{dtype[-2:]}",
                        "24 rows: classes of 2 just below the subnormal flip "
                        "(Keras gives 0), classes of 3 just above (tiny > 0)",
                        seed, dtype, y24, x24, gamma=gamma, margin=margin,
                        reduction=r, sw=sw))
    #     c) A reference set: query rows 0-7 one per class on e0..e7, 8-10
    #        lossy; the reference set holds the lossy rows first (so no
    #        index-aligned pair shares a label and remove_diagonal drops
    #        nothing), then classes 0-3 once (P = 1, N = 14) and 4-7 twice
    #        (P = 2, N = 13): the first below the flip, the second above.
    qx = np.zeros((11, 12))
    qx[np.arange(8), np.arange(8)] = 1.0
    qx[8:, 8:] = lossy[:3]
    qy = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 8])
    rlab = np.array([8, 8, 8, 0, 1, 2, 3, 4, 4, 5, 5, 6, 6, 7, 7])
    rx = np.zeros((15, 12))
    rx[:3, 8:] = lossy[:3]
    rx[np.arange(3, 15), rlab[3:]] = 1.0
    for dtype, gamma, margin, r, with_sw in (
            ("float32", 1024.0, 0.21, "mean", False),
            ("float64", 4096.0, 0.29468, "sum_over_batch_size", True)):
        seed = 5300 + len(out)
        rng = np.random.default_rng(seed)
        out.append(case(f"flush_ref_{dtype[-2:]}",
                        "reference set: classes met once just below the "
                        "subnormal flip, classes met twice just above",
                        seed, dtype, qy, qx, gamma=gamma, margin=margin,
                        reduction=r, ref_labels=rlab, ref_x=rx,
                        sw=rng.uniform(0.5, 1.5, size=11) if with_sw else None))
    #     d) The bug report's request itself (float32, gamma 760, margin
    #        0.25: rows 0-1 far below the flip).
    out.append(case("flush_report_32", "the request of the bug report: rows "
                    "0-1 underflow, Keras gives 27.293128967285156",
                    0, "float32", [0, 0, 1, 1],
                    [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0.6, 0.8]],
                    gamma=760.0, margin=0.25))
    return out


# Cases whose rows must straddle the subnormal flip: what Keras must give
# (rows kept with a tiny value, rows flushed to 0) or the file is not made.
def check_flush(c, per):
    import numpy as np
    if not c["id"].startswith("flush_"):
        return
    tiny = np.finfo(np.float32 if c["dtype"] == "float32" else np.float64).tiny
    kept = (per > 0) & (per < 1e-30)
    flushed = per == 0
    if c["id"].startswith(("flush_kept_", "flush_margin_kept_")):
        ok = kept[:2].all() and (per[2:] > 1e-20).all()
    elif c["id"].startswith(("flush_flushed_", "flush_margin_flushed_",
                             "flush_report_")):
        ok = flushed[:2].all() and (per[2:] > 1e-20).all()
    else:
        ok = kept.any() and flushed.any() and np.all(per[kept] >= tiny)
    assert ok, (c["id"], per)


HALF_FORMATS = ("float16", "bfloat16")


def half_cases():
    """Cases computed in float16 and bfloat16: Keras' defaults and gamma 256
    (where half precision is tightest), every reduction kind, a reference
    set. Same dict layout as cases(), dtype the half format."""
    import numpy as np
    out = []
    for fmt in HALF_FORMATS:
        tag = "f16" if fmt == "float16" else "bf16"
        base = {c["id"]: c for c in cases()}
        for src, cid, changes in (
                ("defaults_32", "defaults", {}),
                ("gamma256_m025_32", "gamma256_m025", {}),
                ("red_none_sw_32", "red_none_sw", {}),
                ("red_mean_nosw_32", "red_mean_nosw", {}),
                ("ref_mean_with_sample_weight_32", "ref_mean_with_sample_weight", {}),
                ("margin_06_32", "gamma16_m06_sum", {}),
                # At gamma 80 the rows on exact axes have circle values near
                # 1e-11: float32 keeps them, float16 flushes them to 0 and
                # Keras masks them, which changes the divisors.
                ("underflow_sum_over_batch_size_32", "underflow80_sum_over_batch_size",
                 {"gamma": 80.0}),
                ("underflow_mean_with_sample_weight_32", "underflow80_mean_with_sample_weight",
                 {"gamma": 80.0})):
            c = dict(base[src])
            c.update(changes)
            c["id"] = f"{cid}_{tag}"
            c["note"] = f"{base[src]['note']}, computed in {fmt}"
            c["dtype"] = fmt
            out.append(c)
    return out


def _round_to(a, fmt):
    import ml_dtypes
    import numpy as np
    if a is None:
        return None
    t = np.float16 if fmt == "float16" else ml_dtypes.bfloat16
    return np.asarray(a, np.float32).astype(t).astype(np.float64)


def pair_logits(c, x, rx):
    """Keras' formula in float64: the positive and negative pair masks and
    the logits -gamma a_p (m - c) and gamma a_n (1 - m - c) of every pair."""
    import numpy as np
    ry = c["labels"] if c["ref_labels"] is None else c["ref_labels"]
    r = x if rx is None else rx
    g, mg = c["gamma"], c["margin"]
    cdist = np.maximum(1.0 - x @ r.T, 0.0)
    pos = c["labels"][:, None] == ry[None, :]
    neg = ~pos
    if c["remove_diagonal"]:
        pos &= ~np.eye(len(x), len(r), dtype=bool)
    zp = -g * np.maximum(mg + cdist, 0) * (mg - cdist)
    zn = g * np.maximum(1 + mg - cdist, 0) * (1 - mg - cdist)
    return pos, neg, zp, zn


def row_cond(c, x, rx):
    """max_j |logit_ij| + 1 per row, float64, on the rounded inputs."""
    import numpy as np
    pos, neg, zp, zn = pair_logits(c, x, rx)
    pa = np.where(pos, np.abs(zp), 0)
    na = np.where(neg, np.abs(zn), 0)
    return [float(v) for v in np.maximum(pa.max(1), na.max(1)) + 1]


# ---------------------------------------------------------------------------
# Keras evaluation (one dtype per process)
# ---------------------------------------------------------------------------

def _num(v):
    v = float(v)
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError("non-finite value in golden output")
    return v


def _flat(a):
    import numpy as np
    return [_num(v) for v in np.asarray(a, dtype=np.float64).reshape(-1)]


def evaluate(c):
    import jax
    import jax.numpy as jnp
    import keras
    import numpy as np

    dtype = c["dtype"]
    half = dtype in HALF_FORMATS
    if half:
        import ml_dtypes
        c = dict(c, x=_round_to(c["x"], dtype), sw=_round_to(c["sw"], dtype),
                 ref_x=_round_to(c["ref_x"], dtype))
        npdt = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    else:
        npdt = np.float32 if dtype == "float32" else np.float64
    y = c["labels"]
    x = c["x"].astype(npdt)
    sw = None if c["sw"] is None else c["sw"].astype(npdt)
    ry = c["ref_labels"]
    rx = None if c["ref_x"] is None else c["ref_x"].astype(npdt)
    red = c["reduction"]
    kw = dict(gamma=c["gamma"], margin=c["margin"],
              remove_diagonal=c["remove_diagonal"])
    # LossFunctionWrapper is not exported; Circle is one around circle, so the
    # reference-set form goes through the very same Loss.__call__.
    from keras.src.losses.losses import LossFunctionWrapper
    assert issubclass(keras.losses.Circle, LossFunctionWrapper)
    norm = keras.layers.UnitNormalization(dtype=dtype) if c["normalize"] else None
    elementwise = red is None or red == "none"

    def prep(a):
        return norm(a) if norm is not None else jnp.asarray(a)

    def loss_fn(xa, ra):
        xn = prep(xa)
        if ra is None:
            obj = keras.losses.Circle(reduction=red, dtype=dtype, **kw)
        else:
            obj = LossFunctionWrapper(
                keras.losses.circle, reduction=red, dtype=dtype,
                ref_labels=ry, ref_embeddings=prep(ra), **kw)
        return obj(y, xn, sample_weight=sw)

    def scalar_fn(xa, ra):
        out = loss_fn(xa, ra)
        return jnp.sum(out) if elementwise else out

    loss = np.asarray(loss_fn(x, rx))
    if rx is None:
        # The wrapper without a reference set must be the class, bit for bit.
        alt = LossFunctionWrapper(keras.losses.circle, reduction=red,
                                  dtype=dtype, **kw)(y, prep(x), sample_weight=sw)
        assert np.array_equal(np.asarray(alt), loss), c["id"]
    if rx is None:
        val, g = jax.value_and_grad(lambda a: scalar_fn(a, None))(x)
        rg = None
    else:
        val, (g, rg) = jax.value_and_grad(scalar_fn, argnums=(0, 1))(x, rx)
    per = np.asarray(keras.losses.circle(
        y, prep(x), ref_labels=ry,
        ref_embeddings=None if rx is None else prep(rx), **kw))

    for a in (loss, per, g) + (() if rg is None else (rg,)):
        assert np.asarray(a).dtype == npdt, (c["id"], np.asarray(a).dtype)
        assert np.all(np.isfinite(a)), c["id"]
    # The value under jax.grad must be the eager one: the loss > 0 mask has to
    # survive tracing, or the gradients would be of a different function.
    eager = float(np.sum(loss.astype(np.float64))) if elementwise else float(loss)
    # (in a half format, the traced sum is itself rounded to it)
    assert abs(float(val) - eager) <= (2.0 ** -6 if half else 1e-5) * max(1.0, abs(eager)), \
        (c["id"], float(val), eager)
    if dtype == "float64":
        check_against_numpy(c, x, rx, sw, loss, per)
    check_flush(c, per)

    n, d = x.shape
    m = 0 if rx is None else rx.shape[0]
    extra = {}
    if half:
        extra["cond"] = row_cond(c, np.asarray(x, np.float64),
                                 None if rx is None else np.asarray(rx, np.float64))
    return {
        "id": c["id"],
        "keras_version": keras.__version__,
        "jax_version": jax.__version__,
        "numpy_version": np.__version__,
        "note": c["note"] + f" (seed {c['seed']})",
        "config": {"gamma": c["gamma"], "margin": c["margin"],
                   "remove_diagonal": c["remove_diagonal"],
                   "reduction": red, "dtype": dtype,
                   "normalize": c["normalize"]},
        "n": int(n), "m": int(m), "d": int(d),
        "labels": [int(v) for v in y],
        "embeddings": _flat(x),
        "sample_weight": None if sw is None else _flat(sw),
        "ref_labels": None if ry is None else [int(v) for v in ry],
        "ref_embeddings": None if rx is None else _flat(rx),
        "loss": _flat(loss) if elementwise else _num(loss),
        "per_sample": _flat(per),
        "grad": _flat(g),
        "ref_grad": None if rg is None else _flat(rg),
        **extra,
    }, int(np.sum(per == 0))


def check_against_numpy(c, x, rx, sw, loss, per):
    """An independent float64 reading of Keras' formulas, to catch a generator
    that calls Keras wrongly (not to replace Keras: the files hold Keras'
    numbers)."""
    import numpy as np
    if c["normalize"]:
        x = x / np.sqrt(np.maximum(np.sum(x * x, 1, keepdims=True), 1e-24))
        if rx is not None:
            rx = rx / np.sqrt(np.maximum(np.sum(rx * rx, 1, keepdims=True), 1e-24))
    pos, neg, zp, zn = pair_logits(c, x, rx)
    pa = np.where(pos, zp, -np.inf)
    na = np.where(neg, zn, -np.inf)

    def lse(a):
        mx = np.max(a, axis=1, keepdims=True)
        mx = np.where(np.isfinite(mx), mx, 0)
        with np.errstate(divide="ignore"):
            return np.log(np.sum(np.exp(a - mx), axis=1)) + mx[:, 0]
    z = lse(pa) + lse(na)
    v = np.logaddexp(z, 0)
    v[v < np.finfo(np.float64).tiny] = 0.0   # XLA on CPU flushes subnormals
    assert np.allclose(v, per, rtol=1e-10, atol=1e-300), c["id"]
    mask = v > 0
    w = np.ones(len(v)) if sw is None else sw.astype(np.float64)
    red = c["reduction"]
    if red in ("mean", "sum_over_batch_size"):
        valid = mask.sum()
        fm = np.where(mask, len(v) / valid if valid else 0.0, 0.0)
    else:
        fm = mask.astype(np.float64)
    wv = v * w * fm
    if red is None or red == "none":
        ref = wv
    elif red == "sum":
        ref = wv.sum()
    elif red == "mean_with_sample_weight":
        den = (w * fm).sum()
        ref = wv.sum() / den if den else 0.0
    else:
        ref = wv.sum() / len(v)
    assert np.allclose(loss, ref, rtol=1e-10, atol=1e-300), (c["id"], loss, ref)


def dump(obj, path):
    # One key per line; arrays on one line, numbers as repr() (round-trip).
    parts = []
    for k, v in obj.items():
        if isinstance(v, dict):
            v = "{" + ", ".join(f"{json.dumps(kk)}: {json.dumps(vv, allow_nan=False)}"
                                for kk, vv in v.items()) + "}"
        else:
            v = json.dumps(v, separators=(",", ":"), allow_nan=False)
        parts.append(f"  {json.dumps(k)}: {v}")
    with open(path, "w") as f:
        f.write("{\n" + ",\n".join(parts) + "\n}\n")


def run_phase(dtype, outdir):
    if dtype == "float64":
        import jax
        jax.config.update("jax_enable_x64", True)
    import keras  # noqa: F401  (after the jax configuration)
    masked_cases = 0
    todo = half_cases() if dtype == "half" else cases()
    if dtype == "half":
        outdir = os.path.join(outdir, "half")
        os.makedirs(outdir, exist_ok=True)
    for c in todo:
        if c["dtype"] != dtype and not (dtype == "half" and c["dtype"] in HALF_FORMATS):
            continue
        obj, zeros = evaluate(c)
        masked_cases += zeros > 0
        dump(obj, os.path.join(outdir, c["id"] + ".json"))
        print(f"{c['id']:40s} n={obj['n']:4d} m={obj['m']:4d} d={obj['d']:3d} "
              f"masked rows={zeros}")
    print(f"{dtype}: {masked_cases} cases with masked (exactly 0) rows")


def main(argv):
    if len(argv) == 3 and argv[1] in ("--phase=float32", "--phase=float64", "--phase=half"):
        run_phase(argv[1].split("=")[1], argv[2])
        return 0
    if len(argv) != 2:
        print(__doc__.split("\n\n")[0] + "\nusage: generate.py OUT_DIR",
              file=sys.stderr)
        return 2
    outdir = argv[1]
    os.makedirs(outdir, exist_ok=True)
    ids = [c["id"] for c in cases()]
    assert len(ids) == len(set(ids)), "duplicate case id"
    for name in os.listdir(outdir):           # drop files of retired cases
        if name.endswith(".json") and name[:-5] not in ids:
            os.remove(os.path.join(outdir, name))
    half_ids = [c["id"] for c in half_cases()]
    assert len(half_ids) == len(set(half_ids)), "duplicate half case id"
    half_dir = os.path.join(outdir, "half")
    for name in os.listdir(half_dir) if os.path.isdir(half_dir) else ():
        if name.endswith(".json") and name[:-5] not in half_ids:
            os.remove(os.path.join(half_dir, name))
    for dtype in ("float32", "float64", "half"):
        # A fresh interpreter per dtype: x64 must be set before JAX is used,
        # and float32 cases must run with JAX's defaults, as users run them.
        subprocess.run([sys.executable, os.path.abspath(__file__), f"--phase={dtype}", outdir],
                       check=True)
    print(f"{len(ids)} golden cases in {outdir}, {len(half_ids)} in {half_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
