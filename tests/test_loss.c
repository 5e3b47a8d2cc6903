/* test_loss.c -- proves the circle loss engine against real Keras 3 and
 * against finite differences; every public entry point of circle.h meets its
 * bad arguments here, but the pool's (tests/test_pool.c) and the BLAS
 * kernel choice's (tests/test_blas.c).
 *
 * Tolerances, fixed before any result was seen and never to be loosened:
 *
 *   golden files (tests/golden, written by Keras 3 + jax.grad), per array
 *   (loss -- a scalar is an array of one --, per_sample, grad, ref_grad):
 *     float64:  |engine - keras| <= 1e-9 * max|keras|
 *     float32:  |engine - keras| <= 1e-4 * max|keras|
 *     so an expected array of zeros (every row masked) must come back zero.
 *   Every golden case runs materialized (default and one thread) and
 *   streamed (materialize limit 1 byte, blocks of 5 rows, 2 threads).
 *   finite differences (float64, central, step h = 1e-6, every coordinate of
 *   the embeddings and of the reference embeddings):
 *     |fd - grad| <= 1e-6 * max(1, max|grad|) per case.
 *     Expected error: truncation h^2/6 |f'''| ~ 1e-8 for gamma <= 40, and
 *     rounding ~ 1e-16 |f| / h ~ 1e-8 (|f| < 1e2): two orders of margin,
 *     while a wrong gradient term is off by O(max|grad|). The inputs keep
 *     away from the clamp max(1 - s, 0) (norms < 1 unless normalized), whose
 *     kink would fool a finite difference.
 *   thread count, block size, streamed vs materialized: bitwise identical.
 *
 * Each golden file is one loop iteration, so a failure names its case.
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "circle/circle.h"
#include "engine_server.h"
#include "util_engine_golden.h"
#include "util_engine_new.h"

#define TOL_F64 1e-9
#define TOL_F32 1e-4
#define FD_STEP 1e-6
#define FD_TOL 1e-6

/* The golden files, listed once in main() before the suite forks. */
static char **g_paths;
static size_t g_count;
static int g_list_rc;

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

/* A malloc'd copy of src in dtype (NULL for NULL). Float32 golden values
 * convert exactly: Keras produced them as floats. */
static void *to_dtype(const double *src, size_t count, circle_dtype dt) {
  if (src == NULL) return NULL;
  void *p = malloc((count ? count : 1) * circle_dtype_size(dt));
  ck_assert_ptr_nonnull(p);
  for (size_t k = 0; k < count; k++) {
    if (dt == CIRCLE_DTYPE_FLOAT32)
      ((float *)p)[k] = (float)src[k];
    else
      ((double *)p)[k] = src[k];
  }
  return p;
}

static double get(const void *p, size_t k, circle_dtype dt) {
  return dt == CIRCLE_DTYPE_FLOAT32 ? (double)((const float *)p)[k]
                                    : ((const double *)p)[k];
}

/* Everything circle_loss_compute can write, in caller-owned buffers. */
typedef struct {
  circle_output out;
  size_t n, m, d, esz;
  int rc;
} result;

/* Runs the engine with fresh buffers for every output in want. */
static void run(circle_engine *e, const circle_config *cfg,
                const circle_input *in, unsigned want, result *r) {
  memset(r, 0, sizeof *r);
  r->n = in->n;
  r->m = in->ref_embeddings ? in->m : 0;
  r->d = in->d;
  r->esz = circle_dtype_size(cfg->dtype);
  r->out.want = want;
  r->out.loss_values = calloc(r->n, r->esz);
  r->out.per_sample = calloc(r->n, r->esz);
  r->out.grad = calloc(r->n * r->d, r->esz);
  r->out.ref_grad = r->m ? calloc(r->m * r->d, r->esz) : NULL;
  ck_assert_ptr_nonnull(r->out.loss_values);
  ck_assert_ptr_nonnull(r->out.per_sample);
  ck_assert_ptr_nonnull(r->out.grad);
  r->rc = circle_loss_compute(e, cfg, in, &r->out);
}

static void result_free(result *r) {
  free(r->out.loss_values);
  free(r->out.per_sample);
  free(r->out.grad);
  free(r->out.ref_grad);
  memset(r, 0, sizeof *r);
}

static unsigned want_all(const circle_input *in) {
  unsigned w = CIRCLE_OUT_LOSS | CIRCLE_OUT_PER_SAMPLE | CIRCLE_OUT_GRAD |
               CIRCLE_OUT_STATS;
  return in->ref_embeddings ? w | CIRCLE_OUT_REF_GRAD : w;
}

/* The differentiated quantity: the loss, or the sum of the n values. */
static double loss_scalar(const circle_config *cfg, const result *r) {
  if (!circle_reduction_is_elementwise(cfg->reduction)) return r->out.loss;
  double s = 0;
  for (size_t i = 0; i < r->n; i++) s += get(r->out.loss_values, i, cfg->dtype);
  return s;
}

/* Fails unless every got[k] is within tol * max|want| of want[k]; the message
 * names the worst element. */
static void expect_close(const char *id, const char *what, const void *got,
                         circle_dtype dt, const double *want, size_t count,
                         double tol) {
  double maxabs = 0;
  for (size_t k = 0; k < count; k++)
    if (fabs(want[k]) > maxabs) maxabs = fabs(want[k]);
  double bound = tol * maxabs, worst = -1;
  size_t at = 0;
  for (size_t k = 0; k < count; k++) {
    double diff = fabs(get(got, k, dt) - want[k]);
    if (!(diff <= worst)) { /* NaN counts as the worst */
      worst = diff;
      at = k;
      if (isnan(diff)) break;
    }
  }
  ck_assert_msg(count == 0 || worst <= bound,
                "%s: %s[%zu] = %.17g, Keras %.17g: |diff| %.3g > %.3g "
                "(%g x max|Keras| %.6g)",
                id, what, at, get(got, at, dt), want[at], worst, bound, tol,
                maxabs);
}

static bool all_bytes(const void *p, size_t size, unsigned char byte) {
  for (size_t k = 0; k < size; k++)
    if (((const unsigned char *)p)[k] != byte) return false;
  return true;
}

static bool all_finite(const void *p, size_t count, circle_dtype dt) {
  for (size_t k = 0; k < count; k++)
    if (!isfinite(get(p, k, dt))) return false;
  return true;
}

static void expect_finite(const char *what, const circle_config *cfg,
                          const result *r) {
  circle_dtype dt = cfg->dtype;
  unsigned w = r->out.want;
  ck_assert_msg(r->rc == CIRCLE_OK, "%s: %s", what, circle_status_str(r->rc));
  if (w & CIRCLE_OUT_LOSS) {
    if (circle_reduction_is_elementwise(cfg->reduction))
      ck_assert_msg(all_finite(r->out.loss_values, r->n, dt),
                    "%s: loss values", what);
    else
      ck_assert_msg(isfinite(r->out.loss), "%s: loss %g", what, r->out.loss);
  }
  if (w & CIRCLE_OUT_PER_SAMPLE)
    ck_assert_msg(all_finite(r->out.per_sample, r->n, dt), "%s: per_sample",
                  what);
  if (w & CIRCLE_OUT_GRAD)
    ck_assert_msg(all_finite(r->out.grad, r->n * r->d, dt), "%s: grad", what);
  if (w & CIRCLE_OUT_REF_GRAD)
    ck_assert_msg(all_finite(r->out.ref_grad, r->m * r->d, dt),
                  "%s: ref_grad", what);
}

/* Fails with the largest difference when two arrays are not bitwise equal. */
static void expect_same_bits(const char *what, const char *field,
                             const void *a, const void *b, size_t count,
                             circle_dtype dt) {
  if (memcmp(a, b, count * circle_dtype_size(dt)) == 0) return;
  double worst = 0;
  size_t at = 0;
  for (size_t k = 0; k < count; k++) {
    double diff = fabs(get(a, k, dt) - get(b, k, dt));
    if (!(diff <= worst)) {
      worst = diff;
      at = k;
    }
  }
  ck_abort_msg("%s: %s differs: largest at [%zu]: %.17g vs %.17g (|diff| %.3g)",
               what, field, at, get(a, at, dt), get(b, at, dt), worst);
}

/* Bitwise equality of every output two runs were asked for. */
static void expect_identical(const char *what, const result *a,
                             const result *b) {
  ck_assert_int_eq(a->rc, CIRCLE_OK);
  ck_assert_int_eq(b->rc, CIRCLE_OK);
  unsigned w = a->out.want;
  circle_dtype dt = a->esz == 4 ? CIRCLE_DTYPE_FLOAT32 : CIRCLE_DTYPE_FLOAT64;
  if (w & CIRCLE_OUT_LOSS) {
    expect_same_bits(what, "loss", &a->out.loss, &b->out.loss, 1,
                     CIRCLE_DTYPE_FLOAT64);
    expect_same_bits(what, "loss values", a->out.loss_values,
                     b->out.loss_values, a->n, dt);
  }
  if (w & CIRCLE_OUT_PER_SAMPLE)
    expect_same_bits(what, "per_sample", a->out.per_sample, b->out.per_sample,
                     a->n, dt);
  if (w & CIRCLE_OUT_GRAD)
    expect_same_bits(what, "grad", a->out.grad, b->out.grad, a->n * a->d, dt);
  if (w & CIRCLE_OUT_REF_GRAD)
    expect_same_bits(what, "ref_grad", a->out.ref_grad, b->out.ref_grad,
                     a->m * a->d, dt);
  if (w & CIRCLE_OUT_STATS)
    ck_assert_msg(memcmp(&a->out.stats, &b->out.stats, sizeof a->out.stats) ==
                      0,
                  "%s: stats differ", what);
}

/* ---- deterministic random inputs ---------------------------------------- */

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static double rng_uniform(uint64_t *s) { /* [0, 1) */
  return (double)(rng_next(s) >> 11) * 0x1.0p-53;
}

static double rng_normal(uint64_t *s) {
  double u = rng_uniform(s), v = rng_uniform(s);
  return sqrt(-2.0 * log(1.0 - u)) * cos(2.0 * M_PI * v);
}

/* rows x d random directions, row norms uniform in [lo, hi]. */
static double *random_rows(uint64_t *s, size_t rows, size_t d, double lo,
                           double hi) {
  double *x = malloc(rows * d * sizeof *x);
  ck_assert_ptr_nonnull(x);
  for (size_t i = 0; i < rows; i++) {
    double nn = 0;
    for (size_t k = 0; k < d; k++) {
      x[i * d + k] = rng_normal(s);
      nn += x[i * d + k] * x[i * d + k];
    }
    double scale = (lo + (hi - lo) * rng_uniform(s)) / sqrt(nn);
    for (size_t k = 0; k < d; k++) x[i * d + k] *= scale;
  }
  return x;
}

static int64_t *random_labels(uint64_t *s, size_t rows, int classes) {
  int64_t *y = malloc(rows * sizeof *y);
  ck_assert_ptr_nonnull(y);
  for (size_t i = 0; i < rows; i++)
    y[i] = (int64_t)(rng_next(s) % (uint64_t)classes);
  return y;
}

/* A random problem held in doubles plus its typed copies. */
typedef struct {
  circle_config cfg;
  circle_input in;
  double *x, *r, *w; /* doubles: embeddings, reference, weights */
  int64_t *y, *ry;
} problem;

static void problem_init(problem *p, uint64_t seed, circle_dtype dt, size_t n,
                         size_t m, size_t d, int classes, bool with_sw,
                         double lo, double hi) {
  uint64_t s = seed;
  memset(p, 0, sizeof *p);
  circle_config_init(&p->cfg);
  p->cfg.dtype = dt;
  p->y = random_labels(&s, n, classes);
  p->x = random_rows(&s, n, d, lo, hi);
  if (m > 0) {
    p->ry = random_labels(&s, m, classes);
    p->r = random_rows(&s, m, d, lo, hi);
  }
  if (with_sw) {
    p->w = malloc(n * sizeof *p->w);
    ck_assert_ptr_nonnull(p->w);
    for (size_t i = 0; i < n; i++) p->w[i] = 0.2 + 1.6 * rng_uniform(&s);
    p->w[n / 2] = 0.0;
  }
  p->in = (circle_input){.n = n,
                         .m = m,
                         .d = d,
                         .labels = p->y,
                         .embeddings = to_dtype(p->x, n * d, dt),
                         .sample_weight = to_dtype(p->w, n, dt),
                         .ref_labels = p->ry,
                         .ref_embeddings = to_dtype(p->r, m * d, dt)};
}

static void problem_free(problem *p) {
  free((void *)p->in.embeddings);
  free((void *)p->in.sample_weight);
  free((void *)p->in.ref_embeddings);
  free(p->x);
  free(p->r);
  free(p->w);
  free(p->y);
  free(p->ry);
}

/* ------------------------------------------------------------------------ */
/* Keras golden files                                                       */
/* ------------------------------------------------------------------------ */

/* The engine input of golden case c, its arrays malloc'd in c's dtype
 * (labels borrowed from c); golden_input_free releases them. */
static circle_input golden_input(const golden_case *c) {
  circle_dtype dt = c->cfg.dtype;
  return (circle_input){
      .n = c->n,
      .m = c->m,
      .d = c->d,
      .labels = c->labels,
      .embeddings = to_dtype(c->embeddings, c->n * c->d, dt),
      .sample_weight = to_dtype(c->sample_weight, c->n, dt),
      .ref_labels = c->ref_labels,
      .ref_embeddings = to_dtype(c->ref_embeddings, c->m * c->d, dt)};
}

static void golden_input_free(circle_input *in) {
  free((void *)in->embeddings);
  free((void *)in->sample_weight);
  free((void *)in->ref_embeddings);
}

START_TEST(loss_should_find_the_keras_golden_cases) {
  ck_assert_msg(g_list_rc == 0, "cannot list %s (set CIRCLE_GOLDEN_DIR)",
                golden_dir());
  ck_assert_msg(g_count >= 40, "%zu golden cases in %s, expected >= 40",
                g_count, golden_dir());
  /* The cases on either side of softplus' subnormal flush (generate.py,
   * section 16): every reduction kept and flushed in both dtypes, the
   * margin pairs, the 24-row and reference-set mixes and the bug report. */
  size_t flush = 0;
  for (size_t k = 0; k < g_count; k++) {
    const char *base = strrchr(g_paths[k], '/');
    flush += strncmp(base ? base + 1 : g_paths[k], "flush_", 6) == 0;
  }
  ck_assert_msg(flush >= 37, "%zu flush_* golden cases in %s, expected >= 37",
                flush, golden_dir());
}
END_TEST

/* Runs golden case path on an engine of threads threads, block_rows rows a
 * block and a materialize limit of materialize_bytes (0: the defaults; 1
 * byte forces the streamed path), and compares every output with Keras. */
static void check_golden(const char *path, unsigned threads, size_t block_rows,
                         size_t materialize_bytes) {
  golden_case c;
  char err[512];
  ck_assert_msg(golden_case_load(path, &c, err, sizeof err) == 0, "%s", err);
  circle_dtype dt = c.cfg.dtype;
  circle_input in = golden_input(&c);
  circle_engine *e = engine_new(threads, block_rows, materialize_bytes);
  result r;
  run(e, &c.cfg, &in, want_all(&in), &r);
  ck_assert_msg(r.rc == CIRCLE_OK, "%s: circle_loss_compute: %s", c.id,
                circle_status_str(r.rc));
  double tol = dt == CIRCLE_DTYPE_FLOAT32 ? TOL_F32 : TOL_F64;
  if (c.loss_values != NULL)
    expect_close(c.id, "loss", r.out.loss_values, dt, c.loss_values, c.n, tol);
  else
    expect_close(c.id, "loss", &r.out.loss, CIRCLE_DTYPE_FLOAT64, &c.loss, 1,
                 tol);
  expect_close(c.id, "per_sample", r.out.per_sample, dt, c.per_sample, c.n,
               tol);
  expect_close(c.id, "grad", r.out.grad, dt, c.grad, c.n * c.d, tol);
  if (c.ref_grad != NULL)
    expect_close(c.id, "ref_grad", r.out.ref_grad, dt, c.ref_grad, c.m * c.d,
                 tol);
  result_free(&r);
  circle_engine_free(e);
  golden_input_free(&in);
  golden_case_free(&c);
}

START_TEST(loss_should_match_keras_golden_cases) {
  check_golden(g_paths[_i], 0, 0, 0);
}
END_TEST

START_TEST(loss_should_match_keras_golden_cases_on_one_thread) {
  check_golden(g_paths[_i], 1, 0, 0);
}
END_TEST

/* The streamed path (similarities recomputed per block, never kept), in
 * blocks of 5 rows so that most cases span several blocks. */
START_TEST(loss_should_match_keras_golden_cases_streamed) {
  check_golden(g_paths[_i], 2, 5, 1);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Finite differences                                                       */
/* ------------------------------------------------------------------------ */

typedef struct {
  size_t n, m, d;
  int classes;
  bool normalize, sw, remove_diagonal, singleton;
  circle_reduction red;
  double gamma, margin;
} fd_case;

static const fd_case fd_cases[] = {
    {7, 0, 5, 3, false, false, true, false,
     CIRCLE_REDUCTION_SUM_OVER_BATCH_SIZE, 16, 0.4},
    {8, 0, 4, 3, false, true, true, true, CIRCLE_REDUCTION_SUM, 40, 0.4},
    {6, 9, 5, 3, false, true, true, false,
     CIRCLE_REDUCTION_MEAN_WITH_SAMPLE_WEIGHT, 24, 0.25},
    {6, 7, 3, 2, true, false, true, false, CIRCLE_REDUCTION_NONE, 16, 0.4},
    {9, 0, 6, 3, true, true, false, false, CIRCLE_REDUCTION_MEAN, 32, 0.4},
    {5, 8, 4, 3, false, true, false, false, CIRCLE_REDUCTION_NULL, 20, 0.3},
    {10, 0, 3, 4, false, true, true, true,
     CIRCLE_REDUCTION_MEAN_WITH_SAMPLE_WEIGHT, 40, 0.4},
    {7, 6, 5, 3, true, true, false, true,
     CIRCLE_REDUCTION_SUM_OVER_BATCH_SIZE, 40, 0.4},
};

/* The loss with v[k] (v: the float64 embeddings or reference embeddings
 * p->in points to) set to value. */
static double loss_at(circle_engine *e, problem *p, double *v, size_t k,
                      double value) {
  double keep = v[k];
  v[k] = value;
  result r;
  run(e, &p->cfg, &p->in, CIRCLE_OUT_LOSS, &r);
  ck_assert_int_eq(r.rc, CIRCLE_OK);
  double f = loss_scalar(&p->cfg, &r);
  result_free(&r);
  v[k] = keep;
  return f;
}

static void expect_fd(circle_engine *e, problem *p, double *v,
                      const double *g, size_t count, const char *what,
                      int ci) {
  double maxg = 1.0;
  for (size_t k = 0; k < count; k++)
    if (fabs(g[k]) > maxg) maxg = fabs(g[k]);
  double bound = FD_TOL * maxg;
  for (size_t k = 0; k < count; k++) {
    double x0 = v[k];
    double fp = loss_at(e, p, v, k, x0 + FD_STEP);
    double fm = loss_at(e, p, v, k, x0 - FD_STEP);
    double fd = (fp - fm) / (2 * FD_STEP);
    ck_assert_msg(fabs(fd - g[k]) <= bound,
                  "fd case %d: %s[%zu]: engine %.12g, finite difference "
                  "%.12g, |diff| %.3g > %.3g",
                  ci, what, k, g[k], fd, fabs(fd - g[k]), bound);
  }
}

START_TEST(loss_should_agree_with_finite_differences) {
  const fd_case *fc = &fd_cases[_i];
  problem p;
  /* Without normalize the norms stay below 1, so no similarity reaches the
   * clamp at 1; with it the raw norms vary from 0.5 to 2. */
  problem_init(&p, 0xfdull + (uint64_t)_i, CIRCLE_DTYPE_FLOAT64, fc->n, fc->m,
               fc->d, fc->classes, fc->sw, fc->normalize ? 0.5 : 0.6,
               fc->normalize ? 2.0 : 0.95);
  if (fc->singleton) p.y[0] = 99; /* a row without positives: masked */
  p.cfg.gamma = fc->gamma;
  p.cfg.margin = fc->margin;
  p.cfg.remove_diagonal = fc->remove_diagonal;
  p.cfg.reduction = fc->red;
  p.cfg.normalize = fc->normalize;
  circle_engine *e = engine_new(1, 0, 0);
  result r;
  run(e, &p.cfg, &p.in, want_all(&p.in), &r);
  ck_assert_int_eq(r.rc, CIRCLE_OK);
  ck_assert_msg(loss_scalar(&p.cfg, &r) > 0, "fd case %d has zero loss", _i);
  expect_fd(e, &p, (double *)p.in.embeddings, r.out.grad, fc->n * fc->d,
            "grad", _i);
  if (fc->m > 0)
    expect_fd(e, &p, (double *)p.in.ref_embeddings, r.out.ref_grad,
              fc->m * fc->d, "ref_grad", _i);
  result_free(&r);
  circle_engine_free(e);
  problem_free(&p);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Determinism: threads, block sizes, streaming                             */
/* ------------------------------------------------------------------------ */

/* Variants: 0 self f32, 1 self f64 normalize, 2 ref f32 normalize, 3 ref
 * f64. Sizes are odd so that blocks do not divide them evenly. */
static void determinism_problem(problem *p, int variant) {
  bool ref = variant >= 2;
  circle_dtype dt = variant % 2 ? CIRCLE_DTYPE_FLOAT64 : CIRCLE_DTYPE_FLOAT32;
  bool norm = variant == 1 || variant == 2;
  problem_init(p, 0xd0ull + (uint64_t)variant, dt, ref ? 301 : 530,
               ref ? 411 : 0, 19, 23, true, norm ? 0.3 : 1.0,
               norm ? 3.0 : 1.0);
  p->y[5] = 1000; /* singletons: masked rows */
  p->y[77] = 1001;
  p->cfg.normalize = norm;
  p->cfg.reduction = CIRCLE_REDUCTION_MEAN_WITH_SAMPLE_WEIGHT;
}

static void run_with(problem *p, unsigned threads, size_t block_rows,
                     size_t materialize_bytes, result *r) {
  circle_engine *e = engine_new(threads, block_rows, materialize_bytes);
  run(e, &p->cfg, &p->in, want_all(&p->in), r);
  circle_engine_free(e);
  ck_assert_msg(r->rc == CIRCLE_OK, "%s", circle_status_str(r->rc));
}

START_TEST(loss_should_give_bitwise_identical_results_for_1_2_and_3_threads) {
  problem p;
  determinism_problem(&p, _i);
  for (size_t bs = 0; bs <= 16; bs += 16) {
    result r1, r2, r3;
    run_with(&p, 1, bs, 0, &r1);
    run_with(&p, 2, bs, 0, &r2);
    run_with(&p, 3, bs, 0, &r3);
    expect_identical("1 vs 2 threads", &r1, &r2);
    expect_identical("1 vs 3 threads", &r1, &r3);
    result_free(&r1);
    result_free(&r2);
    result_free(&r3);
  }
  problem_free(&p);
}
END_TEST

/* Block size and the materialized/streamed choice change which gemm call
 * computes each similarity and the order of the dR sums, so they may change
 * the last bits (only the thread count is promised bitwise). They must still
 * agree within the golden tolerances. */
static void expect_agree_within(const char *what, const result *a,
                                const result *b, double tol) {
  ck_assert_int_eq(a->rc, CIRCLE_OK);
  ck_assert_int_eq(b->rc, CIRCLE_OK);
  unsigned w = a->out.want;
  circle_dtype dt = a->esz == 4 ? CIRCLE_DTYPE_FLOAT32 : CIRCLE_DTYPE_FLOAT64;
  size_t counts[4] = {a->n, a->n, a->n * a->d, a->m * a->d};
  const void *ga[4] = {a->out.loss_values, a->out.per_sample, a->out.grad,
                       a->out.ref_grad};
  const void *gb[4] = {b->out.loss_values, b->out.per_sample, b->out.grad,
                       b->out.ref_grad};
  unsigned bits[4] = {CIRCLE_OUT_LOSS, CIRCLE_OUT_PER_SAMPLE, CIRCLE_OUT_GRAD,
                      CIRCLE_OUT_REF_GRAD};
  static const char *const names[4] = {"loss values", "per_sample", "grad",
                                       "ref_grad"};
  if (w & CIRCLE_OUT_LOSS)
    ck_assert_msg(fabs(a->out.loss - b->out.loss) <= tol * fabs(b->out.loss),
                  "%s: loss %.17g vs %.17g", what, a->out.loss, b->out.loss);
  for (int k = 0; k < 4; k++) {
    if (!(w & bits[k]) || ga[k] == NULL || gb[k] == NULL) continue;
    double *want = malloc((counts[k] ? counts[k] : 1) * sizeof *want);
    for (size_t q = 0; q < counts[k]; q++) want[q] = get(gb[k], q, dt);
    expect_close(what, names[k], ga[k], dt, want, counts[k], tol);
    free(want);
  }
}

static void expect_agree(const char *what, const result *a, const result *b) {
  expect_agree_within(what, a, b, a->esz == 4 ? TOL_F32 : TOL_F64);
}

START_TEST(loss_should_agree_for_any_block_size) {
  problem p;
  determinism_problem(&p, _i);
  result a, b, c;
  run_with(&p, 2, 0, 0, &a);
  run_with(&p, 2, 5, 0, &b);
  run_with(&p, 3, 1, 0, &c);
  expect_agree("default vs 5 block rows", &a, &b);
  expect_agree("default vs 1 block row", &a, &c);
  result_free(&a);
  result_free(&b);
  result_free(&c);
  problem_free(&p);
}
END_TEST

START_TEST(loss_should_agree_streamed_or_materialized) {
  problem p;
  determinism_problem(&p, _i);
  result a, b, c, d;
  run_with(&p, 2, 0, 0, &a);  /* 256 MiB: materialized */
  run_with(&p, 2, 0, 1, &b);  /* 1 byte: streamed */
  run_with(&p, 3, 7, 1, &c);  /* streamed, other blocks and threads */
  run_with(&p, 1, 7, 1, &d);  /* streamed, one thread: bitwise as c */
  expect_agree("materialized vs streamed", &a, &b);
  expect_agree("materialized vs streamed, 7 rows, 3 threads", &a, &c);
  expect_identical("streamed, 7 rows: 3 threads vs 1", &c, &d);
  result_free(&a);
  result_free(&b);
  result_free(&c);
  result_free(&d);
  problem_free(&p);
}
END_TEST

/* Streamed with room under the materialize limit (n x n over it, the
 * lower triangle not): pass 1 keeps its last strips for pass 2, which
 * computes only the others again. A kept strip holds what pass 2 would
 * compute, so the results are bitwise those of a streamed call that keeps
 * none, on any thread count; the scratch grows by the kept strips. */
START_TEST(loss_should_keep_strips_for_pass_2_without_changing_a_bit) {
  problem p;
  determinism_problem(&p, _i); /* variants 0, 1: self-referenced */
  /* Stats and retrieval take a full-row pass 1, which keeps nothing. */
  unsigned want = CIRCLE_OUT_LOSS | CIRCLE_OUT_PER_SAMPLE | CIRCLE_OUT_GRAD;
  size_t esz = p.cfg.dtype == CIRCLE_DTYPE_FLOAT32 ? 4 : 8, n = p.in.n;
  size_t lim = n * n * esz - 1;
  circle_engine *e[4] = {engine_new(2, 16, 1), engine_new(2, 16, lim),
                         engine_new(1, 16, lim), engine_new(3, 16, lim)};
  size_t s_none = circle_loss_scratch_bytes(e[0], &p.cfg, &p.in, want);
  size_t s_some = circle_loss_scratch_bytes(e[1], &p.cfg, &p.in, want);
  /* at least a third of the triangle kept */
  ck_assert_msg(s_some >= s_none + n * n * esz / 6, "scratch %zu vs %zu",
                s_some, s_none);
  ck_assert_uint_le(s_some, lim + lim / 8 + 64);
  result r[4];
  for (int k = 0; k < 4; k++) {
    run(e[k], &p.cfg, &p.in, want, &r[k]);
    ck_assert_int_eq(r[k].rc, CIRCLE_OK);
    circle_engine_free(e[k]);
  }
  expect_identical("kept strips vs none", &r[0], &r[1]);
  expect_identical("kept strips: 1 vs 2 threads", &r[1], &r[2]);
  expect_identical("kept strips: 3 vs 2 threads", &r[1], &r[3]);
  for (int k = 0; k < 4; k++) result_free(&r[k]);
  problem_free(&p);
}
END_TEST

/* A streamed gradient pass forms each strip's column contributions about
 * 2048 rows at a time: with 2300 rows in blocks of 64, most strips take two
 * products. The results agree with the materialized batch's and are
 * bitwise the same on 1, 2 and 3 threads. */
START_TEST(loss_should_stream_a_strip_in_several_products) {
  problem p;
  circle_dtype dt = _i ? CIRCLE_DTYPE_FLOAT64 : CIRCLE_DTYPE_FLOAT32;
  problem_init(&p, 0x2300ull + (uint64_t)_i, dt, 2300, 0, 9, 23, true, 1.0,
               1.0);
  result mat, r1, r2, r3;
  run_with(&p, 2, 64, 0, &mat); /* 256 MiB: materialized */
  run_with(&p, 1, 64, 1, &r1);  /* 1 byte: streamed */
  run_with(&p, 2, 64, 1, &r2);
  run_with(&p, 3, 64, 1, &r3);
  expect_agree("materialized vs streamed, 2300 rows", &mat, &r2);
  expect_identical("streamed, 2300 rows: 1 vs 2 threads", &r1, &r2);
  expect_identical("streamed, 2300 rows: 3 vs 2 threads", &r3, &r2);
  result_free(&mat);
  result_free(&r1);
  result_free(&r2);
  result_free(&r3);
  problem_free(&p);
}
END_TEST

/* On CPUs with AVX-512 a self-referenced float32 batch runs hand-written
 * kernels for the lower triangle's log-sum-exps and the gradient weights
 * (one polynomial per pair, exponents split off in the bits); with
 * CIRCLE_KERNELS=c the engine runs the compiler-vectorized C loops. Same
 * formulas, other roundings and row-sum order: they must agree within 1e-5
 * of each output's largest magnitude, ten times tighter than the golden
 * tolerance. Cases: default gamma (both kernels), gamma 1024 (lse past the
 * kernels' range: both fall back to the C loops, tile by tile), rows not a
 * multiple of 16 (masked tails), materialized and streamed. Elsewhere both
 * runs take the C loops and agree trivially. */
static void run_c_loops(problem *p, unsigned threads, size_t block_rows,
                        size_t materialize_bytes, result *r) {
  ck_assert_int_eq(setenv("CIRCLE_KERNELS", "c", 1), 0);
  run_with(p, threads, block_rows, materialize_bytes, r);
  ck_assert_int_eq(unsetenv("CIRCLE_KERNELS"), 0);
}

START_TEST(loss_should_agree_with_the_c_loops) {
  static const struct {
    double gamma;
    size_t n, bs, mat;
    bool normalize;
  } cases[] = {{80, 1003, 0, 0, false},  {80, 1003, 0, 1, false},
               {80, 517, 48, 0, true},   {256, 700, 0, 1, true},
               {1024, 421, 0, 0, false}, {1024, 421, 0, 1, false}};
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    problem p;
    problem_init(&p, 0x5160ull + k, CIRCLE_DTYPE_FLOAT32, cases[k].n, 0, 37,
                 29, true, cases[k].normalize ? 0.3 : 1.0,
                 cases[k].normalize ? 3.0 : 1.0);
    p.y[3] = 999999; /* a singleton: no positives */
    p.cfg.gamma = cases[k].gamma;
    p.cfg.normalize = cases[k].normalize;
    result simd, c;
    run_with(&p, 2, cases[k].bs, cases[k].mat, &simd);
    run_c_loops(&p, 2, cases[k].bs, cases[k].mat, &c);
    char what[96];
    snprintf(what, sizeof what, "gamma %g, %zu rows, %s: SIMD vs C loops",
             cases[k].gamma, cases[k].n, cases[k].mat ? "streamed" : "materialized");
    expect_agree_within(what, &simd, &c, 1e-5);
    result_free(&simd);
    result_free(&c);
    problem_free(&p);
  }
}
END_TEST

/* Where the triangle does not fit beside the rest of the scratch, the kept
 * strips fill what this call's own scratch leaves (on 1, 2 or 3 threads,
 * whose scratch differs), so the whole buffer stays within what the engine
 * caches between calls (the limit and an eighth more) and no call maps and
 * faults it in again. */
START_TEST(loss_should_keep_streamed_scratch_within_the_cached_buffer) {
  problem p;
  determinism_problem(&p, _i); /* variants 0, 1: self-referenced */
  unsigned want = CIRCLE_OUT_LOSS | CIRCLE_OUT_PER_SAMPLE | CIRCLE_OUT_GRAD;
  size_t esz = p.cfg.dtype == CIRCLE_DTYPE_FLOAT32 ? 4 : 8, n = p.in.n;
  size_t lim = n * n * esz * 6 / 10, cap = lim + lim / 8 + 64;
  for (unsigned th = 1; th <= 3; th++) {
    circle_engine *none = engine_new(th, 16, 1), *e = engine_new(th, 16, lim);
    size_t s_none = circle_loss_scratch_bytes(none, &p.cfg, &p.in, want);
    size_t s = circle_loss_scratch_bytes(e, &p.cfg, &p.in, want);
    ck_assert_msg(s <= cap, "%u threads: scratch %zu over the cached %zu", th,
                  s, cap);
    /* and strips are kept: more than a sixth of the triangle */
    ck_assert_msg(s >= s_none + n * n * esz / 12, "%u threads: %zu vs %zu",
                  th, s, s_none);
    circle_engine_free(none);
    circle_engine_free(e);
  }
  problem_free(&p);
}
END_TEST

/* Rows on either side of softplus' subnormal flush (the flush_mixed_* and
 * flush_ref_* golden cases): which rows are kept must not depend on the
 * thread count, materialized or streamed, so the outputs are bitwise equal. */
START_TEST(loss_should_flush_the_same_rows_on_any_thread_count) {
  size_t seen = 0;
  for (size_t k = 0; k < g_count; k++) {
    const char *base = strrchr(g_paths[k], '/');
    base = base ? base + 1 : g_paths[k];
    if (strncmp(base, "flush_mixed_", 12) != 0 &&
        strncmp(base, "flush_ref_", 10) != 0)
      continue;
    golden_case c;
    char err[512];
    ck_assert_msg(golden_case_load(g_paths[k], &c, err, sizeof err) == 0, "%s",
                  err);
    circle_input in = golden_input(&c);
    for (size_t mat = 0; mat <= 1; mat++) { /* 0: materialized, 1: streamed */
      result r[3];
      for (unsigned t = 0; t < 3; t++) {
        circle_engine *e = engine_new(t + 1, 5, mat);
        run(e, &c.cfg, &in, want_all(&in), &r[t]);
        circle_engine_free(e);
      }
      expect_identical(c.id, &r[0], &r[1]);
      expect_identical(c.id, &r[0], &r[2]);
      for (unsigned t = 0; t < 3; t++) result_free(&r[t]);
    }
    golden_input_free(&in);
    golden_case_free(&c);
    seen++;
  }
  ck_assert_msg(seen >= 6, "%zu flush_mixed_*/flush_ref_* cases in %s", seen,
                golden_dir());
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Numerical stability                                                      */
/* ------------------------------------------------------------------------ */

START_TEST(loss_should_stay_finite_at_large_gamma) {
  static const double gammas[] = {256, 1024, 65536};
  static const double margins[] = {0.25, 0.4};
  circle_engine *e = engine_new(0, 0, 0);
  for (int dt = 0; dt < 2; dt++)
    for (size_t gi = 0; gi < 3; gi++)
      for (size_t mi = 0; mi < 2; mi++)
        for (int red = 0; red <= CIRCLE_REDUCTION_NULL; red++)
          for (int ref = 0; ref < 2; ref++) {
            problem p;
            problem_init(&p, 0x57ull + (uint64_t)(gi * 10 + mi), dt, 40,
                         ref ? 33 : 0, 8, 4, red % 2 == 0, 1.0, 1.0);
            p.y[3] = 500; /* a row with no positive pair */
            p.cfg.gamma = gammas[gi];
            p.cfg.margin = margins[mi];
            p.cfg.reduction = (circle_reduction)red;
            p.cfg.normalize = red == 3;
            result r;
            run(e, &p.cfg, &p.in, want_all(&p.in), &r);
            char what[96];
            snprintf(what, sizeof what, "gamma %g margin %g %s red %d ref %d",
                     gammas[gi], margins[mi], dt ? "f64" : "f32", red, ref);
            expect_finite(what, &p.cfg, &r);
            result_free(&r);
            problem_free(&p);
          }
  circle_engine_free(e);
}
END_TEST

/* Rows with no negative pair, no positive pair, a batch of one, a single
 * class: empty log-sum-exps must become exact zeros, never NaN. */
START_TEST(loss_should_stay_finite_when_rows_have_no_pairs) {
  circle_engine *e = engine_new(0, 0, 0);
  for (int dt = 0; dt < 2; dt++)
    for (size_t n = 1; n <= 3; n++)
      for (int rd = 0; rd < 2; rd++)
        for (int norm = 0; norm < 2; norm++) {
          problem p;
          problem_init(&p, 0x11ull + n, dt, n, 0, 4, 1, true, 0.5, 2.0);
          p.cfg.remove_diagonal = rd;
          p.cfg.normalize = norm;
          p.cfg.reduction = CIRCLE_REDUCTION_MEAN;
          result r;
          run(e, &p.cfg, &p.in, want_all(&p.in), &r);
          expect_finite("one class", &p.cfg, &r);
          if (rd) /* no pair at all: every value is exactly 0 */
            for (size_t i = 0; i < n; i++)
              ck_assert(get(r.out.per_sample, i, dt) == 0.0);
          result_free(&r);
          problem_free(&p);
        }
  circle_engine_free(e);
}
END_TEST

/* Finite input of any magnitude: the engine either computes finite numbers
 * or refuses with a status; it never hands out NaN or Inf. */
START_TEST(loss_should_never_return_nonfinite_values_for_finite_input) {
  static const double scales[] = {1e-30, 1e-8, 1e8, 1e18, 1e20, 1e150};
  circle_engine *e = engine_new(0, 0, 0);
  for (int dt = 0; dt < 2; dt++)
    for (size_t si = 0; si < sizeof scales / sizeof *scales; si++)
      for (int norm = 0; norm < 2; norm++) {
        if (dt == 0 && scales[si] > 1e30) continue; /* not a finite float */
        problem p;
        problem_init(&p, 0x33ull, dt, 12, 0, 3, 3, true, scales[si],
                     scales[si]);
        p.cfg.normalize = norm;
        result r;
        run(e, &p.cfg, &p.in, want_all(&p.in), &r);
        char what[64];
        snprintf(what, sizeof what, "scale %g %s normalize %d", scales[si],
                 dt ? "f64" : "f32", norm);
        if (r.rc == CIRCLE_OK) expect_finite(what, &p.cfg, &r);
        /* Only huge raw embeddings may be refused, and only as ERANGE. */
        if (r.rc != CIRCLE_OK)
          ck_assert_msg(r.rc == CIRCLE_ERANGE && !norm && scales[si] > 1e6,
                        "%s: refused with %s", what, circle_status_name(r.rc));
        result_free(&r);
        problem_free(&p);
      }
  circle_engine_free(e);
}
END_TEST

/* An all-zero row under normalize: Keras' UnitNormalization gives it the
 * value 0 and a NaN gradient (rsqrt(0) = inf inside a min); the engine must
 * hand out finite numbers (a known, intended difference from Keras). */
START_TEST(loss_should_stay_finite_for_a_zero_row_with_normalize) {
  circle_engine *e = engine_new(0, 0, 0);
  for (int dt = 0; dt < 2; dt++)
    for (int ref = 0; ref < 2; ref++) {
      problem p;
      problem_init(&p, 0x0ull, dt, 6, ref ? 4 : 0, 3, 2, false, 0.5, 2.0);
      p.cfg.normalize = true;
      result a, b;
      run(e, &p.cfg, &p.in, want_all(&p.in), &a);
      for (size_t k = 0; k < 3; k++) {
        if (dt == CIRCLE_DTYPE_FLOAT32)
          ((float *)p.in.embeddings)[3 * 3 + k] = 0;
        else
          ((double *)p.in.embeddings)[3 * 3 + k] = 0;
      }
      run(e, &p.cfg, &p.in, want_all(&p.in), &b);
      expect_finite("zero row", &p.cfg, &a);
      expect_finite("zero row", &p.cfg, &b);
      result_free(&a);
      result_free(&b);
      problem_free(&p);
    }
  circle_engine_free(e);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Semantics beyond Keras' reach                                            */
/* ------------------------------------------------------------------------ */

/* Labels are exact 64-bit integers (Keras' class form casts them through
 * the loss dtype and int32; see docs/conformance.md): relabelling 0..3 as
 * huge values that collide in float32 and in int32 changes nothing. */
START_TEST(loss_should_treat_labels_as_exact_64_bit_integers) {
  problem p;
  problem_init(&p, 0x64ull, CIRCLE_DTYPE_FLOAT32, 20, 0, 5, 4, false, 1, 1);
  circle_engine *e = engine_new(1, 0, 0);
  result a, b;
  run(e, &p.cfg, &p.in, want_all(&p.in), &a);
  for (size_t i = 0; i < 20; i++)
    p.y[i] = (INT64_C(1) << 62) + p.y[i] * (INT64_C(1) << 32) + 1;
  run(e, &p.cfg, &p.in, want_all(&p.in), &b);
  expect_identical("small vs huge labels", &a, &b);
  result_free(&a);
  result_free(&b);
  circle_engine_free(e);
  problem_free(&p);
}
END_TEST

/* Output buffers are written only for what out.want asks. */
START_TEST(loss_should_compute_only_what_is_asked) {
  problem p;
  problem_init(&p, 0x77ull, CIRCLE_DTYPE_FLOAT64, 9, 5, 3, 2, true, 1, 1);
  circle_engine *e = engine_new(1, 0, 0);
  double per[9], grad[27], rgrad[15];
  memset(per, 0xab, sizeof per);
  memset(grad, 0xab, sizeof grad);
  memset(rgrad, 0xab, sizeof rgrad);
  circle_output out = {.want = CIRCLE_OUT_LOSS, .loss = -1, .per_sample = per,
                       .grad = grad, .ref_grad = rgrad};
  ck_assert_int_eq(circle_loss_compute(e, &p.cfg, &p.in, &out), CIRCLE_OK);
  ck_assert(out.loss > 0);
  ck_assert(all_bytes(per, sizeof per, 0xab));
  ck_assert(all_bytes(grad, sizeof grad, 0xab));
  ck_assert(all_bytes(rgrad, sizeof rgrad, 0xab));
  out = (circle_output){.want = CIRCLE_OUT_REF_GRAD, .loss = -1,
                        .per_sample = per, .grad = grad, .ref_grad = rgrad};
  ck_assert_int_eq(circle_loss_compute(e, &p.cfg, &p.in, &out), CIRCLE_OK);
  ck_assert(out.loss == -1);
  ck_assert(all_bytes(per, sizeof per, 0xab));
  ck_assert(all_bytes(grad, sizeof grad, 0xab));
  ck_assert(all_finite(rgrad, 15, CIRCLE_DTYPE_FLOAT64));
  circle_engine_free(e);
  problem_free(&p);
}
END_TEST

/* The server's entry, for an input it has checked, answers bit for bit as
 * circle_loss_compute, in both dtypes, with and without a reference set. */
START_TEST(loss_should_compute_the_same_bits_through_the_server_entry) {
  for (int dt = 0; dt < 2; dt++)
    for (int ref = 0; ref < 2; ref++) {
      problem p;
      problem_init(&p, 0x91ull + (uint64_t)(dt * 2 + ref), (circle_dtype)dt,
                   37, ref ? 23 : 0, 5, 4, true, 0.5, 2.0);
      size_t es = dt == CIRCLE_DTYPE_FLOAT64 ? 8 : 4;
      circle_engine *e = engine_new(2, 0, 0);
      unsigned char a[2][37 * 5 * 8 + 23 * 5 * 8 + 37 * 8];
      memset(a, 0, sizeof a);
      circle_output out[2];
      for (int k = 0; k < 2; k++) {
        unsigned char *b = a[k];
        out[k] = (circle_output){
            .want = CIRCLE_OUT_LOSS | CIRCLE_OUT_PER_SAMPLE | CIRCLE_OUT_GRAD |
                    (ref ? CIRCLE_OUT_REF_GRAD : 0u),
            .per_sample = b,
            .grad = b + 37 * es,
            .ref_grad = ref ? b + 37 * es + 37 * 5 * es : NULL};
      }
      ck_assert_int_eq(circle_loss_compute(e, &p.cfg, &p.in, &out[0]),
                       CIRCLE_OK);
      ck_assert_int_eq(circle__input_check_decoded(&p.cfg, &p.in, NULL, 0),
                       CIRCLE_OK);
      ck_assert_int_eq(circle__loss_compute_checked(e, &p.cfg, &p.in, &out[1]),
                       CIRCLE_OK);
      ck_assert(memcmp(&out[0].loss, &out[1].loss, sizeof out[0].loss) == 0);
      ck_assert(memcmp(a[0], a[1], sizeof a[0]) == 0);
      circle_engine_free(e);
      problem_free(&p);
    }
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Bad arguments, entry point by entry point                                */
/* ------------------------------------------------------------------------ */

START_TEST(loss_should_name_every_status_and_unknown_ones) {
#define CHECK_STATUS(name, value, msg)                        \
  ck_assert_str_eq(circle_status_str(value), msg);            \
  ck_assert_str_eq(circle_status_name(value), #name);
  CIRCLE_STATUS_MAP(CHECK_STATUS)
#undef CHECK_STATUS
  static const int unknown[] = {1, -12, -1000, 42, INT32_MIN, INT32_MAX};
  for (size_t k = 0; k < sizeof unknown / sizeof *unknown; k++) {
    ck_assert_str_eq(circle_status_str(unknown[k]), "unknown status");
    ck_assert_str_eq(circle_status_name(unknown[k]), "EUNKNOWN");
  }
}
END_TEST

START_TEST(loss_should_reject_unknown_dtype_strings_and_values) {
  circle_dtype dt = CIRCLE_DTYPE_FLOAT64;
  static const char *const bad[] = {"float16", "Float32", "float", "f32",
                                    "float32 ", "", "bfloat16", "int64"};
  for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
    ck_assert_int_eq(circle_dtype_parse(bad[k], &dt), CIRCLE_EINVAL);
    ck_assert_int_eq(dt, CIRCLE_DTYPE_FLOAT64); /* untouched */
  }
  ck_assert_int_eq(circle_dtype_parse(NULL, &dt), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_dtype_parse("float32", NULL), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_dtype_parse("float32", &dt), CIRCLE_OK);
  ck_assert_int_eq(dt, CIRCLE_DTYPE_FLOAT32);
  ck_assert_int_eq(circle_dtype_parse("float64", &dt), CIRCLE_OK);
  ck_assert_int_eq(dt, CIRCLE_DTYPE_FLOAT64);
  ck_assert_uint_eq(circle_dtype_size(CIRCLE_DTYPE_FLOAT32), 4);
  ck_assert_uint_eq(circle_dtype_size(CIRCLE_DTYPE_FLOAT64), 8);
  ck_assert_uint_eq(circle_dtype_size((circle_dtype)2), 0);
  ck_assert_uint_eq(circle_dtype_size((circle_dtype)-1), 0);
  ck_assert_str_eq(circle_dtype_name(CIRCLE_DTYPE_FLOAT32), "float32");
  ck_assert_ptr_null(circle_dtype_name((circle_dtype)7));
}
END_TEST

START_TEST(loss_should_reject_unknown_reduction_strings_and_values) {
  static const char *const good[] = {"sum_over_batch_size", "sum", "mean",
                                     "mean_with_sample_weight", "none"};
  for (int r = 0; r < 5; r++) {
    circle_reduction got = CIRCLE_REDUCTION_NULL;
    ck_assert_int_eq(circle_reduction_parse(good[r], &got), CIRCLE_OK);
    ck_assert_int_eq(got, r);
    ck_assert_str_eq(circle_reduction_name((circle_reduction)r), good[r]);
  }
  static const char *const bad[] = {"None", "null", "NONE", "Sum", "avg",
                                    "sum_over_batch", "", " sum", "auto"};
  for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
    circle_reduction got = CIRCLE_REDUCTION_SUM;
    ck_assert_int_eq(circle_reduction_parse(bad[k], &got), CIRCLE_EINVAL);
    ck_assert_int_eq(got, CIRCLE_REDUCTION_SUM); /* untouched */
  }
  circle_reduction got;
  ck_assert_int_eq(circle_reduction_parse(NULL, &got), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_reduction_parse("sum", NULL), CIRCLE_EINVAL);
  ck_assert_ptr_null(circle_reduction_name(CIRCLE_REDUCTION_NULL));
  ck_assert_ptr_null(circle_reduction_name((circle_reduction)42));
  ck_assert(circle_reduction_is_elementwise(CIRCLE_REDUCTION_NONE));
  ck_assert(circle_reduction_is_elementwise(CIRCLE_REDUCTION_NULL));
  ck_assert(!circle_reduction_is_elementwise(CIRCLE_REDUCTION_SUM));
  ck_assert(!circle_reduction_is_elementwise((circle_reduction)42));
}
END_TEST

START_TEST(loss_should_reject_bad_config_values) {
  circle_config cfg;
  circle_config_init(&cfg);
  ck_assert(cfg.gamma == 80.0 && cfg.margin == 0.4 && cfg.remove_diagonal &&
            cfg.reduction == CIRCLE_REDUCTION_SUM_OVER_BATCH_SIZE &&
            cfg.dtype == CIRCLE_DTYPE_FLOAT32 && !cfg.normalize);
  ck_assert_int_eq(circle_config_validate(&cfg), CIRCLE_OK);
  ck_assert_int_eq(circle_config_validate(NULL), CIRCLE_EINVAL);
  static const double bad_gamma[] = {0.0, -0.0, -1.0, -INFINITY, INFINITY,
                                     NAN};
  for (size_t k = 0; k < sizeof bad_gamma / sizeof *bad_gamma; k++) {
    circle_config c = cfg;
    c.gamma = bad_gamma[k];
    ck_assert_msg(circle_config_validate(&c) == CIRCLE_EINVAL, "gamma %g",
                  bad_gamma[k]);
  }
  circle_config c = cfg;
  c.gamma = 1e-300; /* tiny but positive is Keras-legal */
  ck_assert_int_eq(circle_config_validate(&c), CIRCLE_OK);
  c = cfg;
  c.margin = -0.5; /* Keras accepts any margin */
  ck_assert_int_eq(circle_config_validate(&c), CIRCLE_OK);
  c.margin = NAN;
  ck_assert_int_eq(circle_config_validate(&c), CIRCLE_EINVAL);
  c.margin = INFINITY;
  ck_assert_int_eq(circle_config_validate(&c), CIRCLE_EINVAL);
  c = cfg;
  c.reduction = (circle_reduction)6;
  ck_assert_int_eq(circle_config_validate(&c), CIRCLE_EINVAL);
  c.reduction = (circle_reduction)-1;
  ck_assert_int_eq(circle_config_validate(&c), CIRCLE_EINVAL);
  c = cfg;
  c.dtype = (circle_dtype)2;
  ck_assert_int_eq(circle_config_validate(&c), CIRCLE_EINVAL);
}
END_TEST

/* A valid 4-row float64 input to break one field at a time. */
typedef struct {
  int64_t y[4], ry[3];
  double x[8], r[6], w[4];
  circle_config cfg;
  circle_input in;
} small;

static void small_init(small *s) {
  static const int64_t y[4] = {0, 0, 1, 1}, ry[3] = {0, 1, 1};
  static const double x[8] = {1, 0, 0.6, 0.8, 0, 1, -0.6, 0.8};
  static const double r[6] = {0.8, 0.6, 0, 1, 0.28, 0.96};
  static const double w[4] = {1, 0.5, 2, 1};
  memcpy(s->y, y, sizeof y);
  memcpy(s->ry, ry, sizeof ry);
  memcpy(s->x, x, sizeof x);
  memcpy(s->r, r, sizeof r);
  memcpy(s->w, w, sizeof w);
  circle_config_init(&s->cfg);
  s->cfg.dtype = CIRCLE_DTYPE_FLOAT64;
  s->in = (circle_input){.n = 4,
                         .m = 3,
                         .d = 2,
                         .labels = s->y,
                         .embeddings = s->x,
                         .sample_weight = s->w,
                         .ref_labels = s->ry,
                         .ref_embeddings = s->r};
}

/* small_init's batch in float32 (xf: 8 floats, filled here), without the
 * reference set, with weights wf (4 floats, or NULL). */
static void small_init_f32(small *s, float *xf, float *wf) {
  small_init(s);
  for (int k = 0; k < 8; k++) xf[k] = (float)s->x[k];
  s->cfg.dtype = CIRCLE_DTYPE_FLOAT32;
  s->in.embeddings = xf;
  s->in.sample_weight = wf;
  s->in.ref_labels = NULL;
  s->in.ref_embeddings = NULL;
}

/* circle_input_check's status, and the sentence it writes. */
static int check_input(const small *s, char *where, size_t where_len) {
  memset(where, 0, where_len);
  return circle_input_check(&s->cfg, &s->in, where, where_len);
}

/* Expects status from circle_input_check and a sentence containing needle
 * (or any sentence at all when needle is NULL). */
static void expect_check(const small *s, int status, const char *needle) {
  char where[200];
  int rc = check_input(s, where, sizeof where);
  ck_assert_msg(rc == status, "status %s, expected %s (where: %s)",
                circle_status_name(rc), circle_status_name(status), where);
  /* The server's entry skips only the scans for values that are not
   * finite: every other verdict is the same, word for word. */
  char where_decoded[200];
  memset(where_decoded, 0, sizeof where_decoded);
  int rc_decoded = circle__input_check_decoded(&s->cfg, &s->in, where_decoded,
                                               sizeof where_decoded);
  if (status == CIRCLE_ENONFINITE) {
    ck_assert_msg(rc_decoded != CIRCLE_ENONFINITE,
                  "circle__input_check_decoded scanned for non-finite values");
  } else {
    ck_assert_msg(rc_decoded == rc, "decoded status %s, full check %s",
                  circle_status_name(rc_decoded), circle_status_name(rc));
    ck_assert_str_eq(where_decoded, where);
  }
  if (status == CIRCLE_OK) return;
  ck_assert_msg(where[0] != 0, "no sentence in where");
  if (needle != NULL)
    ck_assert_msg(strstr(where, needle) != NULL, "where \"%s\" lacks \"%s\"",
                  where, needle);
}

START_TEST(loss_should_accept_a_valid_input) {
  small s;
  small_init(&s);
  expect_check(&s, CIRCLE_OK, NULL);
  s.in.ref_labels = NULL;
  s.in.ref_embeddings = NULL;
  s.in.sample_weight = NULL;
  expect_check(&s, CIRCLE_OK, NULL);
  ck_assert_int_eq(circle_input_check(&s.cfg, &s.in, NULL, 0), CIRCLE_OK);
}
END_TEST

START_TEST(loss_should_reject_null_pointers_in_input_check) {
  small s;
  small_init(&s);
  char where[200];
  ck_assert_int_eq(circle_input_check(NULL, &s.in, where, sizeof where),
                   CIRCLE_EINVAL);
  ck_assert_int_eq(circle_input_check(&s.cfg, NULL, where, sizeof where),
                   CIRCLE_EINVAL);
  s.in.labels = NULL;
  expect_check(&s, CIRCLE_EINVAL, "labels");
  small_init(&s);
  s.in.embeddings = NULL;
  expect_check(&s, CIRCLE_EINVAL, "embeddings");
}
END_TEST

START_TEST(loss_should_reject_an_empty_batch_and_zero_dimension) {
  small s;
  small_init(&s);
  s.in.n = 0;
  expect_check(&s, CIRCLE_EEMPTY, NULL);
  small_init(&s);
  s.in.d = 0;
  expect_check(&s, CIRCLE_EINVAL, NULL);
  small_init(&s);
  s.in.m = 0; /* a reference set given with no rows */
  expect_check(&s, CIRCLE_EEMPTY, "reference");
}
END_TEST

START_TEST(loss_should_reject_half_a_reference_set) {
  small s;
  small_init(&s);
  s.in.ref_embeddings = NULL;
  expect_check(&s, CIRCLE_EINVAL, "ref_embeddings");
  small_init(&s);
  s.in.ref_labels = NULL;
  expect_check(&s, CIRCLE_EINVAL, "ref_labels");
}
END_TEST

START_TEST(loss_should_reject_non_finite_values_naming_the_row) {
  small s;
  small_init(&s);
  s.x[5] = NAN; /* row 2, column 1 */
  expect_check(&s, CIRCLE_ENONFINITE, "embeddings[2][1]");
  small_init(&s);
  s.x[0] = -INFINITY;
  expect_check(&s, CIRCLE_ENONFINITE, NULL);
  small_init(&s);
  s.r[3] = INFINITY; /* ref row 1, column 1 */
  expect_check(&s, CIRCLE_ENONFINITE, "ref_embeddings[1][1]");
  small_init(&s);
  s.w[3] = NAN;
  expect_check(&s, CIRCLE_ENONFINITE, "sample_weight[3]");
  /* the same in float32 */
  float xf[8];
  small_init_f32(&s, xf, NULL);
  xf[7] = NAN;
  expect_check(&s, CIRCLE_ENONFINITE, "embeddings[3][1]");
}
END_TEST

START_TEST(loss_should_reject_negative_sample_weights) {
  small s;
  small_init(&s);
  s.w[2] = -0.5;
  expect_check(&s, CIRCLE_EINVAL, "sample_weight[2]");
  s.w[2] = 0.0; /* zero is a weight, not an error */
  expect_check(&s, CIRCLE_OK, NULL);
  s.w[2] = -0.0;
  expect_check(&s, CIRCLE_OK, NULL);
}
END_TEST

/* Sample weights scale the loss and its gradients: 1e38 in float32 used to
 * give a 200 with a loss and gradients of inf (null in JSON). The check now
 * refuses weights that could overflow, with ERANGE naming the weight, and
 * accepts every weight below that point: a weight just under the largest
 * accepted one gives finite outputs for every reduction, dtype, reference
 * set and normalize setting. The largest accepted weight is found by
 * bisection on the check itself, so the test holds the contract, not the
 * formula. */
static void set_weights(problem *p, double wmax) {
  double top = 0;
  for (size_t i = 0; i < p->in.n; i++) top = p->w[i] > top ? p->w[i] : top;
  double *w = malloc(p->in.n * sizeof *w);
  ck_assert_ptr_nonnull(w);
  for (size_t i = 0; i < p->in.n; i++) w[i] = p->w[i] / top * wmax;
  free((void *)p->in.sample_weight);
  p->in.sample_weight = to_dtype(w, p->in.n, p->cfg.dtype);
  free(w);
}

START_TEST(loss_should_refuse_sample_weights_that_could_overflow) {
  static const circle_reduction reds[] = {
      CIRCLE_REDUCTION_SUM_OVER_BATCH_SIZE, CIRCLE_REDUCTION_SUM,
      CIRCLE_REDUCTION_MEAN, CIRCLE_REDUCTION_MEAN_WITH_SAMPLE_WEIGHT,
      CIRCLE_REDUCTION_NONE, CIRCLE_REDUCTION_NULL};
  circle_engine *e = engine_new(0, 0, 0);
  for (int dt = 0; dt < 2; dt++)
    for (size_t ri = 0; ri < sizeof reds / sizeof *reds; ri++)
      for (int ref = 0; ref < 2; ref++)
        for (int norm = 0; norm < 2; norm++) {
          problem p;
          problem_init(&p, 0x5eedull + ri, dt, 12, ref ? 5 : 0, 3, 3, true,
                       0.5, 3.0);
          p.cfg.reduction = reds[ri];
          p.cfg.normalize = norm;
          double big = dt ? DBL_MAX : FLT_MAX;
          char what[96];
          snprintf(what, sizeof what, "%s %s ref %d normalize %d",
                   dt ? "f64" : "f32", circle_reduction_name(reds[ri]), ref,
                   norm);
          /* lo is accepted, hi refused (or the dtype's largest value is
           * accepted, and then it must compute finite numbers). */
          double lo = 1, hi = big;
          set_weights(&p, lo);
          ck_assert_msg(circle_input_check(&p.cfg, &p.in, NULL, 0) == CIRCLE_OK,
                        "%s: weight 1 refused", what);
          set_weights(&p, hi);
          char where[256];
          int rc = circle_input_check(&p.cfg, &p.in, where, sizeof where);
          if (rc == CIRCLE_OK) {
            lo = hi;
          } else {
            ck_assert_msg(rc == CIRCLE_ERANGE, "%s: %s", what,
                          circle_status_name(rc));
            ck_assert_msg(strstr(where, "sample_weight[") != NULL, "%s: %s",
                          what, where);
            while (hi / lo > 1 + 1e-9) {
              double mid = sqrt(lo) * sqrt(hi);
              set_weights(&p, mid);
              if (circle_input_check(&p.cfg, &p.in, NULL, 0) == CIRCLE_OK)
                lo = mid;
              else
                hi = mid;
            }
          }
          /* Far above any practical weight. */
          ck_assert_msg(lo >= (dt ? 1e250 : 1e20), "%s: weights above %g "
                        "refused", what, lo);
          set_weights(&p, lo);
          result r;
          run(e, &p.cfg, &p.in, want_all(&p.in), &r);
          snprintf(what + strlen(what), sizeof what - strlen(what),
                   " at weight %g", lo);
          expect_finite(what, &p.cfg, &r);
          result_free(&r);
          problem_free(&p);
        }
  circle_engine_free(e);
  /* The report's case: weights of 1e38 at the defaults, float32. */
  small s;
  float xf[8], wf[4] = {1, 1e38f, 1, 1};
  small_init_f32(&s, xf, wf);
  expect_check(&s, CIRCLE_ERANGE, "sample_weight[1] is 1e+38");
  small_init(&s);
  s.w[3] = 1e306;
  s.cfg.reduction = CIRCLE_REDUCTION_SUM;
  expect_check(&s, CIRCLE_ERANGE, "sample_weight[3]");
}
END_TEST

START_TEST(loss_should_reject_a_bad_config_in_input_check) {
  small s;
  small_init(&s);
  s.cfg.gamma = 0;
  expect_check(&s, CIRCLE_EINVAL, NULL);
  s.cfg.gamma = -3;
  expect_check(&s, CIRCLE_EINVAL, NULL);
}
END_TEST

/* Sizes whose products overflow are refused before any data is read: the
 * arrays here are far too short for the sizes, so a read would crash. */
START_TEST(loss_should_report_overflow_before_reading_data) {
  small s;
  small_init(&s);
  s.in.n = SIZE_MAX / 4 + 1;
  s.in.d = 8;
  expect_check(&s, CIRCLE_EOVERFLOW, NULL);
  small_init(&s);
  s.in.n = (size_t)1 << 33;
  s.in.m = (size_t)1 << 33; /* n * m overflows */
  s.in.d = 1;
  expect_check(&s, CIRCLE_EOVERFLOW, NULL);
  circle_engine *e = engine_new(1, 0, 0);
  ck_assert_uint_eq(circle_loss_scratch_bytes(e, &s.cfg, &s.in,
                                              CIRCLE_OUT_ALL),
                    0);
  circle_output out = {.want = CIRCLE_OUT_LOSS};
  ck_assert_int_eq(circle_loss_compute(e, &s.cfg, &s.in, &out),
                   CIRCLE_EOVERFLOW);
  circle_engine_free(e);
}
END_TEST

START_TEST(loss_should_truncate_the_where_sentence_to_its_buffer) {
  small s;
  small_init(&s);
  s.x[5] = NAN;
  char where[8];
  memset(where, 'x', sizeof where);
  ck_assert_int_eq(circle_input_check(&s.cfg, &s.in, where, 5),
                   CIRCLE_ENONFINITE);
  ck_assert(memchr(where, 0, 5) != NULL);
  ck_assert(where[5] == 'x' && where[7] == 'x');
  ck_assert_int_eq(circle_input_check(&s.cfg, &s.in, where, 0),
                   CIRCLE_ENONFINITE);
}
END_TEST

START_TEST(loss_should_reject_bad_arguments_to_compute) {
  small s;
  small_init(&s);
  circle_engine *e = engine_new(1, 0, 0);
  double per[4], grad[8], rgrad[6], lv[4];
  circle_output out = {.want = CIRCLE_OUT_ALL, .per_sample = per,
                       .grad = grad, .ref_grad = rgrad, .loss_values = lv};
  ck_assert_int_eq(circle_loss_compute(NULL, &s.cfg, &s.in, &out),
                   CIRCLE_EINVAL);
  ck_assert_int_eq(circle_loss_compute(e, NULL, &s.in, &out), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_loss_compute(e, &s.cfg, NULL, &out), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_loss_compute(e, &s.cfg, &s.in, NULL), CIRCLE_EINVAL);
  circle_output o2 = out;
  o2.want = 1u << 7; /* no such output */
  ck_assert_int_eq(circle_loss_compute(e, &s.cfg, &s.in, &o2), CIRCLE_EINVAL);
  o2 = out;
  o2.grad = NULL;
  ck_assert_int_eq(circle_loss_compute(e, &s.cfg, &s.in, &o2), CIRCLE_EINVAL);
  o2 = out;
  o2.ref_grad = NULL;
  ck_assert_int_eq(circle_loss_compute(e, &s.cfg, &s.in, &o2), CIRCLE_EINVAL);
  o2 = out;
  o2.per_sample = NULL;
  ck_assert_int_eq(circle_loss_compute(e, &s.cfg, &s.in, &o2), CIRCLE_EINVAL);
  o2 = out;
  o2.loss_values = NULL;
  s.cfg.reduction = CIRCLE_REDUCTION_NONE;
  ck_assert_int_eq(circle_loss_compute(e, &s.cfg, &s.in, &o2), CIRCLE_EINVAL);
  s.cfg.reduction = CIRCLE_REDUCTION_SUM; /* scalar: loss_values unused */
  ck_assert_int_eq(circle_loss_compute(e, &s.cfg, &s.in, &o2), CIRCLE_OK);
  /* a reference gradient without a reference set */
  s.in.ref_labels = NULL;
  s.in.ref_embeddings = NULL;
  o2 = out;
  ck_assert_int_eq(circle_loss_compute(e, &s.cfg, &s.in, &o2), CIRCLE_EINVAL);
  small_init(&s);
  static const double bad_gamma[] = {0.0, -1.0, NAN, INFINITY};
  for (size_t k = 0; k < 4; k++) {
    s.cfg.gamma = bad_gamma[k];
    ck_assert_int_eq(circle_loss_compute(e, &s.cfg, &s.in, &out),
                     CIRCLE_EINVAL);
  }
  small_init(&s);
  s.cfg.reduction = (circle_reduction)9;
  ck_assert_int_eq(circle_loss_compute(e, &s.cfg, &s.in, &out), CIRCLE_EINVAL);
  small_init(&s);
  s.cfg.dtype = (circle_dtype)9;
  ck_assert_int_eq(circle_loss_compute(e, &s.cfg, &s.in, &out), CIRCLE_EINVAL);
  small_init(&s);
  s.in.n = 0;
  ck_assert_int_eq(circle_loss_compute(e, &s.cfg, &s.in, &out), CIRCLE_EEMPTY);
  small_init(&s);
  s.in.d = 0;
  ck_assert_int_eq(circle_loss_compute(e, &s.cfg, &s.in, &out), CIRCLE_EINVAL);
  small_init(&s);
  s.in.ref_labels = NULL;
  ck_assert_int_eq(circle_loss_compute(e, &s.cfg, &s.in, &out), CIRCLE_EINVAL);
  small_init(&s);
  s.x[1] = NAN;
  ck_assert_int_eq(circle_loss_compute(e, &s.cfg, &s.in, &out),
                   CIRCLE_ENONFINITE);
  small_init(&s);
  s.w[0] = -1;
  ck_assert_int_eq(circle_loss_compute(e, &s.cfg, &s.in, &out), CIRCLE_EINVAL);
  circle_engine_free(e);
}
END_TEST

/* The statistics against a plain reference written from circle.h's
 * definitions. Embeddings are multiples of 1/2 in [-1, 1], so every
 * similarity, sum and mean is exact in both dtypes whatever the order of
 * summation: the comparison is exact (== on every figure). Duplicated rows
 * make exact ties, so "the first index of the largest similarity" is
 * tested too, across labels. */
typedef struct {
  double pos_sum, neg_sum, min_pos, max_neg;
  uint64_t pos, neg, hard, hard_den, nn_same, nn_rows;
} stats_ref;

static void stats_reference(const int64_t *lx, const double *x, size_t n,
                            const int64_t *lr, const double *r, size_t m,
                            size_t d, bool self, bool rd, circle_stats *st) {
  stats_ref a = {.min_pos = INFINITY, .max_neg = -INFINITY};
  for (size_t i = 0; i < n; i++) {
    double minp = INFINITY;
    uint64_t pos = 0, neg = 0;
    double best = -INFINITY;
    size_t nn = (size_t)-1;
    double sim[64];
    int cls[64];
    for (size_t j = 0; j < m; j++) {
      double sij = 0;
      for (size_t k = 0; k < d; k++) sij += x[i * d + k] * r[j * d + k];
      sim[j] = sij;
      cls[j] = lx[i] == lr[j] ? 1 : 2;
      if (rd && i == j && cls[j] == 1) cls[j] = 0;
      if (cls[j] == 1) {
        pos++;
        a.pos_sum += sij;
        if (sij < minp) minp = sij;
      } else if (cls[j] == 2) {
        neg++;
        a.neg_sum += sij;
        if (sij > a.max_neg) a.max_neg = sij;
      }
      if (!(self && j == i) && sij > best) {
        best = sij;
        nn = j;
      }
    }
    if (minp < a.min_pos) a.min_pos = minp;
    a.pos += pos;
    a.neg += neg;
    if (pos > 0) {
      a.hard_den += neg;
      for (size_t j = 0; j < m; j++) a.hard += cls[j] == 2 && sim[j] > minp;
    }
    if (nn != (size_t)-1) {
      a.nn_rows++;
      a.nn_same += lr[nn] == lx[i] || (!self && cls[nn] == 0);
    }
  }
  double dev_sum = 0, dev_max = 0;
  for (size_t i = 0; i < n; i++) {
    double ss = 0;
    for (size_t k = 0; k < d; k++) ss += x[i * d + k] * x[i * d + k];
    double dev = fabs(sqrt(ss) - 1.0);
    dev_sum += dev;
    if (dev > dev_max) dev_max = dev;
  }
  *st = (circle_stats){0};
  st->pos_pairs = a.pos;
  st->neg_pairs = a.neg;
  st->mean_pos_sim = a.pos ? a.pos_sum / (double)a.pos : 0;
  st->mean_neg_sim = a.neg ? a.neg_sum / (double)a.neg : 0;
  st->min_pos_sim = a.pos ? a.min_pos : 0;
  st->max_neg_sim = a.neg ? a.max_neg : 0;
  st->sim_gap = a.pos && a.neg ? st->mean_pos_sim - st->mean_neg_sim : 0;
  st->hard_neg_frac = a.hard_den ? (double)a.hard / (double)a.hard_den : 0;
  st->recall_at_1 = a.nn_rows ? (double)a.nn_same / (double)a.nn_rows : 0;
  st->norm_dev_mean = dev_sum / (double)n;
  st->norm_dev_max = dev_max;
  st->hard_neg_base = a.hard_den;
  st->nn_rows = a.nn_rows;
}

START_TEST(loss_should_compute_stats_as_their_definitions_say) {
  enum { N = 37, M = 29, D = 5 };
  int64_t lx[N], lr[M];
  double x[N * D], r[M * D];
  uint64_t rng = 12345;
  for (size_t k = 0; k < N * D; k++) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    x[k] = (double)((int)(rng >> 33) % 5 - 2) / 2; /* -1 .. 1 by 1/2 */
  }
  for (size_t i = 0; i < N; i++) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    lx[i] = (int64_t)((rng >> 33) % 4);
  }
  /* Ties: rows 5, 6 and 30 equal row 3 (6 with another label). */
  memcpy(x + 5 * D, x + 3 * D, D * sizeof *x);
  memcpy(x + 6 * D, x + 3 * D, D * sizeof *x);
  memcpy(x + 30 * D, x + 3 * D, D * sizeof *x);
  lx[6] = (lx[3] + 1) % 4;
  memcpy(r, x, sizeof r);
  memcpy(lr, lx, sizeof lr);
  lr[2] = (lr[2] + 1) % 4; /* a differently labelled (i, i) pair */
  circle_engine *e = engine_new(2, 0, 0);
  for (int dti = 0; dti < 2; dti++)
    for (int variant = 0; variant < 3; variant++) {
      circle_dtype dt = dti ? CIRCLE_DTYPE_FLOAT64 : CIRCLE_DTYPE_FLOAT32;
      bool self = variant < 2, rd = variant != 1;
      circle_config cfg;
      circle_config_init(&cfg);
      cfg.dtype = dt;
      cfg.remove_diagonal = rd;
      void *xe = to_dtype(x, N * D, dt), *re = to_dtype(r, M * D, dt);
      circle_input in = {.n = N, .d = D, .labels = lx, .embeddings = xe};
      if (!self) {
        in.m = M;
        in.ref_labels = lr;
        in.ref_embeddings = re;
      }
      double per[N];
      circle_output out = {.want = CIRCLE_OUT_STATS | CIRCLE_OUT_PER_SAMPLE,
                           .per_sample = per};
      ck_assert_int_eq(circle_loss_compute(e, &cfg, &in, &out), CIRCLE_OK);
      circle_stats want;
      stats_reference(lx, x, N, self ? lx : lr, self ? x : r, self ? N : M,
                      D, self, rd, &want);
      size_t pos_rows = 0;
      for (size_t i = 0; i < N; i++) pos_rows += get(per, i, dt) > 0;
      want.pos_row_frac = (double)pos_rows / N;
      const circle_stats *got = &out.stats;
#define SAME(f)                                                             \
  ck_assert_msg(got->f == want.f, "%s self=%d rd=%d: " #f " %.17g != %.17g", \
                circle_dtype_name(dt), self, rd, (double)got->f,             \
                (double)want.f)
      SAME(pos_row_frac);
      SAME(mean_pos_sim);
      SAME(min_pos_sim);
      SAME(mean_neg_sim);
      SAME(max_neg_sim);
      SAME(sim_gap);
      SAME(hard_neg_frac);
      SAME(recall_at_1);
      SAME(norm_dev_mean);
      SAME(norm_dev_max);
      SAME(pos_pairs);
      SAME(neg_pairs);
      SAME(hard_neg_base);
      SAME(nn_rows);
#undef SAME
      free(xe);
      free(re);
    }
  circle_engine_free(e);
}
END_TEST

/* On failure nothing the caller handed in as output changes. */
START_TEST(loss_should_leave_outputs_untouched_on_failure) {
  small s;
  small_init(&s);
  circle_engine *e = engine_new(2, 0, 0);
  double per[4], grad[8], rgrad[6], lv[4];
  memset(per, 0x5a, sizeof per);
  memset(grad, 0x5a, sizeof grad);
  memset(rgrad, 0x5a, sizeof rgrad);
  memset(lv, 0x5a, sizeof lv);
  circle_output out = {.want = CIRCLE_OUT_ALL, .loss = 12345.0,
                       .per_sample = per, .grad = grad, .ref_grad = rgrad,
                       .loss_values = lv};
  memset(&out.stats, 0x5a, sizeof out.stats);
  circle_output before = out;
  s.r[4] = NAN; /* found only after the batch has been checked */
  ck_assert_int_eq(circle_loss_compute(e, &s.cfg, &s.in, &out),
                   CIRCLE_ENONFINITE);
  ck_assert(memcmp(&out, &before, sizeof out) == 0);
  ck_assert(all_bytes(per, sizeof per, 0x5a));
  ck_assert(all_bytes(grad, sizeof grad, 0x5a));
  ck_assert(all_bytes(rgrad, sizeof rgrad, 0x5a));
  ck_assert(all_bytes(lv, sizeof lv, 0x5a));
  circle_engine_free(e);
}
END_TEST

START_TEST(loss_should_report_scratch_bytes_or_zero) {
  small s;
  small_init(&s);
  circle_engine *e = engine_new(1, 0, 0);
  ck_assert_uint_gt(circle_loss_scratch_bytes(e, &s.cfg, &s.in,
                                              CIRCLE_OUT_ALL),
                    0);
  ck_assert_uint_eq(circle_loss_scratch_bytes(NULL, &s.cfg, &s.in,
                                              CIRCLE_OUT_ALL),
                    0);
  ck_assert_uint_eq(circle_loss_scratch_bytes(e, NULL, &s.in, CIRCLE_OUT_ALL),
                    0);
  ck_assert_uint_eq(circle_loss_scratch_bytes(e, &s.cfg, NULL, CIRCLE_OUT_ALL),
                    0);
  circle_engine_free(e);
}
END_TEST

/* ------------------------------------------------------------------------ */

static Suite *loss_suite(void) {
  Suite *s = suite_create("loss");
  TCase *golden = tcase_create("golden");
  tcase_set_timeout(golden, 120);
  tcase_add_test(golden, loss_should_find_the_keras_golden_cases);
  tcase_add_loop_test(golden, loss_should_match_keras_golden_cases, 0,
                      (int)g_count);
  tcase_add_loop_test(golden, loss_should_match_keras_golden_cases_on_one_thread,
                      0, (int)g_count);
  tcase_add_loop_test(golden, loss_should_match_keras_golden_cases_streamed, 0,
                      (int)g_count);
  suite_add_tcase(s, golden);

  TCase *num = tcase_create("numerics");
  tcase_set_timeout(num, 120);
  tcase_add_loop_test(num, loss_should_agree_with_finite_differences, 0,
                      (int)(sizeof fd_cases / sizeof *fd_cases));
  tcase_add_loop_test(
      num, loss_should_give_bitwise_identical_results_for_1_2_and_3_threads, 0,
      4);
  tcase_add_loop_test(num,
                      loss_should_agree_for_any_block_size,
                      0, 4);
  tcase_add_loop_test(
      num, loss_should_agree_streamed_or_materialized,
      0, 4);
  tcase_add_loop_test(num, loss_should_keep_strips_for_pass_2_without_changing_a_bit,
                      0, 2);
  tcase_add_loop_test(num, loss_should_keep_streamed_scratch_within_the_cached_buffer,
                      0, 2);
  tcase_add_loop_test(num, loss_should_stream_a_strip_in_several_products, 0,
                      2);
  tcase_add_test(num, loss_should_agree_with_the_c_loops);
  tcase_add_test(num, loss_should_flush_the_same_rows_on_any_thread_count);
  tcase_add_test(num, loss_should_stay_finite_at_large_gamma);
  tcase_add_test(num, loss_should_stay_finite_when_rows_have_no_pairs);
  tcase_add_test(num, loss_should_never_return_nonfinite_values_for_finite_input);
  tcase_add_test(num, loss_should_stay_finite_for_a_zero_row_with_normalize);
  tcase_add_test(num, loss_should_treat_labels_as_exact_64_bit_integers);
  tcase_add_test(num, loss_should_compute_only_what_is_asked);
  tcase_add_test(num, loss_should_refuse_sample_weights_that_could_overflow);
  suite_add_tcase(s, num);

  TCase *args = tcase_create("arguments");
  tcase_add_test(args, loss_should_name_every_status_and_unknown_ones);
  tcase_add_test(args, loss_should_reject_unknown_dtype_strings_and_values);
  tcase_add_test(args, loss_should_reject_unknown_reduction_strings_and_values);
  tcase_add_test(args, loss_should_reject_bad_config_values);
  tcase_add_test(args, loss_should_accept_a_valid_input);
  tcase_add_test(args, loss_should_reject_null_pointers_in_input_check);
  tcase_add_test(args, loss_should_reject_an_empty_batch_and_zero_dimension);
  tcase_add_test(args, loss_should_reject_half_a_reference_set);
  tcase_add_test(args, loss_should_reject_non_finite_values_naming_the_row);
  tcase_add_test(args, loss_should_reject_negative_sample_weights);
  tcase_add_test(args, loss_should_reject_a_bad_config_in_input_check);
  tcase_add_test(args, loss_should_report_overflow_before_reading_data);
  tcase_add_test(args, loss_should_truncate_the_where_sentence_to_its_buffer);
  tcase_add_test(args, loss_should_reject_bad_arguments_to_compute);
  tcase_add_test(args, loss_should_leave_outputs_untouched_on_failure);
  tcase_add_test(args, loss_should_compute_stats_as_their_definitions_say);
  tcase_add_test(args, loss_should_report_scratch_bytes_or_zero);
  tcase_add_test(args, loss_should_compute_the_same_bits_through_the_server_entry);
  suite_add_tcase(s, args);
  return s;
}

int main(void) {
  g_list_rc = golden_list(golden_dir(), &g_paths, &g_count);
  if (g_list_rc != 0) g_count = 0;
  SRunner *sr = srunner_create(loss_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  golden_list_free(g_paths, g_count);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
