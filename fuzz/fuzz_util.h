/* fuzz_util.h -- helpers shared by the libFuzzer harnesses: the limits the
 * harnesses decode under, checks that turn a broken contract into an abort
 * (which libFuzzer reports as a crash), and fake engine outputs made from a
 * decoded request's own numbers so the encoders can be checked for exact
 * round trips.
 *
 * Everything is static: each harness is one translation unit.
 */
#ifndef FUZZ_UTIL_H
#define FUZZ_UTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "request.h"

/* A broken contract: print where and why, then abort so libFuzzer saves the
 * input as a crash artifact. */
#define FUZZ_CHECK(cond, ...)                                              \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__,     \
              #cond);                                                      \
      fprintf(stderr, __VA_ARGS__);                                        \
      fputc('\n', stderr);                                                 \
      abort();                                                             \
    }                                                                      \
  } while (0)

/* Small limits: the harness is about parsing, and small N, M, D keep every
 * accepted input cheap to encode and check. The pair limit is below
 * max_n * max_m so that it is reachable on its own. */
static inline void fuzz_limits(circle_limits *lim) {
  circle_limits_init(lim);
  lim->max_n = 48;
  lim->max_m = 40;
  lim->max_d = 32;
  lim->max_pairs = 1200;
  lim->max_depth = 16;
  lim->max_inflated = 64 << 10;
}

/* What every rejection must look like: a row of the error table that is a
 * 4xx (or 503 when memory ran out), and a NUL-terminated message of
 * printable ASCII only (it goes into a JSON response and into logs, so a
 * client's raw bytes must never reach it unquoted). */
static inline void fuzz_check_error(const circle_error *err) {
  int status = circle_error_http(err->kind);
  const char *code = circle_error_code(err->kind);
  FUZZ_CHECK(err->kind > CIRCLE_ERR_NONE && err->kind < CIRCLE_ERR_COUNT,
             "error kind %d is no row of the table (%s)", (int)err->kind,
             err->message);
  FUZZ_CHECK((status >= 400 && status < 500) || status == 503,
             "status %d (%s: %s)", status, code, err->message);
  FUZZ_CHECK(memchr(err->message, 0, sizeof err->message) && err->message[0],
             "empty or unterminated message (code %s)", code);
  for (const char *p = err->message; *p; p++)
    FUZZ_CHECK((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f,
               "byte 0x%02x in the message: %s", (unsigned char)*p,
               err->message);
}

/* Parses exactly text[0..len) as one JSON value (nothing after it but
 * blanks). Returns the tree (caller cJSON_Delete's it) or NULL. */
static inline cJSON *fuzz_parse_exact(const char *text, size_t len) {
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
  if (root == NULL) return NULL;
  while (end < text + len && (*end == ' ' || *end == '\n' || *end == '\t' ||
                              *end == '\r'))
    end++;
  if (end != text + len) {
    cJSON_Delete(root);
    return NULL;
  }
  return root;
}

/* Checks a decoder's failure: a negative status, a well-formed error, the
 * request left freed, and an error body (written by write_error, the
 * codec's error encoder) that is valid JSON. */
static inline void fuzz_check_rejection(
    int rc, const circle_request *req, const circle_error *err,
    void (*write_error)(const circle_error *, circle_buf *)) {
  FUZZ_CHECK(rc < 0, "rc %d", rc);
  fuzz_check_error(err);
  FUZZ_CHECK(req->labels == NULL && req->x == NULL, "failure left arrays");
  circle_buf b;
  circle_buf_init(&b);
  write_error(err, &b);
  cJSON *e = fuzz_parse_exact(b.data, b.len);
  FUZZ_CHECK(e != NULL, "the error body is not JSON: %s", b.data);
  cJSON_Delete(e);
  circle_buf_free(&b);
}

/* Element i of an array of dtype dt, as a double. */
static inline double fuzz_get(const void *p, size_t i, circle_dtype dt) {
  return dt == CIRCLE_DTYPE_FLOAT32 ? (double)((const float *)p)[i]
                                    : ((const double *)p)[i];
}

/* True when parsed (a double read back from JSON) is exactly the value
 * stored at p[i] in dt: bit for bit, so -0 and 0 differ. */
static inline bool fuzz_same(double parsed, const void *p, size_t i,
                             circle_dtype dt, circle_half half) {
  if (half != CIRCLE_HALF_NONE) {
    /* A half-precision config's inputs: the value rounded once to it. */
    float f;
    return circle_half_narrow(half, &parsed, &f, 1) == 1 &&
           memcmp(&f, (const float *)p + i, sizeof f) == 0;
  }
  if (dt == CIRCLE_DTYPE_FLOAT32) {
    float f = (float)parsed;
    return memcmp(&f, (const float *)p + i, sizeof f) == 0;
  }
  return memcmp(&parsed, (const double *)p + i, sizeof parsed) == 0;
}

/* The value of the little-endian FP16 / BF16 bits at b, from the formats'
 * definitions (sign, biased exponent, fraction). */
static inline float fuzz_half_value(const char *b, circle_half half) {
  uint16_t h;
  memcpy(&h, b, 2);
  int frac_bits = half == CIRCLE_HALF_FLOAT16 ? 10 : 7;
  int bias = half == CIRCLE_HALF_FLOAT16 ? 15 : 127;
  int e = (h & 0x7fff) >> frac_bits;
  double frac = h & ((1u << frac_bits) - 1);
  double v = e == 0 ? ldexp(frac, 1 - bias - frac_bits)
                    : ldexp(frac + (1u << frac_bits), e - bias - frac_bits);
  return (float)((h & 0x8000) ? -v : v);
}

static inline void fuzz_output_free(circle_output *out) {
  free(out->loss_values);
  free(out->per_sample);
  free(out->grad);
  free(out->ref_grad);
}

/* Engine outputs made from the request itself: grad is a copy of the
 * embeddings, ref_grad of the reference embeddings, per-sample and
 * element-wise loss values the first and last column, stats and the
 * scalar loss the first embedding. The buffers are malloc'd (free with
 * fuzz_output_free). Returns false, holding nothing, when malloc fails. */
static inline bool fuzz_output_make(const circle_request *req,
                                    circle_output *out) {
  circle_dtype dt = req->cfg.dtype;
  size_t esz = circle_dtype_size(dt);
  memset(out, 0, sizeof *out);
  out->want = req->want;
  out->loss = fuzz_get(req->x, 0, dt);
  out->loss_values = malloc(req->n * esz);
  out->per_sample = malloc(req->n * esz);
  out->grad = malloc(req->n * req->d * esz);
  out->ref_grad = malloc((req->has_ref ? req->m : 1) * req->d * esz);
  if (!out->loss_values || !out->per_sample || !out->grad || !out->ref_grad) {
    fuzz_output_free(out);
    return false;
  }
  for (size_t i = 0; i < req->n; i++) {
    memcpy((char *)out->loss_values + i * esz,
           (const char *)req->x + i * req->d * esz, esz);
    memcpy((char *)out->per_sample + i * esz,
           (const char *)req->x + (i * req->d + req->d - 1) * esz, esz);
  }
  memcpy(out->grad, req->x, req->n * req->d * esz);
  if (req->has_ref) memcpy(out->ref_grad, req->r, req->m * req->d * esz);
  double v = out->loss;
  circle_stats s = {v, v, v, v, v, v, v, v, v, v, req->n, req->m};
  out->stats = s;
  circle_retrieval r = {v, v, v, req->n};
  out->retrieval = r;
  return true;
}

/* Checks that a decoded request keeps the codec's promises: sizes within
 * the limits, every array present, labels and weights as documented,
 * echoed strings UTF-8, and an input the engine's check accepts or refuses
 * only as out of range. */
static inline void fuzz_check_request(const circle_request *req,
                                      const circle_limits *lim) {
  FUZZ_CHECK(req->n >= 1 && req->n <= lim->max_n, "n = %zu", req->n);
  FUZZ_CHECK(req->d >= 1 && req->d <= lim->max_d, "d = %zu", req->d);
  FUZZ_CHECK(req->labels && req->x, "labels or embeddings missing");
  if (req->has_ref) {
    FUZZ_CHECK(req->m >= 1 && req->m <= lim->max_m, "m = %zu", req->m);
    FUZZ_CHECK(req->ref_labels && req->r, "reference arrays missing");
    FUZZ_CHECK((uint64_t)req->n * req->m <= lim->max_pairs, "pairs");
  } else {
    FUZZ_CHECK(req->ref_labels == NULL && req->r == NULL,
               "reference arrays without a reference set");
    FUZZ_CHECK((uint64_t)req->n * req->n <= lim->max_pairs, "pairs");
  }
  FUZZ_CHECK(circle_config_validate(&req->cfg) == CIRCLE_OK,
             "invalid config accepted");
  FUZZ_CHECK(req->want != 0 && (req->want & ~(unsigned)CIRCLE_OUT_ALL) == 0,
             "want = 0x%x", req->want);
  circle_dtype dt = req->cfg.dtype;
  for (size_t i = 0; i < req->n * req->d; i++) {
    double v = fuzz_get(req->x, i, dt);
    FUZZ_CHECK(v - v == 0, "embeddings[%zu] is not finite", i);
  }
  if (req->sw)
    for (size_t i = 0; i < req->n; i++) {
      double v = fuzz_get(req->sw, i, dt);
      FUZZ_CHECK(v - v == 0 && v >= 0, "sample_weight[%zu] = %g", i, v);
    }
  FUZZ_CHECK(memchr(req->tag, 0, sizeof req->tag), "unterminated tag");
  FUZZ_CHECK(memchr(req->name, 0, sizeof req->name), "unterminated name");
  FUZZ_CHECK(memchr(req->id, 0, sizeof req->id), "unterminated id");
  /* Echoed strings come back as sent: only UTF-8 is accepted. */
  FUZZ_CHECK(circle__utf8_valid(req->id), "id is not UTF-8");
  FUZZ_CHECK(circle__utf8_valid(req->name), "name is not UTF-8");
  /* What the server checks next: a decoded request is computable, or
   * refused as out of range (embeddings or sample weights too large for
   * the dtype) with a sentence saying which. */
  circle_input in = {.n = req->n, .m = req->has_ref ? req->m : 0, .d = req->d,
                     .labels = req->labels, .embeddings = req->x,
                     .sample_weight = req->sw,
                     .ref_labels = req->has_ref ? req->ref_labels : NULL,
                     .ref_embeddings = req->has_ref ? req->r : NULL};
  char where[256] = "";
  int rc = circle_input_check(&req->cfg, &in, where, sizeof where);
  FUZZ_CHECK(rc == CIRCLE_OK || (rc == CIRCLE_ERANGE && where[0]),
             "circle_input_check: %s (%s)", circle_status_name(rc), where);
}

/* Walks a JSON array (flat or nested) and checks each number against
 * p[0..count) in dt, bit for bit. */
static inline void fuzz_check_numbers(const cJSON *arr, const void *p,
                                      size_t count, circle_dtype dt,
                                      circle_half half, const char *what) {
  FUZZ_CHECK(cJSON_IsArray(arr), "%s is not an array", what);
  size_t i = 0;
  const cJSON *row;
  cJSON_ArrayForEach(row, arr) {
    if (cJSON_IsArray(row)) {
      const cJSON *it;
      cJSON_ArrayForEach(it, row) {
        FUZZ_CHECK(i < count && cJSON_IsNumber(it), "%s[%zu]", what, i);
        FUZZ_CHECK(fuzz_same(it->valuedouble, p, i, dt, half),
                   "%s[%zu]: wrote %.17g for %.17g", what, i, it->valuedouble,
                   fuzz_get(p, i, dt));
        i++;
      }
    } else {
      FUZZ_CHECK(i < count && cJSON_IsNumber(row), "%s[%zu]", what, i);
      FUZZ_CHECK(fuzz_same(row->valuedouble, p, i, dt, half),
                 "%s[%zu]: wrote %.17g for %.17g", what, i, row->valuedouble,
                 fuzz_get(p, i, dt));
      i++;
    }
  }
  FUZZ_CHECK(i == count, "%s has %zu numbers, expected %zu", what, i, count);
}

#endif /* FUZZ_UTIL_H */
