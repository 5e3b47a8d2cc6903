"""test_readme.py -- every example in README.md runs against a live circled
and answers as the README says, so the examples cannot rot.

What counts as an example, read from the fenced code blocks:
  - a ```sh block that runs curl: it must talk to localhost:8080 and show
    the answer, either as a `# {...}` line inside the block or as the
    ```json block right after it; the answer circled gives must equal it
    (numbers to 1e-6 relative: the last printed float32 digit may depend on
    the BLAS kernel);
  - a ```python block: it must exit 0 and print something, with no None in
    it (tritonclient's as_numpy answers None for an output that is not
    there).
Other ```sh blocks (make, docker, kubectl) are commands, not examples
against the service, and are not run. localhost:8080 becomes the test
daemon's address.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_circled

README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
BLOCKS = FENCE.findall(README)


def curl_examples():
    """[(command, shown answer text)] for every sh block that runs curl."""
    out = []
    for k, (lang, code) in enumerate(BLOCKS):
        if lang != "sh" or not re.search(r"^curl ", code, re.M):
            continue
        shown = re.findall(r"^# (\{.*\})$", code, re.M)
        if not shown and k + 1 < len(BLOCKS) and BLOCKS[k + 1][0] == "json":
            shown = [BLOCKS[k + 1][1]]
        out.append((code, shown[0] if len(shown) == 1 else None))
    return out


CURL = curl_examples()
PYTHON = [code for lang, code in BLOCKS if lang == "python"]


@pytest.fixture(scope="module")
def address():
    """host:port of a circled with default flags (no CIRCLED_* from the
    caller's environment, so GET /config shows the documented defaults)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCLED_")}
    with run_circled(env=env) as url:
        yield url.removeprefix("http://")


def close(a, b, rel=1e-6):
    """Equal structure, equal strings and booleans, numbers within rel."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(close, a, b))
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return isinstance(b, (int, float)) and not isinstance(b, bool) and \
            abs(a - b) <= rel * max(abs(a), abs(b), 1.0)
    return a == b


def test_readme_should_keep_its_examples():
    assert len(CURL) >= 4, "README lost curl examples"
    assert any("tritonclient" in code for code in PYTHON), "README lost its tritonclient example"
    assert any("import requests" in code for code in PYTHON), "README lost its requests example"


@pytest.mark.parametrize("code,shown", CURL, ids=[f"curl{k}" for k in range(len(CURL))])
def test_readme_curl_example_should_answer_as_shown(address, code, shown):
    assert shutil.which("curl"), "curl is not installed (make deps-test installs it)"
    assert "localhost:8080" in code, f"a curl example must talk to localhost:8080:\n{code}"
    assert shown is not None, f"a curl example must show its one answer:\n{code}"
    run = subprocess.run(["bash", "-c", code.replace("localhost:8080", address)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert close(got, json.loads(shown)), f"README shows\n{shown}\ncircled answered\n{run.stdout}"


@pytest.mark.parametrize("code", PYTHON, ids=[f"python{k}" for k in range(len(PYTHON))])
def test_readme_python_example_should_run(address, code, tmp_path):
    run = subprocess.run([sys.executable, "-c", code.replace("localhost:8080", address)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"README example failed:\n{code}\n{run.stderr}"
    assert run.stdout.strip() and "None" not in run.stdout, run.stdout
