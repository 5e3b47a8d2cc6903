/* test_retrieval.c -- proves the engine's retrieval figures (precision@1,
 * R-precision, MAP@R; circle_retrieval in circle.h) against a brute-force
 * implementation of their definitions that sorts every row in full.
 * (tests/py/test_retrieval.py proves the same figures against the real
 * pytorch-metric-learning.)
 *
 * Tolerances, fixed before any result was seen:
 *   integer embeddings (similarities exact in float32 and float64, with
 *   many exact ties, so the tie order is tested too): the figures equal the
 *   brute force to 1e-12 in both dtypes, and `queries` exactly;
 *   random float64 embeddings: 1e-12 (no two similarities are close enough
 *   for dgemm's rounding to reorder them);
 *   thread count: bitwise identical figures;
 *   the loss and gradients with retrieval asked for: bitwise identical to
 *   those without it when materialized; streamed (the self-referenced
 *   pass 1 then runs over full rows) within 1e-5 relative in float32.
 * Every case runs materialized and streamed (materialize limit 1 byte,
 * blocks of 7 rows), with one and two threads; one case streams with room
 * to keep strips for the gradient pass, on 1, 2 and 3 threads (bitwise).
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "circle/circle.h"

#define TOL 1e-12

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct {
  size_t n, m, d; /* m == 0: self-referenced */
  int64_t *labels, *ref_labels;
  double *x, *r; /* float64 embeddings (exact for integer data) */
  bool normalize;
} rcase;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng_next(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}
static double rng_unit(void) { return (double)(rng_next() >> 11) / 9007199254740992.0; }

/* Labels with classes of varied size: label k for about a share of rows
 * proportional to k + 1, and every 17th row a singleton label. */
static void fill_labels(int64_t *l, size_t n, int classes, int64_t base) {
  for (size_t i = 0; i < n; i++) {
    if (i % 17 == 16) {
      l[i] = 100000 + base + (int64_t)i; /* singleton */
      continue;
    }
    uint64_t t = rng_next() % (uint64_t)(classes * (classes + 1) / 2);
    int k = 0;
    while (t >= (uint64_t)(k + 1)) t -= (uint64_t)(++k);
    l[i] = base + k;
  }
}

static void fill_embed(double *x, size_t rows, size_t d, bool integer) {
  for (size_t q = 0; q < rows * d; q++)
    x[q] = integer ? (double)((int)(rng_next() % 7) - 3) : rng_unit() * 2 - 1;
}

static rcase case_new(size_t n, size_t m, size_t d, int classes, bool integer) {
  rcase c = {.n = n, .m = m, .d = d};
  c.labels = calloc(n, sizeof *c.labels);
  c.x = calloc(n * d, sizeof *c.x);
  fill_labels(c.labels, n, classes, 0);
  fill_embed(c.x, n, d, integer);
  if (m) {
    c.ref_labels = calloc(m, sizeof *c.ref_labels);
    c.r = calloc(m * d, sizeof *c.r);
    /* Shares the classes, with its own singletons: some queries are lone. */
    fill_labels(c.ref_labels, m, classes, 0);
    for (size_t j = 0; j < m; j++)
      if (c.ref_labels[j] >= 100000) c.ref_labels[j] += 50000;
    fill_embed(c.r, m, d, integer);
  }
  return c;
}

static void case_free(rcase *c) {
  free(c->labels);
  free(c->ref_labels);
  free(c->x);
  free(c->r);
}

/* ---- brute force --------------------------------------------------------- */

static const double *g_sim; /* the row being sorted, for the comparator */
static int by_rank(const void *a, const void *b) {
  size_t i = *(const size_t *)a, j = *(const size_t *)b;
  if (g_sim[i] != g_sim[j]) return g_sim[i] > g_sim[j] ? -1 : 1;
  return (i > j) - (i < j);
}

static void normalized(const double *src, size_t rows, size_t d, double *dst) {
  for (size_t i = 0; i < rows; i++) {
    double ss = 0;
    for (size_t k = 0; k < d; k++) ss += src[i * d + k] * src[i * d + k];
    double inv = 1.0 / sqrt(ss);
    if (!(inv < 1e12)) inv = 1e12;
    for (size_t k = 0; k < d; k++) dst[i * d + k] = src[i * d + k] * inv;
  }
}

/* The definitions, literally: every row sorted in full. */
static circle_retrieval brute(const rcase *c) {
  bool self = c->m == 0;
  size_t m = self ? c->n : c->m;
  const int64_t *gl = self ? c->labels : c->ref_labels;
  double *x = malloc(c->n * c->d * sizeof *x), *r = malloc(m * c->d * sizeof *r);
  if (c->normalize) {
    normalized(c->x, c->n, c->d, x);
    normalized(self ? c->x : c->r, m, c->d, r);
  } else {
    memcpy(x, c->x, c->n * c->d * sizeof *x);
    memcpy(r, self ? c->x : c->r, m * c->d * sizeof *r);
  }
  double *sim = malloc(m * sizeof *sim);
  size_t *idx = malloc(m * sizeof *idx);
  double p1 = 0, rp = 0, ap = 0;
  uint64_t q = 0;
  for (size_t i = 0; i < c->n; i++) {
    size_t cnt = 0, rel = 0;
    for (size_t j = 0; j < m; j++) {
      double s = 0;
      for (size_t k = 0; k < c->d; k++) s += x[i * c->d + k] * r[j * c->d + k];
      sim[j] = s;
      if (self && j == i) continue;
      idx[cnt++] = j;
      rel += gl[j] == c->labels[i];
    }
    if (rel == 0) continue;
    g_sim = sim;
    qsort(idx, cnt, sizeof *idx, by_rank);
    size_t hits = 0;
    double a = 0;
    for (size_t k = 0; k < rel; k++)
      if (gl[idx[k]] == c->labels[i]) a += (double)++hits / (double)(k + 1);
    q++;
    p1 += gl[idx[0]] == c->labels[i];
    rp += (double)hits / (double)rel;
    ap += a / (double)rel;
  }
  free(x);
  free(r);
  free(sim);
  free(idx);
  circle_retrieval out = {.queries = q};
  if (q) {
    out.precision_at_1 = p1 / (double)q;
    out.r_precision = rp / (double)q;
    out.map_at_r = ap / (double)q;
  }
  return out;
}

/* ---- the engine ---------------------------------------------------------- */

typedef struct {
  circle_retrieval ret;
  double loss;
  void *grad; /* n x d in the dtype, when asked */
} run_out;

/* Streamed runs' materialize limit: 1 byte (nothing kept) unless a test
 * sets it. */
static size_t g_stream_limit = 1;

static run_out run(const rcase *c, circle_dtype dt, unsigned threads,
                   bool streamed, unsigned want) {
  circle_engine_opts o = {.threads = threads,
                          .block_rows = streamed ? 7 : 0,
                          .materialize_bytes = streamed ? g_stream_limit : 0};
  circle_engine *e = NULL;
  ck_assert_int_eq(circle_engine_init(&e, &o), CIRCLE_OK);
  size_t esz = dt == CIRCLE_DTYPE_FLOAT32 ? 4 : 8, m = c->m;
  void *x = malloc(c->n * c->d * esz), *r = m ? malloc(m * c->d * esz) : NULL;
  for (size_t q = 0; q < c->n * c->d; q++) {
    if (esz == 4) ((float *)x)[q] = (float)c->x[q];
    else ((double *)x)[q] = c->x[q];
  }
  for (size_t q = 0; m && q < m * c->d; q++) {
    if (esz == 4) ((float *)r)[q] = (float)c->r[q];
    else ((double *)r)[q] = c->r[q];
  }
  circle_config cfg;
  circle_config_init(&cfg);
  cfg.dtype = dt;
  cfg.normalize = c->normalize;
  cfg.gamma = 2; /* integer similarities reach |s| = 27: keep z finite */
  circle_input in = {.n = c->n, .m = m, .d = c->d, .labels = c->labels,
                     .embeddings = x, .ref_labels = m ? c->ref_labels : NULL,
                     .ref_embeddings = r};
  run_out ro = {0};
  if (want & CIRCLE_OUT_GRAD) ro.grad = calloc(c->n * c->d, esz);
  circle_output out = {.want = want, .grad = ro.grad};
  int rc = circle_loss_compute(e, &cfg, &in, &out);
  ck_assert_msg(rc == CIRCLE_OK, "circle_loss_compute: %s", circle_status_str(rc));
  ro.ret = out.retrieval;
  ro.loss = out.loss;
  circle_engine_free(e);
  free(x);
  free(r);
  return ro;
}

static void assert_same(const circle_retrieval *got, const circle_retrieval *want,
                        const char *what) {
  ck_assert_msg(got->queries == want->queries, "%s: queries %llu, want %llu",
                what, (unsigned long long)got->queries,
                (unsigned long long)want->queries);
  ck_assert_msg(fabs(got->precision_at_1 - want->precision_at_1) <= TOL,
                "%s: precision_at_1 %.15g, want %.15g", what,
                got->precision_at_1, want->precision_at_1);
  ck_assert_msg(fabs(got->r_precision - want->r_precision) <= TOL,
                "%s: r_precision %.15g, want %.15g", what, got->r_precision,
                want->r_precision);
  ck_assert_msg(fabs(got->map_at_r - want->map_at_r) <= TOL,
                "%s: map_at_r %.15g, want %.15g", what, got->map_at_r,
                want->map_at_r);
}

/* Every dtype (float64 only for random data), path and thread count
 * against the brute force; the thread counts bitwise alike. */
static void check_case(const rcase *c, bool integer) {
  circle_retrieval want = brute(c);
  for (int dt = 0; dt < 2; dt++) {
    if (dt == 0 && !integer) continue;
    circle_dtype t = dt == 0 ? CIRCLE_DTYPE_FLOAT32 : CIRCLE_DTYPE_FLOAT64;
    for (int streamed = 0; streamed < 2; streamed++) {
      run_out one = run(c, t, 1, streamed, CIRCLE_OUT_LOSS | CIRCLE_OUT_RETRIEVAL);
      run_out two = run(c, t, 2, streamed, CIRCLE_OUT_LOSS | CIRCLE_OUT_RETRIEVAL);
      char what[96];
      snprintf(what, sizeof what, "n=%zu m=%zu %s %s", c->n, c->m,
               dt == 0 ? "float32" : "float64",
               streamed ? "streamed" : "materialized");
      assert_same(&one.ret, &want, what);
      ck_assert_msg(memcmp(&one.ret, &two.ret, sizeof one.ret) == 0,
                    "%s: 1 and 2 threads differ", what);
    }
  }
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */
/* ------------------------------------------------------------------------ */

START_TEST(retrieval_should_match_the_definitions_with_ties_self_referenced) {
  rcase c = case_new(230, 0, 6, 6, true);
  check_case(&c, true);
  case_free(&c);
}
END_TEST

START_TEST(retrieval_should_match_the_definitions_with_ties_against_a_reference_set) {
  rcase c = case_new(150, 260, 5, 5, true);
  check_case(&c, true);
  case_free(&c);
}
END_TEST

START_TEST(retrieval_should_match_the_definitions_on_random_data) {
  rcase c = case_new(900, 0, 12, 12, false);
  check_case(&c, false);
  c.normalize = true;
  check_case(&c, false);
  case_free(&c);
  rcase r = case_new(400, 700, 9, 8, false);
  r.normalize = true;
  check_case(&r, false);
  case_free(&r);
}
END_TEST

/* A row long enough for the bisection to narrow the threshold many times:
 * few relevant items among thousands. */
START_TEST(retrieval_should_match_the_definitions_on_long_rows) {
  rcase c = case_new(2600, 0, 10, 60, false);
  check_case(&c, false);
  case_free(&c);
}
END_TEST

START_TEST(retrieval_should_leave_lone_queries_out) {
  /* Every label a singleton: no query has a relevant item. */
  rcase c = case_new(40, 0, 4, 3, false);
  for (size_t i = 0; i < c.n; i++) c.labels[i] = (int64_t)i;
  run_out o = run(&c, CIRCLE_DTYPE_FLOAT64, 2, false,
                  CIRCLE_OUT_LOSS | CIRCLE_OUT_RETRIEVAL);
  ck_assert_uint_eq(o.ret.queries, 0);
  ck_assert(o.ret.precision_at_1 == 0 && o.ret.r_precision == 0 &&
            o.ret.map_at_r == 0);
  /* One row alone. */
  c.n = 1;
  o = run(&c, CIRCLE_DTYPE_FLOAT64, 1, false, CIRCLE_OUT_RETRIEVAL);
  ck_assert_uint_eq(o.ret.queries, 0);
  case_free(&c);
}
END_TEST

START_TEST(retrieval_should_be_perfect_for_a_single_class) {
  rcase c = case_new(50, 0, 4, 3, false);
  for (size_t i = 0; i < c.n; i++) c.labels[i] = 7;
  for (int streamed = 0; streamed < 2; streamed++) {
    run_out o = run(&c, CIRCLE_DTYPE_FLOAT32, 2, streamed, CIRCLE_OUT_RETRIEVAL);
    ck_assert_uint_eq(o.ret.queries, 50);
    ck_assert(o.ret.precision_at_1 == 1 && o.ret.r_precision == 1 &&
              o.ret.map_at_r == 1);
  }
  case_free(&c);
}
END_TEST

/* Identical embeddings: every similarity ties, so the ranking is the
 * gallery's index order. */
START_TEST(retrieval_should_rank_ties_by_gallery_index) {
  rcase c = case_new(64, 0, 3, 4, true);
  for (size_t q = 0; q < c.n * c.d; q++) c.x[q] = 1;
  check_case(&c, true);
  /* And one worked by hand. */
  rcase h = case_new(4, 0, 2, 2, true);
  for (size_t q = 0; q < h.n * h.d; q++) h.x[q] = 1;
  int64_t lab[4] = {5, 6, 5, 6};
  memcpy(h.labels, lab, sizeof lab);
  /* Row 0 ranks 1, 2, 3: its one relevant item (2) at rank 2: p1 0, rp 0,
   * ap 0. Row 1 ranks 0, 2, 3: relevant 3 at rank 3: 0. Row 2 ranks 0, 1,
   * 3: relevant 0 at rank 1: 1. Row 3 ranks 0, 1, 2: relevant 1 at rank 2:
   * 0. */
  run_out o = run(&h, CIRCLE_DTYPE_FLOAT64, 1, false, CIRCLE_OUT_RETRIEVAL);
  ck_assert_uint_eq(o.ret.queries, 4);
  ck_assert_double_eq_tol(o.ret.precision_at_1, 0.25, TOL);
  ck_assert_double_eq_tol(o.ret.r_precision, 0.25, TOL);
  ck_assert_double_eq_tol(o.ret.map_at_r, 0.25, TOL);
  case_free(&c);
  case_free(&h);
}
END_TEST

START_TEST(retrieval_should_leave_the_loss_and_gradients_alone) {
  rcase c = case_new(300, 0, 8, 6, false);
  c.normalize = true;
  unsigned base = CIRCLE_OUT_LOSS | CIRCLE_OUT_GRAD;
  for (int streamed = 0; streamed < 2; streamed++) {
    run_out a = run(&c, CIRCLE_DTYPE_FLOAT32, 2, streamed, base);
    run_out b = run(&c, CIRCLE_DTYPE_FLOAT32, 2, streamed,
                    base | CIRCLE_OUT_RETRIEVAL | CIRCLE_OUT_STATS);
    const float *ga = a.grad, *gb = b.grad;
    if (!streamed) {
      ck_assert_msg(a.loss == b.loss, "materialized loss %.9g vs %.9g", a.loss,
                    b.loss);
      ck_assert_msg(memcmp(ga, gb, c.n * c.d * sizeof(float)) == 0,
                    "materialized gradients differ");
    } else {
      ck_assert_double_eq_tol(a.loss, b.loss, 1e-5 * fabs(a.loss));
      float gmax = 0;
      for (size_t q = 0; q < c.n * c.d; q++)
        gmax = fabsf(ga[q]) > gmax ? fabsf(ga[q]) : gmax;
      for (size_t q = 0; q < c.n * c.d; q++)
        ck_assert_msg(fabsf(ga[q] - gb[q]) <= 1e-5f * gmax,
                      "streamed gradient %zu: %.9g vs %.9g", q, ga[q], gb[q]);
    }
    free(a.grad);
    free(b.grad);
  }
  case_free(&c);
}
END_TEST

/* Streamed with room to keep lower-triangle strips for the gradient pass
 * (the full-row pass 1 of a request with retrieval fills them): the same
 * figures, loss and gradients on 1, 2 and 3 threads, bitwise, and the
 * gradients those of keeping nothing within 1e-5 relative. */
START_TEST(retrieval_should_keep_strips_and_stay_thread_independent) {
  rcase c = case_new(400, 0, 8, 6, false);
  c.normalize = true;
  unsigned want = CIRCLE_OUT_LOSS | CIRCLE_OUT_GRAD | CIRCLE_OUT_RETRIEVAL |
                  CIRCLE_OUT_STATS;
  run_out none = run(&c, CIRCLE_DTYPE_FLOAT32, 2, true, want);
  g_stream_limit = c.n * c.n * sizeof(float) - 1;
  run_out r[3];
  for (unsigned t = 0; t < 3; t++)
    r[t] = run(&c, CIRCLE_DTYPE_FLOAT32, t + 1, true, want);
  g_stream_limit = 1;
  for (unsigned t = 1; t < 3; t++) {
    ck_assert(memcmp(&r[0].ret, &r[t].ret, sizeof r[0].ret) == 0);
    ck_assert(r[0].loss == r[t].loss);
    ck_assert_msg(memcmp(r[0].grad, r[t].grad, c.n * c.d * sizeof(float)) == 0,
                  "kept strips: gradients differ between 1 and %u threads", t + 1);
  }
  ck_assert(memcmp(&r[0].ret, &none.ret, sizeof none.ret) == 0);
  const float *ga = none.grad, *gb = r[0].grad;
  float gmax = 0;
  for (size_t q = 0; q < c.n * c.d; q++)
    gmax = fabsf(ga[q]) > gmax ? fabsf(ga[q]) : gmax;
  for (size_t q = 0; q < c.n * c.d; q++)
    ck_assert_msg(fabsf(ga[q] - gb[q]) <= 1e-5f * gmax,
                  "gradient %zu: %.9g kept vs %.9g not", q, gb[q], ga[q]);
  free(none.grad);
  for (unsigned t = 0; t < 3; t++) free(r[t].grad);
  case_free(&c);
}
END_TEST

START_TEST(retrieval_should_count_its_scratch) {
  circle_engine *e = NULL;
  ck_assert_int_eq(circle_engine_init(&e, &(circle_engine_opts){.threads = 2}),
                   CIRCLE_OK);
  rcase c = case_new(100, 0, 4, 3, false);
  float x[400];
  for (int q = 0; q < 400; q++) x[q] = (float)c.x[q];
  circle_config cfg;
  circle_config_init(&cfg);
  circle_input in = {.n = 100, .d = 4, .labels = c.labels, .embeddings = x};
  size_t plain = circle_loss_scratch_bytes(e, &cfg, &in, CIRCLE_OUT_LOSS);
  size_t with = circle_loss_scratch_bytes(e, &cfg, &in,
                                          CIRCLE_OUT_LOSS | CIRCLE_OUT_RETRIEVAL);
  /* Per-row figures, two candidate lists a thread and the whole rows of a
   * block a thread at least. */
  ck_assert_uint_gt(with, plain + 2 * 2 * 101 * sizeof(uint32_t));
  circle_engine_free(e);
  case_free(&c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("retrieval");
  TCase *tc = tcase_create("retrieval");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, retrieval_should_match_the_definitions_with_ties_self_referenced);
  tcase_add_test(tc, retrieval_should_match_the_definitions_with_ties_against_a_reference_set);
  tcase_add_test(tc, retrieval_should_match_the_definitions_on_random_data);
  tcase_add_test(tc, retrieval_should_match_the_definitions_on_long_rows);
  tcase_add_test(tc, retrieval_should_leave_lone_queries_out);
  tcase_add_test(tc, retrieval_should_be_perfect_for_a_single_class);
  tcase_add_test(tc, retrieval_should_rank_ties_by_gallery_index);
  tcase_add_test(tc, retrieval_should_leave_the_loss_and_gradients_alone);
  tcase_add_test(tc, retrieval_should_keep_strips_and_stay_thread_independent);
  tcase_add_test(tc, retrieval_should_count_its_scratch);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
