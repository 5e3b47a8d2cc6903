"""test_prometheus.py -- a real Prometheus (Debian's `prometheus` package)
scrapes a real circled every second; the series it stores must say what the
test sent. Also: `promtool check metrics` on the exposition, the PromQL
examples of docs/observability.md and every query of the Grafana dashboard
evaluated by that Prometheus, and the Grafana provisioning wired to the
dashboard and to the compose stack's Prometheus.

What the traffic is, so every expected number is known:
  - circled runs with --max-tags 2;
  - /v1/loss: tag "a" x 3, tag "b" x 2, tag "c" x 2 (past the cap: "other"),
    untagged x 1, and 2 bad requests (400) tagged "a";
  - /v2 infer: tag "b" x 1;
  - the retrieval figures asked for by tag "a"'s /v1 requests and by the /v2
    request, and by no other.
Values are compared exactly where both sides print shortest round-trip
doubles (the stats in a /v1 response and the _last gauge in Prometheus).
"""

import json
import math
import re
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import pytest
import yaml

from obs_util import (RETRIEVAL_OUTPUTS, ROOT, circled, free_port, http, post_infer,
                      post_loss, wait_for)

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD_JSON = GRAFANA / "dashboards" / "circled.json"

pytestmark = pytest.mark.skipif(
    not PROMETHEUS or not PROMTOOL,
    reason="Debian's prometheus package is not installed (make deps installs it)")

SENT_V1_OK = {"a": 3, "b": 2, "c": 2, None: 1}
SENT_V1_BAD = 2
SENT_V2_OK = {"b": 1}
RETRIEVAL_TAGS = {"a"}  # /v1 tags that ask for the retrieval figures (and /v2)
RETRIEVAL_FIGURES = ("precision_at_1", "r_precision", "map_at_r")


class Stack:
    """circled + Prometheus, with the traffic above already sent."""

    def __init__(self, circled_url, prom_url, last_stats, last_retrieval):
        self.circled = circled_url
        self.prom = prom_url
        self.last_stats = last_stats  # tag -> stats of its last /v1 response
        # tag -> retrieval figures of its last response that has them
        self.last_retrieval = last_retrieval

    def query(self, promql):
        """The result of an instant query (a list of {metric, value})."""
        q = urllib.parse.urlencode({"query": promql})
        status, _, body = http("GET", f"{self.prom}/api/v1/query?{q}")
        doc = json.loads(body)
        assert status == 200 and doc["status"] == "success", f"{promql}: {body[:500]!r}"
        return doc["data"]["result"]

    def value(self, promql):
        """The single value of a query, or None when it has no result."""
        r = self.query(promql)
        assert len(r) <= 1, f"{promql}: more than one series: {r}"
        return float(r[0]["value"][1]) if r else None


@pytest.fixture(scope="module")
def stack():
    with circled("--max-tags", "2") as url, tempfile.TemporaryDirectory(prefix="prom-") as tmp:
        host_port = url.split("//")[1]
        config = Path(tmp) / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "circled", "metrics_path": "/metrics",
                                "static_configs": [{"targets": [host_port]}]}],
        }))
        check = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        port = free_port()
        prom_log = open(Path(tmp) / "prometheus.log", "w")
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=prom_log, stderr=subprocess.STDOUT)
        prom = f"http://127.0.0.1:{port}"
        try:
            def ready():
                if proc.poll() is not None:
                    pytest.fail(f"prometheus exited {proc.returncode}: "
                                f"{(Path(tmp) / 'prometheus.log').read_text()}")
                try:
                    return http("GET", prom + "/-/ready", timeout=2)[0] == 200
                except OSError:
                    return False
            wait_for("Prometheus to be ready", ready, 30)

            last, last_ret = {}, {}
            seed = 0
            for tag, count in SENT_V1_OK.items():
                for _ in range(count):
                    seed += 1
                    extra = {"outputs": RETRIEVAL_OUTPUTS} if tag in RETRIEVAL_TAGS else {}
                    status, body = post_loss(url, tag, seed=seed, **extra)
                    assert status == 200, body
                    last[tag] = body["stats"]
                    if extra:
                        last_ret[tag] = body["retrieval"]
            for _ in range(SENT_V1_BAD):
                status, _, _ = http("POST", url + "/v1/loss", {"labels": [0], "tag": "a"})
                assert status == 400
            for tag, count in SENT_V2_OK.items():
                for _ in range(count):
                    seed += 1
                    status, body = post_infer(url, tag, seed=seed, retrieval=True)
                    assert status == 200, body
                    params = body["parameters"]
                    last_ret[tag] = {k: params["retrieval_" + k]
                                     for k in RETRIEVAL_FIGURES + ("queries",)}

            s = Stack(url, prom, last, last_ret)
            # Bounded wait: a scrape after the last request has landed.
            wait_for("the last computation to be scraped",
                     lambda: s.value('sum(circled_computations_total{job="circled"})') == 9, 30)
            yield s
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            prom_log.close()


# ---------------------------------------------------------------------------
# What Prometheus stored
# ---------------------------------------------------------------------------


def test_prometheus_should_scrape_circled_without_errors(stack):
    status, _, body = http("GET", stack.prom + "/api/v1/targets")
    (target,) = [t for t in json.loads(body)["data"]["activeTargets"]
                 if t["labels"]["job"] == "circled"]
    assert target["health"] == "up" and target["lastError"] == "", target
    assert stack.value('up{job="circled"}') == 1
    # Prometheus found nothing to complain about in the format.
    assert stack.value('scrape_samples_post_metric_relabeling{job="circled"}') > 100


def test_prometheus_should_count_requests_by_endpoint_and_status(stack):
    by = {(r["metric"]["endpoint"], r["metric"]["status"]): float(r["value"][1])
          for r in stack.query('circled_requests_total{job="circled"}')}
    assert by[("/v1/loss", "200")] == sum(SENT_V1_OK.values())
    assert by[("/v1/loss", "400")] == SENT_V1_BAD
    assert by[("/v2/models/circle/infer", "200")] == sum(SENT_V2_OK.values())
    # The scrapes themselves: each is counted once finished, so the second
    # scrape is the first to show one.
    wait_for("a scrape to count the one before it", lambda: stack.value(
        'circled_requests_total{endpoint="/metrics",status="200"}'), 30)
    # Latency histogram: as many observations as requests, and a quantile.
    assert stack.value('sum(circled_request_duration_seconds_count{endpoint="/v1/loss"})') == \
        sum(SENT_V1_OK.values()) + SENT_V1_BAD
    p99 = stack.value('histogram_quantile(0.99, sum by (le) '
                      '(circled_request_duration_seconds_bucket{endpoint="/v1/loss"}))')
    assert 0 < p99 <= 60
    # Bytes in: the bodies sent, counted once each.
    assert stack.value('circled_request_bytes_total{endpoint="/v1/loss"}') > 0
    assert stack.value('circled_batch_rows_count') == 9
    assert stack.value('circled_engine_threads') >= 1
    assert stack.value('circled_engine_queue_depth') == 0
    assert stack.value('circled_build_info{job="circled"}') == 1


def test_prometheus_should_see_tags_capped_at_max_tags(stack):
    by = {r["metric"].get("tag", ""): float(r["value"][1])
          for r in stack.query('circled_tag_computations_total{job="circled"}')}
    # An empty label is no label in Prometheus: untagged requests have none.
    assert by == {"a": 3, "b": 2 + 1, "other": 2, "": 1}
    assert stack.value("circled_tags") == 2
    assert stack.value("circled_tags_max") == 2
    assert stack.value("circled_tags_overflow_total") == 2


def test_prometheus_quality_series_should_equal_the_stats_of_v1_responses(stack):
    """The _last gauges hold exactly what the last /v1 response of that tag
    returned in "stats" (tag "b" is excluded: its last request was /v2)."""
    for tag in ("a", None):
        stats = stack.last_stats[tag]
        sel = f'tag="{tag}"' if tag else 'tag=""'
        for fig in ("pos_row_frac", "mean_pos_sim", "min_pos_sim", "mean_neg_sim",
                    "max_neg_sim", "sim_gap", "hard_neg_frac", "recall_at_1",
                    "norm_dev_mean", "norm_dev_max"):
            got = stack.value(f'circled_quality_{fig}_last{{job="circled",{sel}}}')
            assert got == stats[fig], (tag, fig, got, stats[fig])
        # The histogram saw every request of the tag.
        assert stack.value(f'circled_quality_recall_at_1_count{{{sel}}}') == SENT_V1_OK[tag]
    # Loss: the mean over tag a's three requests is between their extremes.
    mean = stack.value('circled_quality_loss_sum{tag="a"} / circled_quality_loss_count{tag="a"}')
    assert math.isfinite(mean) and mean > 0
    med = stack.value('histogram_quantile(0.5, circled_quality_recall_at_1_bucket{tag="a"})')
    assert 0 <= med <= 1


def test_prometheus_retrieval_series_should_equal_the_figures_of_the_responses(stack):
    """The retrieval _last gauges hold exactly what the last response of the
    tag that asked for them returned (/v1 "retrieval" for "a", the /v2
    response parameters for "b"); tags that never asked have no series."""
    for tag, ret in stack.last_retrieval.items():
        # The premise: obs_util's batches (16 rows, 4 classes) have a query
        # in every row, so the figures are measurements.
        assert ret["queries"] == 16, (tag, ret)
        for fig in RETRIEVAL_FIGURES:
            got = stack.value(f'circled_quality_{fig}_last{{job="circled",tag="{tag}"}}')
            assert got == ret[fig], (tag, fig, got, ret[fig])
    asked = {t: n for t, n in SENT_V1_OK.items() if t in RETRIEVAL_TAGS}
    for fig in RETRIEVAL_FIGURES:
        by = {r["metric"].get("tag", ""): float(r["value"][1])
              for r in stack.query(f'circled_quality_{fig}_count{{job="circled"}}')}
        assert by == {**asked, **SENT_V2_OK}, (fig, by)
    mean = stack.value('circled_quality_map_at_r_sum{tag="a"} / circled_quality_map_at_r_count{tag="a"}')
    assert 0 < mean <= 1


def test_promtool_should_accept_the_exposition(stack):
    status, headers, body = http("GET", stack.circled + "/metrics")
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True)
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b"", r.stdout + r.stderr
    # promtool can fail: a counter without _total and a duplicate TYPE.
    broken = body + b"# HELP x_bytes made up\n# TYPE x_bytes counter\nx_bytes 1\n"
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=broken, capture_output=True)
    assert r.returncode != 0 or r.stdout, "promtool accepted a counter without _total"


# ---------------------------------------------------------------------------
# Documentation and Grafana, against the same Prometheus
# ---------------------------------------------------------------------------


def documented_promql():
    doc = (ROOT / "docs" / "observability.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```promql\n(.*?)^```", doc, re.S | re.M)
    return [q for b in blocks for q in (x.strip() for x in b.split("\n\n")) if q and not q.startswith("#")]


def test_documented_promql_examples_should_run_and_return_data(stack):
    queries = documented_promql()
    assert len(queries) >= 5, "docs/observability.md lost its PromQL examples"
    for q in queries:
        # Windows long enough to hold the scrapes of this short test.
        result = stack.query(q.replace("[5m]", "[1m]"))
        assert result, f"documented query returned nothing: {q}"


def dashboard_queries():
    dash = json.loads(DASHBOARD_JSON.read_text(encoding="utf-8"))
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            out.append((f"variable {v['name']}", v["query"]["query"]))
    return dash, out


def grafana_to_promql(expr, tag_regex):
    """What Grafana sends for expr, with $job, $tag and the intervals filled
    in (label_values() is Grafana's, turned into the series query it runs)."""
    expr = expr.replace("$__rate_interval", "30s").replace("$__interval", "5s")
    expr = expr.replace("$job", "circled").replace("$tag", tag_regex)
    m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", expr)
    return f"count by ({m.group(2)}) ({m.group(1)})" if m else expr


def test_grafana_dashboard_queries_should_run_against_prometheus(stack):
    _, queries = dashboard_queries()
    assert len(queries) >= 20
    # Two more scrapes after the traffic, so that every rate() has two
    # samples of each series (awaited, not slept for: a loaded machine
    # scrapes late).
    scrapes = 'count_over_time(up{job="circled"}[10m])'
    before = stack.value(scrapes)
    wait_for("two more scrapes", lambda: stack.value(scrapes) >= before + 2, 30)
    empty = []
    for title, expr in queries:
        result = stack.query(grafana_to_promql(expr, "a|b|other"))
        if not result:
            empty.append((title, expr))
    # Rates over a quiet window may be 0 but are still series; only panels
    # whose inputs this traffic cannot produce may be empty.
    assert not empty, f"panels with no data: {empty}"


def test_grafana_dashboard_should_be_well_formed():
    dash, _ = dashboard_queries()
    assert dash["uid"] and dash["title"] == "circled" and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "job", "tag"} <= names
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']} overlaps another"
                cells.add((x, y))
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}"
            assert p["targets"] and all(t["expr"] for t in p["targets"])
            assert all('job=~"$job"' in t["expr"] for t in p["targets"]), p["title"]
    text = DASHBOARD_JSON.read_text(encoding="utf-8")
    # Only metric names circled exposes.
    used = set(re.findall(r"\b((?:circled|process)_[a-z0-9_]+)", text))
    exposed_src = (ROOT / "src" / "metrics.c").read_text(encoding="utf-8")
    for name in used:
        base = re.sub(r"_(bucket|sum|count|last)$", "", name)
        base = re.sub(r"^circled_quality_", "", base)
        assert base in exposed_src or name in exposed_src, f"{name} is not exposed by circled"


def test_grafana_provisioning_should_wire_the_dashboard_to_the_stack_prometheus():
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    g = services["grafana"]
    mounts = {m.split(":")[1]: (ROOT / "deploy" / m.split(":")[0]).resolve()
              for m in g["volumes"] if m.startswith("./")}
    assert mounts["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", source["url"]).groups()
    assert host in services and f"{port}:{port}" in services[host]["ports"]
    assert "prometheus" in g["depends_on"]
    dash = json.loads(DASHBOARD_JSON.read_text())
    (dsvar,) = [v for v in dash["templating"]["list"] if v["name"] == "datasource"]
    assert dsvar["current"]["value"] == source["uid"]
    # The scrape interval Grafana assumes is Prometheus' own.
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert source["jsonData"]["timeInterval"] == prom["global"]["scrape_interval"]
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "circled.yml").read_text())
    (provider,) = prov["providers"]
    path = provider["options"]["path"]
    assert mounts[path] == DASHBOARD_JSON.parent
    home = g["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/{DASHBOARD_JSON.name}"
