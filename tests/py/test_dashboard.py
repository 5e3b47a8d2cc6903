"""test_dashboard.py -- GET /dashboard in a real browser: headless Chromium
(Debian's `chromium` package) loads the page from a real circled while
tagged requests keep arriving, and every chart must have drawn points from
/metrics. A screenshot is saved as build/artifacts/dashboard.png.

How the page is observed: Chromium's --virtual-time-budget runs the page's
timers (polls every 0.5 s of virtual time) while its fetches go to circled
for real; --dump-dom then gives the DOM, where the page records what it did
(<html data-samples>, each <canvas data-points>, the title). The screenshot
is checked for ink in the charts' line colours, not just for existing.

The traffic's "eval" requests ask for the retrieval figures, so the
Retrieval chart has data only where the engine computes them (a batch of
clustered classes always has queries). A second page is served from a
stand-in /metrics whose figures are known, to check what the Retrieval chart
and its tiles show.
"""

import re
import shutil
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from obs_util import RETRIEVAL_OUTPUTS, ROOT, circled, http, post_infer, post_loss

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "build" / "artifacts"
CHARTS = ["c-throughput", "c-latency", "c-loss", "c-recall", "c-retrieval", "c-sims",
          "c-gap", "c-fracs", "c-norm", "c-load"]
# The first two series colours of the page's palette (dashboard.html).
LINE_COLOURS = [(0x2f, 0x6f, 0xde), (0xe4, 0x57, 0x2e)]
VIRTUAL_MS = 8000
POLL_S = 0.5

pytestmark = pytest.mark.skipif(
    not CHROMIUM, reason="Debian's chromium package is not installed (make deps installs it)")


def chromium(url, *mode, profile):
    """Runs headless Chromium on url with the given output flag; returns
    stdout (the DOM for --dump-dom)."""
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}",
            f"--virtual-time-budget={VIRTUAL_MS}", "--window-size=1400,2000", *mode, url]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def send(url, tag, seed):
    """One tagged request: /v2 for every fifth seed, else /v1; "eval" asks
    for the retrieval figures on both. Returns (status, parsed body)."""
    retrieval = tag == "eval"
    if seed % 5 == 0:
        return post_infer(url, tag, seed=seed, **({"retrieval": True} if retrieval else {}))
    return post_loss(url, tag, seed=seed, **({"outputs": RETRIEVAL_OUTPUTS} if retrieval else {}))


class Traffic:
    """Tagged /v1 and /v2 requests in a loop until stopped, so the page sees
    counters move between its polls."""

    def __init__(self, url):
        self.url, self.stop, self.sent, self.failed = url, threading.Event(), 0, []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        seed = 100
        while not self.stop.is_set():
            seed += 1
            tag = ("train", "eval")[seed % 2]
            status, body = send(self.url, tag, seed)
            if status != 200:
                self.failed.append(body)
            self.sent += 1
            self.stop.wait(0.01)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)


@pytest.fixture(scope="module")
def page():
    """(url of the dashboard, DOM after the virtual-time budget, screenshot path)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    if shot.exists():
        shot.unlink()
    with circled("--workers", "2") as url, tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        # Some history before the page opens: the first scrape has data.
        for seed in range(1, 7):
            status, body = send(url, ("train", "eval")[seed % 2], seed)
            assert status == 200, body
        dashboard = f"{url}/dashboard?interval={POLL_S}"
        with Traffic(url) as traffic:
            dom = chromium(dashboard, "--dump-dom", profile=profile)
            chromium(dashboard, f"--screenshot={shot}", profile=profile)
        assert not traffic.failed, traffic.failed[:3]
        assert traffic.sent > 0
        yield dashboard, dom, shot


def attr(dom, element_re, name):
    m = re.search(element_re, dom)
    assert m, f"no element matching {element_re}"
    m2 = re.search(rf'\b{name}="([^"]*)"', m.group(0))
    return m2.group(1) if m2 else None


def test_dashboard_should_poll_metrics_without_errors(page):
    _, dom, _ = page
    html = re.search(r"<html[^>]*>", dom).group(0)
    samples = int(attr(dom, r"<html[^>]*>", "data-samples"))
    # 8 s of virtual time at one poll per 0.5 s; some polls may wait on the
    # network, but far fewer than half are lost.
    assert samples >= 5, html
    assert attr(dom, r"<html[^>]*>", "data-error") is None, html
    assert re.search(rf"<title>circled dashboard · {samples} samples</title>", dom)
    # The status line names the tags the traffic used.
    status = re.search(r'<div id="status"[^>]*>(.*?)</div>', dom, re.S).group(1)
    assert "train" in status and "eval" in status, status


def test_every_chart_should_have_drawn_points(page):
    _, dom, _ = page
    points = {c: int(attr(dom, rf'<canvas id="{c}"[^>]*>', "data-points") or 0) for c in CHARTS}
    empty = [c for c, n in points.items() if n == 0]
    assert not empty, f"charts without data: {empty} ({points})"
    # Tag charts draw one line per tag: at least two points per poll after the first.
    assert points["c-loss"] >= 2 * 2, points


def test_dashboard_tiles_should_show_the_build_and_tags(page):
    _, dom, _ = page
    meta = re.search(r'<span class="meta" id="meta">(.*?)</span>', dom).group(1)
    assert meta.startswith("v0.") and "OpenBLAS" in meta, meta
    options = re.findall(r'<option value="([^"]*)"', dom)
    assert {"*", "train", "eval"} <= set(options), options


def test_screenshot_should_show_drawn_charts(page):
    import numpy as np
    from PIL import Image

    _, _, shot = page
    assert shot.is_file() and shot.stat().st_size > 20_000
    img = Image.open(shot).convert("RGB")
    assert img.size == (1400, 2000)
    pixels = np.asarray(img, dtype=np.int16)
    for colour in LINE_COLOURS:
        ink = int((np.abs(pixels - np.array(colour)).max(axis=2) <= 12).sum())
        # A polyline across a chart is hundreds of pixels; the legend swatch
        # alone is 30.
        assert ink > 500, f"only {ink} pixels of {colour}: the charts look empty"


def test_dashboard_should_say_when_metrics_cannot_be_read(tmp_path):
    """The page reports a failing /metrics instead of drawing nothing
    silently: served by a plain file server, its /metrics answers 404."""
    with circled() as url:
        status, _, body = http("GET", url + "/dashboard")
        assert status == 200
    (tmp_path / "dashboard.html").write_bytes(body)
    server = subprocess.Popen(["python3", "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                               "--directory", str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = server.stdout.readline()
        port = re.search(r"port (\d+)", line).group(1)
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
            dom = chromium(f"http://127.0.0.1:{port}/dashboard.html?interval=1", "--dump-dom",
                           profile=profile)
    finally:
        server.terminate()
        server.wait(10)
    assert "404" in (attr(dom, r"<html[^>]*>", "data-error") or ""), dom[:500]
    assert 'id="status" class="bad"' in dom
    assert attr(dom, r"<html[^>]*>", "data-samples") == "0"


# ---------------------------------------------------------------------------
# The Retrieval chart against a /metrics whose figures are known
# ---------------------------------------------------------------------------

RETRIEVAL_FIGURES = {"precision_at_1": 0.75, "r_precision": 0.5, "map_at_r": 0.375}


def stand_in_metrics(k):
    """The k-th scrape (k >= 1) of a stand-in /metrics: tags "train" (the
    most recently active, without retrieval figures) and "eval" (with them),
    one more request each per scrape."""
    lines = []
    for tag, ts in (("train", 2_000_000_000 + k), ("eval", 1_900_000_000 + k)):
        lines += [f'circled_tag_last_timestamp_seconds{{tag="{tag}"}} {ts}',
                  f'circled_quality_loss_last{{tag="{tag}"}} 2',
                  f'circled_quality_loss_sum{{tag="{tag}"}} {2 * k}',
                  f'circled_quality_loss_count{{tag="{tag}"}} {k}']
    for fig, v in RETRIEVAL_FIGURES.items():
        lines += [f'circled_quality_{fig}_last{{tag="eval"}} {v}',
                  f'circled_quality_{fig}_sum{{tag="eval"}} {v * k}',
                  f'circled_quality_{fig}_count{{tag="eval"}} {k}']
    return ("\n".join(f"# TYPE {ln.split('{')[0]} untyped\n{ln}" for ln in lines) + "\n").encode()


def test_retrieval_chart_should_follow_the_tag_with_retrieval_figures():
    """With all tags shown, the Retrieval chart and tiles show the most
    recently active tag that has retrieval figures ("eval"), not the most
    recent tag ("train", which has none): three lines of the known means, one
    point per figure and scrape."""
    with circled() as url:
        status, _, page = http("GET", url + "/dashboard")
        assert status == 200
    scrapes = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/dashboard"):
                body, ctype = page, "text/html; charset=utf-8"
            elif self.path.startswith("/metrics"):
                scrapes.append(None)
                body, ctype = stand_in_metrics(len(scrapes)), "text/plain; version=0.0.4"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
            dom = chromium(f"http://127.0.0.1:{server.server_port}/dashboard?interval={POLL_S}",
                           "--dump-dom", profile=profile)
    finally:
        server.shutdown()
        server.server_close()
    samples = int(attr(dom, r"<html[^>]*>", "data-samples"))
    assert samples >= 5 and attr(dom, r"<html[^>]*>", "data-error") is None, dom[:500]
    # Every scrape adds one request per tag: each poll draws the three
    # figures of "eval" (the first from the _last gauges, later ones from the
    # _sum/_count deltas), and nothing of "train".
    points = int(attr(dom, r'<canvas id="c-retrieval"[^>]*>', "data-points") or 0)
    assert points == 3 * samples, (points, samples)
    ret = re.search(r'<p id="p-ret"[^>]*>(.*?)</p>', dom, re.S).group(1)
    assert ret.endswith("— tag eval"), ret
    # The loss chart follows every tag; the other multi-figure charts the
    # most recent one.
    assert re.search(r'<p id="p-sims"[^>]*>[^<]*— tag train</p>', dom)
    tiles = dict(re.findall(r'<div class="tile"><div class="k">(.*?)</div><div class="v">(.*?)</div>', dom))
    assert tiles["last precision@1 (eval)"] == "0.75", tiles
    assert tiles["last R-precision"] == "0.5", tiles
    assert tiles["last MAP@R"] == "0.375", tiles
    assert tiles["last loss (train)"] == "2", tiles
