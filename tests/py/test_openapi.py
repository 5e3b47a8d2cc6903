"""test_openapi.py -- openapi.yaml is a valid OpenAPI 3.1 document that
describes exactly the routes circled serves, with the error shapes, codes and
headers circled sends.

Three sources are held against the document: the list of served routes kept
below (SERVED_ROUTES, to be edited with the server), the route and error-code
literals in src/, and -- where build/circled exists -- the live server, whose
answers to the document's own examples must match the documented schemas.
"""

import contextlib
import gzip
import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec

import errors_table

ROOT = Path(__file__).resolve().parents[2]
SPEC_PATH = ROOT / "openapi.yaml"

# Every (method, path) circled serves. HEAD, answered on every GET route, is
# left implicit. Edit with src/http_route.c; the document must match this list.
SERVED_ROUTES = {
    ("post", "/v1/loss"),
    ("get", "/config"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/v2"),
    ("get", "/v2/health/live"),
    ("get", "/v2/health/ready"),
    ("get", "/v2/models/circle"),
    ("get", "/v2/models/circle/versions/1"),
    ("get", "/v2/models/circle/ready"),
    ("get", "/v2/models/circle/versions/1/ready"),
    ("get", "/v2/models/circle/config"),
    ("get", "/v2/models/circle/versions/1/config"),
    ("post", "/v2/models/circle/infer"),
    ("post", "/v2/models/circle/versions/1/infer"),
    ("get", "/metrics"),
    ("get", "/dashboard"),
}
# Routes answered without a token even when circled has one.
OPEN_ROUTES = {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"}
# Routes that run on the engine: body limits, overload, compression.
COMPUTE_ROUTES = {p for m, p in SERVED_ROUTES if m == "post"}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec():
    with open(SPEC_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def operations(spec):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                yield method, path, op


def resolve(spec, node):
    """Follows $ref chains within the document."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), f"external $ref {ref}"
        node = spec
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def schema_validator(spec, schema):
    """A JSON Schema validator for `schema`, with the document's
    #/components references resolvable."""
    return OAS31Validator({**schema, "components": spec["components"]})


def error_shape(path):
    return "OipError" if path == "/v2" or path.startswith("/v2/") else "V1Error"


def src_text(pattern):
    return {f.name: f.read_text(encoding="utf-8", errors="replace")
            for f in sorted((ROOT / "src").glob(pattern))}


# ---------------------------------------------------------------------------
# The document itself
# ---------------------------------------------------------------------------


def test_openapi_should_be_a_valid_openapi_3_1_document(spec):
    assert spec["openapi"].startswith("3.1.")
    validate_spec(spec)


def test_openapi_validator_should_reject_a_broken_document(spec):
    broken = json.loads(json.dumps(spec))
    broken["paths"]["/v1/loss"]["post"]["responses"]["200"] = {"content": {}}  # no description
    with pytest.raises(Exception):
        validate_spec(broken)


def test_openapi_should_document_exactly_the_served_routes(spec):
    documented = {(m, p) for m, p, _ in operations(spec)}
    assert documented - SERVED_ROUTES == set(), "documented but not served"
    assert SERVED_ROUTES - documented == set(), "served but not documented"


def test_openapi_should_give_every_operation_a_unique_id_and_a_summary(spec):
    ids = [op["operationId"] for _, _, op in operations(spec)]
    assert len(ids) == len(set(ids))
    for m, p, op in operations(spec):
        assert op.get("summary"), f"{m} {p}"


def test_server_routing_literals_should_all_be_documented(spec):
    """Each path literal in the server's files (src/http*.c) is a documented
    path or part of one (the OIP model routes are matched piecewise)."""
    sources = src_text("http*.c")
    if not sources:
        pytest.skip("src/http*.c is not there yet")
    literals = set(re.findall(r'"(/[a-z0-9_/]*)"', "\n".join(sources.values())))
    assert literals, "no route literal found in src/http*.c"
    paths = list(spec["paths"])
    undocumented = {lit for lit in literals if not any(lit in p for p in paths)}
    assert not undocumented


# ---------------------------------------------------------------------------
# Errors, headers, security
# ---------------------------------------------------------------------------


def test_every_error_response_should_use_its_family_error_schema(spec):
    for m, p, op in operations(spec):
        for status, resp in op["responses"].items():
            if int(status) < 400:
                continue
            resp = resolve(spec, resp)
            schema = resp["content"]["application/json"]["schema"]
            refs = [schema.get("$ref")] + [s.get("$ref") for s in schema.get("anyOf", [])]
            want = f"#/components/schemas/{error_shape(p)}"
            if p in ("/readyz",):
                # The probe answers its own status body while draining.
                continue
            assert want in refs, f"{m} {p} {status}: {refs}"


def test_error_schemas_should_match_what_the_server_sends(spec):
    v1 = schema_validator(spec, {"$ref": "#/components/schemas/V1Error"})
    oip = schema_validator(spec, {"$ref": "#/components/schemas/OipError"})
    v1.validate({"error": {"code": "ragged_rows", "message": "embeddings[1] ..."}})
    oip.validate({"error": "input 'labels' is missing"})
    assert not v1.is_valid({"error": "a bare string is the /v2 shape"})
    assert not v1.is_valid({"error": {"code": "made_up_code", "message": "x"}})
    assert not v1.is_valid({"error": {"code": "internal"}})  # a message always comes
    assert not v1.is_valid({"error": {"code": "internal", "message": "x", "detail": 1}})
    assert not oip.is_valid({"error": {"code": "invalid_json", "message": "x"}})


def v1_codes(spec):
    schema = resolve(spec, {"$ref": "#/components/schemas/V1Error"})
    return set(schema["properties"]["error"]["properties"]["code"]["enum"])


def test_v1_error_codes_should_be_those_the_sources_define_and_use(spec):
    """The code enum equals the codes of the error table (CIRCLE_ERROR_MAP
    in error.h) whose rows some source in src/ uses, but the gRPC listener
    and codec, whose errors travel as gRPC status codes and never reach
    /v1. Every row is used somewhere."""
    rows = errors_table.rows()
    assert rows, "no row found in error.h's CIRCLE_ERROR_MAP"
    sources = {n: t for n, t in src_text("*.c").items() if n != "error.c"}
    def uses(row, names):
        kind = re.compile(r"\bCIRCLE_ERR_" + row["name"] + r"\b")
        return any(kind.search(sources[n]) for n in names)
    http_side = [n for n in sources if n not in ("codec_grpc.c", "grpc_server.c")]
    unused = [r["name"] for r in rows if not uses(r, sources)]
    assert not unused, f"error rows nothing sends: {unused}"
    used = {r["code"] for r in rows if uses(r, http_side)}
    codes = v1_codes(spec)
    assert used <= codes, f"undocumented codes: {used - codes}"
    assert codes <= used, f"codes nothing sends: {codes - used}"


def test_every_protected_operation_should_document_401_with_www_authenticate(spec):
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert {} in spec["security"] and {"bearerAuth": []} in spec["security"], \
        "bearer auth must be optional (an empty requirement first)"
    for m, p, op in operations(spec):
        if p in OPEN_ROUTES:
            assert op.get("security") == [{}], f"{p} must never require a token"
            assert "401" not in op["responses"]
        else:
            assert "security" not in op, f"{m} {p} overrides the optional bearer auth"
            resp = resolve(spec, op["responses"]["401"])
            assert resp["headers"]["WWW-Authenticate"]


def test_compute_operations_should_document_limits_overload_and_encodings(spec):
    for m, p, op in operations(spec):
        if p not in COMPUTE_ROUTES:
            continue
        for status in ("400", "401", "413", "415", "500", "503"):
            assert status in op["responses"], f"{m} {p} lacks {status}"
        overload = resolve(spec, op["responses"]["503"])
        retry = resolve(spec, overload["headers"]["Retry-After"])
        assert retry["required"] is True and retry["schema"]["type"] == "integer"
        params = {resolve(spec, x)["name"] for x in op.get("parameters", [])}
        assert "Content-Encoding" in params
        if p.startswith("/v2/"):
            assert "Inference-Header-Content-Length" in params


def test_oip_infer_should_document_the_binary_tensor_extension(spec):
    for path in ("/v2/models/circle/infer", "/v2/models/circle/versions/1/infer"):
        op = spec["paths"][path]["post"]
        body = resolve(spec, op["requestBody"])["content"]
        assert {"application/json", "application/octet-stream"} <= set(body)
        ok = resolve(spec, op["responses"]["200"])
        assert {"application/json", "application/octet-stream"} <= set(ok["content"])
        assert "Inference-Header-Content-Length" in ok["headers"]
    schemas = spec["components"]["schemas"]
    assert "binary_data_size" in schemas["OipInferInput"]["properties"]["parameters"]["properties"]
    assert "binary_data" in schemas["OipInferRequestedOutput"]["properties"]["parameters"]["properties"]
    assert "binary_data_output" in schemas["OipInferParameters"]["properties"]
    assert "binary_data_size" in schemas["OipInferOutput"]["properties"]["parameters"]["properties"]


def test_observability_routes_should_have_their_media_types(spec):
    assert set(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert set(spec["paths"]["/dashboard"]["get"]["responses"]["200"]["content"]) == {"text/html"}


# ---------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------


def media_examples(spec):
    """(where, schema, example) for every example given next to a schema."""
    def from_content(where, content):
        for mt, media in content.items():
            if "schema" not in media:
                continue
            if "example" in media:
                yield f"{where} {mt}", media["schema"], media["example"]
            for name, ex in media.get("examples", {}).items():
                yield f"{where} {mt} {name}", media["schema"], resolve(spec, ex)["value"]

    for m, p, op in operations(spec):
        if "requestBody" in op:
            yield from from_content(f"{m} {p} request", resolve(spec, op["requestBody"])["content"])
        for status, resp in op["responses"].items():
            resp = resolve(spec, resp)
            yield from from_content(f"{m} {p} {status}", resp.get("content", {}))


def test_every_example_should_match_its_schema(spec):
    seen = 0
    for where, schema, example in media_examples(spec):
        if schema.get("type") == "string":
            continue  # text/plain, text/html, octet-stream layouts
        errors = list(schema_validator(spec, schema).iter_errors(example))
        assert not errors, f"{where}: {errors[0].message}"
        seen += 1
    assert seen >= 8


def test_schemas_should_reject_what_the_server_rejects(spec):
    req = schema_validator(spec, {"$ref": "#/components/schemas/LossRequest"})
    good = {"labels": [0, 1], "embeddings": [[1.0, 0.0], [0.0, 1.0]]}
    assert req.is_valid(good)
    assert not req.is_valid({"labels": [0, 1]})                              # missing_field
    assert not req.is_valid({**good, "labels": []})                          # empty_batch
    assert not req.is_valid({**good, "labels": [0.5, 1]})                    # bad_label
    assert not req.is_valid({**good, "extra": 1})                            # unknown_key
    assert not req.is_valid({**good, "config": {"gamma": 0}})                # bad_config
    assert not req.is_valid({**good, "config": {"reduction": "avg"}})        # bad_config
    assert not req.is_valid({**good, "config": {"scale": 1}})                # unknown_key
    assert not req.is_valid({**good, "ref_labels": [0]})                     # half_reference
    assert not req.is_valid({**good, "outputs": ["everything"]})             # bad_output
    assert req.is_valid({**good, "config": {"name": "circle", "reduction": None, "gamma": 80.0,
                                            "margin": 0.4, "remove_diagonal": True}})


# ---------------------------------------------------------------------------
# Against the live server
# ---------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def circled_bin():
    binary = os.environ.get("CIRCLED_BIN") or str(ROOT / "build" / "circled")
    if not os.access(binary, os.X_OK):
        pytest.skip(f"{binary} is not built (run `make`)")
    return binary


def test_readme_flags_table_should_match_circled_help():
    """README's flags table lists every flag of `circled --help` with the
    same environment variable and default, and nothing else."""
    out = subprocess.run([circled_bin(), "--help"], check=True, capture_output=True,
                         text=True).stdout
    helped = {m[0]: (m[1], m[2].strip("()")) for m in re.findall(
        r"^  --(\S+) \S+\s+(CIRCLED_\S+)\s+default: (\S+)", out, re.M)}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = {m[0]: (m[1], m[2]) for m in re.findall(
        r"^\| `--(\S+) [^`]*` \| `(CIRCLED_\S+)` \| `?([^`|]+?)`? \|", readme, re.M)}
    assert helped, "circled --help lists no flag"
    assert table == helped


@contextlib.contextmanager
def running_circled(*extra):
    """circled on a free loopback port, stopped with SIGTERM (must exit 0)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCLED_")}
    proc = subprocess.Popen([circled_bin(), "--bind", "127.0.0.1", "--port", str(port),
                             "--grpc-port", "0", "--workers", "2", "--quiet", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            pytest.fail(f"circled exited {proc.returncode}: {proc.stdout.read().decode()}")
        try:
            if request(port, "GET", "/healthz")[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("circled did not answer /healthz within 15 s")
        time.sleep(0.05)
    try:
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


@pytest.fixture(scope="module")
def server():
    with running_circled() as port:
        yield port


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def check_response(spec, method, path, status, headers, body):
    """Asserts the answer is documented: status, media type, body schema."""
    op = spec["paths"][path][method]
    assert str(status) in op["responses"], f"{method} {path} answered undocumented {status}: {body[:300]!r}"
    resp = resolve(spec, op["responses"][str(status)])
    media = headers.get("content-type", "").split(";")[0].strip()
    assert media in resp.get("content", {}), f"{method} {path} {status}: content-type {media}"
    schema = resp["content"][media]["schema"]
    if media == "application/json":
        errors = list(schema_validator(spec, schema).iter_errors(json.loads(body)))
        assert not errors, f"{method} {path} {status}: {errors[0].message} in {body[:300]!r}"
    for name, h in resp.get("headers", {}).items():
        if resolve(spec, h).get("required"):
            assert name.lower() in headers, f"{method} {path} {status} lacks {name}"


@pytest.mark.parametrize("path", sorted(p for m, p in SERVED_ROUTES if m == "get"))
def test_live_get_routes_should_answer_as_documented(spec, server, path):
    status, headers, body = request(server, "GET", path)
    assert status == 200, body[:300]
    check_response(spec, "get", path, status, headers, body)


@pytest.mark.parametrize("path", sorted(COMPUTE_ROUTES))
def test_live_compute_routes_should_answer_the_documented_examples(spec, server, path):
    op = spec["paths"][path]["post"]
    examples = resolve(spec, op["requestBody"])["content"]["application/json"]["examples"]
    for name, ex in examples.items():
        status, headers, body = request(server, "POST", path, json.dumps(resolve(spec, ex)["value"]),
                                        {"Content-Type": "application/json"})
        assert status == 200, f"example {name}: {body[:300]!r}"
        check_response(spec, "post", path, status, headers, body)


@pytest.mark.parametrize("path", sorted(COMPUTE_ROUTES))
def test_live_bad_requests_should_get_the_documented_error(spec, server, path):
    status, headers, body = request(server, "POST", path, b'{"labels": [0, 1], "embeddings": [[1.0',
                                    {"Content-Type": "application/json"})
    assert status == 400
    check_response(spec, "post", path, status, headers, body)
    if error_shape(path) == "V1Error":
        assert json.loads(body)["error"]["code"] == "invalid_json"
    # Refused from Content-Length alone: nothing is sent after the headers.
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Length", str(1 << 40))
        conn.endheaders()
        r = conn.getresponse()
        status, headers, body = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()
    assert status == 413
    check_response(spec, "post", path, status, headers, body)
    # An unsupported Content-Encoding.
    status, headers, body = request(server, "POST", path, b"{}", {"Content-Encoding": "br"})
    assert status == 415
    check_response(spec, "post", path, status, headers, body)


def test_live_gzip_request_should_equal_the_plain_one(spec, server):
    ex = spec["paths"]["/v1/loss"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    body = json.dumps(ex["minimal"]["value"]).encode()
    plain = request(server, "POST", "/v1/loss", body)
    packed = request(server, "POST", "/v1/loss", gzip.compress(body), {"Content-Encoding": "gzip"})
    assert plain[0] == packed[0] == 200
    assert json.loads(plain[2]) == json.loads(packed[2])


def test_live_oip_binary_request_should_follow_the_documented_layout(spec, server):
    labels = struct.pack("<4q", 0, 0, 1, 1)
    emb = struct.pack("<8f", 1.0, 0.0, 0.8, 0.6, 0.0, 1.0, -0.6, 0.8)
    header = json.dumps({
        "inputs": [
            {"name": "labels", "shape": [4], "datatype": "INT64",
             "parameters": {"binary_data_size": len(labels)}},
            {"name": "embeddings", "shape": [4, 2], "datatype": "FP32",
             "parameters": {"binary_data_size": len(emb)}},
        ],
        "outputs": [{"name": "per_sample_loss", "parameters": {"binary_data": True}},
                    {"name": "loss"}],
    }).encode()
    status, headers, body = request(
        server, "POST", "/v2/models/circle/infer", header + labels + emb,
        {"Inference-Header-Content-Length": str(len(header))})
    assert status == 200, body[:300]
    assert headers["content-type"].startswith("application/octet-stream")
    n = int(headers["inference-header-content-length"])
    meta = json.loads(body[:n])
    errors = list(schema_validator(spec, {"$ref": "#/components/schemas/OipInferResponse"})
                  .iter_errors(meta))
    assert not errors, errors[0].message
    outs = {o["name"]: o for o in meta["outputs"]}
    size = outs["per_sample_loss"]["parameters"]["binary_data_size"]
    assert size == 4 * 4 and len(body) == n + size
    assert "data" not in outs["per_sample_loss"] and "data" in outs["loss"]


def test_live_unknown_paths_and_methods_should_answer_in_their_family_shape(spec, server):
    v1 = schema_validator(spec, {"$ref": "#/components/schemas/V1Error"})
    oip = schema_validator(spec, {"$ref": "#/components/schemas/OipError"})
    status, _, body = request(server, "GET", "/v1/nope")
    assert status == 404 and v1.is_valid(json.loads(body))
    assert json.loads(body)["error"]["code"] == "not_found"
    status, _, body = request(server, "GET", "/v2/models/other")
    assert status == 404 and oip.is_valid(json.loads(body))
    status, headers, body = request(server, "GET", "/v1/loss")
    assert status == 405 and "POST" in headers["allow"] and v1.is_valid(json.loads(body))
    status, headers, body = request(server, "POST", "/v2/health/live", b"{}")
    assert status == 405 and "GET" in headers["allow"] and oip.is_valid(json.loads(body))


def test_live_bearer_auth_should_guard_every_route_but_the_health_probes(spec, tmp_path):
    key = tmp_path / "token"
    key.write_text("s3cret-token\n")
    with running_circled("--api-key-file", str(key)) as port:
        for method, path in sorted(SERVED_ROUTES):
            status, headers, body = request(port, method.upper(), path, b"{}" if method == "post" else None)
            if path in OPEN_ROUTES:
                assert status == 200, f"{path} must stay open"
                continue
            assert status == 401, f"{method} {path} answered {status} without a token"
            check_response(spec, method, path, status, headers, body)
        status, _, _ = request(port, "GET", "/config", headers={"Authorization": "Bearer s3cret-token"})
        assert status == 200
        status, _, _ = request(port, "GET", "/config", headers={"Authorization": "Bearer wrong"})
        assert status == 401

