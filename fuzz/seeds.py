#!/usr/bin/env python3
"""seeds.py -- writes the fuzzers' seed corpora (fuzz/corpus/<harness>/).

Small valid requests of every shape the codecs accept, and near-valid ones
that stop at each kind of check (duplicate keys, ragged rows, truncation,
binary sizes that do not add up, corrupt compressed streams). The files are
committed; run this again only to change them:

    python3 fuzz/seeds.py fuzz/corpus
"""
import gzip
import json
import os
import struct
import sys
import zlib


def v1_seeds():
    s = {}
    base = {"labels": [0, 1, 0, 1], "embeddings": [[1, 0], [0, 1], [0.6, 0.8], [-0.8, 0.6]]}
    s["minimal"] = base
    s["half_f16"] = {"labels": [0, 1, 0], "embeddings": [[0.1, 65504], [1e-8, -0.3], [65519.9, 2]],
                     "sample_weight": [0.1, 1, 3], "config": {"dtype": "float16"}}
    s["half_f16_overflow"] = {"labels": [0, 1], "embeddings": [[65520, 0], [0, 1]],
                              "config": {"dtype": "mixed_float16"}}
    s["half_bf16_policy"] = {
        "labels": [0, 1, 0], "embeddings": [[0.1, 3.3e38], [1e-40, -0.3], [1.5, 2]],
        "ref_labels": [1], "ref_embeddings": [[0.7, 0.7]],
        "config": {"dtype": {"module": "keras", "class_name": "DTypePolicy",
                             "config": {"name": "mixed_bfloat16"}, "registered_name": None}}}
    s["full"] = {
        "labels": ["cat", "dog", "cat"],
        "embeddings": [[0.1, 0.2, 0.3], [0.3, -0.2, 0.1], [1e-3, 2.5e2, -7]],
        "sample_weight": [1, 0.5, 0],
        "ref_labels": ["dog", "cat"],
        "ref_embeddings": [[1, 0, 0], [0, 1, 0]],
        "config": {"name": "circle", "reduction": "sum", "gamma": 64.0,
                   "margin": 0.25, "remove_diagonal": False, "dtype": "float64"},
        "normalize": True,
        "outputs": ["loss", "per_sample_loss", "embeddings_grad", "ref_embeddings_grad", "stats"],
        "tag": "exp-1.a:b",
    }
    s["reduction_none_f32"] = {
        "labels": [3, 3, 4], "embeddings": [[0.5], [-0.25], [1.5e-39]],
        "config": {"reduction": None, "fn": "circle", "dtype": None},
        "sample_weight": None, "tag": None,
    }
    s["fn_object"] = {
        "labels": [1, 2], "embeddings": [[1, 2], [3, 4]],
        "config": {"fn": {"module": "keras.losses", "class_name": "function",
                          "config": "circle", "registered_name": None},
                   "reduction": "mean_with_sample_weight"},
        "outputs": ["loss"],
    }
    s["retrieval"] = {
        "labels": [0, 1, 0, 1, 2], "embeddings": [[1, 0], [0, 1], [0.6, 0.8], [-0.8, 0.6], [1, 1]],
        "normalize": True, "outputs": ["loss", "retrieval"],
    }
    s["ref_grad_only"] = {
        "labels": [0], "embeddings": [[1, 1, 1, 1]],
        "ref_labels": [0, 1], "ref_embeddings": [[1, 0, 0, 0], [0, 0, 0, 1]],
        "outputs": ["ref_embeddings_grad"],
    }
    out = {k: json.dumps(v).encode() for k, v in s.items()}
    # Exact text matters for these.
    out["big_int_labels"] = (b'{"labels": [9007199254740993, 9007199254740992, -9223372036854775808],'
                             b' "embeddings": [[1],[2],[3]]}')
    out["int_forms"] = b'{"labels": [1.0, 2e0, -0.0, 1E2], "embeddings": [[1e-320],[-0],[2],[3]]}'
    out["unicode_labels"] = ('{"labels": ["\\u00e9", "\u00e9", "\\ud83d\\ude00", "a\\nb"], '
                             '"embeddings": [[1],[2],[3],[4]]}').encode()
    out["whitespace"] = b' \t\r\n{ "labels" : [ 0 ] , "embeddings" : [ [ 1 ] ] } \n'
    # Number forms for the decoder's own number parser (json_fast.c).
    out["fast_numbers"] = (b'{"labels": [0, 1, 2], "embeddings": [[0.1, -2.5e-3, 1e22, 9007199254740993], '
                           b'[4.9e-324, 2.2250738585072011e-308, -0.0, 123456789012345678901234567890], '
                           b'[1.7976931348623157e308, 0.30000000000000004, 5e-324, 1E+2]], '
                           b'"sample_weight": [1.5, 2, 0]}')
    out["fast_f32_halfway"] = (b'{"labels": [0, 1], "embeddings": [[1.00000005960464477539062500001, '
                               b'3.4028235677973366e38], [1.401298464324817e-45, 7.006492321624085e-46]], '
                               b'"config": {"dtype": "float32"}}')
    out["fast_ref"] = (b'{"labels": ["a", "b"], "ref_labels": ["a"], "embeddings": [[1,2,3],[4,5,6]], '
                       b'"ref_embeddings": [[0.5,0.25,0.125]], "outputs": ["loss"]}')
    out["fast_then_fallback"] = b'{"embeddings": [[1, 2], [3, 4]], "labels": [0, 1], "embeddings\\u0000": 1}'
    # Near-valid: each stops at a different check.
    out["dup_key"] = b'{"labels": [0], "labels": [1], "embeddings": [[1]]}'
    out["dup_config_key"] = b'{"labels": [0], "embeddings": [[1]], "config": {"gamma": 1, "gamma": 2}}'
    out["unknown_key"] = b'{"labels": [0], "embeddings": [[1]], "label": [0]}'
    out["ragged"] = b'{"labels": [0, 1], "embeddings": [[1, 2], [3]]}'
    out["d_mismatch"] = b'{"labels": [0], "embeddings": [[1, 2]], "ref_labels": [0], "ref_embeddings": [[1]]}'
    out["half_ref"] = b'{"labels": [0], "embeddings": [[1]], "ref_labels": [0]}'
    out["mixed_labels"] = b'{"labels": [0, "a"], "embeddings": [[1], [2]]}'
    out["non_finite"] = b'{"labels": [0], "embeddings": [[1e400]]}'
    out["f32_overflow"] = b'{"labels": [0], "embeddings": [[1e39]]}'
    out["negative_weight"] = b'{"labels": [0], "embeddings": [[1]], "sample_weight": [-1]}'
    out["huge_weight"] = (b'{"labels": [0, 0, 1, 1], "embeddings": [[1, 0], [0.6, 0.8], [0, 1], [-0.6, 0.8]],'
                          b' "sample_weight": [1, 1e38, 1, 1e30]}')
    out["huge_weight_f64"] = (b'{"labels": [0, 1], "embeddings": [[1], [2]], "sample_weight": [1e306, 1e300],'
                              b' "config": {"dtype": "float64", "reduction": "sum"}}')
    out["too_many_rows"] = json.dumps({"labels": list(range(50)), "embeddings": [[1]] * 50}).encode()
    out["too_many_pairs"] = json.dumps({"labels": list(range(40)), "embeddings": [[1]] * 40}).encode()
    out["too_deep"] = b'{"labels": [0], "embeddings": ' + b"[" * 20 + b"1" + b"]" * 20 + b"}"
    out["trailing_comma"] = b'{"labels": [0,], "embeddings": [[1]]}'
    out["trailing_garbage"] = b'{"labels": [0], "embeddings": [[1]]} x'
    out["truncated"] = json.dumps(s["full"]).encode()[:97]
    out["nul_escape"] = b'{"labels": ["a\\u0000b"], "embeddings": [[1]]}'
    out["bad_surrogate"] = b'{"labels": ["\\ud800"], "embeddings": [[1]]}'
    out["long_number"] = b'{"labels": [0], "embeddings": [[' + b"1" * 70 + b"]]}"
    out["bad_tag"] = b'{"labels": [0], "embeddings": [[1]], "tag": "a b"}'
    out["bad_output"] = b'{"labels": [0], "embeddings": [[1]], "outputs": ["loss", "loss"]}'
    out["normalize_conflict"] = (b'{"labels": [0], "embeddings": [[1]], "normalize": true,'
                                 b' "config": {"normalize": false}}')
    out["not_object"] = b"[1, 2, 3]"
    out["empty"] = b""
    # Refused before a tree is built (the harness' limits: N 48, M 40), and
    # the slow path that reads the matrices from the text.
    out["nested_labels_past_values"] = b'{"labels": [[' + b"0," * 1200 + b'0]], "embeddings": [[1]]}'
    out["weights_past_n"] = json.dumps({"labels": [0], "embeddings": [[1]],
                                        "sample_weight": [1] * 49}).encode()
    out["ref_labels_past_m"] = json.dumps({"labels": [0], "embeddings": [[1]], "ref_labels": [0] * 41,
                                           "ref_embeddings": [[1]] * 41}).encode()
    out["slow_matrix_string_last"] = b'{"labels": [0, 1], "embeddings": [[1, 2], [3, "x"]]}'
    out["slow_matrix_escaped_key"] = b'{"labels": [0, 1], "embedd\\u0069ngs": [[1, 2], [3, 4]]}'
    out["slow_dup_embeddings"] = b'{"labels": [0], "embeddings": [[1]], "embeddings": [[2]]}'
    out["syntax_in_matrix"] = b'{"labels": [0, 1], "embeddings": [[1] [2]]}'
    out["lone_low_surrogate"] = b'{"labels": ["\\udc00"], "embeddings": [[1]]}'
    return out


def oip_header(inputs, outputs=None, parameters=None, rid=None):
    req = {"inputs": inputs}
    if rid is not None:
        req["id"] = rid
    if outputs is not None:
        req["outputs"] = outputs
    if parameters is not None:
        req["parameters"] = parameters
    return json.dumps(req).encode()


def binary_request(tensors, outputs=None, parameters=None):
    """tensors: (name, datatype, shape, raw bytes); returns header, body."""
    inputs = [{"name": n, "datatype": t, "shape": sh,
               "parameters": {"binary_data_size": len(raw)}} for n, t, sh, raw in tensors]
    h = oip_header(inputs, outputs, parameters)
    return h, h + b"".join(raw for _, _, _, raw in tensors)


def framed(mode, header_len, body):
    """The harness' input: mode byte, header length (0xffff: none), body."""
    return bytes([mode]) + struct.pack("<H", header_len) + body


def oip_seeds():
    s = {}
    js = oip_header([
        {"name": "labels", "datatype": "INT64", "shape": [3], "data": [0, 1, 0]},
        {"name": "embeddings", "datatype": "FP32", "shape": [3, 2],
         "data": [1, 0, 0, 1, 0.6, 0.8]}])
    s["json_flat"] = framed(0, 0xffff, js)
    nested = oip_header([
        {"name": "labels", "datatype": "INT32", "shape": [2, 1], "data": [[5], [6]]},
        {"name": "embeddings", "datatype": "FP64", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
        {"name": "sample_weight", "datatype": "FP64", "shape": [2], "data": [1, 2]},
        {"name": "ref_labels", "datatype": "INT64", "shape": [1], "data": [5]},
        {"name": "ref_embeddings", "datatype": "FP64", "shape": [1, 2], "data": [[0, 1]]}],
        outputs=[{"name": "loss"}, {"name": "ref_embeddings_grad", "parameters": {"binary_data": True}}],
        parameters={"gamma": 32, "margin": 0.1, "remove_diagonal": False, "reduction": "none",
                    "normalize": True, "tag": "t1", "sequence_id": 0, "priority": 0},
        rid="req-1")
    s["json_nested_ref"] = framed(0, 0xffff, nested)
    labels = struct.pack("<3q", 0, 1, 0)
    emb = struct.pack("<6f", 1, 0, 0, 1, 0.6, 0.8)
    h, body = binary_request([("labels", "INT64", [3], labels), ("embeddings", "FP32", [3, 2], emb)],
                             parameters={"binary_data_output": True})
    s["binary_fp32"] = framed(0, len(h), body)
    h16, b16 = binary_request([
        ("labels", "INT32", [2], struct.pack("<2i", 1, 2)),
        ("embeddings", "FP16", [2, 2], struct.pack("<4e", 1.0, -2.0, 65504.0, 6e-8))])
    s["binary_fp16"] = framed(0, len(h16), b16)
    hb, bb = binary_request([
        ("labels", "INT32", [2], struct.pack("<2i", 1, 2)),
        ("embeddings", "BF16", [2, 2], struct.pack("<4H", 0x3f80, 0xbf80, 0x4000, 0x0001))],
        outputs=[{"name": "embeddings_grad", "parameters": {"binary_data": False}}],
        parameters={"dtype": "float64"})
    s["binary_bf16"] = framed(0, len(hb), bb)
    hh, bh = binary_request([
        ("labels", "INT64", [3], labels), ("embeddings", "FP32", [3, 2], emb),
        ("sample_weight", "FP16", [3], struct.pack("<3e", 0.5, 1.0, 2.0))],
        parameters={"binary_data_output": True, "dtype": "mixed_float16", "reduction": "none"})
    s["binary_half_out"] = framed(0, len(hh), bh)
    hr, br = binary_request([("labels", "INT64", [3], labels), ("embeddings", "FP32", [3, 2], emb)],
                            parameters={"binary_data_output": True, "retrieval": True,
                                        "stats": False})
    s["binary_retrieval"] = framed(0, len(hr), br)
    s["json_bf16_policy"] = framed(0, 0xffff, oip_header([
        {"name": "labels", "datatype": "INT64", "shape": [3], "data": [0, 1, 0]},
        {"name": "embeddings", "datatype": "FP64", "shape": [3, 2],
         "data": [1, 0, 0, 1, 0.6, 0.8]}],
        outputs=[{"name": "loss", "parameters": {"binary_data": True}}, {"name": "embeddings_grad"}],
        parameters={"dtype": {"module": "keras", "class_name": "DTypePolicy",
                              "config": {"name": "bfloat16"}, "registered_name": None}}))
    h64, b64 = binary_request([
        ("labels", "INT64", [2], struct.pack("<2q", 2**62, -(2**62))),
        ("embeddings", "FP64", [2, 1], struct.pack("<2d", 0.5, -0.25)),
        ("ref_labels", "INT64", [1], struct.pack("<q", 2**62)),
        ("ref_embeddings", "FP64", [1, 1], struct.pack("<d", 1.0))])
    s["binary_fp64_ref"] = framed(0, len(h64), b64)
    # Compressed bodies, as a client would send them (modes 1 and 2) ...
    s["gzip_json"] = framed(1, 0xffff, gzip.compress(js, mtime=0))
    s["gzip_binary"] = framed(1, len(h), gzip.compress(body, mtime=0))
    s["gzip_two_members"] = framed(1, 0xffff, gzip.compress(js[:40], mtime=0) + gzip.compress(js[40:], mtime=0))
    s["deflate_zlib"] = framed(2, 0xffff, zlib.compress(nested))
    raw = zlib.compressobj(6, zlib.DEFLATED, -15)
    s["deflate_raw"] = framed(2, len(h), raw.compress(body) + raw.flush())
    # ... and plain bodies the harness compresses (modes 3, 4; the variant
    # bits pick zlib or raw and the cap around the length).
    s["compress_here_gzip"] = framed(3, len(h), body)
    s["compress_here_zlib_cap_below"] = framed(4, 0xffff, js)
    s["compress_here_raw_cap_above"] = framed(4 + 5 * 5, len(h16), b16)
    # Near-valid.
    s["gzip_truncated"] = framed(1, 0xffff, gzip.compress(js, mtime=0)[:-6])
    s["gzip_garbage_after"] = framed(1, 0xffff, gzip.compress(js, mtime=0) + b"xyz")
    s["gzip_bomb"] = framed(1, 0xffff, gzip.compress(b" " * (1 << 20), mtime=0))
    s["binary_size_mismatch"] = framed(0, len(h), body[:-4])
    s["binary_extra_bytes"] = framed(0, len(h), body + b"\0\0\0\0")
    s["header_len_past_end"] = framed(0, len(body) + 10, body)
    s["header_len_short"] = framed(0, len(h) - 1, body)
    dup = oip_header([
        {"name": "labels", "datatype": "INT64", "shape": [1], "data": [0]},
        {"name": "labels", "datatype": "INT64", "shape": [1], "data": [0]},
        {"name": "embeddings", "datatype": "FP32", "shape": [1, 1], "data": [1]}])
    s["duplicate_input"] = framed(0, 0xffff, dup)
    s["duplicate_key"] = framed(0, 0xffff, b'{"inputs": [], "inputs": []}')
    s["shape_overflow"] = framed(0, 0xffff, oip_header([
        {"name": "labels", "datatype": "INT64", "shape": [4294967296, 4294967296],
         "parameters": {"binary_data_size": 0}},
        {"name": "embeddings", "datatype": "FP32", "shape": [1, 1], "data": [1]}]))
    s["shape_data_mismatch"] = framed(0, 0xffff, oip_header([
        {"name": "labels", "datatype": "INT64", "shape": [2], "data": [0]},
        {"name": "embeddings", "datatype": "FP32", "shape": [2, 1], "data": [1, [2]]}]))
    s["int32_range"] = framed(0, 0xffff, oip_header([
        {"name": "labels", "datatype": "INT32", "shape": [1], "data": [2147483648]},
        {"name": "embeddings", "datatype": "FP32", "shape": [1, 1], "data": [1]}]))
    s["int64_huge"] = framed(0, 0xffff, b'{"inputs": [{"name": "labels", "datatype": "INT64", "shape": [2], '
                                        b'"data": [9223372036854775807, 9223372036854775808]}, '
                                        b'{"name": "embeddings", "datatype": "FP32", "shape": [2, 1], "data": [1, 2]}]}')
    s["shared_memory"] = framed(0, 0xffff, oip_header([
        {"name": "labels", "datatype": "INT64", "shape": [1],
         "parameters": {"shared_memory_region": "r"}},
        {"name": "embeddings", "datatype": "FP32", "shape": [1, 1], "data": [1]}]))
    s["fp16_inf"] = framed(0, len(h16), b16[:len(h16)] + struct.pack("<2i", 1, 2) + struct.pack("<4H", 0x7c00, 0, 0, 0))
    s["too_deep"] = framed(0, 0xffff, b'{"inputs": ' + b"[" * 20 + b"]" * 20 + b"}")
    s["header_values_past_cap"] = framed(0, 0xffff, js[:-1] + b', "outputs": [' + b"{}," * 4100 + b"{}]}")
    s["data_string_leaf"] = framed(0, 0xffff, oip_header([
        {"name": "labels", "datatype": "INT64", "shape": [2], "data": [0, 1]},
        {"name": "embeddings", "datatype": "FP32", "shape": [2, 1], "data": [[1], ["x"]]}]))
    s["data_longer_than_shape"] = framed(0, 0xffff, oip_header([
        {"name": "labels", "datatype": "INT64", "shape": [2], "data": [0, 1, 2]},
        {"name": "embeddings", "datatype": "FP32", "shape": [2, 1], "data": [1, 2]}]))
    s["data_escaped_key"] = framed(0, 0xffff, b'{"inputs": [{"name": "labels", "datatype": "INT64", "shape": [1], '
                                              b'"d\\u0061ta": [0]}, {"name": "embeddings", "datatype": "FP32", '
                                              b'"shape": [1, 1], "data": [1]}]}')
    s["id_not_utf8"] = framed(0, 0xffff, js.replace(b'{"inputs"', b'{"id": "r\x81\xc0\xaf", "inputs"', 1))
    s["json_beyond_fp16"] = framed(0, 0xffff, oip_header([
        {"name": "labels", "datatype": "INT64", "shape": [2], "data": [0, 1]},
        {"name": "embeddings", "datatype": "FP16", "shape": [2, 1], "data": [65504, 65505]}]))
    s["json_beyond_bf16"] = framed(0, 0xffff, oip_header([
        {"name": "labels", "datatype": "INT64", "shape": [2], "data": [0, 1]},
        {"name": "embeddings", "datatype": "FP32", "shape": [2, 1], "data": [1, 2]},
        {"name": "sample_weight", "datatype": "BF16", "shape": [2], "data": [3.3895313892515355e38, 3.4e38]}],
        parameters={"dtype": "float64"}))
    return s


def config_seeds():
    s = {
        "keras_default": {"name": "circle", "reduction": "sum_over_batch_size", "gamma": 80.0,
                          "margin": 0.4, "remove_diagonal": True},
        "with_dtype": {"name": "my_loss", "reduction": None, "gamma": 1e-300, "margin": -0.0,
                       "remove_diagonal": False, "dtype": "float64", "normalize": True},
        "fn_string": {"fn": "circle", "reduction": "none"},
        "fn_object": {"fn": {"module": "keras.losses", "class_name": "function",
                             "config": "circle", "registered_name": None}},
        "long_name": {"name": "n" * 130},
        "short_name": {"name": "abcdef"},
        "unicode_name": {"name": "\u00e9\u4e2d\U0001F600"},
        "empty": {},
    }
    # Every dtype spelling Keras takes for a loss, and near misses.
    def policy(name, cls="DTypePolicy"):
        return {"module": "keras", "class_name": cls, "config": {"name": name},
                "registered_name": None}
    s.update({
        "dtype_half": {"dtype": "float16", "reduction": "none"},
        "dtype_mixed": {"dtype": "mixed_bfloat16"},
        "dtype_null": {"dtype": None},
        "dtype_policy": {"dtype": policy("mixed_float16")},
        "dtype_policy_legacy": {"dtype": {"class_name": "FloatDTypePolicy",
                                          "config": {"name": "bfloat16"}}},
        "dtype_policy_floatx": {"dtype": {"class_name": "DTypePolicy", "config": {}}},
        "bad_policy_class": {"dtype": policy("int8_from_float32", "QuantizedDTypePolicy")},
        "bad_policy_name": {"dtype": policy("int32")},
        "bad_policy_extra": {"dtype": {"class_name": "DTypePolicy",
                                       "config": {"name": "float16", "source_name": "x"}}},
        "bad_policy_module": {"dtype": {"module": 3, "class_name": "DTypePolicy",
                                        "config": {"name": "float16"}}},
    })
    out = {k: json.dumps(v).encode() for k, v in s.items()}
    out["gamma_forms"] = b'{"gamma": 1.7976931348623157e308, "margin": 5e-324}'
    out["gamma_zero"] = b'{"gamma": 0}'
    out["gamma_huge"] = b'{"gamma": 1e400}'
    out["margin_string"] = b'{"margin": "0.4"}'
    out["dup_key"] = b'{"gamma": 1, "gamma": 1}'
    out["unknown_key"] = b'{"gama": 1}'
    out["bad_reduction"] = b'{"reduction": "SUM"}'
    out["bad_dtype"] = b'{"dtype": "float8"}'
    out["bad_fn"] = b'{"fn": {"config": "triplet"}}'
    out["nul_name"] = b'{"name": "a\\u0000b"}'
    out["control_name"] = b'{"name": "\\u0001\\u001f\\"\\\\"}'
    out["not_object"] = b'[{"gamma": 1}]'
    out["number"] = b"80.0"
    return out

# ---- gRPC: ModelInferRequest bytes (proto/circle_grpc.proto), written with
# the protobuf wire format by hand so this script needs nothing installed.

def pb_varint(v):
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def pb_len(field, payload):
    """A length-delimited field (strings, bytes, messages, packed)."""
    return pb_varint(field << 3 | 2) + pb_varint(len(payload)) + payload


def pb_str(field, text):
    return pb_len(field, text.encode())


def pb_packed(field, fmt, values):
    if fmt == "varint":
        return pb_len(field, b"".join(pb_varint(v) for v in values))
    return pb_len(field, b"".join(struct.pack("<" + fmt, v) for v in values))


def pb_param(field, key, value):
    """A map<string, InferParameter> entry; value None leaves it unset."""
    if value is None:
        v = b""
    elif isinstance(value, bool):
        v = pb_varint(1 << 3) + pb_varint(int(value))
    elif isinstance(value, int):
        v = pb_varint(2 << 3) + pb_varint(value)
    elif isinstance(value, float):
        v = pb_varint(4 << 3 | 1) + struct.pack("<d", value)
    else:
        v = pb_str(3, value)
    return pb_len(field, pb_str(1, key) + pb_len(2, v))


def pb_input(name, datatype, shape, contents=b""):
    """InferInputTensor: name 1, datatype 2, shape 3, contents 5."""
    msg = pb_str(1, name) + pb_str(2, datatype) + pb_packed(3, "varint", shape)
    return pb_len(5, msg + (pb_len(5, contents) if contents else b""))


def grpc_request(inputs, raw=(), params=None, outputs=(), model="circle", rid="seed"):
    """ModelInferRequest: model_name 1, id 3, parameters 4, inputs 5,
    outputs 6, raw_input_contents 7."""
    msg = pb_str(1, model) + pb_str(3, rid)
    for k, v in (params or {}).items():
        msg += pb_param(4, k, v)
    msg += b"".join(inputs)
    msg += b"".join(pb_len(6, pb_str(1, o)) for o in outputs)
    msg += b"".join(pb_len(7, r) for r in raw)
    return msg


def grpc_seeds():
    lab = struct.pack("<4q", 0, 1, 0, 1)
    two = [pb_input("labels", "INT64", [4]), pb_input("embeddings", "FP32", [4, 3])]
    s = {}
    s["raw_fp32"] = grpc_request(two, raw=[lab, struct.pack("<12f", *range(12))])
    s["raw_fp64"] = grpc_request([two[0], pb_input("embeddings", "FP64", [4, 3])],
                                 raw=[lab, struct.pack("<12d", *range(12))])
    s["raw_fp16"] = grpc_request([two[0], pb_input("embeddings", "FP16", [4, 3])],
                                 raw=[lab, struct.pack("<12e", *range(12))])
    # Typed contents: int_contents 2, int64_contents 3, fp32_contents 6.
    s["typed_params"] = grpc_request(
        [pb_input("labels", "INT32", [4], pb_packed(2, "varint", [0, 1, 0, 1])),
         pb_input("embeddings", "FP32", [4, 3], pb_packed(6, "f", range(12)))],
        params={"gamma": 64.0, "reduction": "none", "normalize": True, "tag": "t"})
    s["typed_ref_outputs"] = grpc_request(
        [pb_input("labels", "INT64", [4], pb_packed(3, "varint", [0, 1, 0, 1])),
         pb_input("embeddings", "FP32", [4, 3], pb_packed(6, "f", range(12))),
         pb_input("ref_labels", "INT64", [2], pb_packed(3, "varint", [0, 1])),
         pb_input("ref_embeddings", "FP32", [2, 3], pb_packed(6, "f", range(6)))],
        outputs=["ref_embeddings_grad", "loss"], params={"reduction": None})
    s["raw_count_mismatch"] = grpc_request(two, raw=[b"\0" * 32])
    s["raw_size_mismatch"] = grpc_request(two, raw=[lab, b"\0" * 44])
    s["unknown_model"] = grpc_request(two, raw=[lab, b"\0" * 48], model="other")
    s["raw_retrieval"] = grpc_request(two, raw=[lab, struct.pack("<12f", *range(12))],
                                      params={"retrieval": True})
    return s


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus")
    for harness, seeds in (("fuzz_json", v1_seeds()), ("fuzz_oip", oip_seeds()),
                           ("fuzz_config", config_seeds()), ("fuzz_grpc", grpc_seeds())):
        d = os.path.join(root, harness)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        print(f"{harness}: {len(seeds)} seeds in {d}")


if __name__ == "__main__":
    main()
