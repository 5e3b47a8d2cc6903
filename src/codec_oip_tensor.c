/* codec_oip_tensor.c -- the Open Inference Protocol's datatypes, and the
 * reading of one input's data into the array the engine takes: JSON data
 * straight from the header text, binary data (little-endian, any
 * alignment) from the body, FP16 and BF16 widened exactly to float32.
 * Must keep true: nothing is allocated for JSON data whose element count
 * does not match the shape; every value is checked as it is stored
 * (finite in the compute dtype, >= 0 for sample weights, within FP16 /
 * BF16 range for JSON data of those datatypes, labels whole and in their
 * datatype's range, read exactly from the text at and above 2^53), and
 * the first bad one is named by its element ("embeddings[3, 7]"); a
 * failed read hands out no array.
 */
#include "codec_oip_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec_util.h"
#include "json_fast.h"

/* ------------------------------------------------------------------------ */
/* Datatypes                                                                */
/* ------------------------------------------------------------------------ */

static const struct {
  const char *name;
  size_t size;
} datatypes[] = {
    [CIRCLE_OIP_BOOL] = {"BOOL", 1},     [CIRCLE_OIP_UINT8] = {"UINT8", 1},
    [CIRCLE_OIP_UINT16] = {"UINT16", 2}, [CIRCLE_OIP_UINT32] = {"UINT32", 4},
    [CIRCLE_OIP_UINT64] = {"UINT64", 8}, [CIRCLE_OIP_INT8] = {"INT8", 1},
    [CIRCLE_OIP_INT16] = {"INT16", 2},   [CIRCLE_OIP_INT32] = {"INT32", 4},
    [CIRCLE_OIP_INT64] = {"INT64", 8},   [CIRCLE_OIP_FP16] = {"FP16", 2},
    [CIRCLE_OIP_FP32] = {"FP32", 4},     [CIRCLE_OIP_FP64] = {"FP64", 8},
    [CIRCLE_OIP_BF16] = {"BF16", 2},     [CIRCLE_OIP_BYTES] = {"BYTES", 0},
};

static circle_oip_datatype datatype_parse(const char *s) {
  for (int i = 0; i < CIRCLE_OIP_UNKNOWN; i++)
    if (strcmp(s, datatypes[i].name) == 0) return (circle_oip_datatype)i;
  return CIRCLE_OIP_UNKNOWN;
}

circle_oip_datatype circle__oip_datatype_parse(const char *s) {
  return s ? datatype_parse(s) : CIRCLE_OIP_UNKNOWN;
}

size_t circle__oip_datatype_size(circle_oip_datatype t) {
  return t >= 0 && t < CIRCLE_OIP_UNKNOWN ? datatypes[t].size : 0;
}

const char *circle__oip_datatype_name(circle_oip_datatype t) {
  return t >= 0 && t < CIRCLE_OIP_UNKNOWN ? datatypes[t].name : "";
}

/* IEEE 754 binary16 to float, subnormals, infinities and NaN included. */
static float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else { /* subnormal: value = man * 2^-24, exact in float */
      float f = (float)man * 0x1p-24f;
      memcpy(&bits, &f, 4);
      bits |= sign;
    }
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static float bf16_to_float(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

/* ------------------------------------------------------------------------ */
/* Reading tensor data                                                      */
/* ------------------------------------------------------------------------ */

/* "[2, 3]" for an input's shape (rank 1 or 2). */
void circle__oip_shape_text(char *buf, size_t len,
                            const circle__oip_input *in) {
  if (in->rank == 2)
    snprintf(buf, len, "[%llu, %llu]", (unsigned long long)in->shape[0],
             (unsigned long long)in->shape[1]);
  else
    snprintf(buf, len, "[%llu]", (unsigned long long)in->shape[0]);
}

typedef struct {
  circle__oip_decoder *dc;
  const char *name;
  const circle__oip_input *in;
  void *out;           /* int64_t[] or cfg.dtype[] */
  circle_dtype dt;
  bool weights;        /* sample weights: >= 0 */
  bool need_raw;       /* an integer at or above 2^53: read from text */
} fill_ctx;

/* "embeddings[3, 7]" or "labels[3]" for element i of input in. */
static void elem_name(char *buf, size_t len, const char *name,
                      const circle__oip_input *in, size_t i) {
  if (in->rank == 2 && in->shape[1] != 1)
    snprintf(buf, len, "%s[%zu, %zu]", name, i / in->shape[1], i % in->shape[1]);
  else
    snprintf(buf, len, "%s[%zu]", name, i);
}

static bool bad_value(fill_ctx *c, size_t i, double v) {
  char e[96], vb[40];
  elem_name(e, sizeof(e), c->name, c->in, i);
  if (!isfinite(v)) {
    circle_error_set(c->dc->err, CIRCLE_ERR_NON_FINITE,
                     "input '%s': element %s is %s; every number must be "
                     "finite",
                     c->name, e, isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf"));
    return false;
  }
  circle__short_number(vb, v);
  if (c->weights && v < 0) {
    circle_error_set(c->dc->err, CIRCLE_ERR_WRONG_TYPE,
                     "input '%s': element %s is %s; sample weights must be "
                     ">= 0",
                     c->name, e, vb);
    return false;
  }
  circle_error_set(c->dc->err, CIRCLE_ERR_NON_FINITE,
                   "input '%s': element %s is %s, which overflows float32; "
                   "send parameters.dtype \"float64\" or rescale",
                   c->name, e, vb);
  return false;
}

/* Stores v at out[i] in the compute dtype; false (and the error) when it is
 * not finite there, or negative for weights. */
static inline bool put_float(fill_ctx *c, size_t i, double v) {
  if (!circle__store_finite(c->out, i, v, c->dt)) return bad_value(c, i, v);
  /* The sign of the value stored: -1e-50 is -0.0 in float32, not < 0. */
  if (c->weights &&
      (c->dt == CIRCLE_DTYPE_FLOAT32 ? (double)(float)v : v) < 0)
    return bad_value(c, i, v);
  return true;
}

/* Copies count values of dtype dt from src (any alignment) to dst and says
 * whether every one is finite (and, for weights, not negative): what
 * put_float checks, in one pass over blocks of a fixed FLOATS_BLOCK values,
 * each copied and then tested while it is in the cache. The fixed count
 * lets the compiler vectorize the test even at -O2 (a loop over all count
 * values ran one value at a time: 3 ms of a 4096 x 512 request). The sign
 * test is on the bits: negative means the sign set on a nonzero value (NaN
 * is caught as not finite already). */
#define FLOATS_BLOCK 64
/* The pass for values whose bits are the unsigned type UT: EXP is the
 * exponent field (all ones: not finite), MAG everything but the sign. */
#define COPY_CHECK(UT, EXP, MAG)                                           \
  do {                                                                     \
    const UT neg = weights ? (UT) ~(MAG) : 0;                              \
    for (size_t i = 0; i < count; i += FLOATS_BLOCK) {                     \
      UT blk[FLOATS_BLOCK];                                                \
      size_t k_end = count - i < FLOATS_BLOCK ? count - i : FLOATS_BLOCK;  \
      if (k_end < FLOATS_BLOCK) memset(blk, 0, sizeof blk);                \
      memcpy(blk, s + sizeof(UT) * i, k_end * sizeof(UT));                 \
      memcpy(d + sizeof(UT) * i, blk, k_end * sizeof(UT));                 \
      for (int k = 0; k < FLOATS_BLOCK; k++) {                             \
        bad |= (blk[k] & (EXP)) == (EXP);                                  \
        /* &, not &&: see loss_impl.h */                                   \
        bad |= ((blk[k] & neg) != 0) & ((blk[k] & (MAG)) != 0);            \
      }                                                                    \
    }                                                                      \
  } while (0)

static bool copy_floats_ok(void *dst, const void *src, size_t count,
                           circle_dtype dt, bool weights) {
  const unsigned char *s = src;
  unsigned char *d = dst;
  int bad = 0;
  if (dt == CIRCLE_DTYPE_FLOAT32)
    COPY_CHECK(uint32_t, 0x7f800000u, 0x7fffffffu);
  else
    COPY_CHECK(uint64_t, 0x7ff0000000000000ull, 0x7fffffffffffffffull);
  return !bad;
}
#undef COPY_CHECK

/* The largest finite magnitude of a 16-bit datatype; INFINITY for the
 * others (FP32 and FP64 values are range-checked in the compute dtype). */
static double half_max(circle_oip_datatype t) {
  if (t == CIRCLE_OIP_FP16) return 65504.0;       /* (2 - 2^-10) * 2^15 */
  if (t == CIRCLE_OIP_BF16) return 0x1.fep127;    /* (2 - 2^-7) * 2^127 */
  return INFINITY;
}

/* Reads the JSON leaf at header offset off as a number into *v; false
 * (and the error, with want saying what was expected) when it is some
 * other value. */
static bool leaf_number(fill_ctx *c, size_t off, size_t i,
                        circle_error_kind kind, const char *want, double *v) {
  const char *t = c->dc->body;
  size_t tl = c->dc->header_len;
  /* The pre-scan passed every number: a token that does not read is some
   * other value. */
  if (circle__json_fast_number(t + off, t + tl, v) != 0) return true;
  char e[96];
  elem_name(e, sizeof(e), c->name, c->in, i);
  circle_error_set(c->dc->err, kind,
                   "input '%s': element %s is %s; expected %s", c->name, e,
                   circle__json_text_kind(t, tl, off), want);
  return false;
}

static bool leaf_float(void *ctx, size_t off, size_t i) {
  fill_ctx *c = ctx;
  char e[96];
  double v;
  if (!leaf_number(c, off, i, CIRCLE_ERR_WRONG_TYPE, "a number", &v)) return false;
  /* JSON data for an FP16 or BF16 input must be a value of that datatype:
   * binary data cannot hold more than its largest finite value, and JSON
   * data must not mean more than binary data could. */
  double top = half_max(c->in->type);
  if (fabs(v) > top) {
    char vb[40], tb[40];
    elem_name(e, sizeof(e), c->name, c->in, i);
    circle_error_set(c->dc->err, CIRCLE_ERR_NON_FINITE,
                     "input '%s': element %s is %s, beyond %s's largest "
                     "finite value %s; send datatype FP32 or rescale",
                     c->name, e, circle__short_number(vb, v),
                     datatypes[c->in->type].name, circle__short_number(tb, top));
    return false;
  }
  return put_float(c, i, v);
}

static bool leaf_int(void *ctx, size_t off, size_t i) {
  fill_ctx *c = ctx;
  char e[96], vb[40];
  double v;
  if (!leaf_number(c, off, i, CIRCLE_ERR_BAD_LABEL, "an integer", &v)) return false;
  int64_t *out = c->out;
  if (fabs(v) >= CIRCLE__OIP_EXACT_INT_LIMIT) {
    c->need_raw = true;
    return true;
  }
  if (v != trunc(v) ||
      (c->in->type == CIRCLE_OIP_INT32 && (v < INT32_MIN || v > INT32_MAX))) {
    elem_name(e, sizeof(e), c->name, c->in, i);
    circle__short_number(vb, v);
    circle_error_set(c->dc->err, CIRCLE_ERR_BAD_LABEL,
                     "input '%s': element %s is %s; expected an %s", c->name,
                     e, vb, c->in->type == CIRCLE_OIP_INT32 ? "INT32" : "INT64");
    return false;
  }
  out[i] = (int64_t)v;
  return true;
}

/* Converts input k into a new array: int64 for labels, dt for the rest. */
int circle__oip_read_input(circle__oip_decoder *dc, int k, circle_dtype dt,
                           void **out) {
  circle__oip_input *in = &dc->in[k];
  const char *name = circle__oip_input_names[k];
  circle_error *err = dc->err;
  bool is_label = k == CIRCLE__OIP_IN_LABELS || k == CIRCLE__OIP_IN_REF_LABELS;
  size_t esz = is_label ? sizeof(int64_t) : circle_dtype_size(dt);
  size_t count = (size_t)in->count;
  fill_ctx c = {dc, name, in, NULL, dt, k == CIRCLE__OIP_IN_SAMPLE_WEIGHT, false};

  /* JSON data: count first, so nothing is allocated for a wrong shape. */
  if (in->json) {
    size_t have = circle__json_leaves(dc->body, dc->header_len, in->data_off,
                                      NULL, NULL);
    if (have != count) {
      char st[64];
      circle__oip_shape_text(st, sizeof(st), in);
      return circle_error_set(err, CIRCLE_ERR_SHAPE_MISMATCH,
                              "input '%s': data has %zu elements but shape "
                              "%s holds %zu",
                              name, have, st, count);
    }
  }
  void *buf = malloc(count ? count * esz : 1);
  if (buf == NULL)
    return circle_error_set(err, CIRCLE_ERR_OVERLOADED,
                            "out of memory for input '%s'; retry later or "
                            "send a smaller batch",
                            name);
  c.out = buf;
  if (in->json) {
    if (circle__json_leaves(dc->body, dc->header_len, in->data_off,
                            is_label ? leaf_int : leaf_float, &c) != count) {
      free(buf);
      return CIRCLE_EINVAL;
    }
    if (c.need_raw) {
      circle__json_step path[3] = {{"inputs", 0}, {NULL, in->index}, {"data", 0}};
      size_t off, bad = 0;
      int rc = CIRCLE__INT_NOT_NUMBER;
      if (circle__json_locate(dc->body, dc->header_len, path, 3, &off))
        rc = circle__json_read_int64s(dc->body, dc->header_len, off, buf,
                                      count, &bad);
      if (rc == CIRCLE__INT_OK && in->type == CIRCLE_OIP_INT32) {
        for (size_t i = 0; i < count; i++) {
          int64_t v = ((int64_t *)buf)[i];
          if (v < INT32_MIN || v > INT32_MAX) {
            bad = i;
            rc = CIRCLE__INT_RANGE;
            break;
          }
        }
      }
      if (rc != CIRCLE__INT_OK) {
        free(buf);
        return circle_error_set(err, CIRCLE_ERR_BAD_LABEL,
                                "input '%s': element %s[%zu] is %s", name,
                                name, bad,
                                rc == CIRCLE__INT_RANGE
                                    ? (in->type == CIRCLE_OIP_INT32
                                           ? "outside the INT32 range"
                                           : "outside the INT64 range")
                                    : "not an integer");
      }
    }
    *out = buf;
    return 0;
  }

  /* Binary data: little-endian, unaligned. */
  const unsigned char *p = (const unsigned char *)in->bin;
  switch (in->type) {
    case CIRCLE_OIP_INT64:
      memcpy(buf, p, count * 8);
      break;
    case CIRCLE_OIP_INT32:
      for (size_t i = 0; i < count; i++) {
        int32_t v;
        memcpy(&v, p + 4 * i, 4);
        ((int64_t *)buf)[i] = v;
      }
      break;
    case CIRCLE_OIP_FP32:
      /* Same width: copy and check in one vectorized pass; the element
       * loop below runs only to name the first bad value. */
      if (dt == CIRCLE_DTYPE_FLOAT32 && copy_floats_ok(buf, p, count, dt, c.weights))
        break;
      for (size_t i = 0; i < count; i++) {
        float v;
        memcpy(&v, p + 4 * i, 4);
        if (!put_float(&c, i, v)) goto bad;
      }
      break;
    case CIRCLE_OIP_FP64:
      if (dt == CIRCLE_DTYPE_FLOAT64 && copy_floats_ok(buf, p, count, dt, c.weights))
        break;
      for (size_t i = 0; i < count; i++) {
        double v;
        memcpy(&v, p + 8 * i, 8);
        if (!put_float(&c, i, v)) goto bad;
      }
      break;
    case CIRCLE_OIP_FP16:
    case CIRCLE_OIP_BF16:
      for (size_t i = 0; i < count; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        float v = in->type == CIRCLE_OIP_FP16 ? half_to_float(h) : bf16_to_float(h);
        if (!put_float(&c, i, v)) goto bad;
      }
      break;
    default: /* excluded when the input was parsed */
      circle_error_set(err, CIRCLE_ERR_INTERNAL, "input '%s': unexpected datatype",
                       name);
      goto bad;
  }
  *out = buf;
  return 0;
bad: /* the error is set */
  free(buf);
  return CIRCLE_EINVAL;
}

/* Rounds input k (read as float64 into *arr) to the half format, once; a
 * value past the format's range is refused as float32 overflow is. */
int circle__oip_narrow_input(circle__oip_decoder *dc, int k, circle_half half,
                             void **arr) {
  const circle__oip_input *in = &dc->in[k];
  size_t bad = 0;
  int rc = circle__half_narrow_array(half, arr, (size_t)in->count, &bad);
  if (rc == 0) return 0;
  if (rc == CIRCLE_ENOMEM)
    return circle_error_set(dc->err, CIRCLE_ERR_OVERLOADED,
                            "out of memory for input '%s'; retry later",
                            circle__oip_input_names[k]);
  char e[96], vb[40];
  elem_name(e, sizeof(e), circle__oip_input_names[k], in, bad);
  return circle_error_set(dc->err, CIRCLE_ERR_NON_FINITE,
                          "input '%s': element %s is %s, beyond %s's largest "
                          "finite value %g; send parameters.dtype \"float32\" "
                          "or rescale",
                          circle__oip_input_names[k], e,
                          circle__short_number(vb, ((const double *)*arr)[bad]),
                          circle_half_name(half), circle_half_max(half));
}
