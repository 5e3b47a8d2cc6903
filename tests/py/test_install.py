"""`make install` gives other C programs the engine: headers, libcircle.a and
.so, and a pkg-config file that works. Installs into a temporary PREFIX,
compiles a small program against it both ways, and runs it."""
import os
import pathlib
import subprocess
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

PROGRAM = textwrap.dedent(r"""
    #include <circle/circle.h>
    #include <stdio.h>
    int main(void) {
      circle_engine *e = NULL;
      if (circle_engine_init(&e, NULL) != CIRCLE_OK) return 1;
      circle_config cfg;
      circle_config_init(&cfg);
      int64_t labels[4] = {0, 0, 1, 1};
      float x[8] = {1, 0, 0.8f, 0.6f, 0, 1, 0.6f, 0.8f};
      float grad[8];
      circle_input in = {.n = 4, .d = 2, .labels = labels, .embeddings = x};
      circle_output out = {.want = CIRCLE_OUT_LOSS | CIRCLE_OUT_GRAD,
                           .grad = grad};
      int rc = circle_loss_compute(e, &cfg, &in, &out);
      printf("%s %.6f\n", circle_status_name(rc), out.loss);
      circle_engine_free(e);
      return rc == CIRCLE_OK && out.loss > 0 ? 0 : 2;
    }
""")


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
    subprocess.run(["cc", "-std=c11", *cflags, str(src), "-o", str(exe), *libs],
                   check=True, capture_output=True, text=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("OK ")
