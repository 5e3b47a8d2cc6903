"""test_keras_live.py -- circled's /v1 against real Keras 3 computed here, on
random inputs drawn in the test (not only the committed golden files), and
its /config against keras.losses.Circle's own (de)serialization.

What must stay true:

  * loss, per_sample_loss, embeddings_grad and ref_embeddings_grad equal
    what Keras 3 (jax backend) and jax.grad give, within the engine tests'
    tolerances, fixed up front, per array:
        float32: |circled - keras| <= 1e-4 * max|keras|
        float64: |circled - keras| <= 1e-9 * max|keras|
    Keras is called as tests/golden/generate.py calls it: the Circle class
    (or, with a reference set, the LossFunctionWrapper around
    keras.losses.circle that Circle is), UnitNormalization first when
    normalize is on, jax.grad of the result (of its sum for "none"/null);
  * the request of the bug report on softplus underflow (rows whose exp(L)
    is subnormal), sent as it was, gives Keras' 27.293128967285156 with those
    rows exactly 0;
  * GET /config is a config keras.losses.Circle.from_config accepts and
    gives back unchanged;
  * the exact JSON of keras.losses.Circle(...).get_config() is accepted as
    /v1's "config" and echoed back as the response's "config";
  * every dtype spelling Keras' Circle takes (names, null, and the
    DTypePolicy object as keras.saving.serialize_keras_object writes it)
    computes in the dtype Keras' Circle(dtype=...).dtype names, and the echo
    stays that loss's get_config() (half-precision numbers against Keras:
    test_half_precision.py).

float64 needs JAX's x64 mode, which must be on before JAX makes any array:
it is turned on at import, before Keras is imported. float32 cases still
compute in float32 (Keras casts to the loss dtype; the dtype of every result
is asserted). JAX compiles per shape, so all cases share a few shapes.

Seeds are fixed so a failure reproduces; CIRCLE_LIVE_SEED=<int> draws other
cases (the seed is in every failure message).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import json  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
from keras.src.losses.losses import LossFunctionWrapper  # noqa: E402

TOL = {"float32": 1e-4, "float64": 1e-9}
NP_DTYPE = {"float32": np.float32, "float64": np.float64}
REDUCTIONS = ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none", None]
N, M, D = 24, 16, 8          # every case has these shapes: JAX compiles once per shape
BASE_SEED = int(os.environ.get("CIRCLE_LIVE_SEED", "20240611"))


def test_keras_live_should_run_with_the_jax_backend_in_x64():
    assert keras.backend.backend() == "jax"
    assert jax.config.jax_enable_x64


# ---------------------------------------------------------------------------
# Random cases and what Keras makes of them
# ---------------------------------------------------------------------------


def draw_case(k):
    """Case k: reductions cycle, dtype, reference set, sample weights and
    normalize alternate with different periods so their combinations vary;
    gamma, margin, remove_diagonal, labels and embeddings are random."""
    seed = BASE_SEED + k
    rng = np.random.default_rng(seed)
    dtype = "float64" if k % 2 else "float32"
    use_ref = k % 3 == 1
    use_sw = k % 4 in (1, 2)
    normalize = k % 5 in (0, 3)
    npdt = NP_DTYPE[dtype]
    classes = int(rng.integers(2, 6))
    labels = rng.integers(0, classes, size=N).astype(np.int64)
    if normalize:   # raw, far from unit length: UnitNormalization matters
        x = rng.normal(scale=rng.uniform(0.2, 5.0), size=(N, D))
    else:           # norms near 1, as embeddings usually are
        x = rng.normal(size=(N, D)) / np.sqrt(D)
    c = {
        "k": k, "seed": seed, "dtype": dtype, "normalize": normalize,
        "gamma": float(rng.choice([16.0, 32.0, 64.0, 80.0, 128.0])),
        "margin": float(np.round(rng.uniform(0.0, 0.5), 3)),
        "remove_diagonal": bool(rng.integers(0, 2)) if k % 6 else True,
        "reduction": REDUCTIONS[k % len(REDUCTIONS)],
        "labels": labels, "x": x.astype(npdt),
        "sw": rng.uniform(0.0, 2.0, size=N).astype(npdt) if use_sw else None,
        "ref_labels": None, "rx": None,
    }
    if use_ref:
        c["ref_labels"] = rng.integers(0, classes, size=M).astype(np.int64)
        rx = rng.normal(size=(M, D))
        c["rx"] = (rx * (rng.uniform(0.2, 5.0) if normalize else 1 / np.sqrt(D))).astype(npdt)
    return c


def keras_outputs(c):
    """Keras' numbers for case c, as generate.py gets them."""
    dtype, red = c["dtype"], c["reduction"]
    kw = dict(gamma=c["gamma"], margin=c["margin"], remove_diagonal=c["remove_diagonal"])
    y, ry, sw = c["labels"], c["ref_labels"], c["sw"]
    norm = keras.layers.UnitNormalization(dtype=dtype) if c["normalize"] else None
    elementwise = red in (None, "none")

    def prep(a):
        return norm(a) if norm is not None else jnp.asarray(a)

    def loss_fn(xa, ra):
        if ra is None:
            obj = keras.losses.Circle(reduction=red, dtype=dtype, **kw)
        else:
            obj = LossFunctionWrapper(keras.losses.circle, reduction=red, dtype=dtype,
                                      ref_labels=ry, ref_embeddings=prep(ra), **kw)
        return obj(y, prep(xa), sample_weight=sw)

    def scalar_fn(xa, ra):
        out = loss_fn(xa, ra)
        return jnp.sum(out) if elementwise else out

    loss = np.asarray(loss_fn(c["x"], c["rx"]))
    if c["rx"] is None:
        g, rg = jax.grad(lambda a: scalar_fn(a, None))(c["x"]), None
    else:
        g, rg = jax.grad(scalar_fn, argnums=(0, 1))(c["x"], c["rx"])
    per = keras.losses.circle(y, prep(c["x"]), ref_labels=ry,
                              ref_embeddings=None if c["rx"] is None else prep(c["rx"]), **kw)
    out = {"loss": np.atleast_1d(loss), "per_sample_loss": np.asarray(per),
           "embeddings_grad": np.asarray(g)}
    if rg is not None:
        out["ref_embeddings_grad"] = np.asarray(rg)
    for name, a in out.items():
        assert a.dtype == NP_DTYPE[dtype], f"Keras gave {name} as {a.dtype} for {dtype}"
        assert np.all(np.isfinite(a)), f"Keras gave non-finite {name}"
    return out


def circled_outputs(url, c):
    body = {"labels": c["labels"].tolist(), "embeddings": c["x"].tolist(),
            "config": {"gamma": c["gamma"], "margin": c["margin"],
                       "remove_diagonal": c["remove_diagonal"],
                       "reduction": c["reduction"], "dtype": c["dtype"]},
            "normalize": c["normalize"]}
    if c["sw"] is not None:
        body["sample_weight"] = c["sw"].tolist()
    if c["rx"] is not None:
        body["ref_labels"] = c["ref_labels"].tolist()
        body["ref_embeddings"] = c["rx"].tolist()
    r = requests.post(url + "/v1/loss", json=body, timeout=60)
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["dtype"] == c["dtype"]
    assert (j["n"], j["m"], j["d"]) == (N, 0 if c["rx"] is None else M, D)
    return {k: np.atleast_1d(np.array(j[k], dtype=np.float64))
            for k in ("loss", "per_sample_loss", "embeddings_grad", "ref_embeddings_grad") if k in j}


def describe(c):
    return (f"case {c['k']} (seed {c['seed']}): {c['dtype']} reduction={c['reduction']!r} "
            f"gamma={c['gamma']} margin={c['margin']} remove_diagonal={c['remove_diagonal']} "
            f"ref={c['rx'] is not None} sw={c['sw'] is not None} normalize={c['normalize']}")


CASE_COUNT = 12


def test_keras_live_cases_should_cover_every_option():
    cases = [draw_case(k) for k in range(CASE_COUNT)]
    assert {c["reduction"] for c in cases} == set(REDUCTIONS)
    for key in ("normalize",):
        assert {c[key] for c in cases} == {False, True}
    assert {c["rx"] is None for c in cases} == {False, True}
    assert {c["sw"] is None for c in cases} == {False, True}
    assert {c["remove_diagonal"] for c in cases} == {False, True}
    assert {(c["dtype"], c["rx"] is None) for c in cases} == {
        ("float32", True), ("float32", False), ("float64", True), ("float64", False)}


@pytest.mark.parametrize("k", range(CASE_COUNT))
def test_keras_live_v1_should_match_keras_on_random_inputs(circled, k):
    c = draw_case(k)
    want = keras_outputs(c)
    got = circled_outputs(circled, c)
    assert set(got) == set(want), describe(c)
    tol = TOL[c["dtype"]]
    for name, w in want.items():
        w = w.astype(np.float64)
        h = got[name].reshape(w.shape) if got[name].size == w.size else got[name]
        assert h.shape == w.shape, f"{describe(c)}: {name} shape {h.shape}, Keras {w.shape}"
        bound = tol * np.max(np.abs(w))
        diff = np.abs(h - w)
        i = int(np.argmax(np.where(np.isnan(diff), np.inf, diff)))
        if np.any(np.isnan(diff)) or not np.all(diff <= bound):
            pytest.fail(f"{describe(c)}: {name}[{i}] = {h.flat[i]!r}, Keras {w.flat[i]!r}: "
                        f"|diff| {diff.flat[i]:.3g} > {bound:.3g} ({tol} x max|Keras|)")


# The request of the bug report on softplus underflow, as it was sent: rows 0
# and 1 have L = -2 * 760 * 0.25**2 + ln 2, whose exp is subnormal in float32;
# XLA flushes it, Keras gives those rows 0 and its `loss > 0` mask divides
# by the two rows left.
REPORT_BODY = ('{"labels":[0,0,1,1],"embeddings":[[1,0,0],[1,0,0],[0,1,0],'
               '[0,0.6000000238418579,0.800000011920929]],"config":{"gamma":760.0,'
               '"margin":0.25,"reduction":"sum_over_batch_size","dtype":"float32"}}')


def test_keras_live_should_mask_rows_whose_loss_underflows_as_keras_does(circled):
    r = requests.post(circled + "/v1/loss", data=REPORT_BODY, timeout=10,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    j = r.json()
    body = json.loads(REPORT_BODY)
    cfg = body["config"]
    c = {"k": "report", "seed": None, "dtype": "float32", "normalize": False,
         "gamma": cfg["gamma"], "margin": cfg["margin"], "remove_diagonal": True,
         "reduction": cfg["reduction"], "labels": np.array(body["labels"], dtype=np.int64),
         "x": np.array(body["embeddings"], dtype=np.float32), "sw": None,
         "ref_labels": None, "rx": None}
    want = keras_outputs(c)
    # What the report says Keras gives, and what Keras gives here.
    assert float(want["loss"][0]) == 27.293128967285156
    assert want["per_sample_loss"][0] == want["per_sample_loss"][1] == 0
    assert j["per_sample_loss"][:2] == [0, 0], j["per_sample_loss"]
    for name, w in want.items():
        w = w.astype(np.float64).reshape(-1)
        h = np.array(j[name], dtype=np.float64).reshape(-1)
        bound = TOL["float32"] * np.max(np.abs(w))
        assert np.all(np.abs(h - w) <= bound), f"{name}: circled {h}, Keras {w}"


# ---------------------------------------------------------------------------
# Configuration round trips through Keras
# ---------------------------------------------------------------------------


def test_config_should_round_trip_through_keras_from_config(circled):
    r = requests.get(circled + "/config", timeout=10)
    assert r.status_code == 200, r.text
    cfg = r.json()
    loss = keras.losses.Circle.from_config(cfg)
    assert isinstance(loss, keras.losses.Circle)
    assert loss.get_config() == cfg
    # And the default is Keras' default, key for key.
    assert cfg == keras.losses.Circle().get_config()


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(gamma=64, margin=0.25, reduction=None),
    dict(gamma=256.0, margin=0.1, remove_diagonal=False, reduction="none", name="circle_nodiag"),
    dict(gamma=32.5, margin=0.0, reduction="mean_with_sample_weight", name="my loss"),
    dict(gamma=80.0, margin=0.4, reduction="sum", dtype="float64"),
])
def test_keras_get_config_json_should_be_accepted_and_echoed(circled, kwargs):
    keras_cfg = keras.losses.Circle(**kwargs).get_config()
    text = json.dumps(keras_cfg)          # exactly what Keras' JSON looks like
    body = ('{"labels": [0, 0, 1, 1], "embeddings": [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], '
            '[-0.6, 0.8]], "config": ' + text + "}")
    r = requests.post(circled + "/v1/loss", data=body, timeout=10)
    assert r.status_code == 200, f"config {text}: {r.status_code} {r.text}"
    echoed = r.json()["config"]
    assert echoed == keras_cfg, f"sent {text}, echoed {json.dumps(echoed)}"
    assert list(echoed) == list(keras_cfg), "key order differs from Keras'"
    # The echo is itself a Keras config that means the same loss.
    assert keras.losses.Circle.from_config(echoed).get_config() == keras_cfg


@pytest.mark.parametrize("spelling", [
    None, "float16", "bfloat16", "float32", "float64", "mixed_float16", "mixed_bfloat16",
    "policy:float16", "policy:bfloat16", "policy:float64", "policy:mixed_float16",
    "policy:mixed_bfloat16"])
def test_every_keras_dtype_spelling_should_compute_in_keras_compute_dtype(circled, spelling):
    """Keras itself says what each spelling computes in (Circle(dtype=...)
    .dtype) and writes the DTypePolicy object (serialize_keras_object); the
    echo is Keras' get_config() for that loss, which has no dtype key."""
    if isinstance(spelling, str) and spelling.startswith("policy:"):
        spelling = keras.saving.serialize_keras_object(keras.DTypePolicy(spelling[7:]))
        obj = keras.saving.deserialize_keras_object(spelling)
    else:
        obj = spelling
    loss = keras.losses.Circle(gamma=64.0, dtype=obj)
    cfg = dict(loss.get_config(), dtype=spelling)
    body = {"labels": [0, 0, 1, 1], "embeddings": [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]],
            "config": cfg, "outputs": ["loss"]}
    r = requests.post(circled + "/v1/loss", json=body, timeout=10)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["dtype"] == loss.dtype
    assert out["config"] == loss.get_config() and "dtype" not in out["config"]
    assert keras.losses.Circle.from_config(out["config"]).get_config() == out["config"]
