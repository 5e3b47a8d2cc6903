"""test_errors.py -- the client error table (CIRCLE_ERROR_MAP in
src/error.h) and docs/errors.md agree, and the table itself keeps its
rules: one row per (code, HTTP status), statuses that are client or server
errors, and gRPC codes from the protocol's numbering.
"""

import re

import errors_table
from conftest import ROOT


def test_docs_errors_md_should_be_the_table_written_from_error_h():
    text = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    assert errors_table.render(text) == text, \
        "docs/errors.md is stale: run python3 tests/py/errors_table.py"


def test_error_table_should_have_one_row_per_code_and_status():
    rows = errors_table.rows()
    pairs = [(r["code"], r["http"]) for r in rows]
    assert len(pairs) == len(set(pairs)), "two rows with the same code and status"
    names = [r["name"] for r in rows]
    assert len(names) == len(set(names))
    for r in rows:
        assert 400 <= r["http"] < 600, r
        assert r["grpc"] in errors_table.GRPC, r
        assert re.fullmatch(r"[a-z_]+", r["code"]) and len(r["code"]) < 32, r
        assert r["meaning"], r


def test_error_table_reader_should_refuse_a_row_it_cannot_read():
    bad = '#define CIRCLE_ERROR_MAP(X) \\\n  X(A, "a", 400, 3, "ok") \\\n  X(B, b, 400, 3, "x")\n\n'
    try:
        errors_table.rows(bad)
    except ValueError:
        return
    raise AssertionError("a malformed row was skipped silently")


def test_error_table_should_keep_the_wire_statuses_of_shared_codes():
    by = {r["name"]: r for r in errors_table.rows()}
    assert (by["TOO_DEEP"]["code"], by["TOO_DEEP"]["http"]) == ("limit_exceeded", 400)
    assert (by["LIMIT_EXCEEDED"]["code"], by["LIMIT_EXCEEDED"]["http"]) == ("limit_exceeded", 413)
    assert (by["BAD_ENCODING"]["code"], by["BAD_ENCODING"]["http"]) == ("bad_encoding", 400)
    assert (by["UNSUPPORTED_ENCODING"]["code"], by["UNSUPPORTED_ENCODING"]["http"]) == \
        ("bad_encoding", 415)
    assert (by["UNKNOWN_METHOD"]["code"], by["UNKNOWN_METHOD"]["grpc"]) == ("not_found", 12)
