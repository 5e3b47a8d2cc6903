#!/usr/bin/env python3
"""retrieval_generate.py -- writes tests/golden/retrieval/retrieval.json, the
cases that prove circled's retrieval figures against real
pytorch-metric-learning (PML).

Every expected figure comes from PML's own AccuracyCalculator:

    AccuracyCalculator(include=("precision_at_1", "r_precision",
                                "mean_average_precision_at_r"),
                       k="max_bin_count", knn_func=CustomKNN(similarity),
                       device=cpu).get_accuracy(query, query_labels,
                                                reference, reference_labels)

  * self-referenced cases pass no reference (PML then sets
    ref_includes_query: the embeddings come from the same source, and
    CustomKNN drops each row's own index from its neighbours);
  * reference-set cases pass the batch as the queries and the reference set
    as the gallery (ref_includes_query False);
  * "cosine" is CosineSimilarity() (what circled computes with normalize:
    true), "dot" DotProductSimilarity(normalize_embeddings=False)
    (normalize: false: the loss sees raw dot products). The stored embeddings are the raw ones, with row norms
    between 0.5 and 2, so the two differ;
  * `queries` is the number of queries PML keeps (its not_lone_query_mask:
    get_label_match_counts + get_lone_query_labels, as get_accuracy calls
    them); when it is 0 PML answers NaN for every figure, stored as 0 (what
    circled reports then).

What must stay true of the data, and is checked before anything is written:

  * embeddings are float32 values, written with repr() of the exact double,
    so float32 and float64 readers (PML casts to float32; circled computes
    in either) see the same numbers;
  * no two gallery items with different labels come within 1e-5 (relative
    to the row's largest |similarity|, at least 1) of each other in any
    query's ranking where it matters (the first R_i + 1 places), in either
    similarity: rounding differences between torch, BLAS and float32 /
    float64 cannot change a figure. Rows that fail are drawn again;
  * duplicate embeddings share a label, so a tie among them cannot change a
    figure either (ties rank by smaller gallery index in circled);
  * an independent float64 implementation of the definitions here agrees
    with PML to 1e-12 on every case, queries exactly.

Usage: build/bench-venv/bin/python tests/golden/retrieval_generate.py OUT
(the Makefile's `make golden-retrieval`; OUT defaults to
tests/golden/retrieval/retrieval.json).
"""

import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch
import pytorch_metric_learning
from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity
from pytorch_metric_learning.utils import accuracy_calculator as pml_ac
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

INCLUDE = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
FIGURES = {"precision_at_1": "precision_at_1", "r_precision": "r_precision",
           "mean_average_precision_at_r": "map_at_r"}
GAP = 1e-5
SIMS = {"cosine": lambda: CosineSimilarity(),
        "dot": lambda: DotProductSimilarity(normalize_embeddings=False)}

# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def scaled(rng, v):
    """v (rows) scaled to norms between 0.5 and 2, as float32."""
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    return (v * rng.uniform(0.5, 2.0, size=(len(v), 1))).astype(np.float32)


def draw_rows(rng, labels, centers, spread):
    """One embedding per label: its class centre (none: pure noise) plus
    Gaussian noise of `spread`, then scaled."""
    d = centers.shape[1]
    noise = rng.normal(size=(len(labels), d))
    base = np.zeros((len(labels), d)) if spread is None else centers[labels]
    return scaled(rng, base + (noise if spread is None else spread * noise))


def similarity(kind, q, g):
    """float64 similarities of float32 rows q (queries) and g (gallery)."""
    q = q.astype(np.float64)
    g = g.astype(np.float64)
    if kind == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
    return q @ g.T


def ranking(s_row, exclude):
    """Gallery indices by similarity, largest first, ties by smaller index;
    `exclude` (the query's own index, self-referenced) left out."""
    idx = np.lexsort((np.arange(len(s_row)), -s_row))
    return idx[idx != exclude] if exclude is not None else idx


def close_rows(q, ql, g, gl, self_ref):
    """Queries whose ranking has two differently labelled gallery items
    within GAP (relative) of each other in its first R_i + 1 places, under
    either similarity."""
    bad = set()
    for kind in SIMS:
        s = similarity(kind, q, g)
        for i in range(len(q)):
            order = ranking(s[i], i if self_ref else None)
            r = int(np.sum(gl[order] == ql[i]))
            if r == 0:
                continue
            scale = max(1.0, float(np.max(np.abs(s[i]))))
            for p in range(min(r, len(order) - 1)):
                a, b = order[p], order[p + 1]
                if gl[a] != gl[b] and s[i, a] - s[i, b] < GAP * scale:
                    bad.add(i)
                    break
    return sorted(bad)


def separate(rng, labels, x, centers, spread, ref=None):
    """Draws rows again until no ranking has a close call. Self-referenced
    (ref None): batch rows are redrawn, duplicates kept as such; with a
    reference set, only query rows are redrawn."""
    for _ in range(10000):
        if ref is None:
            bad = close_rows(x, labels, x, labels, True)
        else:
            bad = close_rows(x, labels, ref[1], ref[0], False)
        if not bad:
            return x
        i = bad[rng.integers(len(bad))]
        new = draw_rows(rng, labels[i:i + 1], centers, spread)[0]
        if ref is None:
            # An exact copy of row i stays one: redraw them together.
            x[np.all(x == x[i], axis=1) & (labels == labels[i])] = new
        else:
            x[i] = new
    raise SystemExit("could not separate the similarities; change the seed")


def sized_labels(rng, sizes):
    """Labels for classes of the given sizes, shuffled; label values spread
    out (not 0..K-1) so nothing depends on them being small or dense."""
    ids = rng.choice(10000, size=len(sizes), replace=False)
    labels = np.concatenate([np.full(s, ids[k]) for k, s in enumerate(sizes)])
    return labels[rng.permutation(len(labels))].astype(np.int64)


# ---------------------------------------------------------------------------
# The oracle and the cross-check
# ---------------------------------------------------------------------------


def pml_figures(kind, q, ql, g=None, gl=None):
    """PML's AccuracyCalculator on the case: {figure: value, "queries": n}."""
    calc = AccuracyCalculator(include=INCLUDE, k="max_bin_count",
                              knn_func=CustomKNN(SIMS[kind]()),
                              device=torch.device("cpu"))
    acc = calc.get_accuracy(q, ql, g, gl)
    # The queries PML keeps, through the same functions get_accuracy uses.
    tq = torch.from_numpy(ql).type(torch.float)
    tg = tq if gl is None else torch.from_numpy(gl).type(torch.float)
    counts = pml_ac.get_label_match_counts(tq, tg, pml_ac.EQUALITY)
    _, keep = pml_ac.get_lone_query_labels(tq, counts, gl is None, pml_ac.EQUALITY)
    queries = int(keep.sum().item())
    out = {}
    for name, ours in FIGURES.items():
        v = float(acc[name])
        assert math.isnan(v) == (queries == 0), (name, v, queries)
        out[ours] = 0.0 if queries == 0 else v
    out["queries"] = queries
    return out


def own_figures(kind, q, ql, g=None, gl=None):
    """The definitions, in float64 numpy, independent of PML."""
    self_ref = g is None
    if self_ref:
        g, gl = q, ql
    s = similarity(kind, q, g)
    p1 = rp = ap = 0.0
    n = 0
    for i in range(len(q)):
        order = ranking(s[i], i if self_ref else None)
        rel = gl[order] == ql[i]
        r = int(rel.sum())
        if r == 0:
            continue
        n += 1
        top = rel[:r]
        p1 += float(rel[0])
        rp += top.sum() / r
        hits = np.cumsum(top)
        ap += np.sum(top * hits / np.arange(1, r + 1)) / r
    if n == 0:
        return {"precision_at_1": 0.0, "r_precision": 0.0, "map_at_r": 0.0, "queries": 0}
    return {"precision_at_1": p1 / n, "r_precision": rp / n, "map_at_r": ap / n,
            "queries": n}


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------


def self_case(rng, name, sizes, d, spread, dups=0, about=""):
    labels = sized_labels(rng, sizes)
    centers = rng.normal(size=(int(labels.max()) + 1, d))
    x = draw_rows(rng, labels, centers, spread)
    if dups:
        # Copies of some rows, with their labels, at random places.
        src = rng.choice(len(labels), size=dups, replace=False)
        at = np.sort(rng.choice(len(labels) + dups, size=dups, replace=False))
        xs, ls = list(x), list(labels)
        for k, pos in enumerate(at):
            xs.insert(pos, x[src[k]].copy())
            ls.insert(pos, labels[src[k]])
        x, labels = np.array(xs, dtype=np.float32), np.array(ls, dtype=np.int64)
    x = separate(rng, labels, x, centers, spread)
    return {"name": name, "about": about, "labels": labels, "embeddings": x}


def ref_case(rng, name, q_sizes, g_sizes, d, spread, shared=True, dups=0,
             about=""):
    """A reference set: classes of g_sizes in the gallery; the queries'
    classes of q_sizes are the gallery's first ones when shared, and then
    any extra query classes are absent from the gallery (lone queries)."""
    g_labels = sized_labels(rng, g_sizes)
    classes = list(dict.fromkeys(g_labels.tolist()))
    extra = [c for c in rng.choice(10000, size=len(q_sizes) + len(classes), replace=False)
             if c not in classes]
    q_ids = [classes[k] if shared and k < len(classes) else extra[k]
             for k in range(len(q_sizes))]
    q_labels = np.concatenate([np.full(s, q_ids[k]) for k, s in enumerate(q_sizes)])
    q_labels = q_labels[rng.permutation(len(q_labels))].astype(np.int64)
    centers = rng.normal(size=(10000, d))
    g = draw_rows(rng, g_labels, centers, spread)
    if dups:
        # Gallery duplicates (same label), and queries equal to gallery rows
        # of their label where there is one.
        src = rng.choice(len(g_labels), size=dups, replace=False)
        g = np.concatenate([g, g[src]]).astype(np.float32)
        g_labels = np.concatenate([g_labels, g_labels[src]])
    q = draw_rows(rng, q_labels, centers, spread)
    if dups:
        for i in range(min(dups, len(q_labels))):
            same = np.flatnonzero(g_labels == q_labels[i])
            if len(same):
                q[i] = g[same[0]]
    q = separate(rng, q_labels, q, centers, spread, ref=(g_labels, g))
    return {"name": name, "about": about, "labels": q_labels, "embeddings": q,
            "ref_labels": g_labels, "ref_embeddings": g}


def cases(rng):
    out = []
    # Self-referenced.
    out.append(self_case(rng, "self_clustered_small", [4, 4, 4], 4, 0.4,
                         about="three classes of four, clustered"))
    out.append(self_case(rng, "self_random", [8, 7, 6, 5, 5, 4, 3, 2], 8, None,
                         about="unclustered Gaussian rows, eight classes"))
    sizes = list(rng.integers(1, 31, size=22))
    out.append(self_case(rng, "self_varied_large", sizes, 16, 0.9,
                         about="a few hundred rows, classes of 1 to 30 rows"))
    out.append(self_case(rng, "self_singletons", [1, 1, 1, 2, 3, 1, 4], 6, 0.5,
                         about="lone rows (the only one of their label) left out"))
    out.append(self_case(rng, "self_all_lone", [1] * 6, 5, 0.5,
                         about="every row alone: no queries, figures 0"))
    out.append(self_case(rng, "self_one_class", [9], 5, 0.5,
                         about="a single class: every neighbour relevant"))
    out.append(self_case(rng, "self_n1", [1], 3, 0.5, about="a batch of one row"))
    out.append(self_case(rng, "self_duplicates", [5, 4, 4, 3, 2], 6, 0.7, dups=6,
                         about="six rows repeated exactly, with their labels"))
    # Reference set.
    out.append(ref_case(rng, "ref_clustered", [6, 5, 5, 4], [12, 10, 8, 8, 6], 8, 0.6,
                        about="queries of four of the gallery's five classes"))
    out.append(ref_case(rng, "ref_random", [5, 5, 5, 4, 4], [9, 8, 8, 7, 6], 8, None,
                        about="unclustered Gaussian rows"))
    qs = list(rng.integers(4, 30, size=16)) + [3, 2]
    gs = list(rng.integers(1, 25, size=16))
    out.append(ref_case(rng, "ref_varied_large", qs, gs, 16, 0.9,
                        about="a few hundred rows each side, varied classes, two "
                              "query classes absent from the gallery"))
    out.append(ref_case(rng, "ref_all_lone", [3, 2], [4, 4], 5, 0.5, shared=False,
                        about="no query label in the gallery: no queries, figures 0"))
    out.append(ref_case(rng, "ref_n1", [1], [3, 2, 2], 4, 0.5, about="one query"))
    out.append(ref_case(rng, "ref_m1", [2, 3], [1], 4, 0.5,
                        about="a gallery of one row: R_i is 1 or 0"))
    out.append(ref_case(rng, "ref_one_class", [5], [7], 4, 0.5,
                        about="one class on both sides"))
    out.append(ref_case(rng, "ref_duplicates", [4, 4, 3], [6, 5, 5], 6, 0.7, dups=5,
                        about="gallery rows repeated, queries equal to gallery rows"))
    # Big enough (N x M over 1 MiB in float32) that a server started with
    # --materialize-mb 1 streams them in row blocks.
    sizes = list(rng.integers(1, 40, size=30))
    sizes.append(max(1, 600 - sum(sizes)))
    out.append(self_case(rng, "self_streamed", sizes, 8, 1.0,
                         about="about 600 rows: the similarity matrix past 1 MiB"))
    out.append(ref_case(rng, "ref_streamed", list(rng.integers(5, 40, size=20)),
                        list(rng.integers(5, 45, size=24)), 8, 1.0,
                        about="N x M past 1 MiB, four gallery classes no query has"))
    for c in out[-2:]:
        m = len(c.get("ref_labels", c["labels"]))
        assert len(c["labels"]) * m * 4 > 1 << 20, c["name"]
    return out


def f32_list(a):
    """Rows of float32 values as exact doubles (repr round-trips them)."""
    return [[float(v) for v in row] for row in np.asarray(a, dtype=np.float32)]


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else \
        Path(__file__).resolve().parent / "retrieval" / "retrieval.json"
    logging.getLogger("PML").setLevel(logging.ERROR)
    torch.manual_seed(0)
    rng = np.random.default_rng(20261203)
    written = []
    for c in cases(rng):
        q, ql = c["embeddings"], c["labels"]
        g, gl = c.get("ref_embeddings"), c.get("ref_labels")
        expected = {}
        for kind in SIMS:
            pml = pml_figures(kind, q, ql, g, gl)
            own = own_figures(kind, q, ql, g, gl)
            assert pml["queries"] == own["queries"], (c["name"], kind, pml, own)
            for f in ("precision_at_1", "r_precision", "map_at_r"):
                assert abs(pml[f] - own[f]) <= 1e-12, (c["name"], kind, f, pml, own)
            expected[kind] = pml
        if g is None:
            assert not close_rows(q, ql, q, ql, True), c["name"]
        else:
            assert not close_rows(q, ql, g, gl, False), c["name"]
        case = {"name": c["name"], "about": c["about"],
                "labels": [int(v) for v in ql], "embeddings": f32_list(q)}
        if g is not None:
            case["ref_labels"] = [int(v) for v in gl]
            case["ref_embeddings"] = f32_list(g)
        # Exact copies: rows equal to an earlier gallery row (and, with a
        # reference set, queries equal to a gallery row), all of one label.
        gal, gal_l = (q, ql) if g is None else (g, gl)
        _, first, inv = np.unique(gal, axis=0, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        assert all(gal_l[first[inv[k]]] == gal_l[k] for k in range(len(gal_l)))
        copies = len(gal) - len(first)
        if g is not None:
            hits = [np.flatnonzero(np.all(g == q[i], axis=1)) for i in range(len(q))]
            assert all(np.all(gl[h] == ql[i]) for i, h in enumerate(hits))
            copies += sum(1 for h in hits if len(h))
        if "duplicates" in c["name"]:
            assert copies > 0, c["name"]
        case["copies"] = int(copies)
        case["expected"] = expected
        written.append(case)
        print(f"{c['name']:20s} n={len(ql):4d} m={0 if g is None else len(gl):4d} "
              f"copies={copies} "
              f"cosine={expected['cosine']} dot={expected['dot']}")
    doc = {
        "about": "Retrieval figures of pytorch-metric-learning's AccuracyCalculator "
                 "(precision_at_1, r_precision, mean_average_precision_at_r as map_at_r; "
                 "k='max_bin_count'), written by tests/golden/retrieval_generate.py. "
                 "'cosine': CustomKNN(CosineSimilarity()), what circled computes with "
                 "normalize true; 'dot': CustomKNN(DotProductSimilarity("
                 "normalize_embeddings=False)), normalize false. Cases without ref_embeddings are self-referenced.",
        "versions": {"pytorch_metric_learning": pytorch_metric_learning.__version__,
                     "torch": torch.__version__, "numpy": np.__version__},
        "tolerance": 1e-6,
        "cases": written,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
