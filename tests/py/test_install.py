"""`make install` gives other C programs the engine: headers, libcircle.a and
.so, and a pkg-config file that works. Installs into a temporary PREFIX,
compiles the example of docs/libcircle.md against it both ways, and runs it:
it must print what the document shows (the loss Keras gives for that batch,
8.908066749572754, and its gradient, to the six decimals printed)."""
import os
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

DOC = (ROOT / "docs" / "libcircle.md").read_text(encoding="utf-8")
# The example, as a user would copy it, and the output the document shows
# next to its build command.
PROGRAM = re.findall(r"^```c\n(.*?)^```", DOC, re.S | re.M)[0]
SHOWN = re.search(r"^\./example +# (.*)$", DOC, re.M).group(1)
NUMBER = re.compile(r"-?\d+\.\d+")


def same_output(got, shown, rel=1e-5):
    """The same text with the same numbers, to float32's 1e-5 relative: the
    last printed digit may differ with the CPU's kernels (FMA or not)."""
    if NUMBER.sub("#", got) != NUMBER.sub("#", shown):
        return False
    pairs = zip(map(float, NUMBER.findall(got)), map(float, NUMBER.findall(shown)))
    return all(abs(a - b) <= rel * max(abs(a), abs(b), 1.0) for a, b in pairs)


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    dest = tmp_path_factory.mktemp("prefix")
    subprocess.run(["make", "-s", "install", f"PREFIX={dest}"], cwd=ROOT,
                   check=True, capture_output=True, text=True)
    return dest


def test_install_should_lay_out_headers_libraries_and_pkgconfig(prefix):
    for rel in ["bin/circled", "include/circle/circle.h", "lib/libcircle.a",
                "lib/libcircle.so", "lib/libcircle.so.0",
                "lib/pkgconfig/circle.pc"]:
        assert (prefix / rel).exists(), rel
    pc = (prefix / "lib/pkgconfig/circle.pc").read_text()
    assert f"prefix={prefix}" in pc


def _pkg_config(prefix, *args):
    env = dict(os.environ, PKG_CONFIG_PATH=str(prefix / "lib/pkgconfig"))
    out = subprocess.run(["pkg-config", *args, "circle"], env=env, check=True,
                         capture_output=True, text=True)
    return out.stdout.split()


@pytest.mark.parametrize("link", ["static", "shared"])
def test_install_should_let_a_c_program_link_the_engine(prefix, tmp_path, link):
    src = tmp_path / "use.c"
    src.write_text(PROGRAM)
    exe = tmp_path / f"use_{link}"
    cflags = _pkg_config(prefix, "--cflags")
    if link == "static":
        libs = _pkg_config(prefix, "--libs", "--static")
        libs = [str(prefix / "lib/libcircle.a") if a == "-lcircle" else a
                for a in libs]
    else:
        libs = _pkg_config(prefix, "--libs") + ["-Wl,-rpath," + str(prefix / "lib")]
    subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", *cflags, str(src),
                    "-o", str(exe), *libs],
                   check=True, capture_output=True, text=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert same_output(run.stdout.strip(), SHOWN), f"printed {run.stdout.strip()!r}, the doc shows {SHOWN!r}"
