"""test_interop.py -- the stock tritonclient.http client works against circled
unchanged, and the Open Inference Protocol (/v2) gives exactly what the JSON
API (/v1) gives, which in turn is what real Keras gives (tests/golden/).

What must stay true, and how it is checked:

  * every golden case (tests/golden/*.json, written by Keras 3 + jax.grad)
    goes through /v1 with plain `requests` and through /v2 with the stock
    InferenceServerClient; each golden case uses one of 48 encodings (labels
    INT32 or INT64, shaped [N] or [N, 1]; inputs binary or JSON; outputs
    binary or JSON; request body plain, gzip or deflate), cycled so that
    every encoding meets real Keras data; two reference-set cases (float32
    and float64) run under all 48;
  * /v2 and /v1 agree BIT FOR BIT: the engine is deterministic, /v1 writes
    float32 with 9 and float64 with 17 significant digits (both round-trip),
    and JSON inputs carry float32/float64 values exactly, so any difference
    is a codec bug, not rounding;
  * both agree with Keras within the engine tests' tolerances, fixed up
    front, per array (the loss -- a scalar is an array of one --,
    per_sample_loss, embeddings_grad, ref_embeddings_grad):
        float32: |got - keras| <= 1e-4 * max|keras|
        float64: |got - keras| <= 1e-9 * max|keras|
  * FP16 and BF16 binary inputs compute in float32 on the rounded values:
    they equal /v1 float32 on those values, bit for bit; on the golden cases
    at softplus' subnormal flush, whose inputs are exact in half precision,
    they give Keras' float32 numbers;
  * INT64 labels are compared exactly (2**62 + k and 2**62 + k + 1 differ);
  * errors come back as tritonclient's InferenceServerException carrying
    the status and the very message circled puts in {"error": ...}.

The matrix runs with response compression off (tritonclient's default);
one test on its own asks for gzip and deflate responses and finds the same
bits.
"""

import itertools
import json
from pathlib import Path
from urllib.parse import urlparse

import ml_dtypes
import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"
TOL = {"float32": 1e-4, "float64": 1e-9}
OUTPUTS = ("loss", "per_sample_loss", "embeddings_grad", "ref_embeddings_grad")
NP_DTYPE = {"float32": np.float32, "float64": np.float64}
TRITON_FLOAT = {"float32": "FP32", "float64": "FP64"}


# ---------------------------------------------------------------------------
# Golden cases
# ---------------------------------------------------------------------------


def load_case(path):
    g = json.loads(path.read_text())
    cfg = g["config"]
    dt = NP_DTYPE[cfg["dtype"]]
    n, m, d = g["n"], g["m"], g["d"]
    c = {
        "id": g["id"],
        "dtype": cfg["dtype"],
        "config": {k: cfg[k] for k in ("gamma", "margin", "remove_diagonal", "reduction", "dtype")},
        "normalize": cfg["normalize"],
        "labels": np.array(g["labels"], dtype=np.int64),
        # The golden numbers are the dtype's exact values written as doubles.
        "x": np.array(g["embeddings"], dtype=np.float64).astype(dt).reshape(n, d),
        "sw": None if g["sample_weight"] is None else np.array(g["sample_weight"]).astype(dt),
        "ref_labels": None if g["ref_labels"] is None else np.array(g["ref_labels"], dtype=np.int64),
        "rx": None if g["ref_embeddings"] is None
        else np.array(g["ref_embeddings"], dtype=np.float64).astype(dt).reshape(m, d),
        "want": {
            "loss": np.atleast_1d(np.array(g["loss"], dtype=np.float64)),
            "per_sample_loss": np.array(g["per_sample"], dtype=np.float64),
            "embeddings_grad": np.array(g["grad"], dtype=np.float64).reshape(n, d),
            "ref_embeddings_grad": None if g["ref_grad"] is None
            else np.array(g["ref_grad"], dtype=np.float64).reshape(m, d),
        },
    }
    return c


GOLDEN_PATHS = sorted(GOLDEN_DIR.glob("*.json"))
CASES = {p.stem: load_case(p) for p in GOLDEN_PATHS}


def expected_outputs(c):
    return [o for o in OUTPUTS if c["want"][o] is not None]


def assert_close_to_keras(c, got, what):
    """Per array: |got - keras| <= tol * max|keras| (NaN fails)."""
    tol = TOL[c["dtype"]]
    for name in expected_outputs(c):
        if name not in got:
            continue
        want = c["want"][name]
        have = np.asarray(got[name], dtype=np.float64)
        assert have.shape == want.shape, f"{c['id']} {what} {name}: shape {have.shape}, Keras {want.shape}"
        bound = tol * (np.max(np.abs(want)) if want.size else 0.0)
        diff = np.abs(have - want)
        worst = int(np.argmax(np.where(np.isnan(diff), np.inf, diff))) if diff.size else 0
        if np.any(np.isnan(diff)) or not np.all(diff <= bound):
            pytest.fail(f"{c['id']} {what} {name}[{worst}] = {have.flat[worst]!r}, "
                        f"Keras {want.flat[worst]!r}: |diff| {diff.flat[worst]:.3g} > {bound:.3g} "
                        f"({tol} x max|Keras|)")


def assert_same_bits(a, b, what):
    assert set(a) == set(b), f"{what}: outputs {sorted(a)} vs {sorted(b)}"
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        assert x.dtype == y.dtype and x.shape == y.shape, \
            f"{what} {name}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}"
        if not np.array_equal(x, y):
            k = int(np.argmax(x.reshape(-1) != y.reshape(-1)))
            pytest.fail(f"{what} {name} differs first at [{k}]: {x.flat[k]!r} vs {y.flat[k]!r}")


# ---------------------------------------------------------------------------
# /v1 with plain requests
# ---------------------------------------------------------------------------


def v1_body(c, labels=None, x=None, outputs=None, config=None):
    x = c["x"] if x is None else x
    body = {
        "labels": (c["labels"] if labels is None else labels).tolist(),
        "embeddings": x.tolist(),
        "config": c["config"] if config is None else config,
        "normalize": c["normalize"],
    }
    if c["sw"] is not None:
        body["sample_weight"] = c["sw"].tolist()
    if c["ref_labels"] is not None:
        body["ref_labels"] = c["ref_labels"].tolist()
        body["ref_embeddings"] = c["rx"].tolist()
    if outputs is not None:
        body["outputs"] = list(outputs)
    return body


def v1(url, body):
    """POSTs to /v1/loss; returns the outputs as numpy arrays of the response
    dtype (float32 values parse exactly from their 9 digits)."""
    r = requests.post(url + "/v1/loss", json=body, timeout=60)
    assert r.status_code == 200, f"/v1/loss {r.status_code}: {r.text}"
    j = r.json()
    dt = NP_DTYPE[j["dtype"]]
    out = {}
    for name in OUTPUTS:
        if name in j:
            out[name] = np.atleast_1d(np.array(j[name], dtype=np.float64)).astype(dt)
    return out, j


# ---------------------------------------------------------------------------
# /v2 with the stock tritonclient
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(circled):
    c = httpclient.InferenceServerClient(urlparse(circled).netloc, connection_timeout=30,
                                         network_timeout=60)
    yield c
    c.close()


ENCODINGS = list(itertools.product(
    ("INT64", "INT32"),            # label datatype
    ("n", "n1"),                   # labels shaped [N] or [N, 1]
    (True, False),                 # binary inputs
    (True, False),                 # binary outputs
    (None, "gzip", "deflate"),     # request compression
))


def enc_id(e):
    lt, ls, bi, bo, comp = e
    return f"{lt}-{'[N,1]' if ls == 'n1' else '[N]'}-in_{'bin' if bi else 'json'}-" \
           f"out_{'bin' if bo else 'json'}-{comp or 'plain'}"


def tensor(name, a, datatype, binary):
    t = httpclient.InferInput(name, list(a.shape), datatype)
    t.set_data_from_numpy(a, binary_data=binary)
    return t


def v2_inputs(c, enc, labels=None, x=None, xtype=None):
    lt, ls, bi, _, _ = enc
    labels = c["labels"] if labels is None else labels
    labels = labels.astype(np.int32 if lt == "INT32" else np.int64)
    if ls == "n1":
        labels = labels.reshape(-1, 1)
    x = c["x"] if x is None else x
    ft = TRITON_FLOAT[c["dtype"]]
    ins = [tensor("labels", labels, lt, bi), tensor("embeddings", x, xtype or ft, bi)]
    if c["sw"] is not None:
        ins.append(tensor("sample_weight", c["sw"], ft, bi))
    if c["ref_labels"] is not None:
        rl = c["ref_labels"].astype(labels.dtype)
        ins.append(tensor("ref_labels", rl.reshape(-1, 1) if ls == "n1" else rl, lt, bi))
        ins.append(tensor("ref_embeddings", c["rx"], ft, bi))
    return ins


def v2_params(c, **extra):
    p = {k: c["config"][k] for k in ("gamma", "margin", "remove_diagonal", "reduction")}
    p["normalize"] = c["normalize"]
    p.update(extra)
    return p


def v2(client, c, enc, outputs=None, params=None, **kw):
    """Runs one infer; returns ({name: array}, raw response dict)."""
    _, _, _, bo, comp = enc
    names = expected_outputs(c) if outputs is None else outputs
    req_out = [httpclient.InferRequestedOutput(n, binary_data=bo) for n in names]
    r = client.infer("circle", v2_inputs(c, enc, **kw), outputs=req_out,
                     parameters=v2_params(c) if params is None else params,
                     request_compression_algorithm=comp)
    resp = r.get_response()
    assert resp["model_name"] == "circle"
    got = {o["name"]: r.as_numpy(o["name"]) for o in resp["outputs"]}
    for o in resp["outputs"]:
        assert ("binary_data_size" in o.get("parameters", {})) == bo, \
            f"output {o['name']} binary={bo} requested; got {o}"
    return got, resp


def check_shapes(c, got, resp):
    n, d = c["x"].shape
    ft = TRITON_FLOAT[c["dtype"]]
    elementwise = c["config"]["reduction"] in (None, "none")
    shapes = {"loss": [n] if elementwise else [1], "per_sample_loss": [n],
              "embeddings_grad": [n, d],
              "ref_embeddings_grad": None if c["rx"] is None else list(c["rx"].shape)}
    for o in resp["outputs"]:
        assert o["datatype"] == ft, f"{c['id']} {o['name']}: {o['datatype']}, expected {ft}"
        assert o["shape"] == shapes[o["name"]], f"{c['id']} {o['name']}: shape {o['shape']}"


# ---------------------------------------------------------------------------
# Health and metadata
# ---------------------------------------------------------------------------


def test_interop_should_report_server_and_model_health(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("circle")
    assert client.is_model_ready("circle", "1")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("circle", "2")


def test_interop_should_give_server_and_model_metadata(client):
    meta = client.get_server_metadata()
    assert meta["name"] == "circled" and meta["version"]
    assert "binary_tensor_data" in meta["extensions"]
    for version in ("", "1"):
        mm = client.get_model_metadata("circle", version)
        assert mm["name"] == "circle"
        assert "1" in mm["versions"]
        inputs = {t["name"]: t for t in mm["inputs"]}
        assert set(inputs) == {"labels", "embeddings", "sample_weight", "ref_labels", "ref_embeddings"}
        assert inputs["embeddings"]["shape"] == [-1, -1]
        assert {t["name"] for t in mm["outputs"]} == set(OUTPUTS)
        for t in mm["inputs"] + mm["outputs"]:
            assert t["datatype"] in ("INT32", "INT64", "FP16", "BF16", "FP32", "FP64")


def test_interop_should_give_the_model_config(client, circled):
    defaults = requests.get(circled + "/config", timeout=10).json()
    for version in ("", "1"):
        cfg = client.get_model_config("circle", version)
        assert cfg["name"] == "circle" and cfg["max_batch_size"] == 0
        assert [t["name"] for t in cfg["input"]] == [
            "labels", "embeddings", "sample_weight", "ref_labels", "ref_embeddings"]
        assert [t["name"] for t in cfg["output"]] == list(OUTPUTS)
        params = {k: v["string_value"] for k, v in cfg["parameters"].items()}
        # The defaults a request gets, spelt as GET /config spells them.
        assert float(params["gamma"]) == defaults["gamma"]
        assert float(params["margin"]) == defaults["margin"]
        assert params["remove_diagonal"] == str(defaults["remove_diagonal"]).lower()
        assert params["reduction"] == defaults["reduction"]
        assert params["dtype"] == defaults.get("dtype", "float32")
    with pytest.raises(InferenceServerException) as ei:
        client.get_model_config("nope")
    assert ei.value.status() == "404"


def test_interop_should_refuse_metadata_of_an_unknown_model(client, circled):
    for model, version, path in (("nope", "", "/v2/models/nope"),
                                 ("circle", "2", "/v2/models/circle/versions/2")):
        raw = requests.get(circled + path, timeout=10)
        with pytest.raises(InferenceServerException) as ei:
            client.get_model_metadata(model, version)
        assert ei.value.status() == "404" == str(raw.status_code)
        assert ei.value.message() == raw.json()["error"]


# ---------------------------------------------------------------------------
# Numbers: every golden case through /v1 and /v2
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case_id,enc", [
    (p.stem, ENCODINGS[i % len(ENCODINGS)]) for i, p in enumerate(GOLDEN_PATHS)
], ids=lambda v: v if isinstance(v, str) else enc_id(v))
def test_interop_v2_should_equal_v1_and_keras(client, circled, case_id, enc):
    c = CASES[case_id]
    one, j = v1(circled, v1_body(c))
    assert j["dtype"] == c["dtype"]
    assert set(one) == set(expected_outputs(c))
    assert_close_to_keras(c, one, "/v1")
    two, resp = v2(client, c, enc)
    check_shapes(c, two, resp)
    assert_same_bits(two, one, f"{case_id} /v2 {enc_id(enc)} vs /v1")
    assert_close_to_keras(c, two, f"/v2 {enc_id(enc)}")


def test_golden_cases_should_cover_what_interop_claims():
    """The golden set has what the cycled test relies on; if it shrinks,
    this says so instead of quietly testing less."""
    assert len(CASES) >= len(ENCODINGS)
    reds = {c["config"]["reduction"] for c in CASES.values()}
    assert reds == {"sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none", None}
    assert {c["dtype"] for c in CASES.values()} == {"float32", "float64"}
    assert any(c["sw"] is not None for c in CASES.values())
    assert any(c["rx"] is not None for c in CASES.values())
    assert any(c["normalize"] for c in CASES.values())


@pytest.mark.parametrize("enc", ENCODINGS, ids=enc_id)
def test_interop_every_encoding_should_carry_a_reference_set_case(client, circled, enc):
    for case_id in ("ref_null_32", "n512_ref_64"):
        c = CASES[case_id]
        one, _ = v1(circled, v1_body(c))
        two, resp = v2(client, c, enc)
        check_shapes(c, two, resp)
        assert_same_bits(two, one, f"{case_id} /v2 {enc_id(enc)} vs /v1")
        assert_close_to_keras(c, two, f"/v2 {enc_id(enc)}")


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean",
                                       "mean_with_sample_weight", "none", None])
def test_interop_reduction_parameter_should_select_the_reduction(client, circled, reduction):
    """One input set, every reduction through parameters: each must match
    /v1 with that reduction and the golden file made with it."""
    for dt in ("32", "64"):
        name = "null" if reduction is None else reduction
        c = CASES[f"red_{name}_sw_{dt}"]
        assert c["config"]["reduction"] == reduction
        enc = ("INT64", "n", True, True, None)
        two, resp = v2(client, c, enc, params=v2_params(c, reduction=reduction))
        check_shapes(c, two, resp)
        assert_same_bits(two, v1(circled, v1_body(c))[0], f"{c['id']} /v2 vs /v1")
        assert_close_to_keras(c, two, "/v2")


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_interop_compressed_responses_should_carry_the_same_bits(client, circled, algorithm):
    c = CASES["n512_ref_64"]
    for binary in (True, False):
        enc = ("INT64", "n", binary, binary, None)
        plain, _ = v2(client, c, enc)
        names = expected_outputs(c)
        r = client.infer("circle", v2_inputs(c, enc),
                         outputs=[httpclient.InferRequestedOutput(n, binary_data=binary) for n in names],
                         parameters=v2_params(c), response_compression_algorithm=algorithm)
        assert_same_bits({n: r.as_numpy(n) for n in names}, plain, f"{algorithm} response")
    # The server did compress (requests undoes it and keeps the header).
    raw = requests.post(circled + "/v1/loss", json=v1_body(c), timeout=60,
                        headers={"Accept-Encoding": algorithm})
    assert raw.status_code == 200 and raw.headers.get("Content-Encoding") == algorithm


def test_interop_outputs_subset_should_return_only_those(client, circled):
    c = CASES["ref_mean_64"]
    enc = ("INT64", "n", True, False, None)
    full, _ = v2(client, c, enc)
    for k in range(1, len(OUTPUTS) + 1):
        for subset in itertools.combinations(OUTPUTS, k):
            got, resp = v2(client, c, enc, outputs=list(subset))
            assert [o["name"] for o in resp["outputs"]] == list(subset)
            assert_same_bits(got, {s: full[s] for s in subset}, f"outputs {subset}")
            one, j = v1(circled, v1_body(c, outputs=subset))
            assert_same_bits(one, got, f"/v1 outputs {subset}")


def test_interop_stats_parameter_false_should_leave_the_figures_out(client):
    """parameters.stats: false drops the quality figures and nothing else:
    the outputs carry the same bits."""
    c = CASES["ref_mean_64"]
    enc = ("INT64", "n", True, False, None)
    full, with_stats = v2(client, c, enc)
    assert "pos_row_frac" in with_stats["parameters"]
    got, resp = v2(client, c, enc, params=v2_params(c, stats=False))
    assert "parameters" not in resp, resp.get("parameters")
    assert_same_bits(got, full, "stats: false")


def test_interop_without_requested_outputs_should_return_all_binary(client):
    c = CASES["nodiag_ref_64"]
    r = client.infer("circle", v2_inputs(c, ("INT64", "n", True, True, None)),
                     parameters=v2_params(c))
    resp = r.get_response()
    assert [o["name"] for o in resp["outputs"]] == list(OUTPUTS)
    assert all("binary_data_size" in o["parameters"] for o in resp["outputs"])
    assert_close_to_keras(c, {o: r.as_numpy(o) for o in OUTPUTS}, "/v2 default outputs")


def test_interop_dtype_parameter_should_compute_fp32_input_in_float64(client, circled):
    c = CASES["ref_sum_32"]
    enc = ("INT64", "n", True, True, "gzip")
    got, resp = v2(client, c, enc, params=v2_params(c, dtype="float64"))
    assert {o["datatype"] for o in resp["outputs"]} == {"FP64"}
    one, j = v1(circled, v1_body(c, config={**c["config"], "dtype": "float64"}))
    assert j["dtype"] == "float64"
    assert_same_bits(got, one, "FP32 input with dtype float64")


# ---------------------------------------------------------------------------
# Reduced-precision inputs, exact labels
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("xtype,npdt", [("FP16", np.float16), ("BF16", ml_dtypes.bfloat16)])
@pytest.mark.parametrize("case_id", ["ref_sum_32", "red_mean_with_sample_weight_sw_32", "normalize_32"])
def test_interop_half_inputs_should_compute_in_float32_on_the_rounded_values(
        client, circled, xtype, npdt, case_id):
    c = CASES[case_id]
    # Only the embeddings travel in half precision; the other inputs are FP32.
    xh = c["x"].astype(npdt)
    rounded = xh.astype(np.float32)
    assert not np.array_equal(rounded, c["x"]), "rounding must change the input"
    for comp in (None, "deflate"):
        got, resp = v2(client, c, ("INT32", "n1", True, True, comp), x=xh, xtype=xtype)
        assert {o["datatype"] for o in resp["outputs"]} == {"FP32"}
        one, j = v1(circled, v1_body(c, x=rounded))
        assert j["dtype"] == "float32"
        assert_same_bits(got, one, f"{xtype} {case_id} vs /v1 float32 on rounded values")


FLUSH_HALF_CASES = sorted(k for k, c in CASES.items()
                          if k.startswith("flush_") and c["dtype"] == "float32"
                          and k != "flush_report_32")


def test_golden_flush_cases_should_be_there_for_half_inputs():
    """The subnormal-flush cases below exist (every reduction, kept and
    flushed, the 24-row and reference-set mixes)."""
    assert len(FLUSH_HALF_CASES) >= 18, FLUSH_HALF_CASES


@pytest.mark.parametrize("xtype,npdt", [("FP16", np.float16), ("BF16", ml_dtypes.bfloat16)])
@pytest.mark.parametrize("case_id", FLUSH_HALF_CASES)
def test_interop_half_inputs_should_match_keras_at_the_subnormal_flush(
        client, circled, xtype, npdt, case_id):
    """Rows on either side of softplus' subnormal flush, sent as FP16/BF16
    embeddings whose values (0, +-0.5, 1) are exact in half precision: the
    float32 compute must give Keras' float32 numbers, masked rows and
    divisors included, and /v1's bits."""
    c = CASES[case_id]
    xh = c["x"].astype(npdt)
    assert np.array_equal(xh.astype(np.float32), c["x"]), "the case must be exact in half precision"
    got, resp = v2(client, c, ("INT64", "n", True, True, None), x=xh, xtype=xtype)
    assert {o["datatype"] for o in resp["outputs"]} == {"FP32"}
    assert_close_to_keras(c, got, f"/v2 {xtype}")
    assert_same_bits(got, v1(circled, v1_body(c))[0], f"{xtype} {case_id} vs /v1")


@pytest.mark.parametrize("binary", [True, False], ids=["bin", "json"])
def test_interop_int64_labels_should_compare_exactly(client, circled, binary):
    """2**62 + k and 2**62 + k + 1 collapse to one double; as INT64 they
    must stay distinct, so the result is bit for bit that of labels k."""
    c = CASES["ref_mean_with_sample_weight_32"]
    big = dict(c, labels=c["labels"] + 2**62, ref_labels=c["ref_labels"] + 2**62)
    assert len(set(big["labels"].astype(np.float64))) < len(set(big["labels"]))
    enc = ("INT64", "n", binary, True, None)
    assert_same_bits(v2(client, big, enc)[0], v2(client, c, enc)[0],
                     "/v2 INT64 labels near 2**62 vs the same labels near 0")
    assert_same_bits(v1(circled, v1_body(big))[0], v1(circled, v1_body(c))[0],
                     "/v1 labels near 2**62 vs the same labels near 0")


def test_interop_v1_string_labels_should_equal_integer_labels(client, circled):
    c = CASES["ref_none_64"]
    body = v1_body(c)
    body["labels"] = [f"class-{v}" for v in body["labels"]]
    body["ref_labels"] = [f"class-{v}" for v in body["ref_labels"]]
    strings, _ = v1(circled, body)
    got, _ = v2(client, c, ("INT32", "n", False, False, "gzip"))
    assert_same_bits(strings, got, "/v1 string labels vs /v2 INT32 labels")


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def small_inputs_json(n_labels=7, n_rows=8):
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, size=n_labels).astype(np.int64)
    x = rng.normal(size=(n_rows, 4)).astype(np.float32)
    return labels, x


def expect_error(client, circled, model, labels, x, params, status, outputs=None,
                 label_type="INT64"):
    """Sends one request through tritonclient (JSON tensors) and the very same
    body through requests: the exception must carry the status and message
    that circled wrote in {"error": ...}."""
    body = {"inputs": [
        {"name": "labels", "shape": list(labels.shape), "datatype": label_type,
         "data": labels.tolist()},
        {"name": "embeddings", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()},
    ], "parameters": params}
    if outputs:
        body["outputs"] = [{"name": o, "parameters": {"binary_data": False}} for o in outputs]
    raw = requests.post(f"{circled}/v2/models/{model}/infer", data=json.dumps(body), timeout=30)
    assert raw.status_code == status, raw.text
    message = raw.json()["error"]
    assert isinstance(message, str) and message

    lt = httpclient.InferInput("labels", list(labels.shape), label_type)
    lt.set_data_from_numpy(labels.astype(np.int64 if label_type == "INT64" else np.float32),
                           binary_data=False)
    xt = tensor("embeddings", x, "FP32", False)
    outs = [httpclient.InferRequestedOutput(o, binary_data=False) for o in outputs or []] or None
    with pytest.raises(InferenceServerException) as ei:
        client.infer(model, [lt, xt], outputs=outs, parameters=params)
    assert ei.value.status() == str(status)
    assert ei.value.message() == message
    return message


def test_interop_unknown_model_should_raise_404_with_the_server_message(client, circled):
    labels, x = small_inputs_json(8, 8)
    msg = expect_error(client, circled, "nope", labels, x, {}, 404)
    assert "nope" in msg


def test_interop_bad_shape_should_raise_400_with_the_server_message(client, circled):
    labels, x = small_inputs_json(7, 8)
    msg = expect_error(client, circled, "circle", labels, x, {}, 400)
    assert "7" in msg and "8" in msg


def test_interop_bad_parameters_outputs_and_datatypes_should_raise_400(client, circled):
    labels, x = small_inputs_json(8, 8)
    msg = expect_error(client, circled, "circle", labels, x, {"gamma": -1.0}, 400)
    assert "gamma" in msg
    msg = expect_error(client, circled, "circle", labels, x, {"reduction": "median"}, 400)
    assert "reduction" in msg
    msg = expect_error(client, circled, "circle", labels, x, {}, 400, outputs=["loss", "logits"])
    assert "logits" in msg
    msg = expect_error(client, circled, "circle", labels, x, {}, 400, label_type="FP32")
    assert "labels" in msg


def test_interop_errors_should_leave_the_server_serving(client, circled):
    # After every error above, a good request still gets Keras' numbers.
    c = CASES["defaults_32"]
    got, _ = v2(client, c, ("INT64", "n", True, True, "gzip"))
    assert_close_to_keras(c, got, "/v2 after errors")
