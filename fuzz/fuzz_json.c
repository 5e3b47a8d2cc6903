/* fuzz_json.c -- libFuzzer harness for the /v1/loss JSON codec. The whole
 * input is a request body. It must keep true: circle_json_decode never
 * crashes, leaks or reads out of bounds; a rejection is a 4xx with a
 * printable message; an accepted request is within the limits with finite
 * numbers, each exactly what strtod reads from its text (the decoder has a
 * parser of its own for big matrices, json_fast.c, which is also fed the
 * input's first bytes directly); and circle_json_encode of it writes valid
 * JSON whose numbers read back bit for bit (the fake outputs are the
 * request's own numbers).
 *
 *   make fuzz FUZZ_SECONDS=60    (all harnesses; see the Makefile)
 *   build/fuzz/fuzz_json -max_total_time=60 build/fuzz/corpus/fuzz_json \
 *       fuzz/corpus/fuzz_json
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "codec_config.h"
#include "codec_json.h"
#include "json_fast.h"
#include "fuzz_util.h"

/* Encodes req with outputs made of its own numbers and checks the response:
 * valid JSON, every number back bit for bit, n, d, dtype and the config
 * echo as decoded. */
static void check_encoding(const circle_request *req) {
  circle_output out;
  if (!fuzz_output_make(req, &out)) return;
  circle_buf b;
  circle_buf_init(&b);
  int rc = circle_json_encode(req, &out, &b);
  FUZZ_CHECK(rc == 0 && !b.failed, "encode failed: %d", rc);
  cJSON *root = fuzz_parse_exact(b.data, b.len);
  FUZZ_CHECK(root != NULL, "the response is not JSON: %.200s", b.data);
  circle_dtype dt = req->cfg.dtype;
  const cJSON *it;
  it = cJSON_GetObjectItemCaseSensitive(root, "n");
  FUZZ_CHECK(cJSON_IsNumber(it) && it->valuedouble == (double)req->n, "n");
  it = cJSON_GetObjectItemCaseSensitive(root, "d");
  FUZZ_CHECK(cJSON_IsNumber(it) && it->valuedouble == (double)req->d, "d");
  it = cJSON_GetObjectItemCaseSensitive(root, "dtype");
  FUZZ_CHECK(cJSON_IsString(it) &&
                 strcmp(it->valuestring, circle_config_dtype_name(&req->cfg)) == 0,
             "dtype");
  if (req->want & CIRCLE_OUT_GRAD)
    fuzz_check_numbers(cJSON_GetObjectItemCaseSensitive(root, "embeddings_grad"),
                       out.grad, req->n * req->d, dt, CIRCLE_HALF_NONE, "embeddings_grad");
  if ((req->want & CIRCLE_OUT_REF_GRAD) && req->has_ref)
    fuzz_check_numbers(
        cJSON_GetObjectItemCaseSensitive(root, "ref_embeddings_grad"),
        out.ref_grad, req->m * req->d, dt, CIRCLE_HALF_NONE, "ref_embeddings_grad");
  if (req->want & CIRCLE_OUT_PER_SAMPLE)
    fuzz_check_numbers(cJSON_GetObjectItemCaseSensitive(root, "per_sample_loss"),
                       out.per_sample, req->n, dt, CIRCLE_HALF_NONE, "per_sample_loss");
  /* The retrieval figures: there exactly when asked for, float64 exact. */
  it = cJSON_GetObjectItemCaseSensitive(root, "retrieval");
  if (req->want & CIRCLE_OUT_RETRIEVAL) {
    FUZZ_CHECK(cJSON_IsObject(it) && cJSON_GetArraySize(it) == 4, "retrieval");
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(it, "queries");
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(it, "map_at_r");
    FUZZ_CHECK(cJSON_IsNumber(q) && q->valuedouble == (double)req->n,
               "retrieval.queries");
    FUZZ_CHECK(cJSON_IsNumber(f) && f->valuedouble == out.retrieval.map_at_r,
               "retrieval.map_at_r");
  } else {
    FUZZ_CHECK(it == NULL, "retrieval not asked for, but returned");
  }
  if (req->want & CIRCLE_OUT_LOSS) {
    it = cJSON_GetObjectItemCaseSensitive(root, "loss");
    if (circle_reduction_is_elementwise(req->cfg.reduction)) {
      fuzz_check_numbers(it, out.loss_values, req->n, dt, CIRCLE_HALF_NONE, "loss");
    } else {
      FUZZ_CHECK(cJSON_IsNumber(it), "loss is not a number");
      FUZZ_CHECK(fuzz_same(it->valuedouble, req->x, 0, dt, CIRCLE_HALF_NONE), "loss %.17g",
                 it->valuedouble);
    }
  }
  /* The config echo reads back as the request's config. */
  circle_config back = req->cfg;
  back.gamma = 1;
  back.margin = 0;
  char name[128] = "";
  circle_error err;
  it = cJSON_GetObjectItemCaseSensitive(root, "config");
  FUZZ_CHECK(circle__config_from_json(it, &back, name, sizeof name, &err) == 0,
             "the config echo does not parse: %s", err.message);
  FUZZ_CHECK(memcmp(&back.gamma, &req->cfg.gamma, sizeof back.gamma) == 0 &&
                 memcmp(&back.margin, &req->cfg.margin, sizeof back.margin) == 0 &&
                 back.reduction == req->cfg.reduction &&
                 back.remove_diagonal == req->cfg.remove_diagonal,
             "the config echo differs");
  FUZZ_CHECK(strcmp(name, req->name) == 0, "the name echo differs");
  cJSON_Delete(root);
  circle_buf_free(&b);
  fuzz_output_free(&out);
}

/* The decoder reads big matrices with its own number parser (json_fast.c)
 * and must store exactly what strtod gives: every accepted number is
 * compared, bit for bit in the request's dtype, with cJSON's (strtod's)
 * reading of the same body. */
static void check_numbers_against_strtod(const uint8_t *data, size_t size,
                                         const circle_request *req) {
  cJSON *root = cJSON_ParseWithLengthOpts((const char *)data, size, NULL, 0);
  FUZZ_CHECK(root != NULL, "decoded, but cJSON cannot parse the body");
  circle_dtype dt = req->cfg.dtype;
  fuzz_check_numbers(cJSON_GetObjectItemCaseSensitive(root, "embeddings"),
                     req->x, req->n * req->d, dt, req->cfg.half, "embeddings");
  if (req->has_ref)
    fuzz_check_numbers(cJSON_GetObjectItemCaseSensitive(root, "ref_embeddings"),
                       req->r, req->m * req->d, dt, req->cfg.half, "ref_embeddings");
  if (req->sw)
    fuzz_check_numbers(cJSON_GetObjectItemCaseSensitive(root, "sample_weight"),
                       req->sw, req->n, dt, req->cfg.half, "sample_weight");
  cJSON_Delete(root);
}

/* circle__json_fast_number on the input's first bytes: when it takes a
 * number, strtod must read the same characters to the same double. */
static void check_fast_number(const uint8_t *data, size_t size) {
  double v;
  const char *p = (const char *)data;
  size_t n = circle__json_fast_number(p, p + size, &v);
  if (n == 0) return;
  FUZZ_CHECK(n <= size && n <= 63, "took %zu characters of %zu", n, size);
  char buf[64], *end;
  memcpy(buf, p, n);
  buf[n] = '\0';
  double ref = strtod(buf, &end);
  FUZZ_CHECK(end == buf + n, "strtod reads %d of the %zu characters of %s",
             (int)(end - buf), n, buf);
  FUZZ_CHECK(memcmp(&v, &ref, sizeof v) == 0, "%s: %.17g, strtod %.17g", buf,
             v, ref);
}

/* Decodes the input with the fast path off (the slow way alone). */
static int decode_slow_way(const uint8_t *data, size_t size,
                           const circle_limits *lim,
                           const circle_config *defaults, circle_request *req,
                           circle_error *err) {
  circle_request_init(req);
  memset(err, 0, sizeof *err);
  circle__json_fast_enabled = false;
  int rc = circle_json_decode((const char *)data, size, defaults, "circle", lim,
                              req, err);
  circle__json_fast_enabled = true;
  return rc;
}

/* A body rejected with the fast path on is rejected the same way, code and
 * message, with it off: the errors the fast path's tree finds stand without
 * the slow path being run (codec_json.c), so they must be its errors. */
static void check_same_rejection_slow(const uint8_t *data, size_t size,
                                      const circle_limits *lim,
                                      const circle_config *defaults, int rc,
                                      const circle_error *err) {
  circle_request req;
  circle_error slow;
  int rc2 = decode_slow_way(data, size, lim, defaults, &req, &slow);
  circle_request_free(&req);
  FUZZ_CHECK(rc2 == rc, "slow path: rc %d, fast path: %d", rc2, rc);
  FUZZ_CHECK(slow.kind == err->kind && strcmp(slow.message, err->message) == 0,
             "slow path: %s \"%s\"; fast path: %s \"%s\"",
             circle_error_code(slow.kind), slow.message,
             circle_error_code(err->kind), err->message);
}

/* A body accepted with the fast path on is accepted with it off, as the
 * same request: the fast walk validates what it copies (json_fast.c), so
 * the copy's tree is built without a second check and must be the slow
 * path's. */
static void check_same_request_slow(const uint8_t *data, size_t size,
                                    const circle_limits *lim,
                                    const circle_config *defaults,
                                    const circle_request *fast) {
  circle_request req;
  circle_error slow;
  int rc = decode_slow_way(data, size, lim, defaults, &req, &slow);
  FUZZ_CHECK(rc == 0, "fast path accepts, slow path refuses: %s \"%s\"",
             circle_error_code(slow.kind), slow.message);
  size_t es = circle_dtype_size(fast->cfg.dtype);
  FUZZ_CHECK(req.n == fast->n && req.m == fast->m && req.d == fast->d &&
                 req.has_ref == fast->has_ref && req.want == fast->want &&
                 memcmp(&req.cfg, &fast->cfg, sizeof req.cfg) == 0 &&
                 strcmp(req.tag, fast->tag) == 0 &&
                 memcmp(req.labels, fast->labels, req.n * 8) == 0 &&
                 memcmp(req.x, fast->x, req.n * req.d * es) == 0,
             "the slow path decodes another request");
  circle_request_free(&req);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  check_fast_number(data, size);
  circle_limits lim;
  fuzz_limits(&lim);
  circle_config defaults;
  circle_config_init(&defaults);
  circle_request req;
  circle_request_init(&req);
  circle_error err;
  memset(&err, 0, sizeof err);
  int rc = circle_json_decode((const char *)data, size, &defaults, "circle",
                              &lim, &req, &err);
  if (rc != 0) {
    fuzz_check_rejection(rc, &req, &err, circle_json_error);
    check_same_rejection_slow(data, size, &lim, &defaults, rc, &err);
    return 0;
  }
  FUZZ_CHECK(req.proto == CIRCLE_PROTO_V1, "proto");
  fuzz_check_request(&req, &lim);
  check_numbers_against_strtod(data, size, &req);
  check_same_request_slow(data, size, &lim, &defaults, &req);
  check_encoding(&req);
  circle_request_free(&req);
  return 0;
}
