"""test_half_precision.py -- a loss whose dtype is float16 or bfloat16 (or a
mixed policy, or a serialized DTypePolicy naming one) gives what Keras
computing in that format gives, on /v1 and on the Open Inference Protocol.

What must stay true, and how it is checked:

  * every half-precision golden case (tests/golden/half/*.json: Keras 3 on
    jax with dtype="float16" / "bfloat16", the loss, per_sample and jax.grad
    all computed in the format) goes through /v1 and /v2, each case with a
    different spelling of its dtype (name, mixed policy, DTypePolicy object);
  * circled computes in float32 on the format's values and rounds every
    output to the format (README "Keras conformance" has the measurements
    behind that choice); Keras rounds at every operation, so the two differ
    by Keras' own rounding error, which the tolerance bounds. It is fixed up
    front from the format's precision, never from what a run gives:

        u = 2^-11 (float16) or 2^-8 (bfloat16), the unit roundoff; 8u is
        4 ulps of the format at 1.
        L_i = the golden file's cond[i]: 1 + row i's largest |logit|, the
        magnitude at which Keras rounds row i's logsumexp (Keras' error in
        row i's value is a few u times L_i).

        per_sample_loss[i]:          8u (L_i + |keras_i|)
        loss[i] ("none", weight w):  8u (w_i L_i + |keras_i|)
        scalar loss:                 8u (A max L + |keras|), A = sum of the
                                     reduction's coefficients on the rows
                                     (sum: sum of w over unmasked rows; the
                                     means: that over their divisor)
        embeddings_grad, ref grad:   8u max L max|keras grad|
                                     (a relative error u L in every softmax
                                     weight, on the gradient's scale)

  * every number circled returns is a value of the format, the /v1 response
    says "dtype": the format, OIP outputs are FP16 / BF16 tensors, and /v2
    equals /v1 bit for bit;
  * a server started with a half --dtype (as a name or as the DTypePolicy's
    JSON) computes in it, and GET /config stays exactly get_config().
"""

import json
import subprocess
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import requests

from conftest import circled_binary, run_circled

HALF_DIR = Path(__file__).resolve().parents[1] / "golden" / "half"
UNIT = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
NP_HALF = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
OIP_TYPE = {"float16": "FP16", "bfloat16": "BF16"}


def policy(name):
    return {"module": "keras", "class_name": "DTypePolicy",
            "config": {"name": name}, "registered_name": None}


SPELLINGS = {"float16": ["float16", "mixed_float16", policy("float16"), policy("mixed_float16")],
             "bfloat16": ["bfloat16", "mixed_bfloat16", policy("bfloat16"), policy("mixed_bfloat16")]}

CASES = sorted(HALF_DIR.glob("*.json"))


def test_half_golden_cases_should_cover_both_formats_and_gamma_80_and_256():
    seen = {(json.loads(p.read_text())["config"]["dtype"],
             json.loads(p.read_text())["config"]["gamma"]) for p in CASES}
    for fmt in ("float16", "bfloat16"):
        assert (fmt, 80.0) in seen and (fmt, 256.0) in seen, seen


def load(path):
    g = json.loads(path.read_text())
    n, m, d = g["n"], g["m"], g["d"]
    g["x"] = np.array(g["embeddings"]).reshape(n, d)
    g["rx"] = None if g["ref_embeddings"] is None else np.array(g["ref_embeddings"]).reshape(m, d)
    return g


def v1_body(g, spelling):
    cfg = {k: g["config"][k] for k in ("gamma", "margin", "remove_diagonal", "reduction")}
    cfg["dtype"] = spelling
    body = {"labels": g["labels"], "embeddings": g["x"].tolist(), "config": cfg,
            "outputs": ["loss", "per_sample_loss", "embeddings_grad", "ref_embeddings_grad"]}
    if g["sample_weight"] is not None:
        body["sample_weight"] = g["sample_weight"]
    if g["ref_labels"] is not None:
        body["ref_labels"] = g["ref_labels"]
        body["ref_embeddings"] = g["rx"].tolist()
    else:
        body["outputs"].remove("ref_embeddings_grad")
    return body


def loss_coefficient_sum(g):
    """A: the sum of the coefficients the reduction puts on the rows."""
    v = np.array(g["per_sample"])
    w = np.ones(len(v)) if g["sample_weight"] is None else np.array(g["sample_weight"])
    mask = v > 0
    red = g["config"]["reduction"]
    s = float(np.sum(w * mask))
    if red == "sum":
        return s
    if red == "mean_with_sample_weight":
        return 1.0 if s > 0 else 0.0
    return s / max(1, int(mask.sum()))          # sum_over_batch_size, mean


def check_against_keras(g, got):
    fmt = g["config"]["dtype"]
    u8 = 8 * UNIT[fmt]
    cond = np.array(g["cond"])
    lmax = float(cond.max())
    w = np.ones(g["n"]) if g["sample_weight"] is None else np.array(g["sample_weight"])

    def within(name, val, want, tol):
        val, want = np.asarray(val, np.float64), np.asarray(want, np.float64)
        assert val.shape == want.shape, (g["id"], name)
        err = np.abs(val - want)
        k = int(np.argmax(err - tol))
        assert np.all(err <= tol), (f"{g['id']} {name}[{k}]: {val.flat[k]!r} vs Keras "
                                    f"{want.flat[k]!r}, tolerance {np.ravel(tol)[k % np.size(tol)]!r}")

    per = np.array(g["per_sample"])
    within("per_sample_loss", got["per_sample_loss"], per, u8 * (cond + np.abs(per)))
    if isinstance(g["loss"], list):
        lv = np.array(g["loss"])
        within("loss", got["loss"], lv, u8 * (w * cond + np.abs(lv)))
    else:
        within("loss", got["loss"], g["loss"],
               u8 * (loss_coefficient_sum(g) * lmax + abs(g["loss"])))
    for name, key in (("embeddings_grad", "grad"), ("ref_embeddings_grad", "ref_grad")):
        if g[key] is None:
            continue
        want = np.array(g[key])
        within(name, np.ravel(got[name]), want, u8 * lmax * np.max(np.abs(want)))


def in_format(a, fmt):
    """/v1 writes a float32's 9 digits: read back as float32, each number is
    a value of the format."""
    a = np.asarray(a, np.float64).astype(np.float32)
    return np.array_equal(a.astype(NP_HALF[fmt]).astype(np.float32), a)


def oip_infer(url, g, spelling):
    """JSON inputs, outputs alternately binary and JSON; returns the numbers
    as float64 arrays and the datatypes."""
    n, d = g["n"], g["d"]
    inputs = [{"name": "labels", "datatype": "INT64", "shape": [n], "data": g["labels"]},
              {"name": "embeddings", "datatype": "FP64", "shape": [n, d],
               "data": g["x"].ravel().tolist()}]
    if g["sample_weight"] is not None:
        inputs.append({"name": "sample_weight", "datatype": "FP64", "shape": [n],
                       "data": g["sample_weight"]})
    names = ["loss", "per_sample_loss", "embeddings_grad"]
    if g["ref_labels"] is not None:
        m = g["m"]
        inputs.append({"name": "ref_labels", "datatype": "INT64", "shape": [m],
                       "data": g["ref_labels"]})
        inputs.append({"name": "ref_embeddings", "datatype": "FP64", "shape": [m, d],
                       "data": g["rx"].ravel().tolist()})
        names.append("ref_embeddings_grad")
    params = {k: g["config"][k] for k in ("gamma", "margin", "remove_diagonal")}
    params["reduction"] = g["config"]["reduction"] if g["config"]["reduction"] else "none"
    params["dtype"] = spelling
    params["stats"] = False
    outputs = [{"name": nm, "parameters": {"binary_data": k % 2 == 0}}
               for k, nm in enumerate(names)]
    r = requests.post(url + "/v2/models/circle/infer",
                      data=json.dumps({"inputs": inputs, "outputs": outputs,
                                       "parameters": params}), timeout=60)
    assert r.status_code == 200, r.text
    hl = int(r.headers.get("Inference-Header-Content-Length", len(r.content)))
    head = json.loads(r.content[:hl])
    off, got, types = hl, {}, {}
    for o in head["outputs"]:
        types[o["name"]] = o["datatype"]
        if "data" in o:
            got[o["name"]] = np.array(o["data"], np.float64)
        else:
            size = o["parameters"]["binary_data_size"]
            fmt = "float16" if o["datatype"] == "FP16" else "bfloat16"
            got[o["name"]] = np.frombuffer(r.content[off:off + size],
                                           dtype=NP_HALF[fmt]).astype(np.float64)
            off += size
    assert off == len(r.content)
    return got, types


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_half_precision_should_match_keras_on_v1_and_oip(circled, path):
    g = load(path)
    fmt = g["config"]["dtype"]
    spelling = SPELLINGS[fmt][CASES.index(path) % len(SPELLINGS[fmt])]
    r = requests.post(circled + "/v1/loss", json=v1_body(g, spelling), timeout=60)
    assert r.status_code == 200, r.text
    v1 = r.json()
    assert v1["dtype"] == fmt
    cfg = g["config"]
    assert v1["config"] == {"name": "circle", "reduction": cfg["reduction"],
                            "gamma": cfg["gamma"], "margin": cfg["margin"],
                            "remove_diagonal": cfg["remove_diagonal"]}
    for name in ("loss", "per_sample_loss", "embeddings_grad", "ref_embeddings_grad"):
        if name in v1:
            assert in_format(v1[name], fmt), (g["id"], name)
    check_against_keras(g, v1)

    v2, types = oip_infer(circled, g, spelling)
    assert set(types.values()) == {OIP_TYPE[fmt]}, types
    for name, val in v2.items():
        assert np.array_equal(np.ravel(val).astype(np.float32),
                              np.ravel(np.asarray(v1[name], np.float32))), (g["id"], name)


@pytest.mark.parametrize("flag", ["mixed_bfloat16", json.dumps(policy("mixed_bfloat16"))])
def test_half_precision_server_default_should_compute_in_it(flag):
    g = load(HALF_DIR / "defaults_bf16.json")
    with run_circled("--dtype", flag) as url:
        assert requests.get(url + "/config", timeout=10).json() == {
            "name": "circle", "reduction": "sum_over_batch_size", "gamma": 80.0,
            "margin": 0.4, "remove_diagonal": True}
        prm = requests.get(url + "/v2/models/circle/config", timeout=10).json()["parameters"]
        assert prm["dtype"] == {"string_value": "bfloat16"}
        body = v1_body(g, "bfloat16")
        del body["config"]["dtype"]
        r = requests.post(url + "/v1/loss", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["dtype"] == "bfloat16"
        check_against_keras(g, r.json())


def test_half_precision_bad_server_dtype_should_stop_with_the_list():
    p = subprocess.run([circled_binary(), "--port", "0", "--dtype", "float8"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert "mixed_bfloat16" in p.stderr and "DTypePolicy" in p.stderr, p.stderr


def test_half_precision_overflow_should_be_refused_not_inf(circled):
    # A "sum" over 1024 random rows (circle values near 100 each) is past
    # float16's 65504, where Keras computing in float16 returns inf; circled
    # says why instead. bfloat16 has float32's range.
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1024, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    body = {"labels": [k % 2 for k in range(1024)], "embeddings": x.tolist(),
            "config": {"reduction": "sum", "dtype": "float16"}}
    r = requests.post(circled + "/v1/loss", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "out_of_range", err
    assert "the loss is" in err["message"] and "65504" in err["message"], err
    body["config"]["dtype"] = "bfloat16"
    r = requests.post(circled + "/v1/loss", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["dtype"] == "bfloat16", r.text
    assert r.json()["loss"] > 65504
    # A gamma no similarity fits under in float16 is refused up front.
    body["config"].update(gamma=1024.0, dtype="float16")
    r = requests.post(circled + "/v1/loss", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert "gamma 1024 with margin 0.4 is too large for float16" in r.json()["error"]["message"]
