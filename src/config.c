/* config.c -- the loss configuration (Keras' Circle constructor arguments),
 * its spellings, and validation of a circle_input against it.
 *
 * Everything here is pure and allocation-free; the loss engine and the
 * codecs share these helpers so that there is one list of reductions and
 * dtypes and one definition of a valid input.
 */
#include <math.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "circle/circle.h"
#include "pool_impl.h"

/* Reduction spellings, indexed by circle_reduction. */
static const char *const reduction_names[] = {
    "sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none",
    NULL};

size_t circle_dtype_size(circle_dtype dtype) {
  switch (dtype) {
    case CIRCLE_DTYPE_FLOAT32: return sizeof(float);
    case CIRCLE_DTYPE_FLOAT64: return sizeof(double);
  }
  return 0;
}

const char *circle_dtype_name(circle_dtype dtype) {
  switch (dtype) {
    case CIRCLE_DTYPE_FLOAT32: return "float32";
    case CIRCLE_DTYPE_FLOAT64: return "float64";
  }
  return NULL;
}

int circle_dtype_parse(const char *s, circle_dtype *out) {
  if (s == NULL || out == NULL) return CIRCLE_EINVAL;
  if (strcmp(s, "float32") == 0) {
    *out = CIRCLE_DTYPE_FLOAT32;
  } else if (strcmp(s, "float64") == 0) {
    *out = CIRCLE_DTYPE_FLOAT64;
  } else {
    return CIRCLE_EINVAL;
  }
  return CIRCLE_OK;
}

const char *circle_reduction_name(circle_reduction r) {
  if ((unsigned)r > CIRCLE_REDUCTION_NULL) return NULL;
  return reduction_names[r];
}

int circle_reduction_parse(const char *s, circle_reduction *out) {
  if (s == NULL || out == NULL) return CIRCLE_EINVAL;
  for (unsigned r = 0; r < CIRCLE_REDUCTION_NULL; r++) {
    if (strcmp(s, reduction_names[r]) == 0) {
      *out = (circle_reduction)r;
      return CIRCLE_OK;
    }
  }
  return CIRCLE_EINVAL;
}

bool circle_reduction_is_elementwise(circle_reduction r) {
  return r == CIRCLE_REDUCTION_NONE || r == CIRCLE_REDUCTION_NULL;
}

void circle_config_init(circle_config *cfg) {
  if (cfg == NULL) return;
  cfg->gamma = 80.0;
  cfg->margin = 0.4;
  cfg->remove_diagonal = true;
  cfg->reduction = CIRCLE_REDUCTION_SUM_OVER_BATCH_SIZE;
  cfg->dtype = CIRCLE_DTYPE_FLOAT32;
  cfg->normalize = false;
}

int circle_config_validate(const circle_config *cfg) {
  if (cfg == NULL) return CIRCLE_EINVAL;
  if (!isfinite(cfg->gamma) || !(cfg->gamma > 0)) return CIRCLE_EINVAL;
  if (!isfinite(cfg->margin)) return CIRCLE_EINVAL;
  if ((unsigned)cfg->reduction > CIRCLE_REDUCTION_NULL) return CIRCLE_EINVAL;
  if (circle_dtype_size(cfg->dtype) == 0) return CIRCLE_EINVAL;
  return CIRCLE_OK;
}

/* Writes a sentence into where (if any) and returns status. */
static int explain(int status, char *where, size_t where_len, const char *fmt,
                   ...) {
  if (where != NULL && where_len > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(where, where_len, fmt, ap);
    va_end(ap);
  }
  return status;
}

/* Index of the first non-finite value of a dtype array, or count. The
 * common case (all finite) is one pass that only ORs exponent tests into a
 * flag per block of 256, which the compiler vectorizes; a block with a hit
 * is searched again element by element. */
#define SCAN_BLOCK 256
static size_t first_nonfinite(const void *p, size_t count, circle_dtype dt) {
  for (size_t b = 0; b < count; b += SCAN_BLOCK) {
    size_t e = count - b < SCAN_BLOCK ? count : b + SCAN_BLOCK;
    int bad = 0;
    if (dt == CIRCLE_DTYPE_FLOAT32) {
      const char *c = p;
      for (size_t k = b; k < e; k++) {
        uint32_t u;
        memcpy(&u, c + 4 * k, 4);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
      }
    } else {
      const char *c = p;
      for (size_t k = b; k < e; k++) {
        uint64_t u;
        memcpy(&u, c + 8 * k, 8);
        bad |= (u & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
      }
    }
    if (!bad) continue;
    for (size_t k = b; k < e; k++) {
      double v = dt == CIRCLE_DTYPE_FLOAT32 ? ((const float *)p)[k]
                                            : ((const double *)p)[k];
      if (!isfinite(v)) return k;
    }
  }
  return count;
}

/* Squared L2 norm of row r (in double, so it cannot overflow for float32;
 * for float64 an overflow gives inf). Eight independent lanes so the sum
 * vectorizes; the order is fixed, so the result is reproducible. */
double circle__row_norm2(const void *p, size_t r, size_t d, circle_dtype dt) {
  double acc[8] = {0};
  size_t dv = d - d % 8;
  if (dt == CIRCLE_DTYPE_FLOAT32) {
    const float *x = (const float *)p + r * d;
    for (size_t k = 0; k < dv; k += 8)
      for (int l = 0; l < 8; l++) acc[l] += (double)x[k + l] * x[k + l];
    for (size_t k = dv; k < d; k++) acc[k - dv] += (double)x[k] * x[k];
  } else {
    const double *x = (const double *)p + r * d;
    for (size_t k = 0; k < dv; k += 8)
      for (int l = 0; l < 8; l++) acc[l] += x[k + l] * x[k + l];
    for (size_t k = dv; k < d; k++) acc[k - dv] += x[k] * x[k];
  }
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) +
         ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* Largest L2 norm over rows; *at is its row. */
static double max_norm(const void *p, size_t rows, size_t d, circle_dtype dt,
                       size_t *at) {
  double best = 0;
  *at = 0;
  for (size_t i = 0; i < rows; i++) {
    double ss = circle__row_norm2(p, i, d, dt);
    if (!(ss <= best * best)) {
      best = sqrt(ss);
      *at = i;
    }
  }
  return best;
}

/* The largest sample weight for which every weighted quantity the engine
 * forms is finite, given bounds on what the weights multiply.
 *
 * The weights enter the engine linearly, through the row coefficients
 * c_i = d loss / d v_i of reduce_rows (loss.c): c_i = w_i for "sum", "none"
 * and null, w_i / kept <= w_i for "sum_over_batch_size" and "mean", and
 * w_i / sum(w) <= 1 for "mean_with_sample_weight". So every output is at
 * most W = max(w) times a weight-free bound, derived from these:
 *
 *   s    a bound on |s_ij| (|x_i| |r_j| without normalize, 1 with it)
 *   A =  |margin| + 2 + s, so |z| <= gamma A^2 and |dz/ds| <= 2 gamma A
 *   V =  2 gamma A^2 + 2 ln(max(n, m)) + 1 >= v_i = softplus(lse_p + lse_n)
 *   G =  2 gamma A (n + 2) e k >= a gradient element per unit coefficient:
 *        row i's softmax weights sum to 1 on each side (4 gamma A), the
 *        transposed term of a self batch adds a column of n (2 gamma A n);
 *        e bounds an element of the matrices multiplied (the larger row
 *        norm; 1 normalized) and k the backprop through normalize
 *        (1e12 (1 + sqrt(d)): inv <= 1e12, g - xn (xn . g) <= (1 + sqrt d) g)
 *
 *   dtype outputs:   loss <= n V W, loss values <= V W, gradients <= G W
 *   double sums:     sum v_i w_i n / kept <= n^2 V W ("sum_over_batch_size",
 *                    "mean"), sum v_i w_i and sum w_i <= n max(V, 1) W
 *
 * The limit keeps each of these at most half the largest finite value of
 * its type (the half absorbs rounding). It is a sufficient bound, not the
 * exact point of overflow: for 4 unit-norm rows at the defaults in float32
 * it refuses weights from 2.3e34, where the outputs first overflow at
 * 1.3e36 ("sum") to 5.3e36 ("sum_over_batch_size"): far above any weight in
 * practical use. */
static double weight_limit(const circle_config *cfg, size_t n, size_t m,
                           size_t d, double s, double e) {
  double big = cfg->dtype == CIRCLE_DTYPE_FLOAT32 ? 3.4028234663852886e38
                                                  : 1.7976931348623157e308;
  double nd = (double)n, g = cfg->gamma;
  double a = fabs(cfg->margin) + 2 + s;
  double v = 2 * g * a * a + 2 * log((double)(n > m ? n : m)) + 1;
  double k = cfg->normalize ? 1e12 * (1 + sqrt((double)d)) : 1;
  double grad = 2 * g * a * (nd + 2) * e * k;
  double sums = nd * (v > 1 ? v : 1); /* the double sums but one */
  switch (cfg->reduction) {
    case CIRCLE_REDUCTION_MEAN_WITH_SAMPLE_WEIGHT:
      return 1.7976931348623157e308 / (2 * sums); /* outputs don't scale */
    case CIRCLE_REDUCTION_SUM_OVER_BATCH_SIZE:
    case CIRCLE_REDUCTION_MEAN:
      sums *= nd;
      break;
    default:
      break;
  }
  double out = nd * v > grad ? nd * v : grad;
  double lt = big / (2 * out), ld = 1.7976931348623157e308 / (2 * sums);
  return lt < ld ? lt : ld;
}

int circle_input_check(const circle_config *cfg, const circle_input *in,
                       char *where, size_t where_len) {
  if (cfg == NULL || in == NULL)
    return explain(CIRCLE_EINVAL, where, where_len, "config or input is NULL");
  if (circle_config_validate(cfg) != CIRCLE_OK)
    return explain(CIRCLE_EINVAL, where, where_len,
                   "config is invalid: gamma must be finite and > 0, margin "
                   "finite, reduction and dtype known");
  if (in->n == 0)
    return explain(CIRCLE_EEMPTY, where, where_len,
                   "the batch is empty: labels and embeddings need at least "
                   "one row");
  if (in->d == 0)
    return explain(CIRCLE_EINVAL, where, where_len,
                   "embeddings have dimension 0; each row needs at least one "
                   "number");
  if (in->labels == NULL || in->embeddings == NULL)
    return explain(CIRCLE_EINVAL, where, where_len,
                   "labels and embeddings are required");
  bool has_rl = in->ref_labels != NULL, has_re = in->ref_embeddings != NULL;
  if (has_rl != has_re)
    return explain(CIRCLE_EINVAL, where, where_len,
                   "ref_labels and ref_embeddings must be given together");
  if (has_rl && in->m == 0)
    return explain(CIRCLE_EEMPTY, where, where_len,
                   "the reference set is empty: give at least one reference "
                   "row or omit ref_labels and ref_embeddings");
  size_t m = has_rl ? in->m : in->n;
  size_t nd, md, nm;
  if (__builtin_mul_overflow(in->n, in->d, &nd) ||
      __builtin_mul_overflow(m, in->d, &md) ||
      __builtin_mul_overflow(in->n, m, &nm) ||
      __builtin_mul_overflow(nm, (size_t)8, &nm) ||
      __builtin_mul_overflow(nd, (size_t)8, &nd) ||
      __builtin_mul_overflow(md, (size_t)8, &md))
    return explain(CIRCLE_EOVERFLOW, where, where_len,
                   "n, m and d are too large: their products overflow");
  nd = in->n * in->d;
  md = m * in->d;
  size_t k = first_nonfinite(in->embeddings, nd, cfg->dtype);
  if (k < nd)
    return explain(CIRCLE_ENONFINITE, where, where_len,
                   "embeddings[%zu][%zu] is not a finite number", k / in->d,
                   k % in->d);
  if (has_re) {
    k = first_nonfinite(in->ref_embeddings, md, cfg->dtype);
    if (k < md)
      return explain(CIRCLE_ENONFINITE, where, where_len,
                     "ref_embeddings[%zu][%zu] is not a finite number",
                     k / in->d, k % in->d);
  }
  double nx = 1, nr = 1; /* row norm bounds (normalized rows: 1) */
  if (!cfg->normalize) {
    /* |s_ij| <= |x_i| |r_j|; keep gamma * (|margin| + 2 + |s|)^2 a million
     * times below the dtype's largest value so no sum or gradient
     * overflows. */
    double big = cfg->dtype == CIRCLE_DTYPE_FLOAT32 ? 3.4028234663852886e38
                                                    : 1.7976931348623157e308;
    double smax = sqrt(big / 1e6 / cfg->gamma) - fabs(cfg->margin) - 2;
    size_t at_x, at_r = 0;
    nx = max_norm(in->embeddings, in->n, in->d, cfg->dtype, &at_x);
    nr = has_re ? max_norm(in->ref_embeddings, in->m, in->d, cfg->dtype,
                           &at_r)
                : nx;
    if (!(nx * nr <= smax))
      return explain(CIRCLE_ERANGE, where, where_len,
                     "%s[%zu] has norm %.3g, too large for %s at gamma %g "
                     "(similarities must stay below %.3g); scale the "
                     "embeddings down, set normalize, or use float64",
                     nx >= nr ? "embeddings" : "ref_embeddings",
                     nx >= nr ? at_x : at_r, nx >= nr ? nx : nr,
                     circle_dtype_name(cfg->dtype), cfg->gamma, smax);
  }
  if (in->sample_weight != NULL) {
    k = first_nonfinite(in->sample_weight, in->n, cfg->dtype);
    if (k < in->n)
      return explain(CIRCLE_ENONFINITE, where, where_len,
                     "sample_weight[%zu] is not a finite number", k);
    double wmax = 0;
    size_t at_w = 0;
    for (k = 0; k < in->n; k++) {
      double w = cfg->dtype == CIRCLE_DTYPE_FLOAT32
                     ? ((const float *)in->sample_weight)[k]
                     : ((const double *)in->sample_weight)[k];
      if (w < 0)
        return explain(CIRCLE_EINVAL, where, where_len,
                       "sample_weight[%zu] is negative (%g); weights must be "
                       ">= 0",
                       k, w);
      if (w > wmax) {
        wmax = w;
        at_w = k;
      }
    }
    double lim = weight_limit(cfg, in->n, has_rl ? in->m : in->n, in->d,
                              nx * nr, nx > nr ? nx : nr);
    if (!(wmax <= lim))
      return explain(CIRCLE_ERANGE, where, where_len,
                     "sample_weight[%zu] is %.3g, too large for %s at gamma "
                     "%g with %zu rows: weights above %.3g could overflow "
                     "the loss or its gradients; scale the weights down (the "
                     "loss and gradients scale with them) or use float64",
                     at_w, wmax, circle_dtype_name(cfg->dtype), cfg->gamma,
                     in->n, lim);
  }
  return CIRCLE_OK;
}
