"""test_limits.py -- the limits table of docs/hardening.md against the
live server: each row's default is what `circled --help` says, and a request
just past each limit gets the status and code the row promises, on /v1 and
(where the limit applies there) on the Open Inference Protocol, while one
just inside it does not.

Each probe starts its own circled with a small value of the row's flag.
Bounded: about 15 s, loopback only.
"""

import gzip
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "load"))
from daemon import ROOT, Circled, circled_binary  # noqa: E402
import long_request  # noqa: E402

OIP = "/v2/models/circle/infer"


def table_rows():
    """{flag, or the limit's name for a row without one: (default text,
    when-exceeded text)} from the table."""
    text = (ROOT / "docs" / "hardening.md").read_text(encoding="utf-8")
    sec = text.split("\n## Limits", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in sec.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("Limit", "---") or set(cells[0]) <= {"-"}:
            continue
        flag = re.search(r"`(--[a-z-]+)", cells[1])
        rows[flag.group(1) if flag else cells[0]] = (cells[2], cells[3])
    return rows


ROWS = table_rows()


def promised(flag):
    """(status, code) the row for flag promises first."""
    when = ROWS[flag][1]
    status = int(re.search(r"\b([45]\d\d)\b", when).group(1))
    code = re.search(r"`([a-z_]+)`", when)
    return status, code.group(1) if code else None


def post(url, path, body, headers=None):
    """(status, headers, parsed JSON body or raw bytes)."""
    h = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url + path, data=body, headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def v1(n, d=2, m=0):
    p = {"labels": [i % 2 for i in range(n)], "embeddings": [[1.0 + i] * d for i in range(n)]}
    if m:
        p["ref_labels"] = [i % 2 for i in range(m)]
        p["ref_embeddings"] = [[0.5] * d for _ in range(m)]
    return json.dumps(p).encode()


def oip(n, d=2, m=0):
    ins = [{"name": "labels", "datatype": "INT64", "shape": [n], "data": [i % 2 for i in range(n)]},
           {"name": "embeddings", "datatype": "FP32", "shape": [n, d], "data": [1.0] * (n * d)}]
    if m:
        ins += [{"name": "ref_labels", "datatype": "INT64", "shape": [m], "data": [0] * m},
                {"name": "ref_embeddings", "datatype": "FP32", "shape": [m, d], "data": [0.5] * (m * d)}]
    return json.dumps({"inputs": ins}).encode()


def exchange(url, head):
    """Sends the raw request head and reads the answer that comes before any
    body: (status, headers, body)."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, f"closed without an answer: {data!r}"
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        headers = dict(line.decode().split(": ", 1) for line in head.split(b"\r\n")[1:])
        length = int(headers.get("Content-Length", "0"))
        while len(body) < length:
            chunk = s.recv(65536)
            assert chunk, "closed mid-answer"
            body += chunk
        return int(head.split(b" ")[1]), headers, body


def announce(url, path, length):
    """Sends only a head announcing a body of length bytes and reads the
    answer that comes before the body: (status, headers, body)."""
    return exchange(url, f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                         f"application/json\r\nContent-Length: {length}\r\n\r\n".encode())


def expect(res, status, code):
    got, headers, body = res
    assert got == status, (got, body[:300])
    if code is not None:
        assert json.loads(body)["error"]["code"] == code, body[:300]


def expect_oip(res, status):
    got, headers, body = res
    assert got == status, (got, body[:300])
    assert isinstance(json.loads(body)["error"], str)


def ok(res):
    assert res[0] == 200, (res[0], res[2][:300])


def help_default(flag):
    out = subprocess.run([circled_binary(), "--help"], capture_output=True, text=True, check=True).stdout
    m = re.search(re.escape(flag) + r" \S+\s+\S+\s+default: (\S+)", out)
    return m.group(1)


def test_every_row_has_its_help_default():
    for flag, (default, _) in ROWS.items():
        if not flag.startswith("--"):
            continue
        assert default.split()[0].replace(",", "") == help_default(flag), (flag, default)


def test_the_table_names_every_limit_flag():
    out = subprocess.run([circled_binary(), "--help"], capture_output=True, text=True, check=True).stdout
    flags = set(re.findall(r"^  (--(?:max-[a-z-]+|timeout|request-timeout)) ", out, re.M))
    flags.discard("--max-tags")  # a metrics cardinality cap, not a request limit
    assert flags <= set(ROWS), f"not in the limits table of docs/hardening.md: {sorted(flags - set(ROWS))}"


def test_body_size():
    status, code = promised("--max-body-mb")
    with Circled(["--max-body-mb", "1"]) as d:
        # Refused from Content-Length alone, before a byte of the body.
        expect(announce(d.url, "/v1/loss", (1 << 20) + 1), status, code)
        expect_oip(announce(d.url, OIP, (1 << 20) + 1), status)
        ok(post(d.url, "/v1/loss", v1(4) + b" " * ((1 << 20) - len(v1(4)))))


def test_inflated_size():
    status, code = promised("--max-inflated-mb")
    with Circled(["--max-inflated-mb", "1"]) as d:
        bomb = gzip.compress(b" " * (4 << 20), mtime=0)  # 4 MiB in ~4 KiB
        expect(post(d.url, "/v1/loss", bomb, {"Content-Encoding": "gzip"}), status, code)
        expect_oip(post(d.url, OIP, bomb, {"Content-Encoding": "gzip"}), status)
        fits = gzip.compress(v1(4) + b" " * ((1 << 20) - len(v1(4))), mtime=0)
        ok(post(d.url, "/v1/loss", fits, {"Content-Encoding": "gzip"}))


@pytest.mark.parametrize("flag,value,over,inside", [
    ("--max-n", "4", dict(n=5), dict(n=4)),
    ("--max-m", "3", dict(n=2, m=4), dict(n=2, m=3)),
    ("--max-d", "5", dict(n=2, d=6), dict(n=2, d=5)),
    ("--max-pairs", "20", dict(n=5), dict(n=4)),
    ("--max-pairs", "20", dict(n=5, m=5), dict(n=5, m=4)),
])
def test_shape_limits(flag, value, over, inside):
    status, code = promised(flag)
    with Circled([flag, value]) as d:
        expect(post(d.url, "/v1/loss", v1(**over)), status, code)
        expect_oip(post(d.url, OIP, oip(**over)), status)
        ok(post(d.url, "/v1/loss", v1(**inside)))
        ok(post(d.url, OIP, oip(**inside)))


def test_nesting_depth():
    status, code = promised("--max-depth")
    with Circled(["--max-depth", "6"]) as d:
        deep = b'{"labels": [0], "embeddings": [[[[[[1]]]]]]}'         # depth 7
        at = b'{"labels": [0], "embeddings": [[[[[1]]]]]}'             # depth 6
        expect(post(d.url, "/v1/loss", deep), status, code)
        res = post(d.url, "/v1/loss", at)
        assert res[0] == 400 and json.loads(res[2])["error"]["code"] == "wrong_type", res
        expect_oip(post(d.url, OIP, b'{"inputs": [[[[[[1]]]]]]}'), status)


def test_duplicate_keys():
    status, code = promised("Duplicate keys in a JSON object")
    with Circled() as d:
        expect(post(d.url, "/v1/loss", b'{"labels": [0], "labels": [1], "embeddings": [[1]]}'),
               status, code)
        expect(post(d.url, "/v1/loss", b'{"labels": [0], "embeddings": [[1]], '
                                       b'"config": {"gamma": 2, "gamma": 2}}'), status, code)
        expect_oip(post(d.url, OIP, b'{"inputs": [], "inputs": []}'), status)


def test_sample_weights():
    # 1e38 used to give a 200 with a loss of null (/v1) or inf (OIP).
    status, code = promised("Sample weights")
    emb = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.6, 0.8]]
    with Circled() as d:
        for w in (1e38, 3e38):
            body = json.dumps({"labels": [0, 0, 1, 1], "embeddings": emb,
                               "sample_weight": [1, w, 1, 1]}).encode()
            res = post(d.url, "/v1/loss", body)
            expect(res, status, code)
            assert "sample_weight[1]" in json.loads(res[2])["error"]["message"], res[2]
            req = {"inputs": [
                {"name": "labels", "datatype": "INT64", "shape": [4], "data": [0, 0, 1, 1]},
                {"name": "embeddings", "datatype": "FP32", "shape": [4, 2],
                 "data": [v for row in emb for v in row]},
                {"name": "sample_weight", "datatype": "FP32", "shape": [4], "data": [1, w, 1, 1]}]}
            expect_oip(post(d.url, OIP, json.dumps(req).encode()), status)
        # Far below the limit, a weight is a weight.
        res = post(d.url, "/v1/loss", json.dumps({"labels": [0, 0, 1, 1], "embeddings": emb,
                                                  "sample_weight": [1, 1e30, 1, 1]}).encode())
        ok(res)
        assert json.loads(res[2])["loss"] is not None


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def decoding_bound():
    """(multiple of the body, constant in MiB) from the limits table's row."""
    when = ROWS["Memory to decode a request"][0]
    m = re.search(r"at most (\d+) times .* plus (\d+) MiB", when)
    return int(m.group(1)), int(m.group(2))


def expect_bounded(d, body, headers, status, code, plain_len=None):
    """Sends body and checks the answer and that circled's peak memory grew
    by at most the table's bound for a body of plain_len bytes (len(body)
    unless it is compressed)."""
    times, const_mib = decoding_bound()
    before = vm_hwm_kib(d.pid)
    res = post(d.url, "/v1/loss" if code else OIP, body, headers)
    grown = (vm_hwm_kib(d.pid) - before) * 1024
    if code:
        expect(res, status, code)
    else:
        expect_oip(res, status)
    allowed = times * (plain_len or len(body)) + (const_mib << 20)
    assert grown <= allowed, f"peak memory grew {grown >> 20} MiB, bound {allowed >> 20} MiB"
    return res


def test_decoding_memory_is_bounded_by_the_body():
    # Each of these used to build a cJSON node (about 80 B) for every
    # 2-byte number before the limit was checked (twice on /v1): the first
    # took VmHWM from 7 to 2,696 MiB.
    with Circled() as d:
        zeros = b"0," * (32 << 20)
        labels = b'{"labels": [' + zeros + b'0], "embeddings": [[1.0]]}'
        gz = gzip.compress(labels, compresslevel=1, mtime=0)
        res = expect_bounded(d, gz, {"Content-Encoding": "gzip"}, 413, "limit_exceeded",
                             plain_len=len(labels))
        assert "labels has 33554433 rows" in json.loads(res[2])["error"]["message"], res[2]
        # 16 MB of tiny numbers in a matrix within the limits, with a bad
        # last element: decoded to the end the slow way.
        rows = 2048
        row = b"[" + b"0," * 4095 + b"0]"
        emb = b"[" + b",".join([row] * (rows - 1)) + b", [" + b"0," * 4095 + b'"x"]]'
        body = b'{"labels": [' + b"0," * (rows - 1) + b'0], "embeddings": ' + emb + b"}"
        res = expect_bounded(d, body, None, 400, "wrong_type")
        assert "embeddings[2047][4095] is a string" in json.loads(res[2])["error"]["message"]
        # The same numbers as OIP JSON data, and nested labels past the limit.
        flat = b"[" + b"0," * (rows * 4096 - 1) + b'"x"]'
        oip_body = (b'{"inputs": [{"name": "labels", "datatype": "INT64", "shape": [2048], "data": ['
                    + b"0," * (rows - 1) + b'0]}, {"name": "embeddings", "datatype": "FP32", '
                    b'"shape": [2048, 4096], "data": ' + flat + b"}]}")
        expect_bounded(d, oip_body, None, 400, None)
        nested = b'{"labels": [[' + b"0," * (8 << 20) + b'0]], "embeddings": [[1.0]]}'
        expect_bounded(d, nested, None, 413, "limit_exceeded")
        assert d.healthy()


def get_with_header(url, size):
    """Status of GET /healthz carrying one header of about size bytes."""
    return exchange(url, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * size +
                    b"\r\nConnection: close\r\n\r\n")[0]


def test_request_head():
    status, _ = promised("Request line and headers")
    with Circled() as d:
        assert get_with_header(d.url, 100 << 10) == 200
        assert get_with_header(d.url, 200 << 10) == status


def test_memory_in_flight():
    status, code = promised("--max-inflight-mb")
    with Circled(["--max-inflight-mb", "1", "--max-body-mb", "1"]) as d:
        # 3000 x 3000 pairs of float64 scratch and a 3000 x 16 gradient: far
        # more than 1 MiB, from a body well under it.
        body = json.dumps({"labels": [0] * 3000, "embeddings": [[1] * 16] * 3000}).encode()
        assert len(body) < 1 << 20
        expect(post(d.url, "/v1/loss", body), status, code)
        ok(post(d.url, "/v1/loss", v1(4)))


def test_compute_queue():
    status, code = promised("--max-queue")
    with Circled(["--workers", "1", "--max-queue", "1"]) as d:
        # Requests that compute for about 2 s each on this machine (sized
        # by long_request.py): with one computing and one queued, the
        # third and fourth, sent 0.3 s apart, find the queue full.
        n, _ = long_request.long_n(d.port, 2000, path="/v1/loss")
        big, headers = long_request.body("/v1/loss", n)
        results = []

        def send():
            results.append(post(d.url, "/v1/loss", big))

        threads = []
        for _ in range(4):  # one computing, one queued, the rest refused
            t = threading.Thread(target=send)
            t.start()
            threads.append(t)
            time.sleep(0.3)
        for t in threads:
            t.join()
        answered = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] != 200]
        assert refused, [r[0] for r in results]
        for r in refused:
            expect(r, status, code)
            assert r[1].get("Retry-After"), "503 without Retry-After"
        # The premise: the answered ones computed for longer than it took
        # to send the rest.
        for r in answered:
            ms = long_request.compute_ms(r[1])
            assert ms is not None and ms >= 1000, f"computed for {ms} ms: too short to test this"


def test_connections():
    with Circled(["--max-connections", "4"]) as d:
        held = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(4)]
        time.sleep(0.3)
        late = socket.create_connection(("127.0.0.1", d.port), timeout=1)
        late.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        with pytest.raises(socket.timeout):
            late.recv(64)  # waits in the listen backlog
        for s in held:
            s.close()
        late.settimeout(5)
        assert late.recv(64).startswith(b"HTTP/1.1 200"), "the waiting connection was not served"
        late.close()
