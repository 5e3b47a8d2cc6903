"""circle_ctypes.py -- the C engine (build/libcircle.so) in-process, through ctypes.

Only what the benchmark needs: an engine with its thread pool, and
circle_loss_compute on float32 or float64 numpy arrays of a self-referenced
batch or one with a reference set. The struct layouts mirror
include/circle/circle.h; keep them in step with it.
"""

import ctypes as C
import os

import numpy as np

OUT_LOSS, OUT_PER_SAMPLE, OUT_GRAD, OUT_REF_GRAD, OUT_STATS, OUT_RETRIEVAL = \
    1, 2, 4, 8, 16, 32
REDUCTIONS = {"sum_over_batch_size": 0, "sum": 1, "mean": 2,
              "mean_with_sample_weight": 3, "none": 4}


class Config(C.Structure):
    _fields_ = [("gamma", C.c_double), ("margin", C.c_double),
                ("remove_diagonal", C.c_bool), ("reduction", C.c_int),
                ("dtype", C.c_int), ("half", C.c_int),
                ("normalize", C.c_bool)]


class Input(C.Structure):
    _fields_ = [("n", C.c_size_t), ("m", C.c_size_t), ("d", C.c_size_t),
                ("labels", C.c_void_p), ("embeddings", C.c_void_p),
                ("sample_weight", C.c_void_p), ("ref_labels", C.c_void_p),
                ("ref_embeddings", C.c_void_p)]


class Stats(C.Structure):
    _fields_ = [(name, C.c_double) for name in (
        "pos_row_frac", "mean_pos_sim", "min_pos_sim", "mean_neg_sim",
        "max_neg_sim", "sim_gap", "hard_neg_frac", "recall_at_1",
        "norm_dev_mean", "norm_dev_max")] + [
        ("pos_pairs", C.c_uint64), ("neg_pairs", C.c_uint64),
        ("hard_neg_base", C.c_uint64), ("nn_rows", C.c_uint64)]


class Retrieval(C.Structure):
    _fields_ = [("precision_at_1", C.c_double), ("r_precision", C.c_double),
                ("map_at_r", C.c_double), ("queries", C.c_uint64)]


class Output(C.Structure):
    _fields_ = [("want", C.c_uint), ("loss", C.c_double),
                ("loss_values", C.c_void_p), ("per_sample", C.c_void_p),
                ("grad", C.c_void_p), ("ref_grad", C.c_void_p),
                ("stats", Stats), ("retrieval", Retrieval)]


class EngineOpts(C.Structure):
    _fields_ = [("threads", C.c_uint), ("max_queue", C.c_size_t),
                ("block_rows", C.c_size_t), ("materialize_bytes", C.c_size_t)]


def _ptr(a):
    return None if a is None else a.ctypes.data


class Engine:
    """One circle_engine; threads=0 means one per online core."""

    def __init__(self, lib_path, threads=0):
        self.lib = C.CDLL(os.path.abspath(lib_path))
        L = self.lib
        L.circle_engine_init.argtypes = [C.POINTER(C.c_void_p), C.POINTER(EngineOpts)]
        L.circle_engine_free.argtypes = [C.c_void_p]
        L.circle_engine_threads.argtypes = [C.c_void_p]
        L.circle_engine_threads.restype = C.c_uint
        L.circle_config_init.argtypes = [C.POINTER(Config)]
        L.circle_loss_compute.argtypes = [C.c_void_p, C.POINTER(Config),
                                          C.POINTER(Input), C.POINTER(Output)]
        L.circle_status_str.restype = C.c_char_p
        L.circle_blas_corename.restype = C.c_char_p
        self.handle = C.c_void_p()
        opts = EngineOpts(threads=threads)
        rc = L.circle_engine_init(C.byref(self.handle), C.byref(opts))
        if rc != 0:
            raise RuntimeError("circle_engine_init: %s" % L.circle_status_str(rc).decode())

    @property
    def threads(self):
        return self.lib.circle_engine_threads(self.handle)

    @property
    def blas_core(self):
        return self.lib.circle_blas_corename().decode()

    def close(self):
        if self.handle:
            self.lib.circle_engine_free(self.handle)
            self.handle = C.c_void_p()

    def compute(self, labels, x, ref_labels=None, ref=None, gamma=80.0,
                margin=0.4, remove_diagonal=True,
                reduction="sum_over_batch_size", want=OUT_LOSS | OUT_GRAD,
                grad=None, ref_grad=None):
        """Loss (scalar reductions) and the gradient(s); returns
        (loss, grad, ref_grad). grad/ref_grad may be preallocated arrays."""
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        x = np.ascontiguousarray(x)
        dtype = {np.dtype(np.float32): 0, np.dtype(np.float64): 1}[x.dtype]
        cfg = Config()
        self.lib.circle_config_init(C.byref(cfg))
        cfg.gamma, cfg.margin = gamma, margin
        cfg.remove_diagonal = remove_diagonal
        cfg.reduction = REDUCTIONS[reduction]
        cfg.dtype = dtype
        n, d = x.shape
        inp = Input(n=n, d=d, labels=_ptr(labels), embeddings=_ptr(x))
        if ref is not None:
            ref_labels = np.ascontiguousarray(ref_labels, dtype=np.int64)
            ref = np.ascontiguousarray(ref, dtype=x.dtype)
            inp.m, inp.ref_labels, inp.ref_embeddings = ref.shape[0], _ptr(ref_labels), _ptr(ref)
        else:
            want &= ~OUT_REF_GRAD
        out = Output(want=want)
        if want & OUT_GRAD:
            if grad is None:
                grad = np.empty_like(x)
            out.grad = _ptr(grad)
        if want & OUT_REF_GRAD:
            if ref_grad is None:
                ref_grad = np.empty_like(ref)
            out.ref_grad = _ptr(ref_grad)
        rc = self.lib.circle_loss_compute(self.handle, C.byref(cfg), C.byref(inp), C.byref(out))
        if rc != 0:
            raise RuntimeError("circle_loss_compute: %s" % self.lib.circle_status_str(rc).decode())
        return out.loss, grad, ref_grad
