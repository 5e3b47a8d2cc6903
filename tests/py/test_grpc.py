"""test_grpc.py -- the stock tritonclient.grpc works against circled
unchanged, and the Open Inference Protocol over gRPC gives exactly what the
HTTP route (/v2, binary tensors) gives, which is what real Keras gives.

What must stay true, and how it is checked:

  * health, metadata and config through tritonclient.grpc say what the HTTP
    routes say (GET /v2, /v2/models/circle, /v2/models/circle/config), and
    grpc.health.v1.Health/Check answers SERVING for "" and the inference
    service, NOT_FOUND for another service;
  * every golden case (tests/golden/*.json, written by Keras 3 + jax.grad)
    goes through tritonclient.grpc (raw_input_contents, its only way) with
    labels INT32 or INT64, and its answer equals tritonclient.http's binary
    answer for the same request BIT FOR BIT, and Keras within the tolerances
    of test_interop (float32 1e-4, float64 1e-9 of max|keras|, per array);
  * FP16 embeddings over gRPC equal FP16 over HTTP bit for bit;
  * typed contents (fp32_contents, fp64_contents, int_contents,
    int64_contents), sent with a stub built by grpcio from the protocol's
    messages (tritonclient's own service_pb2), give the same bits as raw;
  * errors are gRPC status codes carrying the HTTP route's very message:
    INVALID_ARGUMENT (400), NOT_FOUND (unknown model), RESOURCE_EXHAUSTED
    (413 limits, and a message over --max-body-mb), UNAUTHENTICATED without
    the bearer token in the authorization metadata, UNIMPLEMENTED for a
    method circled does not serve;
  * /metrics counts gRPC calls under endpoint="grpc:ModelInfer".
"""


import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from conftest import run_circled
from test_interop import GOLDEN_DIR, OUTPUTS, TOL, load_case

CASES = sorted(p for p in GOLDEN_DIR.glob("*.json"))
TRITON_FLOAT = {"float32": "FP32", "float64": "FP64"}


@pytest.fixture(scope="module")
def clients(circled):
    assert circled.grpc, "circled did not log 'grpc listening on'"
    g = grpcclient.InferenceServerClient(circled.grpc)
    h = httpclient.InferenceServerClient(circled.split("//", 1)[1])
    yield circled, g, h
    g.close()
    h.close()


def stub(target):
    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(target))


def raw_call(target, method, request):
    """Calls method with request bytes; returns the response bytes."""
    with grpc.insecure_channel(target) as ch:
        return ch.unary_unary(method, request_serializer=lambda b: b,
                              response_deserializer=lambda b: b)(request)


# ---------------------------------------------------------------------------
# Health, metadata, config
# ---------------------------------------------------------------------------


def test_grpc_should_answer_health_like_http(clients):
    url, g, _ = clients
    assert g.is_server_live() and g.is_server_ready() and g.is_model_ready("circle")
    assert requests.get(url + "/v2/health/ready").status_code == 200
    with pytest.raises(InferenceServerException) as e:
        g.is_model_ready("other")
    assert e.value.status() == "StatusCode.NOT_FOUND"
    assert e.value.message() == requests.get(url + "/v2/models/other/ready").json()["error"]


def test_grpc_health_check_should_serve_the_standard_protocol(clients):
    url, _, _ = clients

    def check(req):
        return raw_call(url.grpc, "/grpc.health.v1.Health/Check", req)
    # HealthCheckRequest{service = 1}; HealthCheckResponse{status = 1}, SERVING = 1.
    assert check(b"") == b"\x08\x01"
    svc = b"inference.GRPCInferenceService"
    assert check(b"\x0a" + bytes([len(svc)]) + svc) == b"\x08\x01"
    with pytest.raises(grpc.RpcError) as e:
        check(b"\x0a\x03foo")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_metadata_should_equal_the_http_metadata(clients):
    url, g, _ = clients
    sm = g.get_server_metadata(as_json=True)
    hs = requests.get(url + "/v2").json()
    assert (sm["name"], sm["version"], sm["extensions"]) == (hs["name"], hs["version"],
                                                              hs["extensions"])
    mm = g.get_model_metadata("circle", as_json=True)
    hm = requests.get(url + "/v2/models/circle").json()
    assert (mm["name"], mm["versions"], mm["platform"]) == (hm["name"], hm["versions"],
                                                             hm["platform"])
    for key in ("inputs", "outputs"):
        got = [(t["name"], t["datatype"], [int(s) for s in t["shape"]]) for t in mm[key]]
        want = [(t["name"], t["datatype"], t["shape"]) for t in hm[key]]
        assert got == want


def test_grpc_model_config_should_equal_the_http_config(clients):
    url, g, _ = clients
    c = g.get_model_config("circle", as_json=True)["config"]
    h = requests.get(url + "/v2/models/circle/config").json()
    for key in ("name", "platform", "backend"):
        assert c[key] == h[key]
    assert int(c["version_policy"]["latest"]["num_versions"]) == 1
    assert c["parameters"] == h["parameters"]
    for key in ("input", "output"):
        got = [(t["name"], t["data_type"], [int(s) for s in t["dims"]], t.get("optional", False))
               for t in c[key]]
        want = [(t["name"], t["data_type"], t["dims"], t.get("optional", False)) for t in h[key]]
        assert got == want


# ---------------------------------------------------------------------------
# Inference: gRPC == HTTP binary, bit for bit, and == Keras
# ---------------------------------------------------------------------------


def tensors(mod, c, label_type, emb_type=None):
    """Inputs of golden case c for client module mod (binary for HTTP)."""
    dt = emb_type or TRITON_FLOAT[c["dtype"]]
    arrays = [("labels", c["labels"].astype(np.int32 if label_type == "INT32" else np.int64),
               label_type),
              ("embeddings", c["x"].astype(np.float16) if dt == "FP16" else c["x"], dt)]
    if c["sw"] is not None:
        arrays.append(("sample_weight", c["sw"], TRITON_FLOAT[c["dtype"]]))
    if c["ref_labels"] is not None:
        arrays.append(("ref_labels", c["ref_labels"].astype(arrays[0][1].dtype), label_type))
        arrays.append(("ref_embeddings", c["rx"], TRITON_FLOAT[c["dtype"]]))
    out = []
    for name, a, t in arrays:
        i = mod.InferInput(name, list(a.shape), t)
        if mod is httpclient:
            i.set_data_from_numpy(a, binary_data=True)
        else:
            i.set_data_from_numpy(a)
        out.append(i)
    return out


def params(c, grpc_side=False):
    """The case's config as parameters. InferParameter has no null: over
    gRPC reduction None goes as "none", which computes the same numbers
    (circle.h); test_grpc_reduction_null_should_be_an_empty_parameter sends
    the null itself."""
    p = {k: v for k, v in c["config"].items() if k != "dtype"}
    if p["reduction"] is None and grpc_side:
        p["reduction"] = "none"
    p["dtype"] = c["dtype"]
    p["normalize"] = c["normalize"]
    return p


def infer_both(g, h, c, label_type, emb_type=None):
    names = [o for o in OUTPUTS if o != "ref_embeddings_grad" or c["ref_labels"] is not None]
    rg = g.infer("circle", tensors(grpcclient, c, label_type, emb_type),
                 parameters=params(c, grpc_side=True),
                 outputs=[grpcclient.InferRequestedOutput(o) for o in names])
    rh = h.infer("circle", tensors(httpclient, c, label_type, emb_type), parameters=params(c),
                 outputs=[httpclient.InferRequestedOutput(o, binary_data=True) for o in names])
    return names, rg, rh


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_grpc_infer_should_equal_http_bit_for_bit_and_keras(clients, path):
    _, g, h = clients
    c = load_case(path)
    label_type = "INT32" if CASES.index(path) % 2 else "INT64"
    names, rg, rh = infer_both(g, h, c, label_type)
    for o in names:
        got, ref = rg.as_numpy(o), rh.as_numpy(o)
        assert got.dtype == ref.dtype and got.shape == ref.shape, o
        assert got.tobytes() == ref.tobytes(), f"{o}: gRPC and HTTP differ"
        want = c["want"][o]
        if o == "loss" and want.size == 1:
            got = got.reshape(1)
        scale = max(float(np.max(np.abs(want))), 1e-30)
        err = float(np.max(np.abs(got.astype(np.float64).reshape(want.shape) - want)))
        assert err <= TOL[c["dtype"]] * scale, f"{o}: {err} vs Keras"
    assert rg.get_response().parameters.keys() == rh.get_response()["parameters"].keys()


def test_grpc_fp16_embeddings_should_equal_http_fp16(clients):
    _, g, h = clients
    c = load_case(next(p for p in CASES if p.stem.endswith("_32")))
    names, rg, rh = infer_both(g, h, c, "INT64", emb_type="FP16")
    for o in names:
        assert rg.as_numpy(o).tobytes() == rh.as_numpy(o).tobytes(), o


def typed_request(c, label_type):
    r = service_pb2.ModelInferRequest(model_name="circle", id="typed-1")
    lab = r.inputs.add(name="labels", datatype=label_type, shape=[len(c["labels"])])
    (lab.contents.int_contents if label_type == "INT32"
     else lab.contents.int64_contents).extend(c["labels"].tolist())
    emb = r.inputs.add(name="embeddings", datatype=TRITON_FLOAT[c["dtype"]],
                       shape=list(c["x"].shape))
    (emb.contents.fp32_contents if c["dtype"] == "float32"
     else emb.contents.fp64_contents).extend(c["x"].ravel().tolist())
    for k, v in params(c, grpc_side=True).items():
        p = r.parameters[k]
        if isinstance(v, bool):
            p.bool_param = v
        elif isinstance(v, str):
            p.string_param = v
        else:
            p.double_param = float(v)
    return r


@pytest.mark.parametrize("label_type", ["INT32", "INT64"])
@pytest.mark.parametrize("suffix", ["_32", "_64"])
def test_grpc_typed_contents_should_equal_raw(clients, label_type, suffix):
    url, g, _ = clients
    path = next(p for p in CASES if p.stem.endswith(suffix)
                and load_case(p)["sw"] is None and load_case(p)["ref_labels"] is None)
    c = load_case(path)
    typed = stub(url.grpc).ModelInfer(typed_request(c, label_type))
    assert typed.id == "typed-1"
    raw = g.infer("circle", tensors(grpcclient, c, label_type),
                  parameters=params(c, grpc_side=True)).get_response()
    assert [o.name for o in typed.outputs] == [o.name for o in raw.outputs]
    assert list(typed.raw_output_contents) == list(raw.raw_output_contents)


def test_grpc_reduction_null_should_be_an_empty_parameter(clients):
    url, _, _ = clients
    c = load_case(next(p for p in CASES if p.stem.endswith("_32")))
    r = typed_request(c, "INT64")
    r.parameters["reduction"].Clear()  # an InferParameter with no value: null
    resp = stub(url.grpc).ModelInfer(r)
    loss = next(o for o in resp.outputs if o.name == "loss")
    assert list(loss.shape) == [len(c["labels"])]


# ---------------------------------------------------------------------------
# Errors: status codes with the HTTP route's messages
# ---------------------------------------------------------------------------


def small_inputs(mod, label_dtype="INT64", n=4, d=3):
    x = np.arange(n * d, dtype=np.float32).reshape(n, d) / 10
    y = np.arange(n, dtype=np.int64) % 2
    ins = [mod.InferInput("labels", [n], label_dtype), mod.InferInput("embeddings", [n, d], "FP32")]
    if label_dtype == "FP32":
        y = y.astype(np.float32)
    for i, a in zip(ins, (y, x)):
        if mod is httpclient:
            i.set_data_from_numpy(a, binary_data=True)
        else:
            i.set_data_from_numpy(a)
    return ins


def grpc_error(fn):
    with pytest.raises(InferenceServerException) as e:
        fn()
    return e.value.status(), e.value.message()


def test_grpc_bad_request_should_be_invalid_argument_with_the_http_message(clients):
    _, g, h = clients
    code, msg = grpc_error(lambda: g.infer("circle", small_inputs(grpcclient, "FP32")))
    _, hmsg = grpc_error(lambda: h.infer("circle", small_inputs(httpclient, "FP32")))
    assert code == "StatusCode.INVALID_ARGUMENT"
    assert msg == hmsg and "expected INT32 or INT64" in msg
    code, msg = grpc_error(lambda: g.infer("circle", small_inputs(grpcclient),
                                           parameters={"gamma": "big"}))
    _, hmsg = grpc_error(lambda: h.infer("circle", small_inputs(httpclient),
                                         parameters={"gamma": "big"}))
    assert code == "StatusCode.INVALID_ARGUMENT" and msg == hmsg


def test_grpc_unknown_model_should_be_not_found(clients):
    _, g, h = clients
    code, msg = grpc_error(lambda: g.infer("other", small_inputs(grpcclient)))
    _, hmsg = grpc_error(lambda: h.infer("other", small_inputs(httpclient)))
    assert code == "StatusCode.NOT_FOUND" and msg == hmsg


def test_grpc_raw_size_mismatch_should_name_the_entry(clients):
    url, _, _ = clients
    r = service_pb2.ModelInferRequest(model_name="circle")
    r.inputs.add(name="labels", datatype="INT64", shape=[2])
    r.inputs.add(name="embeddings", datatype="FP32", shape=[2, 2])
    r.raw_input_contents.extend([np.zeros(2, np.int64).tobytes(), b"\0" * 12])
    with pytest.raises(grpc.RpcError) as e:
        stub(url.grpc).ModelInfer(r)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == ("input 'embeddings': raw_input_contents[1] has 12 bytes but "
                                 "shape [2, 2] of FP32 needs 16")


def test_grpc_unknown_method_should_be_unimplemented(clients):
    url, _, _ = clients
    with pytest.raises(grpc.RpcError) as e:
        raw_call(url.grpc, "/inference.GRPCInferenceService/RepositoryIndex", b"")
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_grpc_metrics_should_count_grpc_calls(clients):
    url, g, _ = clients
    g.infer("circle", small_inputs(grpcclient))
    text = requests.get(url + "/metrics").text
    assert 'endpoint="grpc:ModelInfer"' in text


def test_grpc_limits_should_be_resource_exhausted_with_the_http_message():
    with run_circled("--max-n", "3", "--max-body-mb", "1") as url:
        g = grpcclient.InferenceServerClient(url.grpc)
        h = httpclient.InferenceServerClient(url.split("//", 1)[1])
        code, msg = grpc_error(lambda: g.infer("circle", small_inputs(grpcclient)))
        _, hmsg = grpc_error(lambda: h.infer("circle", small_inputs(httpclient)))
        assert code == "StatusCode.RESOURCE_EXHAUSTED" and msg == hmsg
        # 2 MiB of embeddings: over --max-body-mb 1, refused by gRPC itself.
        code, _ = grpc_error(lambda: g.infer("circle", small_inputs(grpcclient, n=2, d=262144)))
        assert code == "StatusCode.RESOURCE_EXHAUSTED"
        g.close()
        h.close()


def test_grpc_should_want_the_bearer_token(tmp_path):
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    with run_circled("--api-key-file", str(key)) as url:
        g = grpcclient.InferenceServerClient(url.grpc)
        assert g.is_server_live() and g.is_server_ready()
        code, msg = grpc_error(lambda: g.infer("circle", small_inputs(grpcclient)))
        assert code == "StatusCode.UNAUTHENTICATED" and "authorization: Bearer" in msg
        code, _ = grpc_error(lambda: g.infer("circle", small_inputs(grpcclient),
                                             headers={"authorization": "Bearer wrong"}))
        assert code == "StatusCode.UNAUTHENTICATED"
        r = g.infer("circle", small_inputs(grpcclient), headers={"authorization": "Bearer s3cret"})
        assert r.as_numpy("loss").shape == (1,)
        g.close()


def test_grpc_port_off_should_not_listen():
    with run_circled("--grpc-port", "off") as url:
        assert url.grpc is None
    with run_circled("--no-grpc") as url:
        assert url.grpc is None


def test_readme_grpc_example_should_run_against_circled(clients):
    url, _, _ = clients
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", readme, re.S | re.M)
              if "tritonclient.grpc" in b]
    assert len(blocks) == 1, "README lost its tritonclient.grpc example"
    code = blocks[0].replace("localhost:8081", url.grpc)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"README example failed:\n{code}\n{r.stderr}"
    assert r.stdout.strip() and "None" not in r.stdout, r.stdout


def test_grpc_inflight_budget_should_be_resource_exhausted_with_the_http_message():
    with run_circled("--max-body-mb", "1", "--max-inflight-mb", "1") as url:
        g = grpcclient.InferenceServerClient(url.grpc)
        h = httpclient.InferenceServerClient(url.split("//", 1)[1])
        # 200 x 512 float32: 400 KiB in, the same out, and the engine's
        # scratch: more than the 1 MiB this server commits to requests.
        code, msg = grpc_error(lambda: g.infer("circle", small_inputs(grpcclient, n=200, d=512)))
        outs = [httpclient.InferRequestedOutput(o, binary_data=True)
                for o in ("loss", "per_sample_loss", "embeddings_grad")]
        _, hmsg = grpc_error(lambda: h.infer("circle", small_inputs(httpclient, n=200, d=512),
                                             outputs=outs))
        assert code == "StatusCode.RESOURCE_EXHAUSTED"
        assert msg == hmsg and "--max-inflight-mb" in msg
        g.close()
        h.close()


def long_call_rows(g):
    """Rows n (d = 256) of a ModelInfer that takes about 4 s or more on this
    machine: n is doubled until one call takes >= 1 s here, then doubled once
    more (pairs grow as n^2). The default pair limit, 2^32, allows 65536."""
    n = 512
    while n < 32768:
        t0 = time.monotonic()
        g.infer("circle", small_inputs(grpcclient, n=n, d=256))
        if time.monotonic() - t0 >= 1.0:
            break
        n *= 2
    return n * 2


def wait_computing(url, calls, queued=0):
    """Waits until /metrics shows calls requests in flight besides the
    scrape itself, and queued jobs waiting for a compute thread."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = requests.get(url + "/metrics").text
        m = re.search(r"^circled_requests_in_flight (\d+)", text, re.M)
        q = re.search(r"^circled_engine_queue_depth (\d+)", text, re.M)
        if m and int(m.group(1)) >= calls + 1 and q and int(q.group(1)) >= queued:
            return
        time.sleep(0.01)
    pytest.fail(f"{calls} calls ({queued} queued) never showed as in flight")


def test_grpc_full_queue_should_be_resource_exhausted_with_the_http_message():
    """One compute thread, a queue of one: with a long call computing and
    another waiting, a third gets RESOURCE_EXHAUSTED and the message HTTP
    gives for a full queue. The long call is sized from this machine's
    speed; the test fails (not skips) if it was over too soon."""
    with run_circled("--workers", "1", "--max-queue", "1") as url:
        g = grpcclient.InferenceServerClient(url.grpc)
        n = long_call_rows(g)
        done = []
        for k in range(2):  # one computing, then one waiting
            g.async_infer("circle", small_inputs(grpcclient, n=n, d=256),
                          callback=lambda result, error: done.append(error))
            wait_computing(url, k + 1, queued=k)
        code, msg = grpc_error(lambda: g.infer("circle", small_inputs(grpcclient)))
        assert not done, "premise failed: the long calls were over before the third"
        assert code == "StatusCode.RESOURCE_EXHAUSTED"
        assert msg == "the compute queue is full; retry after a second"
        h = httpclient.InferenceServerClient(url.split("//", 1)[1])
        _, hmsg = grpc_error(lambda: h.infer("circle", small_inputs(httpclient)))
        assert hmsg == msg
        deadline = time.monotonic() + 300
        while len(done) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done == [None, None]
        g.close()
        h.close()


def test_grpc_drain_should_finish_calls_in_flight_and_refuse_new_ones():
    """SIGTERM while a ModelInfer computes: that call still gets its answer,
    a new call gets UNAVAILABLE, circled exits 0 (run_circled checks). The
    computation is sized from this machine's own speed to take >= 2 s, and
    the test fails (not skips) if it was over before the new call."""
    with run_circled("--drain-timeout", "30") as url:
        g = grpcclient.InferenceServerClient(url.grpc)
        n = long_call_rows(g)
        done = []
        g.async_infer("circle", small_inputs(grpcclient, n=n, d=256),
                      callback=lambda result, error: done.append((result, error)))
        wait_computing(url, 1)
        os.kill(url.pid, signal.SIGTERM)
        fresh = grpcclient.InferenceServerClient(url.grpc)
        code = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and code is None:
            try:
                fresh.infer("circle", small_inputs(grpcclient))
                time.sleep(0.01)  # the listener may not have closed yet
            except InferenceServerException as e:
                code = e.status()
        assert code == "StatusCode.UNAVAILABLE"
        assert not done, f"premise failed: the {n}-row call was over before the new call"
        deadline = time.monotonic() + 120
        while not done and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done, "the call in flight never got its answer"
        result, error = done[0]
        assert error is None, f"{error.status()}: {error.message()} (n={n})"
        assert result.as_numpy("embeddings_grad").shape == (n, 256)
        g.close()
        fresh.close()


def test_grpc_idle_connection_should_be_closed_after_timeout():
    """--timeout closes a gRPC connection with no call in progress (gRPC's
    max_connection_idle), as it closes an idle HTTP connection; the client
    reconnects on its next call."""
    with run_circled("--timeout", "1") as url:
        port = url.grpc.rsplit(":", 1)[1]

        def connections():
            out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                                 capture_output=True, text=True, check=True).stdout
            return len(out.strip().splitlines())
        with grpc.insecure_channel(url.grpc) as ch:
            check = ch.unary_unary("/grpc.health.v1.Health/Check",
                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)
            assert check(b"") == b"\x08\x01"
            assert connections() == 1
            deadline = time.monotonic() + 30
            while connections() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert connections() == 0, "the idle connection is still open after 30 s"
            assert check(b"") == b"\x08\x01" and connections() == 1
