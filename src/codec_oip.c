/* codec_oip.c -- Open Inference Protocol (KServe v2 REST) codec for model
 * "circle", with Triton's binary tensor data extension. Must keep true:
 * whatever tritonclient.http or KServe's REST client sends is understood
 * (JSON or binary tensors, flat or nested data, [N] or [N, 1] labels), every
 * byte of binary data is accounted for (shapes must match sizes exactly, no
 * bytes left over), and a rejected request names the input, the element and
 * what was expected.
 *
 *   body = JSON header (header_len bytes) | input bytes, in input order
 *          (only inputs whose parameters carry binary_data_size)
 *
 *   response = JSON header | output bytes, in output order (only outputs
 *              returned as binary: per-output "binary_data", or the
 *              request-level "binary_data_output")
 *
 * The compute dtype is parameters.dtype when given, else float64 when the
 * embeddings are FP64, else the server default (float32 unless configured).
 * FP16 and BF16 embeddings are widened to float32. A half-precision compute
 * dtype (float16, bfloat16 and their mixed policies) reads the inputs as
 * float64, rounds them once to the format, and returns FP16 / BF16 outputs.
 * Binary data is little-endian, as the extension specifies.
 *
 * JSON data never becomes cJSON nodes (80 bytes each: 40 times a header of
 * small numbers): parse_header cuts every input's data array out of the
 * text cJSON parses, and read_input reads it from the header as sent. The
 * rest may hold at most MAX_HEADER_VALUES values. Decoding so holds at
 * most the body, a copy of the header and the decoded arrays.
 */
#include "codec_oip.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "codec_json.h"
#include "codec_util.h"
#include "json_fast.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "codec_oip.c reads binary tensors in host order: little-endian only"
#endif

#define EXACT_INT_LIMIT 9007199254740992.0 /* 2^53 */

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

static bool is_float_type(circle_oip_datatype t) {
  return t == CIRCLE_OIP_FP16 || t == CIRCLE_OIP_FP32 ||
         t == CIRCLE_OIP_FP64 || t == CIRCLE_OIP_BF16;
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

/* The bits of f in the half format; f is a finite value of that format
 * (circle_half_round made it one), so nothing is rounded here. */
static uint16_t float_to_half_bits(float f, circle_half half) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if (half == CIRCLE_HALF_BFLOAT16) return (uint16_t)(u >> 16);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  float a = fabsf(f);
  if (a < 0x1p-14f) /* subnormal (or zero): a multiple of 2^-24 */
    return sign | (uint16_t)(a * 0x1p24f);
  uint32_t exp = ((u >> 23) & 0xffu) - 112;
  return sign | (uint16_t)(exp << 10) | (uint16_t)((u >> 13) & 0x3ffu);
}

/* ------------------------------------------------------------------------ */
/* Inputs                                                                   */
/* ------------------------------------------------------------------------ */

enum { IN_LABELS, IN_EMBEDDINGS, IN_SAMPLE_WEIGHT, IN_REF_LABELS,
       IN_REF_EMBEDDINGS, IN_COUNT };

static const char *const input_names[IN_COUNT] = {
    "labels", "embeddings", "sample_weight", "ref_labels", "ref_embeddings"};

/* One input as the request describes it. */
typedef struct {
  bool present;
  size_t index;             /* position in "inputs" */
  circle_oip_datatype type; /* datatype */
  size_t rank;
  uint64_t shape[2];
  uint64_t count;           /* product of the shape */
  bool json;               /* JSON data, at data_off of the header */
  size_t data_off;
  const char *bin;          /* binary data, or NULL */
  size_t bin_len;
} oip_input;

/* JSON data arrays cut from the text cJSON parses, by input position:
 * more inputs than this can only be an error found before data is read. */
#define CUT_INPUTS 16

typedef struct {
  const char *body;
  size_t header_len;
  const circle_limits *lim;
  circle_error *err;
  oip_input in[IN_COUNT];
  bool cut[CUT_INPUTS];       /* inputs[i].data was cut ... */
  size_t cut_off[CUT_INPUTS]; /* ... from here in the header */
} oip_decoder;

/* "[2, 3]" for an input's shape (rank 1 or 2). */
static void shape_text(char *buf, size_t len, const oip_input *in) {
  if (in->rank == 2)
    snprintf(buf, len, "[%llu, %llu]", (unsigned long long)in->shape[0],
             (unsigned long long)in->shape[1]);
  else
    snprintf(buf, len, "[%llu]", (unsigned long long)in->shape[0]);
}

/* Reads a JSON number that must be a non-negative integer (shapes, sizes). */
static bool json_uint(const cJSON *it, uint64_t *out) {
  if (!cJSON_IsNumber(it)) return false;
  double v = it->valuedouble;
  if (!(v >= 0) || v >= EXACT_INT_LIMIT || v != trunc(v)) return false;
  *out = (uint64_t)v;
  return true;
}

static int parse_input_params(oip_decoder *dc, const cJSON *p,
                              const char *name, bool *has_bin,
                              uint64_t *bin_size) {
  circle_error *err = dc->err;
  char where[64];
  snprintf(where, sizeof(where), "the parameters of input '%s'", name);
  if (!cJSON_IsObject(p))
    return circle_error_set(err, 400, "wrong_type",
                            "the parameters of input '%s' are %s; expected "
                            "an object",
                            name, circle__json_kind(p));
  circle__json_field f[] = {{"binary_data_size", NULL},
                            {"shared_memory_region", NULL},
                            {"shared_memory_byte_size", NULL},
                            {"shared_memory_offset", NULL},
                            {"content_type", NULL}};
  if (circle__json_fields(p, where, f, 5, err) != 0) return CIRCLE_EINVAL;
  if (f[1].item || f[2].item || f[3].item)
    return circle_error_set(err, 400, "wrong_type",
                            "input '%s' uses shared memory, which circled "
                            "does not support; send the data in the body "
                            "(JSON or binary_data_size)",
                            name);
  /* content_type (KServe / MLServer codecs) is informational: ignored. */
  if (f[0].item) {
    if (!json_uint(f[0].item, bin_size))
      return circle_error_set(err, 400, "wrong_type",
                              "input '%s': binary_data_size must be an "
                              "integer >= 0",
                              name);
    *has_bin = true;
  }
  return 0;
}

/* Reads one element of "inputs"; *bin_off is where its binary data starts
 * (advanced past it). */
static int parse_input(oip_decoder *dc, const cJSON *obj, size_t index,
                       size_t *bin_off, size_t body_len) {
  circle_error *err = dc->err;
  char where[32];
  snprintf(where, sizeof(where), "inputs[%zu]", index);
  if (!cJSON_IsObject(obj))
    return circle_error_set(err, 400, "wrong_type",
                            "inputs[%zu] is %s; expected an object with "
                            "name, shape, datatype and data",
                            index, circle__json_kind(obj));
  circle__json_field f[] = {{"name", NULL}, {"shape", NULL},
                            {"datatype", NULL}, {"parameters", NULL},
                            {"data", NULL}};
  if (circle__json_fields(obj, where, f, 5, err) != 0) return CIRCLE_EINVAL;
  if (!cJSON_IsString(f[0].item))
    return circle_error_set(err, 400, f[0].item ? "wrong_type" : "missing_field",
                            "inputs[%zu].name is %s; expected one of labels, "
                            "embeddings, sample_weight, ref_labels, "
                            "ref_embeddings",
                            index, circle__json_kind(f[0].item));
  int k;
  for (k = 0; k < IN_COUNT; k++)
    if (strcmp(f[0].item->valuestring, input_names[k]) == 0) break;
  char q[72];
  circle__json_quote(q, sizeof(q), f[0].item->valuestring, 64);
  if (k == IN_COUNT)
    return circle_error_set(err, 400, "unknown_key",
                            "model 'circle' has no input '%s'; its inputs "
                            "are labels, embeddings, sample_weight, "
                            "ref_labels and ref_embeddings",
                            q);
  const char *name = input_names[k];
  oip_input *in = &dc->in[k];
  if (in->present)
    return circle_error_set(err, 400, "duplicate_key",
                            "input '%s' is given twice (inputs[%zu] and "
                            "inputs[%zu])",
                            name, in->index, index);
  in->present = true;
  in->index = index;

  /* datatype */
  if (!cJSON_IsString(f[2].item))
    return circle_error_set(err, 400, f[2].item ? "wrong_type" : "missing_field",
                            "input '%s': datatype is %s; expected a string "
                            "such as \"FP32\"",
                            name, circle__json_kind(f[2].item));
  in->type = datatype_parse(f[2].item->valuestring);
  circle__json_quote(q, sizeof(q), f[2].item->valuestring, 64);
  bool is_label = k == IN_LABELS || k == IN_REF_LABELS;
  if (is_label && in->type != CIRCLE_OIP_INT32 && in->type != CIRCLE_OIP_INT64)
    return circle_error_set(err, 400, "wrong_type",
                            "input '%s' has datatype \"%s\"; expected INT32 "
                            "or INT64",
                            name, q);
  if (!is_label && !is_float_type(in->type))
    return circle_error_set(err, 400, "wrong_type",
                            "input '%s' has datatype \"%s\"; expected FP32 or "
                            "FP64 (FP16 and BF16 also accepted)",
                            name, q);

  /* shape */
  const cJSON *sh = f[1].item;
  if (!cJSON_IsArray(sh))
    return circle_error_set(err, 400, sh ? "wrong_type" : "missing_field",
                            "input '%s': shape is %s; expected an array of "
                            "dimensions",
                            name, circle__json_kind(sh));
  size_t rank = 0;
  uint64_t count = 1;
  const cJSON *it;
  cJSON_ArrayForEach(it, sh) {
    uint64_t dim;
    if (!json_uint(it, &dim))
      return circle_error_set(err, 400, "wrong_type",
                              "input '%s': shape[%zu] is not an integer >= 0",
                              name, rank);
    if (rank < 2) in->shape[rank] = dim;
    if (!circle__mul_u64(count, dim, &count))
      return circle_error_set(err, 413, "limit_exceeded",
                              "input '%s': the shape's element count "
                              "overflows",
                              name);
    rank++;
  }
  in->rank = rank;
  in->count = count;
  bool matrix = k == IN_EMBEDDINGS || k == IN_REF_EMBEDDINGS;
  bool ok_rank = matrix ? rank == 2 : (rank == 1 || (rank == 2 && in->shape[1] == 1));
  if (!ok_rank)
    return circle_error_set(err, 400, "shape_mismatch",
                            "input '%s' has rank %zu; expected %s", name, rank,
                            matrix ? "[N, D]" : "[N] or [N, 1]");

  /* data: JSON, or binary after the header */
  bool has_bin = false;
  uint64_t bin_size = 0;
  if (f[3].item && !cJSON_IsNull(f[3].item) &&
      parse_input_params(dc, f[3].item, name, &has_bin, &bin_size) != 0)
    return CIRCLE_EINVAL;
  if (has_bin && f[4].item)
    return circle_error_set(err, 400, "wrong_type",
                            "input '%s' has both JSON data and "
                            "binary_data_size; send one",
                            name);
  if (!has_bin) {
    if (f[4].item == NULL)
      return circle_error_set(err, 400, "missing_field",
                              "input '%s' has no data; send \"data\" or "
                              "parameters.binary_data_size with the bytes "
                              "after the JSON",
                              name);
    if (!cJSON_IsArray(f[4].item))
      return circle_error_set(err, 400, "wrong_type",
                              "input '%s': data is %s; expected an array",
                              name, circle__json_kind(f[4].item));
    if (index >= CUT_INPUTS || !dc->cut[index]) /* cannot happen: see cut */
      return circle_error_set(err, 500, "internal",
                              "input '%s': its data was not found in the text",
                              name);
    in->json = true;
    in->data_off = dc->cut_off[index];
    return 0;
  }
  size_t esz = datatypes[in->type].size;
  uint64_t want;
  if (!circle__mul_u64(count, esz, &want) || want != bin_size) {
    char st[64];
    shape_text(st, sizeof(st), in);
    return circle_error_set(err, 400, "shape_mismatch",
                            "input '%s': binary_data_size is %llu bytes but "
                            "shape %s of %s needs %llu",
                            name, (unsigned long long)bin_size, st,
                            datatypes[in->type].name,
                            (unsigned long long)(count * esz));
  }
  size_t avail = body_len - *bin_off;
  if (bin_size > avail)
    return circle_error_set(err, 400, "shape_mismatch",
                            "input '%s' needs %llu bytes of binary data at "
                            "byte %zu, but the body has only %zu bytes "
                            "left there (truncated body, or a wrong "
                            "Inference-Header-Content-Length?)",
                            name, (unsigned long long)bin_size, *bin_off,
                            avail);
  in->bin = dc->body + *bin_off;
  in->bin_len = (size_t)bin_size;
  *bin_off += (size_t)bin_size;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Reading tensor data                                                      */
/* ------------------------------------------------------------------------ */

typedef struct {
  oip_decoder *dc;
  const char *name;
  const oip_input *in;
  void *out;           /* int64_t[] or cfg.dtype[] */
  circle_dtype dt;
  bool weights;        /* sample weights: >= 0 */
  bool need_raw;       /* an integer at or above 2^53: read from text */
} fill_ctx;

/* "embeddings[3, 7]" or "labels[3]" for element i of input in. */
static void elem_name(char *buf, size_t len, const char *name,
                      const oip_input *in, size_t i) {
  if (in->rank == 2 && in->shape[1] != 1)
    snprintf(buf, len, "%s[%zu, %zu]", name, i / in->shape[1], i % in->shape[1]);
  else
    snprintf(buf, len, "%s[%zu]", name, i);
}

static bool bad_value(fill_ctx *c, size_t i, double v) {
  char e[96], vb[40];
  elem_name(e, sizeof(e), c->name, c->in, i);
  if (!isfinite(v)) {
    circle_error_set(c->dc->err, 400, "non_finite",
                     "input '%s': element %s is %s; every number must be "
                     "finite",
                     c->name, e, isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf"));
    return false;
  }
  circle__short_number(vb, v);
  if (c->weights && v < 0) {
    circle_error_set(c->dc->err, 400, "wrong_type",
                     "input '%s': element %s is %s; sample weights must be "
                     ">= 0",
                     c->name, e, vb);
    return false;
  }
  circle_error_set(c->dc->err, 400, "non_finite",
                   "input '%s': element %s is %s, which overflows float32; "
                   "send parameters.dtype \"float64\" or rescale",
                   c->name, e, vb);
  return false;
}

/* Stores v at out[i] in the compute dtype; false (and the error) when it is
 * not finite there, or negative for weights. */
static inline bool put_float(fill_ctx *c, size_t i, double v) {
  if (c->dt == CIRCLE_DTYPE_FLOAT32) {
    float f = (float)v;
    ((float *)c->out)[i] = f;
    if (!isfinite(f) || (c->weights && f < 0)) return bad_value(c, i, v);
  } else {
    ((double *)c->out)[i] = v;
    if (!isfinite(v) || (c->weights && v < 0)) return bad_value(c, i, v);
  }
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
static bool leaf_number(fill_ctx *c, size_t off, size_t i, const char *code,
                        const char *want, double *v) {
  const char *t = c->dc->body;
  size_t tl = c->dc->header_len;
  /* The pre-scan passed every number: a token that does not read is some
   * other value. */
  if (circle__json_fast_number(t + off, t + tl, v) != 0) return true;
  char e[96];
  elem_name(e, sizeof(e), c->name, c->in, i);
  circle_error_set(c->dc->err, 400, code,
                   "input '%s': element %s is %s; expected %s", c->name, e,
                   circle__json_text_kind(t, tl, off), want);
  return false;
}

static bool leaf_float(void *ctx, size_t off, size_t i) {
  fill_ctx *c = ctx;
  char e[96];
  double v;
  if (!leaf_number(c, off, i, "wrong_type", "a number", &v)) return false;
  /* JSON data for an FP16 or BF16 input must be a value of that datatype:
   * binary data cannot hold more than its largest finite value, and JSON
   * data must not mean more than binary data could. */
  double top = half_max(c->in->type);
  if (fabs(v) > top) {
    char vb[40], tb[40];
    elem_name(e, sizeof(e), c->name, c->in, i);
    circle_error_set(c->dc->err, 400, "non_finite",
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
  if (!leaf_number(c, off, i, "bad_label", "an integer", &v)) return false;
  int64_t *out = c->out;
  if (fabs(v) >= EXACT_INT_LIMIT) {
    c->need_raw = true;
    return true;
  }
  if (v != trunc(v) ||
      (c->in->type == CIRCLE_OIP_INT32 && (v < INT32_MIN || v > INT32_MAX))) {
    elem_name(e, sizeof(e), c->name, c->in, i);
    circle__short_number(vb, v);
    circle_error_set(c->dc->err, 400, "bad_label",
                     "input '%s': element %s is %s; expected an %s", c->name,
                     e, vb, c->in->type == CIRCLE_OIP_INT32 ? "INT32" : "INT64");
    return false;
  }
  out[i] = (int64_t)v;
  return true;
}

/* Converts input k into a new array: int64 for labels, dt for the rest. */
static int read_input(oip_decoder *dc, int k, circle_dtype dt, void **out) {
  oip_input *in = &dc->in[k];
  const char *name = input_names[k];
  circle_error *err = dc->err;
  bool is_label = k == IN_LABELS || k == IN_REF_LABELS;
  size_t esz = is_label ? sizeof(int64_t) : circle_dtype_size(dt);
  size_t count = (size_t)in->count;
  fill_ctx c = {dc, name, in, NULL, dt, k == IN_SAMPLE_WEIGHT, false};

  /* JSON data: count first, so nothing is allocated for a wrong shape. */
  if (in->json) {
    size_t have = circle__json_leaves(dc->body, dc->header_len, in->data_off,
                                      NULL, NULL);
    if (have != count) {
      char st[64];
      shape_text(st, sizeof(st), in);
      return circle_error_set(err, 400, "shape_mismatch",
                              "input '%s': data has %zu elements but shape "
                              "%s holds %zu",
                              name, have, st, count);
    }
  }
  void *buf = malloc(count ? count * esz : 1);
  if (buf == NULL)
    return circle_error_set(err, 503, "overloaded",
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
        return circle_error_set(err, 400, "bad_label",
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
      circle_error_set(err, 500, "internal", "input '%s': unexpected datatype",
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
static int narrow_input(oip_decoder *dc, int k, circle_half half, void **arr) {
  const oip_input *in = &dc->in[k];
  size_t bad = 0;
  int rc = circle__half_narrow_array(half, arr, (size_t)in->count, &bad);
  if (rc == 0) return 0;
  if (rc == CIRCLE_ENOMEM)
    return circle_error_set(dc->err, 503, "overloaded",
                            "out of memory for input '%s'; retry later",
                            input_names[k]);
  char e[96], vb[40];
  elem_name(e, sizeof(e), input_names[k], in, bad);
  return circle_error_set(dc->err, 400, "non_finite",
                          "input '%s': element %s is %s, beyond %s's largest "
                          "finite value %g; send parameters.dtype \"float32\" "
                          "or rescale",
                          input_names[k], e,
                          circle__short_number(vb, ((const double *)*arr)[bad]),
                          circle_half_name(half), circle_half_max(half));
}

/* ------------------------------------------------------------------------ */
/* Request parameters and outputs                                           */
/* ------------------------------------------------------------------------ */

enum { P_GAMMA, P_MARGIN, P_REMOVE_DIAGONAL, P_REDUCTION, P_NORMALIZE,
       P_DTYPE, P_TAG, P_BINARY_DATA_OUTPUT, P_STATS, P_SEQUENCE_ID, P_SEQUENCE_START,
       P_SEQUENCE_END, P_PRIORITY, P_TIMEOUT, P_COUNT };

static int parse_params(oip_decoder *dc, const cJSON *p, circle_request *r,
                        bool *dtype_given, bool *binary_default, bool *stats) {
  circle_error *err = dc->err;
  if (!cJSON_IsObject(p))
    return circle_error_set(err, 400, "wrong_type",
                            "parameters is %s; expected an object",
                            circle__json_kind(p));
  /* The last five are Triton's scheduling parameters (tritonclient sends
   * them for sequences, priorities and timeouts); they mean nothing to a
   * stateless loss and are accepted and ignored. */
  circle__json_field f[P_COUNT] = {
      {"gamma", NULL},          {"margin", NULL},       {"remove_diagonal", NULL},
      {"reduction", NULL},      {"normalize", NULL},    {"dtype", NULL},
      {"tag", NULL},            {"binary_data_output", NULL},
      {"stats", NULL},          {"sequence_id", NULL},    {"sequence_start", NULL},
      {"sequence_end", NULL},   {"priority", NULL},     {"timeout", NULL}};
  if (circle__json_fields(p, "parameters", f, P_COUNT, err) != 0)
    return CIRCLE_EINVAL;
  /* gamma, margin, remove_diagonal, reduction, dtype: exactly as a Keras
   * config; reuse its parser on an object of just those members. */
  cJSON *cfg = cJSON_CreateObject();
  if (cfg == NULL)
    return circle_error_set(err, 503, "overloaded", "out of memory; retry later");
  static const int cfg_keys[] = {P_GAMMA, P_MARGIN, P_REMOVE_DIAGONAL,
                                 P_REDUCTION, P_DTYPE};
  for (size_t i = 0; i < sizeof(cfg_keys) / sizeof(cfg_keys[0]); i++) {
    const cJSON *it = f[cfg_keys[i]].item;
    if (it == NULL) continue;
    cJSON *dup = cJSON_Duplicate(it, 1);
    if (dup == NULL || !cJSON_AddItemToObject(cfg, f[cfg_keys[i]].name, dup)) {
      cJSON_Delete(dup);
      cJSON_Delete(cfg);
      return circle_error_set(err, 503, "overloaded", "out of memory; retry later");
    }
  }
  int rc = circle_json_config_parse(cfg, &r->cfg, r->name, sizeof(r->name), err);
  cJSON_Delete(cfg);
  if (rc != 0) {
    /* Name the parameters, not a config object. */
    if (strncmp(err->message, "config.", 7) == 0) {
      char m[sizeof(err->message)];
      snprintf(m, sizeof(m), "parameters.%s", err->message + 7);
      memcpy(err->message, m, sizeof(m));
    }
    return CIRCLE_EINVAL;
  }
  /* null is Keras' floatx (float32), a choice like any other spelling. */
  *dtype_given = f[P_DTYPE].item != NULL;
  if (f[P_NORMALIZE].item &&
      circle__bool_parse(f[P_NORMALIZE].item, &r->cfg.normalize,
                         "parameters.normalize", "bad_config", err) != 0)
    return CIRCLE_EINVAL;
  if (f[P_TAG].item &&
      circle__tag_parse(f[P_TAG].item, r->tag, sizeof(r->tag), "parameters.tag", err) != 0)
    return CIRCLE_EINVAL;
  if (f[P_BINARY_DATA_OUTPUT].item &&
      circle__bool_parse(f[P_BINARY_DATA_OUTPUT].item, binary_default,
                         "parameters.binary_data_output", "wrong_type", err) != 0)
    return CIRCLE_EINVAL;
  /* stats: false skips the quality figures (response parameters and
   * /metrics) for a client that wants the loss and gradients alone. */
  if (f[P_STATS].item &&
      circle__bool_parse(f[P_STATS].item, stats, "parameters.stats", "wrong_type",
                         err) != 0)
    return CIRCLE_EINVAL;
  return 0;
}

static const struct {
  const char *name;
  unsigned bit;
} output_names[] = {{"loss", CIRCLE_OUT_LOSS},
                    {"per_sample_loss", CIRCLE_OUT_PER_SAMPLE},
                    {"embeddings_grad", CIRCLE_OUT_GRAD},
                    {"ref_embeddings_grad", CIRCLE_OUT_REF_GRAD}};
#define N_OUTPUTS (sizeof(output_names) / sizeof(output_names[0]))

static int parse_outputs(oip_decoder *dc, const cJSON *a, bool binary_default,
                         circle_request *r) {
  circle_error *err = dc->err;
  static const char *const list =
      "loss, per_sample_loss, embeddings_grad, ref_embeddings_grad";
  if (!cJSON_IsArray(a))
    return circle_error_set(err, 400, "bad_output",
                            "outputs is %s; expected an array of {\"name\": "
                            "...}",
                            circle__json_kind(a));
  size_t i = 0;
  const cJSON *o;
  cJSON_ArrayForEach(o, a) {
    char where[32];
    snprintf(where, sizeof(where), "outputs[%zu]", i);
    if (!cJSON_IsObject(o))
      return circle_error_set(err, 400, "bad_output",
                              "outputs[%zu] is %s; expected {\"name\": ...}",
                              i, circle__json_kind(o));
    circle__json_field f[] = {{"name", NULL}, {"parameters", NULL}};
    if (circle__json_fields(o, where, f, 2, err) != 0) return CIRCLE_EINVAL;
    if (!cJSON_IsString(f[0].item))
      return circle_error_set(err, 400, "bad_output",
                              "outputs[%zu].name is %s; expected one of %s", i,
                              circle__json_kind(f[0].item), list);
    size_t k;
    for (k = 0; k < N_OUTPUTS; k++)
      if (strcmp(f[0].item->valuestring, output_names[k].name) == 0) break;
    char q[72];
    circle__json_quote(q, sizeof(q), f[0].item->valuestring, 64);
    if (k == N_OUTPUTS)
      return circle_error_set(err, 400, "bad_output",
                              "model 'circle' has no output '%s'; its outputs "
                              "are %s",
                              q, list);
    unsigned bit = output_names[k].bit;
    if (r->want & bit)
      return circle_error_set(err, 400, "bad_output",
                              "output '%s' is requested twice", q);
    if (bit == CIRCLE_OUT_REF_GRAD && !r->has_ref)
      return circle_error_set(err, 400, "bad_output",
                              "output 'ref_embeddings_grad' needs the inputs "
                              "ref_labels and ref_embeddings");
    bool binary = binary_default;
    const cJSON *p = f[1].item;
    if (p && !cJSON_IsNull(p)) {
      char pw[112];
      snprintf(pw, sizeof(pw), "the parameters of output '%s'", q);
      if (!cJSON_IsObject(p))
        return circle_error_set(err, 400, "bad_output", "%s are %s; expected an object",
                                pw, circle__json_kind(p));
      circle__json_field pf[] = {{"binary_data", NULL}, {"classification", NULL}};
      if (circle__json_fields(p, pw, pf, 2, err) != 0) return CIRCLE_EINVAL;
      if (pf[1].item)
        return circle_error_set(err, 400, "bad_output",
                                "output '%s' asks for classification, which "
                                "a loss does not have",
                                q);
      if (pf[0].item) {
        if (!cJSON_IsBool(pf[0].item))
          return circle_error_set(err, 400, "bad_output",
                                  "output '%s': binary_data is %s; expected "
                                  "true or false",
                                  q, circle__json_kind(pf[0].item));
        binary = cJSON_IsTrue(pf[0].item);
      }
    }
    r->want |= bit;
    if (binary) r->binary_outputs |= bit;
    r->out_order[r->out_count++] = bit;
    i++;
  }
  if (i == 0)
    return circle_error_set(err, 400, "bad_output",
                            "outputs is empty; name at least one of %s, or "
                            "leave outputs out for all",
                            list);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Decoding                                                                 */
/* ------------------------------------------------------------------------ */

/* The most JSON values and keys an inference request has besides its
 * tensors' data: five inputs and four outputs with their names, shapes and
 * parameters, and the request's parameters, come to about two hundred. */
#define MAX_HEADER_VALUES 4096

/* Validates the JSON header, cuts every input's data array out of the text
 * cJSON parses (noting where each one is: read_input reads it from the
 * header as sent) and parses the rest, of at most MAX_HEADER_VALUES values.
 * So no element of the data costs a cJSON node, and the tree is small
 * whatever the header holds. Returns the tree or NULL with dc->err set. */
static cJSON *parse_header(oip_decoder *dc) {
  const char *b = dc->body;
  size_t hl = dc->header_len;
  if (circle__json_validate(b, hl, dc->lim->max_depth, NULL, dc->err) != 0)
    return NULL;
  size_t spans[2 * CUT_INPUTS], nspans = 0, top = 0, at, in_at, data_at;
  while (top < hl && (b[top] == ' ' || b[top] == '\t' || b[top] == '\n' ||
                      b[top] == '\r'))
    top++;
  char key[16];
  bool key_ok;
  circle__json_iter root, inputs, input;
  if (top < hl && b[top] == '{') {
    circle__json_iter_init(&root, b, hl, top);
    while (circle__json_iter_member(&root, key, sizeof key, &key_ok, &at)) {
      if (!key_ok || strcmp(key, "inputs") != 0 || b[at] != '[') continue;
      circle__json_iter_init(&inputs, b, hl, at);
      for (size_t i = 0; i < CUT_INPUTS && circle__json_iter_next(&inputs, &in_at);
           i++) {
        if (b[in_at] != '{') continue;
        circle__json_iter_init(&input, b, hl, in_at);
        while (circle__json_iter_member(&input, key, sizeof key, &key_ok,
                                        &data_at)) {
          if (!key_ok || strcmp(key, "data") != 0 || b[data_at] != '[' ||
              dc->cut[i])
            continue;
          dc->cut[i] = true;
          dc->cut_off[i] = data_at;
          spans[2 * nspans] = data_at;
          spans[2 * nspans + 1] = circle__json_value_end(b, hl, data_at);
          nspans++;
        }
      }
      break; /* a second "inputs" is a duplicate key: the tree says so */
    }
  }
  char *copy;
  size_t copy_len;
  if (!circle__json_cut(b, hl, spans, nspans, &copy, &copy_len)) {
    circle_error_set(dc->err, 503, "overloaded",
                     "out of memory reading the request; retry later");
    return NULL;
  }
  cJSON *tree = circle__json_parse(copy, copy_len, dc->lim->max_depth,
                                   MAX_HEADER_VALUES, dc->err);
  free(copy);
  return tree;
}

int circle_oip_decode(const char *body, size_t len, size_t header_len,
                      const circle_config *defaults, const circle_limits *lim,
                      circle_request *req, circle_error *err) {
  if (req == NULL || err == NULL || lim == NULL || (body == NULL && len) ||
      header_len > len) {
    if (err)
      circle_error_set(err, header_len > len && body ? 400 : 500,
                       header_len > len && body ? "bad_encoding" : "internal",
                       header_len > len && body
                           ? "Inference-Header-Content-Length is larger than "
                             "the body"
                           : "circle_oip_decode: bad argument");
    return CIRCLE_EINVAL;
  }
  if (body == NULL) body = "";
  circle_request_free(req);
  oip_decoder dc;
  memset(&dc, 0, sizeof(dc));
  dc.body = body;
  dc.header_len = header_len;
  dc.lim = lim;
  dc.err = err;
  cJSON *root = parse_header(&dc);
  if (root == NULL) return CIRCLE_EINVAL;
  circle_request r;
  circle_request_init(&r);
  r.proto = CIRCLE_PROTO_OIP;
  if (defaults) r.cfg = *defaults;
  int rc = CIRCLE_EINVAL;

  if (!cJSON_IsObject(root)) {
    circle_error_set(err, 400, "wrong_type",
                     "the inference request is %s; expected a JSON object "
                     "with inputs",
                     circle__json_kind(root));
    goto fail;
  }
  circle__json_field f[] = {{"id", NULL},      {"model_name", NULL},
                            {"model_version", NULL}, {"inputs", NULL},
                            {"outputs", NULL}, {"parameters", NULL}};
  if (circle__json_fields(root, "the inference request", f, 6, err) != 0)
    goto fail;
  const cJSON *it;
  if ((it = f[0].item) != NULL && !cJSON_IsNull(it)) {
    if (!cJSON_IsString(it) || strlen(it->valuestring) >= sizeof(r.id)) {
      circle_error_set(err, 400, "wrong_type",
                       "id must be a string of at most %zu bytes",
                       sizeof(r.id) - 1);
      goto fail;
    }
    /* The id is echoed in the response: it must come back as sent, and
     * bytes that are not UTF-8 would come back as U+FFFD. */
    if (!circle__utf8_valid(it->valuestring)) {
      circle_error_set(err, 400, "wrong_type",
                       "id is not valid UTF-8; send the id as UTF-8 text");
      goto fail;
    }
    snprintf(r.id, sizeof(r.id), "%s", it->valuestring);
  }
  if ((it = f[1].item) != NULL &&
      (!cJSON_IsString(it) || strcmp(it->valuestring, "circle") != 0)) {
    circle_error_set(err, 400, "wrong_type",
                     "model_name must be \"circle\", the only model served "
                     "here");
    goto fail;
  }
  if ((it = f[2].item) != NULL &&
      (!cJSON_IsString(it) ||
       (it->valuestring[0] && strcmp(it->valuestring, "1") != 0))) {
    circle_error_set(err, 400, "wrong_type",
                     "model_version must be \"1\", the only version served "
                     "here");
    goto fail;
  }

  /* Parameters: config first, it decides the dtype. */
  bool dtype_given = false, binary_default = false, stats = true;
  if (f[5].item && !cJSON_IsNull(f[5].item) &&
      parse_params(&dc, f[5].item, &r, &dtype_given, &binary_default, &stats) != 0)
    goto fail;

  /* Inputs, and where each one's binary data lies. */
  const cJSON *inputs = f[3].item;
  if (inputs == NULL) {
    circle_error_set(err, 400, "missing_field",
                     "inputs is missing; send labels and embeddings");
    goto fail;
  }
  if (!cJSON_IsArray(inputs)) {
    circle_error_set(err, 400, "wrong_type",
                     "inputs is %s; expected an array of tensors",
                     circle__json_kind(inputs));
    goto fail;
  }
  size_t bin_off = header_len, idx = 0;
  cJSON_ArrayForEach(it, inputs) {
    if (parse_input(&dc, it, idx, &bin_off, len) != 0) goto fail;
    idx++;
  }
  if (bin_off != len) {
    circle_error_set(err, 400, "shape_mismatch",
                     "the body has %zu bytes after the binary data of the "
                     "inputs (the JSON header is %zu bytes, binary data "
                     "ends at byte %zu); check binary_data_size and "
                     "Inference-Header-Content-Length",
                     len - bin_off, header_len, bin_off);
    goto fail;
  }
  oip_input *L = &dc.in[IN_LABELS], *E = &dc.in[IN_EMBEDDINGS],
            *W = &dc.in[IN_SAMPLE_WEIGHT], *RL = &dc.in[IN_REF_LABELS],
            *RE = &dc.in[IN_REF_EMBEDDINGS];
  if (!L->present || !E->present) {
    circle_error_set(err, 400, "missing_field",
                     "input '%s' is missing; model 'circle' needs labels "
                     "(INT32/INT64 [N]) and embeddings (FP32/FP64 [N, D])",
                     L->present ? "embeddings" : "labels");
    goto fail;
  }
  if (RL->present != RE->present) {
    circle_error_set(err, 400, "half_reference",
                     "input '%s' is given without '%s'; send both "
                     "ref_labels and ref_embeddings, or neither",
                     RL->present ? "ref_labels" : "ref_embeddings",
                     RL->present ? "ref_embeddings" : "ref_labels");
    goto fail;
  }
  uint64_t n = L->shape[0], d = E->shape[1], m = RL->present ? RL->shape[0] : 0;
  if (n == 0) {
    circle_error_set(err, 400, "empty_batch",
                     "input 'labels' has shape [0]; send at least one row");
    goto fail;
  }
  if (E->shape[0] != n) {
    circle_error_set(err, 400, "shape_mismatch",
                     "input 'embeddings' has %llu rows; expected %llu, one "
                     "per label",
                     (unsigned long long)E->shape[0], (unsigned long long)n);
    goto fail;
  }
  if (d == 0) {
    circle_error_set(err, 400, "shape_mismatch",
                     "input 'embeddings' has shape [%llu, 0]; each row needs "
                     "at least one number",
                     (unsigned long long)n);
    goto fail;
  }
  if (W->present && W->shape[0] != n) {
    circle_error_set(err, 400, "shape_mismatch",
                     "input 'sample_weight' has %llu elements; expected %llu, "
                     "one per label",
                     (unsigned long long)W->shape[0], (unsigned long long)n);
    goto fail;
  }
  r.has_ref = RL->present;
  if (r.has_ref) {
    if (m == 0) {
      circle_error_set(err, 400, "empty_batch",
                       "input 'ref_labels' has shape [0]; send at least one "
                       "reference row or leave the reference set out");
      goto fail;
    }
    if (RE->shape[0] != m || RE->shape[1] != d) {
      circle_error_set(err, 400, "shape_mismatch",
                       "input 'ref_embeddings' has shape [%llu, %llu]; "
                       "expected [%llu, %llu] (M from ref_labels, D from "
                       "embeddings)",
                       (unsigned long long)RE->shape[0],
                       (unsigned long long)RE->shape[1],
                       (unsigned long long)m, (unsigned long long)d);
      goto fail;
    }
  }
  if (n > lim->max_n || m > lim->max_m || d > lim->max_d) {
    const char *what = n > lim->max_n ? "N" : (m > lim->max_m ? "M" : "D");
    unsigned long long have = n > lim->max_n ? n : (m > lim->max_m ? m : d);
    size_t cap = n > lim->max_n ? lim->max_n
                                : (m > lim->max_m ? lim->max_m : lim->max_d);
    circle_error_set(err, 413, "limit_exceeded",
                     "%s = %llu exceeds this server's limit of %zu", what,
                     have, cap);
    goto fail;
  }
  uint64_t pairs;
  if (!circle__mul_u64(n, r.has_ref ? m : n, &pairs) || pairs > lim->max_pairs) {
    circle_error_set(err, 413, "limit_exceeded",
                     "%llu x %llu = %llu pairs exceeds the work limit of %llu "
                     "pairs; send a smaller batch",
                     (unsigned long long)n,
                     (unsigned long long)(r.has_ref ? m : n),
                     (unsigned long long)(n * (r.has_ref ? m : n)),
                     (unsigned long long)lim->max_pairs);
    goto fail;
  }

  /* The compute dtype, and the one the inputs are read in: float64 for a
   * half format, rounded to it once read. */
  if (!dtype_given && E->type == CIRCLE_OIP_FP64) {
    r.cfg.dtype = CIRCLE_DTYPE_FLOAT64;
    r.cfg.half = CIRCLE_HALF_NONE;
  }
  r.emb_datatype = E->type;
  circle_dtype rdt = r.cfg.half != CIRCLE_HALF_NONE ? CIRCLE_DTYPE_FLOAT64
                                                    : r.cfg.dtype;

  /* Outputs: asked for, or all that apply; stats (as parameters) unless
   * parameters.stats is false. */
  if (f[4].item && !cJSON_IsNull(f[4].item)) {
    if (parse_outputs(&dc, f[4].item, binary_default, &r) != 0) goto fail;
  } else {
    for (size_t k = 0; k < N_OUTPUTS; k++) {
      unsigned bit = output_names[k].bit;
      if (bit == CIRCLE_OUT_REF_GRAD && !r.has_ref) continue;
      r.want |= bit;
      if (binary_default) r.binary_outputs |= bit;
    }
  }
  if (stats) r.want |= CIRCLE_OUT_STATS;

  /* The data. */
  void *p;
  if (read_input(&dc, IN_LABELS, rdt, &p) != 0) goto fail;
  r.labels = p;
  if (read_input(&dc, IN_EMBEDDINGS, rdt, &p) != 0) goto fail;
  r.x = p;
  if (narrow_input(&dc, IN_EMBEDDINGS, r.cfg.half, &r.x) != 0) goto fail;
  if (W->present) {
    if (read_input(&dc, IN_SAMPLE_WEIGHT, rdt, &p) != 0) goto fail;
    r.sw = p;
    if (narrow_input(&dc, IN_SAMPLE_WEIGHT, r.cfg.half, &r.sw) != 0) goto fail;
  }
  if (r.has_ref) {
    if (read_input(&dc, IN_REF_LABELS, rdt, &p) != 0) goto fail;
    r.ref_labels = p;
    if (read_input(&dc, IN_REF_EMBEDDINGS, rdt, &p) != 0) goto fail;
    r.r = p;
    if (narrow_input(&dc, IN_REF_EMBEDDINGS, r.cfg.half, &r.r) != 0) goto fail;
  }
  r.n = (size_t)n;
  r.m = (size_t)m;
  r.d = (size_t)d;
  *req = r;
  rc = 0;
  goto done;
fail:
  circle_request_free(&r);
done:
  cJSON_Delete(root);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Encoding                                                                 */
/* ------------------------------------------------------------------------ */

/* Appends count values of dtype at p as a flat JSON array. */
static void write_flat(circle_buf *b, const void *p, size_t count,
                       circle_dtype dt) {
  circle_buf_puts(b, "[");
  /* Row-sized reservations keep the peak near the final size. */
  const size_t step = 4096;
  for (size_t i = 0; i < count && !b->failed; i += step) {
    size_t k = count - i < step ? count - i : step;
    if (!circle_buf_reserve(b, k * (CIRCLE_JSON_NUMBER_MAX + 1))) return;
    char *o = b->data + b->len;
    for (size_t j = i; j < i + k; j++) {
      if (j) *o++ = ',';
      double v = dt == CIRCLE_DTYPE_FLOAT32 ? (double)((const float *)p)[j]
                                            : ((const double *)p)[j];
      o += circle__json_number_write(o, v, dt);
    }
    b->len = (size_t)(o - b->data);
  }
  circle_buf_puts(b, "]");
}

const char *circle_oip_output_datatype(const circle_config *cfg, size_t *esz) {
  circle_oip_datatype t = cfg->half == CIRCLE_HALF_FLOAT16    ? CIRCLE_OIP_FP16
                          : cfg->half == CIRCLE_HALF_BFLOAT16 ? CIRCLE_OIP_BF16
                          : cfg->dtype == CIRCLE_DTYPE_FLOAT32 ? CIRCLE_OIP_FP32
                                                               : CIRCLE_OIP_FP64;
  *esz = datatypes[t].size;
  return datatypes[t].name;
}

int circle_oip_encode(const circle_request *req, const circle_output *out,
                      circle_buf *b, size_t *header_len) {
  if (req == NULL || out == NULL || b == NULL || header_len == NULL)
    return CIRCLE_EINVAL;
  circle_dtype dt = req->cfg.dtype;
  /* A half format's outputs are float32 arrays of its values (see
   * circle_output_round), sent as FP16 / BF16. */
  circle_half half = req->cfg.half;
  size_t esz;
  const char *dtn = circle_oip_output_datatype(&req->cfg, &esz);
  unsigned w = req->want & out->want;
  if (!req->has_ref) w &= ~(unsigned)CIRCLE_OUT_REF_GRAD;

  /* Output order: as requested, else the canonical order. */
  unsigned order[N_OUTPUTS];
  size_t norder = 0;
  if (req->out_count) {
    for (size_t i = 0; i < req->out_count && norder < N_OUTPUTS; i++)
      if (w & req->out_order[i]) order[norder++] = req->out_order[i];
  } else {
    for (size_t k = 0; k < N_OUTPUTS; k++)
      if (w & output_names[k].bit) order[norder++] = output_names[k].bit;
  }

  /* The scalar loss, in the output dtype, for binary or JSON. */
  float loss32 = (float)out->loss;
  double loss64 = out->loss;
  bool elementwise = circle_reduction_is_elementwise(req->cfg.reduction);

  size_t start = b->len;
  circle_buf_puts(b, "{\"model_name\": \"circle\", \"model_version\": \"1\"");
  if (req->id[0]) {
    circle_buf_puts(b, ", \"id\": ");
    circle_buf_json_string(b, req->id);
  }
  circle_buf_puts(b, ", \"outputs\": [");
  const void *data[N_OUTPUTS];
  size_t count[N_OUTPUTS];
  for (size_t i = 0; i < norder; i++) {
    unsigned bit = order[i];
    const char *name = "";
    for (size_t k = 0; k < N_OUTPUTS; k++)
      if (output_names[k].bit == bit) name = output_names[k].name;
    size_t rows = 0, cols = 0; /* cols 0: rank 1 */
    const void *p = NULL;
    switch (bit) {
      case CIRCLE_OUT_LOSS:
        rows = elementwise ? req->n : 1;
        p = elementwise ? out->loss_values
                        : (dt == CIRCLE_DTYPE_FLOAT32 ? (const void *)&loss32
                                                      : (const void *)&loss64);
        break;
      case CIRCLE_OUT_PER_SAMPLE:
        rows = req->n;
        p = out->per_sample;
        break;
      case CIRCLE_OUT_GRAD:
        rows = req->n;
        cols = req->d;
        p = out->grad;
        break;
      case CIRCLE_OUT_REF_GRAD:
        rows = req->m;
        cols = req->d;
        p = out->ref_grad;
        break;
    }
    data[i] = p;
    count[i] = cols ? rows * cols : rows;
    if (i) circle_buf_puts(b, ", ");
    circle_buf_puts(b, "{\"name\": ");
    circle_buf_json_string(b, name);
    circle_buf_printf(b, ", \"datatype\": \"%s\", \"shape\": [%zu", dtn, rows);
    if (cols) circle_buf_printf(b, ", %zu", cols);
    circle_buf_puts(b, "]");
    if (req->binary_outputs & bit) {
      circle_buf_printf(b, ", \"parameters\": {\"binary_data_size\": %zu}}",
                        count[i] * esz);
    } else {
      circle_buf_puts(b, ", \"data\": ");
      write_flat(b, p, count[i], dt);
      circle_buf_puts(b, "}");
    }
  }
  circle_buf_puts(b, "]");
  if (w & CIRCLE_OUT_STATS) {
    circle_buf_puts(b, ", \"parameters\": ");
    circle__json_stats_write(b, &out->stats);
  }
  circle_buf_puts(b, "}");
  size_t json_end = b->len;
  for (size_t i = 0; i < norder; i++) {
    if (!(req->binary_outputs & order[i])) continue;
    if (half == CIRCLE_HALF_NONE) {
      circle_buf_append(b, data[i], count[i] * esz);
    } else if (circle_buf_reserve(b, count[i] * 2)) {
      const float *v = data[i];
      for (size_t j = 0; j < count[i]; j++) {
        uint16_t h = float_to_half_bits(v[j], half);
        memcpy(b->data + b->len + 2 * j, &h, 2);
      }
      b->len += count[i] * 2;
      b->data[b->len] = '\0';
    }
  }
  if (b->failed) return CIRCLE_ENOMEM;
  *header_len = json_end - start;
  return 0;
}

void circle_oip_error(const circle_error *err, circle_buf *b) {
  if (err == NULL || b == NULL) return;
  circle_buf_puts(b, "{\"error\": ");
  circle_buf_json_string(b, err->message);
  circle_buf_puts(b, "}");
}

void circle_oip_model_metadata(circle_buf *b) {
  if (b == NULL) return;
  circle_buf_puts(
      b,
      "{\"name\": \"circle\", \"versions\": [\"1\"], \"platform\": "
      "\"circled\", \"inputs\": ["
      "{\"name\": \"labels\", \"datatype\": \"INT64\", \"shape\": [-1]}, "
      "{\"name\": \"embeddings\", \"datatype\": \"FP32\", \"shape\": [-1, -1]}, "
      "{\"name\": \"sample_weight\", \"datatype\": \"FP32\", \"shape\": [-1]}, "
      "{\"name\": \"ref_labels\", \"datatype\": \"INT64\", \"shape\": [-1]}, "
      "{\"name\": \"ref_embeddings\", \"datatype\": \"FP32\", \"shape\": "
      "[-1, -1]}], \"outputs\": ["
      "{\"name\": \"loss\", \"datatype\": \"FP32\", \"shape\": [-1]}, "
      "{\"name\": \"per_sample_loss\", \"datatype\": \"FP32\", \"shape\": [-1]}, "
      "{\"name\": \"embeddings_grad\", \"datatype\": \"FP32\", \"shape\": "
      "[-1, -1]}, "
      "{\"name\": \"ref_embeddings_grad\", \"datatype\": \"FP32\", \"shape\": "
      "[-1, -1]}]}");
}

/* A Triton model-configuration "parameters" entry: {"string_value": s}. */
static void config_param(circle_buf *b, const char *key, const char *value,
                         bool last) {
  circle_buf_json_string(b, key);
  circle_buf_puts(b, ": {\"string_value\": ");
  circle_buf_json_string(b, value);
  circle_buf_puts(b, last ? "}" : "}, ");
}

void circle_oip_model_config(circle_buf *b, const circle_config *defaults) {
  if (b == NULL || defaults == NULL) return;
  /* Triton's model configuration (model_config.proto as JSON), as
   * tritonclient's get_model_config reads it. The tensors are those of the
   * metadata; optional inputs say so; the loss defaults a request gets when
   * its parameters leave them out are string parameters, the values spelt
   * as GET /config spells them. */
  circle_buf_puts(
      b,
      "{\"name\": \"circle\", \"platform\": \"circled\", \"backend\": "
      "\"circled\", \"version_policy\": {\"latest\": {\"num_versions\": 1}}, "
      "\"max_batch_size\": 0, \"input\": ["
      "{\"name\": \"labels\", \"data_type\": \"TYPE_INT64\", \"dims\": [-1]}, "
      "{\"name\": \"embeddings\", \"data_type\": \"TYPE_FP32\", \"dims\": "
      "[-1, -1]}, "
      "{\"name\": \"sample_weight\", \"data_type\": \"TYPE_FP32\", \"dims\": "
      "[-1], \"optional\": true}, "
      "{\"name\": \"ref_labels\", \"data_type\": \"TYPE_INT64\", \"dims\": "
      "[-1], \"optional\": true}, "
      "{\"name\": \"ref_embeddings\", \"data_type\": \"TYPE_FP32\", \"dims\": "
      "[-1, -1], \"optional\": true}], \"output\": ["
      "{\"name\": \"loss\", \"data_type\": \"TYPE_FP32\", \"dims\": [-1]}, "
      "{\"name\": \"per_sample_loss\", \"data_type\": \"TYPE_FP32\", \"dims\": "
      "[-1]}, "
      "{\"name\": \"embeddings_grad\", \"data_type\": \"TYPE_FP32\", \"dims\": "
      "[-1, -1]}, "
      "{\"name\": \"ref_embeddings_grad\", \"data_type\": \"TYPE_FP32\", "
      "\"dims\": [-1, -1]}], \"parameters\": {");
  circle_buf num;
  circle_buf_init(&num);
  circle_buf_python_float(&num, defaults->gamma);
  config_param(b, "gamma", num.failed ? "" : num.data, false);
  num.len = 0;
  circle_buf_python_float(&num, defaults->margin);
  config_param(b, "margin", num.failed ? "" : num.data, false);
  circle_buf_free(&num);
  config_param(b, "remove_diagonal",
               defaults->remove_diagonal ? "true" : "false", false);
  const char *red = circle_reduction_name(defaults->reduction);
  config_param(b, "reduction", red ? red : "null", false);
  const char *dtn = circle_config_dtype_name(defaults);
  config_param(b, "dtype", dtn ? dtn : "float32", false);
  config_param(b, "normalize", defaults->normalize ? "true" : "false", true);
  circle_buf_puts(b, "}}");
}

void circle_oip_server_metadata(circle_buf *b, const char *version) {
  if (b == NULL) return;
  circle_buf_puts(b, "{\"name\": \"circled\", \"version\": ");
  circle_buf_json_string(b, version ? version : "unknown");
  circle_buf_puts(b, ", \"extensions\": [\"binary_tensor_data\"]}");
}
