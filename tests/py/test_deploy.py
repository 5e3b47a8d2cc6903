"""test_deploy.py -- the Dockerfile, the Kubernetes manifests and the Compose
stack agree with each other and with what circled serves.

No Docker engine or Kubernetes cluster runs here, so these tests check
structure: the files parse, carry the required fields, validate against the
Kubernetes and Compose schemas, and name the same ports (8080 HTTP, 8081
gRPC), probes (/healthz, /readyz, the gRPC health check) and user. Where build/circled exists they also start it
with the flags the image and the Deployment pass, probe it the way Kubernetes
and Docker would, and check that the runtime image installs every library it
links against.
"""

import fnmatch
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

PORT = 8080
GRPC_PORT = 8081
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
METRICS_PATH = "/metrics"
BUILD_IMAGE = "debian:bookworm"
RUNTIME_IMAGE = "debian:bookworm-slim"
# The libraries build/circled links against, by Debian package.
RUNTIME_PACKAGES = {"libmicrohttpd12", "libcjson1", "libopenblas0-pthread", "zlib1g",
                    "libgrpc29", "libprotobuf-c1"}
# Kubernetes releases the manifests must validate against (oldest first).
K8S_VERSIONS = ["1.27.0", "1.33.0"]
MANIFESTS = ["deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def manifest(name):
    return load_yaml(DEPLOY / name)


def dockerfile_instructions():
    """The Dockerfile as (INSTRUCTION, argument) pairs, continuations joined
    and comments dropped."""
    out, cur = [], ""
    for raw in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not cur and (not line or line.startswith("#")):
            continue
        if cur and line.startswith("#"):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        word, _, rest = cur.partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    assert not cur, "Dockerfile ends inside a continued line"
    return out


def dockerfile_stages():
    """[(from_argument, [(INSTRUCTION, argument), ...]), ...] per stage."""
    stages = []
    for ins, arg in dockerfile_instructions():
        if ins == "FROM":
            stages.append((arg, []))
        elif ins not in ("ARG",) or stages:
            assert stages, f"{ins} before the first FROM"
            stages[-1][1].append((ins, arg))
    return stages


def stage_values(stage, name):
    return [arg for ins, arg in stage[1] if ins == name]


def healthcheck_command(stage):
    (hc,) = stage_values(stage, "HEALTHCHECK")
    cmd = hc[hc.index("CMD") + 3:].strip()
    return json.loads(cmd)


def makefile_rules():
    """{target: (prerequisites, recipe lines)} from a plain Makefile."""
    rules, current = {}, None
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        if line.startswith("\t"):
            if current:
                for t in current:
                    rules[t][1].append(line.strip())
            continue
        m = re.match(r"^([A-Za-z0-9_./$()%-][^:=]*?)\s*:(?!=)\s*(.*)$", line)
        if m and not line.lstrip().startswith("#"):
            targets = m.group(1).split()
            prereqs = m.group(2).split("|")[0].split()
            current = targets
            for t in targets:
                rules.setdefault(t, ([], []))
                rules[t][0].extend(prereqs)
        elif line.strip() and not line.startswith(" "):
            current = None
    return rules


def ci_make_targets():
    """Every make target that .ci/run runs, directly or through prerequisites
    and $(MAKE) recursion."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    todo = re.findall(r"^\s*make\s+([A-Za-z0-9_-]+)", ci, re.M)
    assert todo, ".ci/run runs no make target"
    rules, seen = makefile_rules(), set()
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        prereqs, recipe = rules.get(t, ([], []))
        todo.extend(p for p in prereqs if re.fullmatch(r"[A-Za-z0-9_-]+", p))
        for line in recipe:
            todo.extend(re.findall(r"\$\(MAKE\)\s+([A-Za-z0-9_-]+)", line))
    return seen


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def circled_bin():
    path = os.environ.get("CIRCLED_BIN") or str(ROOT / "build" / "circled")
    if not os.access(path, os.X_OK):
        pytest.skip(f"{path} is not built (run `make`)")
    return path


def http_status(port, path, timeout=5):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def grpc_serving(port):
    """True when grpc.health.v1.Health/Check (service "") answers SERVING,
    as the kubelet's gRPC probe asks: HealthCheckResponse{status = 1}."""
    import grpc
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check",
                               request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
        return check(b"", timeout=5) == b"\x08\x01"


class Circled:
    """circled started with the given arguments on an ephemeral port."""

    def __init__(self, args, env=None):
        self.port = free_port()
        argv = [circled_bin()] + args
        # The image binds 0.0.0.0:8080; the test binds loopback and a free
        # port, keeping every other flag as the image and manifests pass it.
        argv = replace_flag(argv, "--port", str(self.port))
        self.grpc_port = free_port()
        argv = replace_flag(argv, "--grpc-port", str(self.grpc_port))
        argv = replace_flag(argv, "--bind", "127.0.0.1")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCLED_")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=full_env)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace")
                pytest.fail(f"circled {argv[1:]} exited {self.proc.returncode}:\n{out}")
            try:
                if http_status(self.port, LIVENESS_PATH, timeout=1) == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"circled {argv[1:]} did not answer {LIVENESS_PATH} within 15 s")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail("circled did not exit within 15 s of SIGTERM")
        return self.proc.returncode


def replace_flag(argv, flag, value):
    out, i = [], 0
    found = False
    while i < len(argv):
        if argv[i] == flag and i + 1 < len(argv):
            out += [flag, value]
            i += 2
            found = True
        elif argv[i].startswith(flag + "="):
            out.append(f"{flag}={value}")
            i += 1
            found = True
        else:
            out.append(argv[i])
            i += 1
    if not found:
        out += [flag, value]
    return out


# ---------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------


def test_dockerfile_should_build_on_bookworm_and_run_on_bookworm_slim():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "the Dockerfile must be multi-stage"
    assert re.fullmatch(rf"{re.escape(BUILD_IMAGE)}\s+AS\s+\w+", stages[0][0], re.I), stages[0][0]
    assert stages[-1][0].split()[0] == RUNTIME_IMAGE, stages[-1][0]


def test_dockerfile_should_run_as_a_numeric_non_root_user_matching_the_deployment():
    runtime = dockerfile_stages()[-1]
    (user,) = stage_values(runtime, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: numeric and non-zero, for runAsNonRoot"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)
    if gid:
        assert pod["securityContext"]["runAsGroup"] == int(gid)
    compose_user = load_yaml(DEPLOY / "compose.yaml")["services"]["circled"]["user"]
    assert compose_user == user


def test_dockerfile_should_expose_the_port_circled_listens_on():
    runtime = dockerfile_stages()[-1]
    exposed = " ".join(stage_values(runtime, "EXPOSE")).split()
    assert exposed == [str(PORT), str(GRPC_PORT)]
    (entry,) = stage_values(runtime, "ENTRYPOINT")
    argv = json.loads(entry)
    assert Path(argv[0]).name == "circled"
    assert argv[argv.index("--port") + 1] == str(PORT)
    assert argv[argv.index("--grpc-port") + 1] == str(GRPC_PORT)
    assert argv[argv.index("--bind") + 1] == "0.0.0.0"
    assert stage_values(runtime, "STOPSIGNAL") == ["SIGTERM"]


def test_dockerfile_should_healthcheck_the_liveness_path():
    runtime = dockerfile_stages()[-1]
    (hc,) = stage_values(runtime, "HEALTHCHECK")
    assert "--timeout=" in hc and "--interval=" in hc
    cmd = " ".join(healthcheck_command(runtime))
    assert f"127.0.0.1/{PORT}" in cmd and f"GET {LIVENESS_PATH} " in cmd


def test_dockerfile_should_build_with_the_make_targets_ci_runs():
    build = dockerfile_stages()[0]
    args = {}
    for ins, arg in build[1]:
        if ins == "ARG" and "=" in arg:
            k, v = arg.split("=", 1)
            args[k] = v
    targets = []
    for run in stage_values(build, "RUN"):
        for t in re.findall(r"\bmake\s+(\"?\$?\{?[A-Za-z0-9_-]+\}?\"?)", run):
            t = t.strip('"')
            if t.startswith("$"):
                t = args[t.strip("${}")]
            targets.append(t)
    assert {"deps-c", "all"} <= set(targets), targets
    ci = ci_make_targets()
    assert set(targets) <= ci, f"targets CI never runs: {set(targets) - ci}"
    # The default check target is one that fails on a broken tree.
    assert args.get("MAKE_CHECK") in ci and args["MAKE_CHECK"].startswith("test")


def test_dockerfile_runtime_stage_should_install_only_runtime_libraries():
    runtime = dockerfile_stages()[-1]
    installed = set()
    for run in stage_values(runtime, "RUN"):
        m = re.search(r"apt-get install ([^&|;]*)", run)
        if m:
            installed |= {w for w in m.group(1).split() if not w.startswith("-")}
    assert installed == RUNTIME_PACKAGES
    copies = stage_values(runtime, "COPY")
    assert any(c.startswith("--from=") and "build/circled" in c for c in copies), copies


def test_dockerignore_should_keep_host_builds_out_and_sources_in():
    patterns = [
        l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
        if l.strip() and not l.startswith("#")
    ]

    def ignored(path):
        return any(fnmatch.fnmatch(path, p.rstrip("/")) or path.startswith(p.rstrip("/") + "/")
                   for p in patterns)

    assert ignored("build") and ignored(".git")
    for needed in ["Makefile", "circle.pc.in", "src", "include", "tests", "tests/golden", ".ci"]:
        assert not ignored(needed), f".dockerignore drops {needed}, which the build needs"


def test_dockerfile_runtime_packages_should_cover_every_linked_library():
    """ldd build/circled, map each library to its Debian package, and require
    it to be a runtime package or one of their dependencies (or libc)."""
    binary = circled_bin()
    if not shutil.which("dpkg-query") or not shutil.which("ldd"):
        pytest.skip("needs dpkg-query and ldd")
    libs = re.findall(r"=>\s+(\S+)\s+\(", subprocess.run(
        ["ldd", binary], check=True, capture_output=True, text=True).stdout)
    assert libs

    def depends(pkg):
        r = subprocess.run(["dpkg-query", "-W", "-f=${Depends} ${Pre-Depends}", pkg],
                           capture_output=True, text=True)
        return {d.split()[0].split(":")[0] for alt in r.stdout.split(",")
                for d in alt.split("|") if d.strip()}

    allowed, todo = {"libc6", "libgcc-s1"}, list(RUNTIME_PACKAGES)
    while todo:
        p = todo.pop()
        if p not in allowed:
            allowed.add(p)
            todo.extend(depends(p))
    missing = {}
    for lib in libs:
        real = os.path.realpath(lib)
        owner = subprocess.run(["dpkg-query", "-S", real], capture_output=True, text=True)
        if owner.returncode != 0:  # merged /usr: try the /lib spelling
            owner = subprocess.run(["dpkg-query", "-S", real.replace("/usr/lib/", "/lib/", 1)],
                                   capture_output=True, text=True)
        pkg = owner.stdout.split(":")[0].strip()
        if pkg not in allowed:
            missing[lib] = pkg or "unknown package"
    assert not missing, f"linked libraries the runtime image would lack: {missing}"


# ---------------------------------------------------------------------------
# Kubernetes manifests
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_should_validate_against_kubernetes_schemas(name, version):
    kubernetes_validate.validate(manifest(name), version, strict=True)


def test_manifests_validation_should_reject_an_unknown_field():
    bad = manifest("deployment.yaml")
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def container():
    (c,) = manifest("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    return c


def named_port(c, port):
    if isinstance(port, int):
        return port
    (p,) = [p for p in c["ports"] if p.get("name") == port]
    return p["containerPort"]


def test_deployment_should_probe_healthz_on_8080_and_grpc_health_on_8081():
    c = container()
    assert [p["containerPort"] for p in c["ports"]] == [PORT, GRPC_PORT]
    live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["grpc"]
    assert live["path"] == LIVENESS_PATH and named_port(c, live["port"]) == PORT
    # The standard health service, service "" (circled's own).
    assert ready["port"] == GRPC_PORT and ready.get("service", "") == ""
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        assert probe.get("timeoutSeconds", 1) >= 1 and probe.get("periodSeconds", 10) >= 1


def parse_quantity(q):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "m": 1e-3}
    for u, f in units.items():
        if str(q).endswith(u):
            return float(str(q)[: -len(u)]) * f
    return float(q)


def env_of(c):
    return {e["name"]: e for e in c.get("env", [])}


def test_deployment_should_set_resource_requests_and_limits():
    res = container()["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(res[kind]), kind
        assert parse_quantity(res[kind]["cpu"]) > 0 and parse_quantity(res[kind]["memory"]) > 0
    env = env_of(container())
    # One compute thread per CPU of the limit, through the downward API.
    ref = env["CIRCLED_WORKERS"]["valueFrom"]["resourceFieldRef"]
    assert ref["resource"] == "limits.cpu" and ref["containerName"] == container()["name"]
    # The in-flight budget must fit in the memory limit.
    inflight = int(env["CIRCLED_MAX_INFLIGHT_MB"]["value"]) * 2**20
    assert inflight < parse_quantity(res["limits"]["memory"])


def circled_env_names():
    """The environment variables circled reads (its settings table)."""
    main = ROOT / "src" / "main.c"
    if not main.is_file():
        pytest.skip("src/main.c is not there yet")
    return set(re.findall(r'"(CIRCLED_[A-Z0-9_]+)"', main.read_text(encoding="utf-8")))


def test_deployment_and_compose_should_set_only_variables_circled_reads():
    known = circled_env_names()
    used = set(env_of(container()))
    used |= set(compose()["services"]["circled"].get("environment", {}) or {})
    assert used <= known, f"unknown to circled: {used - known}"


def test_deployment_should_run_non_root_read_only_without_capabilities():
    pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False
    sc = container()["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")


def test_deployment_should_drain_within_its_grace_period():
    pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(env_of(container())["CIRCLED_DRAIN_TIMEOUT"]["value"])
    # Leave time for requests that are computing when the drain ends.
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + drain + 10


def test_deployment_should_select_its_own_pods_and_leave_replicas_to_the_hpa():
    dep = manifest("deployment.yaml")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/port"] == str(PORT) and ann["prometheus.io/path"] == METRICS_PATH


def test_service_should_route_ports_8080_and_8081_to_the_pods():
    svc, dep = manifest("service.yaml"), manifest("deployment.yaml")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    http, grpc = svc["spec"]["ports"]
    assert http["port"] == PORT and named_port(container(), http["targetPort"]) == PORT
    assert grpc["port"] == GRPC_PORT
    assert named_port(container(), grpc["targetPort"]) == GRPC_PORT


def test_hpa_should_scale_the_deployment_on_cpu():
    hpa, dep = manifest("hpa.yaml"), manifest("deployment.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", dep["metadata"]["name"])
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100


def test_pdb_should_cover_the_pods_and_allow_one_disruption():
    pdb, dep, hpa = manifest("pdb.yaml"), manifest("deployment.yaml"), manifest("hpa.yaml")
    assert pdb["apiVersion"] == "policy/v1"
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    if "maxUnavailable" in pdb["spec"]:
        assert pdb["spec"]["maxUnavailable"] == 1
    else:
        assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_kustomization_should_list_every_manifest_and_the_image():
    k = manifest("kustomization.yaml")
    assert k["kind"] == "Kustomization"
    assert sorted(k["resources"]) == sorted(MANIFESTS)
    for r in k["resources"]:
        assert (DEPLOY / r).is_file()
    image = container()["image"].split(":")[0]
    assert image in [i["name"] for i in k["images"]]
    assert image == load_yaml(DEPLOY / "compose.yaml")["services"]["circled"]["image"].split(":")[0]


def test_kustomization_should_render_with_kubectl():
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed")
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY)], check=True,
                         capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert sorted(d["kind"] for d in docs) == sorted(
        ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"])
    for d in docs:
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "circled"


# ---------------------------------------------------------------------------
# Compose and Prometheus
# ---------------------------------------------------------------------------


def compose():
    return load_yaml(DEPLOY / "compose.yaml")


def test_compose_should_validate_against_the_compose_spec():
    r = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                        "vendor.compose-spec", str(DEPLOY / "compose.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_should_build_circled_from_this_repository_like_kubernetes_runs_it():
    svc = compose()["services"]["circled"]
    context = (DEPLOY / svc["build"]["context"]).resolve()
    assert context == ROOT and (context / svc["build"]["dockerfile"]).is_file()
    assert f"{PORT}:{PORT}" in svc["ports"] and f"{GRPC_PORT}:{GRPC_PORT}" in svc["ports"]
    assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in svc["security_opt"]
    # The same probe as the image's HEALTHCHECK ($$ is Compose's escaped $).
    runtime = dockerfile_stages()[-1]
    test = [a.replace("$$", "$") for a in svc["healthcheck"]["test"]]
    assert test[0] == "CMD" and test[1:] == healthcheck_command(runtime)


def test_compose_should_mount_a_prometheus_config_that_exists_and_scrapes_circled():
    services = compose()["services"]
    prom = services["prometheus"]
    (mount,) = [v for v in prom["volumes"] if v.startswith("./")]
    src, dst = mount.split(":")[:2]
    config_path = (DEPLOY / src).resolve()
    assert config_path == DEPLOY / "prometheus" / "prometheus.yml" and config_path.is_file()
    assert f"--config.file={dst}" in prom["command"]
    assert prom["depends_on"]["circled"]["condition"] == "service_healthy"

    cfg = load_yaml(config_path)
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "circled"]
    assert job.get("metrics_path", "/metrics") == METRICS_PATH
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"circled:{PORT}"]
    assert targets[0].split(":")[0] in services


def test_prometheus_config_should_pass_promtool():
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    r = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------
# Against the real daemon
# ---------------------------------------------------------------------------


def image_argv():
    (entry,) = stage_values(dockerfile_stages()[-1], "ENTRYPOINT")
    return json.loads(entry)[1:]


def deployment_env():
    """The container's environment as the kubelet would set it, with the CPU
    limit resolved through the downward API (rounded up, divisor 1)."""
    c, out = container(), {}
    for name, e in env_of(c).items():
        if "value" in e:
            out[name] = e["value"]
        else:
            ref = e["valueFrom"]["resourceFieldRef"]
            q = parse_quantity(c["resources"]["limits"][ref["resource"].split(".")[1]])
            out[name] = str(int(-(-q // parse_quantity(ref.get("divisor", "1")))))
    return out


def test_circled_should_accept_the_image_flags_and_deployment_env_and_answer_the_probes():
    server = Circled(image_argv() + container().get("args", []), env=deployment_env())
    try:
        assert http_status(server.port, LIVENESS_PATH) == 200
        assert http_status(server.port, READINESS_PATH) == 200
        assert grpc_serving(server.grpc_port)
    finally:
        assert server.stop() == 0, "circled must exit 0 after SIGTERM"


def test_image_healthcheck_should_pass_against_circled_and_fail_without_it():
    runtime = dockerfile_stages()[-1]
    argv = healthcheck_command(runtime)
    server = Circled(image_argv())
    try:
        probe = [a.replace(f"127.0.0.1/{PORT}", f"127.0.0.1/{server.port}") for a in argv]
        assert subprocess.run(probe, timeout=10).returncode == 0
    finally:
        server.stop()
    # Nothing listens any more: the same probe must fail.
    assert subprocess.run(probe, timeout=10, stderr=subprocess.DEVNULL).returncode != 0
