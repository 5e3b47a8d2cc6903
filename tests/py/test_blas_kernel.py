"""OpenBLAS kernel selection end to end: when OpenBLAS reports a generic core
on a CPU with AVX2 or AVX-512, or its AVX2 kernels on an AVX-512 CPU,
circled re-executes itself with OPENBLAS_CORETYPE set and logs the kernel it
ends up with; a core chosen by the user is never overridden. CIRCLE_TEST_CORENAME stands in for the
detected core (this machine's OpenBLAS may already know its CPU)."""
import os
import re
import subprocess
import time

from conftest import circled_binary


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def start_log(extra_env, drop=("OPENBLAS_CORETYPE", "CIRCLE_BLAS_REEXEC")):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra_env)
    proc = subprocess.Popen([circled_binary(), "--bind", "127.0.0.1", "--port", "0",
                             "--grpc-port", "0"],
                            env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "listening on" in line:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0, "".join(lines)
    return "".join(lines)


AVX512 = {"avx512f", "avx512vl", "avx512bw", "avx512dq"}


def test_blas_should_reexec_with_fast_kernels_on_a_generic_core():
    flags = cpu_flags()
    want = "SkylakeX" if AVX512 <= flags else "Haswell" if "avx2" in flags else None
    log = start_log({"CIRCLE_TEST_CORENAME": "Prescott"})
    if want is None:
        assert "re-executing" not in log
        return
    assert f"re-executing with OPENBLAS_CORETYPE={want}" in log, log
    assert re.search(rf"OpenBLAS core {want}\b", log), log


def test_blas_should_respect_a_core_the_user_chose():
    log = start_log({"CIRCLE_TEST_CORENAME": "Prescott", "OPENBLAS_CORETYPE": "Prescott"},
                    drop=("CIRCLE_BLAS_REEXEC",))
    assert "re-executing" not in log, log
    assert re.search(r"OpenBLAS core Prescott\b", log), log


def test_blas_should_reexec_with_avx512_kernels_where_it_chose_avx2_ones():
    flags = cpu_flags()
    log = start_log({"CIRCLE_TEST_CORENAME": "Zen"})
    if not AVX512 <= flags:
        assert "re-executing" not in log, log
        return
    assert "re-executing with OPENBLAS_CORETYPE=SkylakeX" in log, log
    assert re.search(r"OpenBLAS core SkylakeX\b", log), log


def test_blas_should_keep_the_best_core():
    # The best core this CPU runs stands in for the detected one: this
    # machine's own OpenBLAS may take its CPU for an older one.
    flags = cpu_flags()
    best = "SkylakeX" if AVX512 <= flags else "Haswell"
    log = start_log({"CIRCLE_TEST_CORENAME": best})
    assert "re-executing" not in log, log
    assert re.search(r"OpenBLAS core \w+", log), log
