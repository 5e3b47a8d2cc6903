"""test_retrieval.py -- circled's retrieval figures (precision_at_1,
r_precision, map_at_r and the number of queries) are pytorch-metric-learning's
AccuracyCalculator's, over /v1, the Open Inference Protocol's JSON route and
gRPC, and they are there only when asked for.

What must stay true, and how it is checked:

  * every case of tests/golden/retrieval/retrieval.json (written by
    tests/golden/retrieval_generate.py with real pytorch-metric-learning:
    self-referenced and reference-set batches, clustered and random rows,
    lone queries, one class, one row, duplicate rows) gives PML's figures
    within 1e-6 absolute, and `queries` exactly, through /v1 (outputs
    ["retrieval"]), /v2 JSON (parameters.retrieval: true) and tritonclient.grpc
    (InferParameter retrieval = true), computed in float32 and in float64;
    and once more over /v1 against a circled started with --materialize-mb 1
    and --block-rows 16, so the two largest cases (N x M past 1 MiB) go
    through the engine's streamed path in many row blocks;
  * normalize decides the similarity, as it does for the loss: normalize
    true gives PML's figures for CosineSimilarity, false those for
    DotProductSimilarity(normalize_embeddings=False) on the raw rows, and the
    golden file holds cases where the two differ;
  * without the option nothing retrieval-related is in the answer: /v1 with
    outputs left out or naming others, /v2 and gRPC without the parameter or
    with it false; with parameters.stats false and retrieval true the
    response parameters are the retrieval figures alone;
  * a retrieval parameter that is not a boolean is a 400 "wrong_type" over
    /v2 and INVALID_ARGUMENT over gRPC, with the same message; a misspelt
    /v1 output name lists "retrieval" among the names it takes.

The tolerance, 1e-6 absolute, is fixed here: the figures are ratios of
counts, so once the rankings agree only summation order is left (about
1e-15). The golden data keeps every ranking that matters 1e-5 (relative)
clear of a near-tie, so float32 rounding cannot change one.
"""

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import run_circled

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "retrieval" / "retrieval.json"
TOL = 1e-6
FIGURES = ("precision_at_1", "r_precision", "map_at_r")
DOC = json.loads(GOLDEN.read_text())
CASES = {c["name"]: c for c in DOC["cases"]}
SIMILARITY = {True: "cosine", False: "dot"}  # normalize -> expected set
DTYPES = ("float32", "float64")


def arrays(c):
    """The case's inputs as numpy: labels int64, embeddings float32 (the
    stored doubles are float32 values exactly)."""
    out = {"labels": np.array(c["labels"], dtype=np.int64),
           "embeddings": np.array(c["embeddings"], dtype=np.float32)}
    if "ref_labels" in c:
        out["ref_labels"] = np.array(c["ref_labels"], dtype=np.int64)
        out["ref_embeddings"] = np.array(c["ref_embeddings"], dtype=np.float32)
    return out


def check(got, c, normalize, what):
    """got: {"precision_at_1", "r_precision", "map_at_r", "queries"}."""
    want = c["expected"][SIMILARITY[normalize]]
    assert set(got) == set(FIGURES) | {"queries"}, f"{what}: keys {sorted(got)}"
    assert got["queries"] == want["queries"] and isinstance(got["queries"], int), \
        f"{what}: queries {got['queries']!r}, PML {want['queries']}"
    for f in FIGURES:
        assert abs(got[f] - want[f]) <= TOL, \
            f"{what}: {f} = {got[f]!r}, PML {want[f]!r} (|diff| > {TOL})"


# ---------------------------------------------------------------------------
# The three protocols
# ---------------------------------------------------------------------------


def v1_body(c, normalize, dtype, outputs=("retrieval",)):
    body = {"labels": c["labels"], "embeddings": c["embeddings"],
            "normalize": normalize, "config": {"dtype": dtype}}
    if "ref_labels" in c:
        body["ref_labels"] = c["ref_labels"]
        body["ref_embeddings"] = c["ref_embeddings"]
    if outputs is not None:
        body["outputs"] = list(outputs)
    return body


def post_v1(url, body):
    r = requests.post(url + "/v1/loss", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def oip_body(c, parameters, outputs=({"name": "loss"},)):
    a = arrays(c)
    inputs = []
    for name, v in a.items():
        inputs.append({"name": name, "shape": list(v.shape),
                       "datatype": "INT64" if v.dtype == np.int64 else "FP32",
                       "data": v.reshape(-1).tolist()})
    body = {"inputs": inputs, "parameters": parameters}
    if outputs is not None:
        body["outputs"] = list(outputs)
    return body


def post_oip(url, body):
    r = requests.post(url + "/v2/models/circle/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def from_params(p, prefix="retrieval_"):
    return {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}


def grpc_infer(client, c, parameters):
    a = arrays(c)
    inputs = []
    for name, v in a.items():
        t = grpcclient.InferInput(name, list(v.shape), "INT64" if v.dtype == np.int64 else "FP32")
        t.set_data_from_numpy(v)
        inputs.append(t)
    return client.infer("circle", inputs, outputs=[grpcclient.InferRequestedOutput("loss")],
                        parameters=parameters)


def grpc_params(result):
    """The response parameters as Python values."""
    out = {}
    for k, v in result.get_response().parameters.items():
        out[k] = getattr(v, v.WhichOneof("parameter_choice"))
    return out


@pytest.fixture(scope="module")
def gclient(circled):
    assert circled.grpc, "circled did not log 'grpc listening on'"
    g = grpcclient.InferenceServerClient(circled.grpc)
    yield g
    g.close()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", [True, False], ids=["cosine", "dot"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_v1_should_give_pml_retrieval_figures(circled, name, normalize, dtype):
    c = CASES[name]
    j = post_v1(circled, v1_body(c, normalize, dtype))
    assert set(j) == {"retrieval", "config", "dtype", "n", "m", "d"}, sorted(j)
    assert j["dtype"] == dtype
    check(j["retrieval"], c, normalize, f"/v1 {name} {dtype}")


@pytest.fixture(scope="module")
def streaming():
    """A circled that keeps no similarity matrix over 1 MiB whole."""
    with run_circled("--materialize-mb", "1", "--block-rows", "16", "--grpc-port", "off") as url:
        yield url


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", [True, False], ids=["cosine", "dot"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_v1_should_give_pml_retrieval_figures_in_row_blocks(streaming, name, normalize, dtype):
    c = CASES[name]
    j = post_v1(streaming, v1_body(c, normalize, dtype, outputs=("loss", "retrieval")))
    check(j["retrieval"], c, normalize, f"/v1 streamed {name} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", [True, False], ids=["cosine", "dot"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_oip_should_give_pml_retrieval_figures(circled, name, normalize, dtype):
    c = CASES[name]
    j = post_oip(circled, oip_body(c, {"retrieval": True, "normalize": normalize,
                                       "dtype": dtype}))
    p = j["parameters"]
    assert "recall_at_1" in p  # the stats stay on by default
    check(from_params(p), c, normalize, f"/v2 {name} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", [True, False], ids=["cosine", "dot"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_grpc_should_give_pml_retrieval_figures(gclient, name, normalize, dtype):
    c = CASES[name]
    r = grpc_infer(gclient, c, {"retrieval": True, "normalize": normalize, "dtype": dtype})
    check(from_params(grpc_params(r)), c, normalize, f"gRPC {name} {dtype}")


# ---------------------------------------------------------------------------
# What the golden file must hold for the tests above to mean something
# ---------------------------------------------------------------------------


def test_golden_file_should_cover_the_cases_that_matter():
    names = set(CASES)
    assert any("ref_embeddings" in c for c in CASES.values())
    assert any("ref_embeddings" not in c for c in CASES.values())
    # A few hundred rows; lone queries left out; none at all; copies.
    assert max(len(c["labels"]) for c in CASES.values()) >= 200
    assert any(0 < c["expected"]["cosine"]["queries"] < len(c["labels"])
               for c in CASES.values())
    assert any(c["expected"]["cosine"]["queries"] == 0 for c in CASES.values())
    assert any(c["copies"] > 0 and "ref_embeddings" not in c for c in CASES.values())
    assert any(c["copies"] > 0 and "ref_embeddings" in c for c in CASES.values())
    assert {"self_n1", "self_one_class", "ref_n1", "ref_m1"} <= names
    # Past the streaming daemon's 1 MiB in float32, self-referenced and not.
    big = [n for n, c in CASES.items()
           if len(c["labels"]) * len(c.get("ref_labels", c["labels"])) * 4 > 1 << 20]
    assert any(n.startswith("self") for n in big) and any(n.startswith("ref") for n in big)
    assert DOC["versions"]["pytorch_metric_learning"]


def test_normalize_should_decide_the_similarity():
    """The cosine and dot expectations differ on most cases, so the
    parametrized tests above prove that normalize is applied (and only
    then)."""
    differ = [n for n, c in CASES.items()
              if any(abs(c["expected"]["cosine"][f] - c["expected"]["dot"][f]) > 1e-3
                     for f in FIGURES)]
    assert len(differ) >= 8, differ


# ---------------------------------------------------------------------------
# Opt-in only
# ---------------------------------------------------------------------------


def test_v1_should_leave_retrieval_out_unless_named(circled):
    c = CASES["self_clustered_small"]
    j = post_v1(circled, v1_body(c, True, "float32", outputs=None))
    assert "stats" in j and "retrieval" not in j
    j = post_v1(circled, v1_body(c, True, "float32", outputs=("loss", "stats")))
    assert set(j) == {"loss", "stats", "config", "dtype", "n", "m", "d"}
    j = post_v1(circled, v1_body(c, True, "float32", outputs=("stats", "retrieval")))
    assert set(j) == {"stats", "retrieval", "config", "dtype", "n", "m", "d"}
    check(j["retrieval"], c, True, "/v1 with stats")
    r = requests.post(circled + "/v1/loss", timeout=10,
                      json=v1_body(c, True, "float32", outputs=("retrival",)))
    assert r.status_code == 400
    e = r.json()["error"]
    assert e["code"] == "bad_output" and '"retrieval"' in e["message"], e


def test_oip_should_leave_retrieval_out_unless_asked(circled):
    c = CASES["ref_clustered"]
    for params in ({}, {"retrieval": False}):
        p = post_oip(circled, oip_body(c, params))["parameters"]
        assert "recall_at_1" in p
        assert not [k for k in p if k.startswith("retrieval")], p
    # stats off, retrieval on: the figures are the parameters alone.
    j = post_oip(circled, oip_body(c, {"retrieval": True, "stats": False, "normalize": True}))
    assert set(j["parameters"]) == {"retrieval_" + f for f in (*FIGURES, "queries")}
    check(from_params(j["parameters"]), c, True, "/v2 stats off")
    # Both off: no parameters at all, as before.
    j = post_oip(circled, oip_body(c, {"stats": False}))
    assert "parameters" not in j


def test_oip_should_return_retrieval_with_binary_outputs(circled):
    """tritonclient.http with binary outputs: the figures are parameters of
    the JSON header, the tensors follow as bytes."""
    c = CASES["self_varied_large"]
    a = arrays(c)
    h = httpclient.InferenceServerClient(circled.split("//", 1)[1])
    try:
        inputs = []
        for name in ("labels", "embeddings"):
            v = a[name]
            t = httpclient.InferInput(name, list(v.shape), "INT64" if v.dtype == np.int64 else "FP32")
            t.set_data_from_numpy(v, binary_data=True)
            inputs.append(t)
        outs = [httpclient.InferRequestedOutput("embeddings_grad", binary_data=True)]
        r = h.infer("circle", inputs, outputs=outs,
                    parameters={"retrieval": True, "normalize": True})
        assert r.as_numpy("embeddings_grad").shape == a["embeddings"].shape
        check(from_params(r.get_response()["parameters"]), c, True, "/v2 binary")
    finally:
        h.close()


def test_grpc_should_leave_retrieval_out_unless_asked(gclient):
    c = CASES["self_singletons"]
    for params in ({}, {"retrieval": False}):
        p = grpc_params(grpc_infer(gclient, c, params))
        assert "recall_at_1" in p and not [k for k in p if k.startswith("retrieval")], p
    p = grpc_params(grpc_infer(gclient, c, {"retrieval": True, "stats": False,
                                            "normalize": True}))
    assert set(p) == {"retrieval_" + f for f in (*FIGURES, "queries")}
    check(from_params(p), c, True, "gRPC stats off")


def test_a_retrieval_parameter_that_is_not_a_boolean_should_be_refused(circled, gclient):
    c = CASES["self_n1"]
    r = requests.post(circled + "/v2/models/circle/infer", timeout=10,
                      json=oip_body(c, {"retrieval": "yes"}))
    assert r.status_code == 400
    msg = r.json()["error"]
    assert msg == "parameters.retrieval is a string; expected true or false", msg
    with pytest.raises(InferenceServerException) as ei:
        grpc_infer(gclient, c, {"retrieval": "yes"})
    assert ei.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    assert ei.value.message() == msg
    with pytest.raises(InferenceServerException) as ei:
        grpc_infer(gclient, c, {"retrieval": 1})
    assert "parameters.retrieval is a number" in ei.value.message()
