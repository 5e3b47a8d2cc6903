/* config.c -- the loss configuration (Keras' Circle constructor arguments),
 * its spellings, and validation of a circle_input against it.
 *
 * Everything here is pure and allocation-free; the loss engine and the
 * codecs share these helpers so that there is one list of reductions and
 * dtypes and one definition of a valid input.
 *
 * Half precision
 * --------------
 * Keras computes a loss whose DTypePolicy is float16 or bfloat16 in that
 * format. The engine computes it in float32 instead, on the inputs rounded
 * to the format, and rounds every result to the format (circle_half_round,
 * circle_output_round): measured against Keras on the jax backend, that
 * answer is the correctly rounded value, where Keras' own is up to 5 ulps
 * of the format off it, and within the stated tolerance of Keras' (README
 * "Dtypes and half precision"). Rows whose value is 0 in the format are
 * masked as Keras masks them (half_mask). Rounding is round-to-nearest-even
 * from the value given, once: a double from JSON goes straight to the
 * format, never through a float, so no value is rounded twice.
 */
#include <math.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "circle/circle.h"
#include "engine_server.h"
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

/* Keras DTypePolicy names a loss accepts, with what each computes in. */
static const struct {
  const char *name;
  circle_dtype dtype;
  circle_half half;
} policy_names[] = {
    {"float32", CIRCLE_DTYPE_FLOAT32, CIRCLE_HALF_NONE},
    {"float64", CIRCLE_DTYPE_FLOAT64, CIRCLE_HALF_NONE},
    {"float16", CIRCLE_DTYPE_FLOAT32, CIRCLE_HALF_FLOAT16},
    {"bfloat16", CIRCLE_DTYPE_FLOAT32, CIRCLE_HALF_BFLOAT16},
    {"mixed_float16", CIRCLE_DTYPE_FLOAT32, CIRCLE_HALF_FLOAT16},
    {"mixed_bfloat16", CIRCLE_DTYPE_FLOAT32, CIRCLE_HALF_BFLOAT16},
};

int circle_dtype_policy_parse(const char *s, circle_dtype *dtype,
                              circle_half *half) {
  if (s == NULL || dtype == NULL || half == NULL) return CIRCLE_EINVAL;
  for (size_t k = 0; k < sizeof(policy_names) / sizeof(policy_names[0]); k++) {
    if (strcmp(s, policy_names[k].name) == 0) {
      *dtype = policy_names[k].dtype;
      *half = policy_names[k].half;
      return CIRCLE_OK;
    }
  }
  return CIRCLE_EINVAL;
}

const char *circle_half_name(circle_half half) {
  switch (half) {
    case CIRCLE_HALF_FLOAT16: return "float16";
    case CIRCLE_HALF_BFLOAT16: return "bfloat16";
    case CIRCLE_HALF_NONE: break;
  }
  return NULL;
}

double circle_half_max(circle_half half) {
  switch (half) {
    case CIRCLE_HALF_FLOAT16: return 65504.0;
    case CIRCLE_HALF_BFLOAT16: return 3.3895313892515355e38;
    case CIRCLE_HALF_NONE: break;
  }
  return 0;
}

/* x rounded to the half format, ties to even, from x itself (one rounding).
 * A normal result keeps p significand bits: round the double's 52 fraction
 * bits down to p - 1 in the integer representation, where a carry into the
 * exponent is exactly the step to the next binade. Below the format's
 * smallest normal (2^emin) its spacing is fixed at 2^(emin - p + 1), and
 * rint at that scale (exact: a power-of-two scaling) rounds there. x is
 * finite; the result may exceed the format's largest value (the caller
 * checks). */
static double half_round1(double x, circle_half h) {
  int p = h == CIRCLE_HALF_FLOAT16 ? 11 : 8;
  int emin = h == CIRCLE_HALF_FLOAT16 ? -14 : -126;
  uint64_t u;
  memcpy(&u, &x, sizeof u);
  int e = (int)((u >> 52) & 0x7ff) - 1023;
  if (e < emin) {
    int q = emin - p + 1;
    return ldexp(rint(ldexp(x, -q)), q);
  }
  int drop = 52 - (p - 1);
  uint64_t lsb = (u >> drop) & 1;
  u += ((uint64_t)1 << (drop - 1)) - 1 + lsb;
  u &= ~(((uint64_t)1 << drop) - 1);
  memcpy(&x, &u, sizeof x);
  return x;
}

size_t circle_half_round(circle_half half, float *p, size_t count) {
  if (half != CIRCLE_HALF_FLOAT16 && half != CIRCLE_HALF_BFLOAT16) return count;
  double big = circle_half_max(half);
  for (size_t k = 0; k < count; k++) {
    double v = half_round1(p[k], half);
    if (!(fabs(v) <= big)) return k;
    p[k] = (float)v;
  }
  return count;
}

size_t circle_half_narrow(circle_half half, const double *src, float *dst,
                          size_t count) {
  if (half != CIRCLE_HALF_FLOAT16 && half != CIRCLE_HALF_BFLOAT16) {
    for (size_t k = 0; k < count; k++) {
      dst[k] = (float)src[k];
      if (!isfinite(dst[k])) return k;
    }
    return count;
  }
  double big = circle_half_max(half);
  for (size_t k = 0; k < count; k++) {
    double v = isfinite(src[k]) ? half_round1(src[k], half) : src[k];
    if (!(fabs(v) <= big)) return k;
    dst[k] = (float)v;
  }
  return count;
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
  cfg->half = CIRCLE_HALF_NONE;
  cfg->normalize = false;
}

int circle_config_validate(const circle_config *cfg) {
  if (cfg == NULL) return CIRCLE_EINVAL;
  if (!isfinite(cfg->gamma) || !(cfg->gamma > 0)) return CIRCLE_EINVAL;
  if (!isfinite(cfg->margin)) return CIRCLE_EINVAL;
  if ((unsigned)cfg->reduction > CIRCLE_REDUCTION_NULL) return CIRCLE_EINVAL;
  if (circle_dtype_size(cfg->dtype) == 0) return CIRCLE_EINVAL;
  if (cfg->half != CIRCLE_HALF_NONE &&
      (circle_half_name(cfg->half) == NULL || cfg->dtype != CIRCLE_DTYPE_FLOAT32))
    return CIRCLE_EINVAL;
  return CIRCLE_OK;
}

const char *circle_config_dtype_name(const circle_config *cfg) {
  if (circle_config_validate(cfg) != CIRCLE_OK) return NULL;
  return cfg->half != CIRCLE_HALF_NONE ? circle_half_name(cfg->half)
                                       : circle_dtype_name(cfg->dtype);
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

/* circle_input_check; scan says whether to look for values that are not
 * finite (circle__input_check_decoded's callers stored only finite ones). */
static int input_check(const circle_config *cfg, const circle_input *in,
                       bool scan, char *where, size_t where_len) {
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
  size_t k = scan ? first_nonfinite(in->embeddings, nd, cfg->dtype) : nd;
  if (k < nd)
    return explain(CIRCLE_ENONFINITE, where, where_len,
                   "embeddings[%zu][%zu] is not a finite number", k / in->d,
                   k % in->d);
  if (has_re && scan) {
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
     * overflows. float16's range is too small for that margin: there the
     * logits, per-sample values and gradient terms (each below
     * 2 gamma (|margin| + 2 + |s|)^2) stay 16 times below 65504, where
     * Keras computing in float16 stays finite too; a reduced loss that
     * still overflows is circle_output_round's CIRCLE_ERANGE. */
    double big = cfg->dtype == CIRCLE_DTYPE_FLOAT32 ? 3.4028234663852886e38
                                                    : 1.7976931348623157e308;
    double room = 1e6;
    if (cfg->half == CIRCLE_HALF_FLOAT16) {
      big = circle_half_max(cfg->half);
      room = 16;
    }
    double smax = sqrt(big / room / cfg->gamma) - fabs(cfg->margin) - 2;
    if (!(smax > 0))
      return explain(CIRCLE_ERANGE, where, where_len,
                     "gamma %g with margin %g is too large for %s: gamma * "
                     "(|margin| + 2)^2 must stay below %.6g; use a smaller "
                     "gamma or a wider dtype (float32, bfloat16 or float64)",
                     cfg->gamma, cfg->margin, circle_config_dtype_name(cfg),
                     big / room);
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
                     circle_config_dtype_name(cfg), cfg->gamma, smax);
  }
  if (in->sample_weight != NULL) {
    k = scan ? first_nonfinite(in->sample_weight, in->n, cfg->dtype)
             : in->n;
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

int circle_input_check(const circle_config *cfg, const circle_input *in,
                       char *where, size_t where_len) {
  return input_check(cfg, in, true, where, where_len);
}

int circle__input_check_decoded(const circle_config *cfg,
                                const circle_input *in, char *where,
                                size_t where_len) {
  return input_check(cfg, in, false, where, where_len);
}

/* Rounds one output array to the format; CIRCLE_ERANGE naming what and the
 * row (and column, for d > 1) of the first value past its range. */
static int round_array(const circle_config *cfg, float *p, size_t rows,
                       size_t d, const char *what, char *where,
                       size_t where_len) {
  if (p == NULL) return CIRCLE_OK;
  size_t count = rows * d;
  size_t k = circle_half_round(cfg->half, p, count);
  if (k == count) return CIRCLE_OK;
  char at[48];
  if (d > 1) snprintf(at, sizeof at, "[%zu][%zu]", k / d, k % d);
  else snprintf(at, sizeof at, "[%zu]", k);
  return explain(CIRCLE_ERANGE, where, where_len,
                 "%s%s is %.4g, beyond %s's largest finite value %.6g (Keras "
                 "computing in %s returns inf there); use dtype \"float32\" "
                 "or scale the embeddings or sample weights down",
                 what, at, (double)p[k], circle_half_name(cfg->half),
                 circle_half_max(cfg->half), circle_half_name(cfg->half));
}

/* Keras masks the rows whose circle value is 0 in the compute dtype. A
 * value the engine keeps (v > 0 in float32) can be below half the format's
 * smallest subnormal, where Keras' own value is 0 and its row masked (at
 * gamma 80 a row of exact matches has v near 1e-11, 0 in float16): such
 * rows leave the reduction here as they leave Keras', so the loss and the
 * gradients take Keras' divisor. The dropped rows' own gradient terms stay
 * (each is below v_i < 2^-25 times the gradient's scale, far under the
 * format's resolution). */
static void half_mask(const circle_config *cfg, const circle_input *in,
                      circle_output *out) {
  const float *v = out->per_sample;
  const float *w = in->sample_weight;
  double n32 = 0, n16 = 0, s32 = 0, s16 = 0, lost = 0;
  for (size_t i = 0; i < in->n; i++) {
    if (!(v[i] > 0)) continue;
    double wi = w ? w[i] : 1.0;
    float r = v[i];
    circle_half_round(cfg->half, &r, 1);
    n32 += 1;
    s32 += wi;
    if (r > 0) {
      n16 += 1;
      s16 += wi;
    } else {
      lost += wi * v[i];
      if (circle_reduction_is_elementwise(cfg->reduction) &&
          (out->want & CIRCLE_OUT_LOSS))
        ((float *)out->loss_values)[i] = 0;
    }
  }
  if (n32 == n16 || circle_reduction_is_elementwise(cfg->reduction)) return;
  double d32 = 1, d16 = 1; /* "sum": no divisor */
  if (cfg->reduction == CIRCLE_REDUCTION_SUM_OVER_BATCH_SIZE ||
      cfg->reduction == CIRCLE_REDUCTION_MEAN) {
    d32 = n32;
    d16 = n16;
  } else if (cfg->reduction == CIRCLE_REDUCTION_MEAN_WITH_SAMPLE_WEIGHT) {
    d32 = s32;
    d16 = s16;
  }
  /* divide_no_nan: nothing left means a loss and gradients of 0. */
  float scale = d16 > 0 ? (float)(d32 / d16) : 0.0f;
  if (out->want & CIRCLE_OUT_LOSS)
    out->loss = d16 > 0 ? (out->loss * d32 - lost) / d16 : 0.0;
  size_t m = in->ref_embeddings != NULL ? in->m : 0;
  if ((out->want & CIRCLE_OUT_GRAD) && scale != 1)
    for (size_t k = 0; k < in->n * in->d; k++) ((float *)out->grad)[k] *= scale;
  if ((out->want & CIRCLE_OUT_REF_GRAD) && scale != 1)
    for (size_t k = 0; k < m * in->d; k++) ((float *)out->ref_grad)[k] *= scale;
}

int circle_output_round(const circle_config *cfg, const circle_input *in,
                        circle_output *out, char *where, size_t where_len) {
  if (cfg == NULL || in == NULL || out == NULL ||
      circle_config_validate(cfg) != CIRCLE_OK)
    return explain(CIRCLE_EINVAL, where, where_len,
                   "config, input or output is NULL or invalid");
  if (cfg->half == CIRCLE_HALF_NONE) return CIRCLE_OK;
  if (!(out->want & CIRCLE_OUT_PER_SAMPLE) || out->per_sample == NULL)
    return explain(CIRCLE_EINVAL, where, where_len,
                   "a half-precision dtype needs the per-sample values "
                   "(CIRCLE_OUT_PER_SAMPLE) to mask rows as Keras does");
  half_mask(cfg, in, out);
  size_t m = in->ref_embeddings != NULL ? in->m : 0;
  bool elementwise = circle_reduction_is_elementwise(cfg->reduction);
  int rc = CIRCLE_OK;
  if (out->want & CIRCLE_OUT_LOSS) {
    if (elementwise) {
      rc = round_array(cfg, out->loss_values, in->n, 1, "loss", where,
                       where_len);
    } else {
      float l;
      if (circle_half_narrow(cfg->half, &out->loss, &l, 1) != 1)
        return explain(CIRCLE_ERANGE, where, where_len,
                       "the loss is %.4g, beyond %s's largest finite value "
                       "%.6g (Keras computing in %s returns inf there); use "
                       "dtype \"float32\" or a mean reduction",
                       out->loss, circle_half_name(cfg->half),
                       circle_half_max(cfg->half), circle_half_name(cfg->half));
      out->loss = l;
    }
  }
  if (rc == CIRCLE_OK && (out->want & CIRCLE_OUT_PER_SAMPLE))
    rc = round_array(cfg, out->per_sample, in->n, 1, "per_sample_loss", where,
                     where_len);
  if (rc == CIRCLE_OK && (out->want & CIRCLE_OUT_GRAD))
    rc = round_array(cfg, out->grad, in->n, in->d, "embeddings_grad", where,
                     where_len);
  if (rc == CIRCLE_OK && (out->want & CIRCLE_OUT_REF_GRAD))
    rc = round_array(cfg, out->ref_grad, m, in->d, "ref_embeddings_grad",
                     where, where_len);
  return rc;
}
