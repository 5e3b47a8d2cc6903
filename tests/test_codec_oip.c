/* test_codec_oip.c -- the Open Inference Protocol codec: JSON and binary
 * tensors as tritonclient.http and KServe send them, FP16/BF16 widening,
 * [N, 1] labels, exact INT64, every shape / size / truncation error, the
 * parameters and requested outputs, and the encoded response (JSON and
 * binary outputs, Inference-Header-Content-Length).
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "codec_oip.h"
#include "util_mem.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

/* A request body: JSON header followed by binary chunks. */
typedef struct {
  char *data;
  size_t len, header_len;
} body_t;

static body_t body_make(const char *json, ...) {
  body_t b;
  b.header_len = strlen(json);
  b.len = b.header_len;
  b.data = malloc(1 << 20);
  memcpy(b.data, json, b.header_len);
  va_list ap;
  va_start(ap, json);
  const void *p;
  while ((p = va_arg(ap, const void *)) != NULL) {
    size_t n = va_arg(ap, size_t);
    memcpy(b.data + b.len, p, n);
    b.len += n;
  }
  va_end(ap);
  return b;
}

static int decode_body(body_t b, const circle_limits *l, circle_request *req,
                       circle_error *err) {
  circle_request_init(req);
  memset(err, 0, sizeof(*err));
  int rc = circle_oip_decode(b.data, b.len, b.header_len, NULL, l, req, err);
  free(b.data);
  return rc;
}

static int decode_json(const char *json, circle_request *req, circle_error *err) {
  circle_limits l;
  circle_limits_init(&l);
  return decode_body(body_make(json, NULL), &l, req, err);
}

static void expect_error_body(body_t b, const circle_limits *l, int status,
                              const char *code, ...) {
  circle_request req;
  circle_error err;
  int rc = decode_body(b, l, &req, &err);
  ck_assert_msg(rc != 0, "decoded although an error was expected");
  ck_assert_int_eq(circle_error_http(err.kind), status);
  ck_assert_str_eq(circle_error_code(err.kind), code);
  va_list ap;
  va_start(ap, code);
  const char *frag;
  while ((frag = va_arg(ap, const char *)) != NULL)
    ck_assert_msg(strstr(err.message, frag) != NULL, "message \"%s\" lacks \"%s\"",
                  err.message, frag);
  va_end(ap);
  ck_assert_ptr_null(req.labels);
  ck_assert_ptr_null(req.x);
}

#define EXPECT_JSON_ERROR(json, status, code, ...)                         \
  do {                                                                     \
    circle_limits l_;                                                      \
    circle_limits_init(&l_);                                               \
    expect_error_body(body_make(json, NULL), &l_, status, code, __VA_ARGS__, \
                      (const char *)NULL);                                 \
  } while (0)

static char *strf(const char *fmt, ...) {
  static char buf[1 << 16];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  return buf;
}

/* A valid JSON-only request with extra top-level members appended. */
#define LABELS_JSON "{\"name\": \"labels\", \"shape\": [2], \"datatype\": \"INT64\", \"data\": [1, 2]}"
#define EMB_JSON \
  "{\"name\": \"embeddings\", \"shape\": [2, 2], \"datatype\": \"FP32\", \"data\": [1, 0, 0, 1]}"
static const char *with(const char *extra) {
  return strf("{\"inputs\": [" LABELS_JSON ", " EMB_JSON "]%s}", extra);
}

/* ------------------------------------------------------------------------ */
/* Decoding                                                                 */
/* ------------------------------------------------------------------------ */

START_TEST(codec_oip_should_decode_json_tensors) {
  circle_request req;
  circle_error err;
  ck_assert_int_eq(
      decode_json("{\"id\": \"req-7\", \"model_name\": \"circle\", \"inputs\": ["
                  "{\"name\": \"labels\", \"shape\": [3], \"datatype\": \"INT64\", "
                  "\"data\": [5, 5, -2]}, "
                  "{\"name\": \"embeddings\", \"shape\": [3, 2], \"datatype\": "
                  "\"FP32\", \"data\": [0.5, 1, 2, 3, 4, -0.25]}]}",
                  &req, &err),
      0);
  ck_assert_int_eq(req.proto, CIRCLE_PROTO_OIP);
  ck_assert_uint_eq(req.n, 3);
  ck_assert_uint_eq(req.d, 2);
  ck_assert(!req.has_ref);
  ck_assert_int_eq(req.cfg.dtype, CIRCLE_DTYPE_FLOAT32);
  ck_assert_int_eq(req.labels[2], -2);
  ck_assert(((float *)req.x)[5] == -0.25f);
  ck_assert_str_eq(req.id, "req-7");
  ck_assert_uint_eq(req.want, CIRCLE_OUT_LOSS | CIRCLE_OUT_PER_SAMPLE |
                                  CIRCLE_OUT_GRAD | CIRCLE_OUT_STATS);
  ck_assert_uint_eq(req.binary_outputs, 0);
  ck_assert_uint_eq(req.out_count, 0);
  ck_assert_int_eq(req.emb_datatype, CIRCLE_OIP_FP32);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_oip_should_decode_nested_data_and_n_by_1_labels) {
  circle_request req;
  circle_error err;
  ck_assert_int_eq(
      decode_json("{\"inputs\": [{\"name\": \"labels\", \"shape\": [2, 1], "
                  "\"datatype\": \"INT32\", \"data\": [[4], [9]]}, "
                  "{\"name\": \"embeddings\", \"shape\": [2, 3], \"datatype\": "
                  "\"FP64\", \"data\": [[1, 2, 3], [4, 5, 0.1]]}, "
                  "{\"name\": \"sample_weight\", \"shape\": [2, 1], \"datatype\": "
                  "\"FP32\", \"data\": [[0.5], [2]]}]}",
                  &req, &err),
      0);
  ck_assert_uint_eq(req.n, 2);
  ck_assert_uint_eq(req.d, 3);
  ck_assert_int_eq(req.labels[0], 4);
  ck_assert_int_eq(req.labels[1], 9);
  ck_assert_int_eq(req.cfg.dtype, CIRCLE_DTYPE_FLOAT64); /* FP64 embeddings */
  ck_assert(((double *)req.x)[5] == 0.1);
  ck_assert(((double *)req.sw)[0] == 0.5);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_oip_should_decode_binary_tensors_like_tritonclient) {
  /* What tritonclient.http sends for InferInput.set_data_from_numpy with
   * binary_data=True and no requested outputs. */
  int32_t labels[3] = {7, 7, 1};
  float emb[6] = {0.1f, 0.2f, 0.3f, 0.4f, -0.5f, 0.6f};
  double sw[3] = {1, 0.5, 0};
  const char *json =
      "{\"inputs\": [{\"name\": \"labels\", \"shape\": [3], \"datatype\": "
      "\"INT32\", \"parameters\": {\"binary_data_size\": 12}}, {\"name\": "
      "\"embeddings\", \"shape\": [3, 2], \"datatype\": \"FP32\", "
      "\"parameters\": {\"binary_data_size\": 24}}, {\"name\": "
      "\"sample_weight\", \"shape\": [3], \"datatype\": \"FP64\", "
      "\"parameters\": {\"binary_data_size\": 24}}], \"parameters\": "
      "{\"binary_data_output\": true}}";
  circle_limits l;
  circle_limits_init(&l);
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode_body(body_make(json, labels, sizeof(labels), emb,
                                         sizeof(emb), sw, sizeof(sw), NULL),
                               &l, &req, &err),
                   0);
  ck_assert_uint_eq(req.n, 3);
  ck_assert_uint_eq(req.d, 2);
  ck_assert_int_eq(req.cfg.dtype, CIRCLE_DTYPE_FLOAT32);
  ck_assert_int_eq(req.labels[0], 7);
  ck_assert_int_eq(req.labels[2], 1);
  ck_assert_mem_eq(req.x, emb, sizeof(emb));
  ck_assert(((float *)req.sw)[1] == 0.5f);
  ck_assert_uint_eq(req.binary_outputs, CIRCLE_OUT_LOSS | CIRCLE_OUT_PER_SAMPLE |
                                            CIRCLE_OUT_GRAD);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_oip_should_widen_fp16_and_bf16) {
  /* FP16: 1, -2, 2^-24 (smallest subnormal), 65504 (largest), 0x3555
   * (0.333251953125), -0. BF16: 1, 3.140625, -0.0078125 (0xbc00). */
  uint16_t h[6] = {0x3c00, 0xc000, 0x0001, 0x7bff, 0x3555, 0x8000};
  uint16_t bf[3] = {0x3f80, 0x4049, 0xbc00};
  int64_t labels[3] = {1, 2, 3};
  const char *json = strf(
      "{\"inputs\": [{\"name\": \"labels\", \"shape\": [3], \"datatype\": "
      "\"INT64\", \"parameters\": {\"binary_data_size\": 24}}, {\"name\": "
      "\"embeddings\", \"shape\": [3, 2], \"datatype\": \"FP16\", "
      "\"parameters\": {\"binary_data_size\": 12}}, {\"name\": "
      "\"sample_weight\", \"shape\": [3], \"datatype\": \"BF16\", "
      "\"parameters\": {\"binary_data_size\": 6}}]}");
  circle_limits l;
  circle_limits_init(&l);
  circle_request req;
  circle_error err;
  /* bf16 -0.0078125 is a negative weight: fix it to a positive one. */
  bf[2] = 0x3c00; /* 0.0078125 */
  ck_assert_int_eq(decode_body(body_make(json, labels, sizeof(labels), h,
                                         sizeof(h), bf, sizeof(bf), NULL),
                               &l, &req, &err),
                   0);
  ck_assert_int_eq(req.cfg.dtype, CIRCLE_DTYPE_FLOAT32);
  ck_assert_int_eq(req.emb_datatype, CIRCLE_OIP_FP16);
  const float *x = req.x;
  ck_assert(x[0] == 1.0f);
  ck_assert(x[1] == -2.0f);
  ck_assert(x[2] == 0x1p-24f);
  ck_assert(x[3] == 65504.0f);
  ck_assert(x[4] == 0.333251953125f);
  ck_assert(x[5] == 0.0f && signbit(x[5]));
  const float *w = req.sw;
  ck_assert(w[0] == 1.0f && w[1] == 3.140625f && w[2] == 0.0078125f);
  circle_request_free(&req);
  /* FP16 infinity and NaN are refused, naming the element. */
  uint16_t bad[6] = {0x3c00, 0x3c00, 0x3c00, 0x7c00, 0, 0};
  expect_error_body(body_make(json, labels, sizeof(labels), bad, sizeof(bad),
                              bf, sizeof(bf), NULL),
                    &l, 400, "non_finite", "embeddings[1, 1] is inf",
                    (const char *)NULL);
  bad[3] = 0x7e00;
  expect_error_body(body_make(json, labels, sizeof(labels), bad, sizeof(bad),
                              bf, sizeof(bf), NULL),
                    &l, 400, "non_finite", "embeddings[1, 1] is nan",
                    (const char *)NULL);
}
END_TEST

/* JSON data for an FP16 or BF16 input must hold values of that datatype:
 * 70000 used to be accepted for FP16 (binary FP16 cannot say more than
 * 65504), and 3.4e38 for BF16 (largest 0x1.fep127). */
START_TEST(codec_oip_should_refuse_json_data_beyond_fp16_and_bf16) {
  const char *fp16 =
      "{\"inputs\": [" LABELS_JSON ", {\"name\": \"embeddings\", \"shape\": "
      "[2, 2], \"datatype\": \"FP16\", \"data\": [1, 0, %s, 1]}]}";
  EXPECT_JSON_ERROR(strf(fp16, "65505"), 400, "non_finite",
                    "input 'embeddings': element embeddings[1, 0] is 65505",
                    "FP16's largest finite value 65504");
  EXPECT_JSON_ERROR(strf(fp16, "-7e4"), 400, "non_finite", "is -7e+04", "FP16");
  EXPECT_JSON_ERROR(strf("{\"inputs\": [" LABELS_JSON ", " EMB_JSON ", {\"name\": "
                         "\"sample_weight\", \"shape\": [2], \"datatype\": "
                         "\"BF16\", \"data\": [1, 3.4e38]}]}"),
                    400, "non_finite", "sample_weight[1] is 3.4e+38",
                    "BF16's largest finite value 3.3895313892515355e+38");
  /* The largest values themselves are data of those types. */
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode_json(strf(fp16, "-65504"), &req, &err), 0);
  ck_assert(((const float *)req.x)[2] == -65504.0f);
  circle_request_free(&req);
  ck_assert_int_eq(
      decode_json(strf("{\"inputs\": [" LABELS_JSON ", {\"name\": \"embeddings\", "
                       "\"shape\": [2, 2], \"datatype\": \"BF16\", \"data\": "
                       "[1, 0, 3.3895313892515355e38, 1]}], \"parameters\": "
                       "{\"dtype\": \"float64\"}}"),
                  &req, &err),
      0);
  ck_assert(((const double *)req.x)[2] == 0x1.fep127);
  circle_request_free(&req);
}
END_TEST

/* The id is echoed in the response: bytes that are not UTF-8 used to come
 * back as U+FFFD, so the echo was not the id sent. Refused as config.name
 * is. */
START_TEST(codec_oip_should_refuse_an_id_that_is_not_utf8) {
  EXPECT_JSON_ERROR(with(", \"id\": \"req\x81-7\""), 400, "wrong_type",
                    "id is not valid UTF-8");
  EXPECT_JSON_ERROR(with(", \"id\": \"\xc0\xaf\""), 400, "wrong_type", "UTF-8");
  EXPECT_JSON_ERROR(with(", \"id\": \"\xed\xa0\x80\""), 400, "wrong_type", "UTF-8");
  /* Real UTF-8 comes back byte for byte. */
  const char *utf8 = "\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80";
  circle_request req;
  circle_error err;
  char extra[64];
  snprintf(extra, sizeof(extra), ", \"id\": \"%s\"", utf8);
  ck_assert_int_eq(decode_json(with(extra), &req, &err), 0);
  ck_assert_str_eq(req.id, utf8);
  circle_request_free(&req);
}
END_TEST

/* Same-width binary floats are copied and checked in blocks of 64: a bad
 * value must be found wherever it lies (a full block, the tail), named as
 * the element loop names it, and good data must arrive bit for bit. */
START_TEST(codec_oip_should_check_same_width_binary_floats_in_every_block) {
  enum { N = 50, D = 3 }; /* 150 values: two blocks of 64 and a tail of 22 */
  int64_t labels[N];
  float x[N * D], w[N];
  double xd[N * D];
  for (int i = 0; i < N; i++) {
    labels[i] = i % 4;
    w[i] = (float)(i % 3);
  }
  w[7] = -0.0f; /* not negative */
  for (int i = 0; i < N * D; i++) x[i] = xd[i] = 0.25 * (i % 7) - 0.5;
  const char *json32 = strf(
      "{\"inputs\": [{\"name\": \"labels\", \"shape\": [%d], \"datatype\": "
      "\"INT64\", \"parameters\": {\"binary_data_size\": %zu}}, {\"name\": "
      "\"embeddings\", \"shape\": [%d, %d], \"datatype\": \"FP32\", "
      "\"parameters\": {\"binary_data_size\": %zu}}, {\"name\": "
      "\"sample_weight\", \"shape\": [%d], \"datatype\": \"FP32\", "
      "\"parameters\": {\"binary_data_size\": %zu}}]}",
      N, sizeof labels, N, D, sizeof x, N, sizeof w);
  circle_limits l;
  circle_limits_init(&l);
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode_body(body_make(json32, labels, sizeof labels, x, sizeof x, w,
                                         sizeof w, NULL),
                               &l, &req, &err),
                   0);
  ck_assert_int_eq(memcmp(req.x, x, sizeof x), 0);
  ck_assert_int_eq(memcmp(req.sw, w, sizeof w), 0);
  circle_request_free(&req);
  /* inf in the second block, nan in the tail, the largest float is fine. */
  x[70] = INFINITY;
  expect_error_body(body_make(json32, labels, sizeof labels, x, sizeof x, w, sizeof w,
                              NULL),
                    &l, 400, "non_finite", "embeddings[23, 1] is inf", (const char *)NULL);
  x[70] = FLT_MAX;
  x[149] = NAN;
  expect_error_body(body_make(json32, labels, sizeof labels, x, sizeof x, w, sizeof w,
                              NULL),
                    &l, 400, "non_finite", "embeddings[49, 2] is nan", (const char *)NULL);
  x[149] = 1.0f;
  /* A negative weight at the very end. */
  w[N - 1] = -0.5f;
  expect_error_body(body_make(json32, labels, sizeof labels, x, sizeof x, w, sizeof w,
                              NULL),
                    &l, 400, "wrong_type", "sample_weight", "-0.5", ">= 0",
                    (const char *)NULL);
  w[N - 1] = 1.0f;
  /* float64 data computed in float64: the same, in the first block. */
  const char *json64 = strf(
      "{\"inputs\": [{\"name\": \"labels\", \"shape\": [%d], \"datatype\": "
      "\"INT64\", \"parameters\": {\"binary_data_size\": %zu}}, {\"name\": "
      "\"embeddings\", \"shape\": [%d, %d], \"datatype\": \"FP64\", "
      "\"parameters\": {\"binary_data_size\": %zu}}]}",
      N, sizeof labels, N, D, sizeof xd);
  ck_assert_int_eq(
      decode_body(body_make(json64, labels, sizeof labels, xd, sizeof xd, NULL), &l, &req,
                  &err),
      0);
  ck_assert_int_eq(req.cfg.dtype, CIRCLE_DTYPE_FLOAT64);
  ck_assert_int_eq(memcmp(req.x, xd, sizeof xd), 0);
  circle_request_free(&req);
  xd[5] = -INFINITY;
  expect_error_body(body_make(json64, labels, sizeof labels, xd, sizeof xd, NULL), &l, 400,
                    "non_finite", "embeddings[1, 2] is -inf", (const char *)NULL);
}
END_TEST

START_TEST(codec_oip_should_take_binary_n_by_1_labels_and_ref_sets) {
  int64_t labels[2] = {3, 4}, ref_labels[3] = {4, 4, 9};
  double emb[4] = {1, 2, 3, 4}, ref[6] = {1, 0, 0, 1, 1, 1};
  const char *json =
      "{\"inputs\": [{\"name\": \"labels\", \"shape\": [2, 1], \"datatype\": "
      "\"INT64\", \"parameters\": {\"binary_data_size\": 16}}, {\"name\": "
      "\"embeddings\", \"shape\": [2, 2], \"datatype\": \"FP64\", "
      "\"parameters\": {\"binary_data_size\": 32}}, {\"name\": "
      "\"ref_embeddings\", \"shape\": [3, 2], \"datatype\": \"FP64\", "
      "\"parameters\": {\"binary_data_size\": 48}}, {\"name\": \"ref_labels\", "
      "\"shape\": [3], \"datatype\": \"INT64\", \"parameters\": "
      "{\"binary_data_size\": 24}}], \"parameters\": {\"dtype\": "
      "\"float32\"}}";
  circle_limits l;
  circle_limits_init(&l);
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode_body(body_make(json, labels, sizeof(labels), emb,
                                         sizeof(emb), ref, sizeof(ref),
                                         ref_labels, sizeof(ref_labels), NULL),
                               &l, &req, &err),
                   0);
  ck_assert(req.has_ref);
  ck_assert_uint_eq(req.m, 3);
  ck_assert_int_eq(req.cfg.dtype, CIRCLE_DTYPE_FLOAT32); /* asked for */
  ck_assert_int_eq(req.ref_labels[2], 9);
  ck_assert(((float *)req.r)[5] == 1.0f);
  ck_assert(((float *)req.x)[3] == 4.0f);
  ck_assert_uint_eq(req.want & CIRCLE_OUT_REF_GRAD, CIRCLE_OUT_REF_GRAD);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_oip_should_read_int64_labels_exactly) {
  circle_request req;
  circle_error err;
  ck_assert_int_eq(
      decode_json("{\"inputs\": [{\"name\": \"labels\", \"shape\": [3, 1], "
                  "\"datatype\": \"INT64\", \"data\": [[9007199254740993], "
                  "[9007199254740992], [-9223372036854775808]]}, "
                  "{\"name\": \"embeddings\", \"shape\": [3, 1], \"datatype\": "
                  "\"FP32\", \"data\": [1, 2, 3]}]}",
                  &req, &err),
      0);
  ck_assert_int_eq(req.labels[0], 9007199254740993LL);
  ck_assert_int_eq(req.labels[1], 9007199254740992LL);
  ck_assert_int_eq(req.labels[2], INT64_MIN);
  circle_request_free(&req);
  EXPECT_JSON_ERROR("{\"inputs\": [{\"name\": \"labels\", \"shape\": [2], "
                    "\"datatype\": \"INT32\", \"data\": [1, 2147483648]}, " EMB_JSON "]}",
                    400, "bad_label", "labels[1] is 2147483648", "INT32");
  EXPECT_JSON_ERROR("{\"inputs\": [{\"name\": \"labels\", \"shape\": [2], "
                    "\"datatype\": \"INT32\", \"data\": [1, 9007199254740993]}, "
                    EMB_JSON "]}",
                    400, "bad_label", "labels[1] is outside the INT32 range");
  EXPECT_JSON_ERROR("{\"inputs\": [{\"name\": \"labels\", \"shape\": [2], "
                    "\"datatype\": \"INT64\", \"data\": [1, 9223372036854775808]}, "
                    EMB_JSON "]}",
                    400, "bad_label", "labels[1] is outside the INT64 range");
  EXPECT_JSON_ERROR("{\"inputs\": [{\"name\": \"labels\", \"shape\": [2], "
                    "\"datatype\": \"INT64\", \"data\": [1, 1.5]}, " EMB_JSON "]}",
                    400, "bad_label", "labels[1] is 1.5");
  EXPECT_JSON_ERROR("{\"inputs\": [{\"name\": \"labels\", \"shape\": [2], "
                    "\"datatype\": \"INT64\", \"data\": [1, \"a\"]}, " EMB_JSON "]}",
                    400, "bad_label", "labels[1] is a string");
}
END_TEST

START_TEST(codec_oip_should_take_parameters) {
  circle_request req;
  circle_error err;
  ck_assert_int_eq(
      decode_json(with(", \"parameters\": {\"gamma\": 16, \"margin\": 0.25, "
                       "\"remove_diagonal\": false, \"reduction\": \"none\", "
                       "\"normalize\": true, \"dtype\": \"float64\", \"tag\": "
                       "\"t1\", \"sequence_id\": 0, \"priority\": 1, "
                       "\"timeout\": 100}"),
                  &req, &err),
      0);
  ck_assert(req.cfg.gamma == 16 && req.cfg.margin == 0.25);
  ck_assert(!req.cfg.remove_diagonal);
  ck_assert_int_eq(req.cfg.reduction, CIRCLE_REDUCTION_NONE);
  ck_assert(req.cfg.normalize);
  ck_assert_int_eq(req.cfg.dtype, CIRCLE_DTYPE_FLOAT64); /* FP32 data, asked */
  ck_assert(((double *)req.x)[0] == 1.0);
  ck_assert_str_eq(req.tag, "t1");
  circle_request_free(&req);
  ck_assert_int_eq(decode_json(with(", \"parameters\": {\"reduction\": null}"), &req, &err), 0);
  ck_assert_int_eq(req.cfg.reduction, CIRCLE_REDUCTION_NULL);
  circle_request_free(&req);
  /* Server defaults seed the config. */
  circle_config def;
  circle_config_init(&def);
  def.gamma = 3;
  circle_limits l;
  circle_limits_init(&l);
  body_t b = body_make(with(""), NULL);
  circle_request_init(&req);
  ck_assert_int_eq(circle_oip_decode(b.data, b.len, b.header_len, &def, &l, &req, &err), 0);
  ck_assert(req.cfg.gamma == 3);
  free(b.data);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_oip_should_reject_bad_parameters) {
  EXPECT_JSON_ERROR(with(", \"parameters\": {\"gamma\": 0}"), 400, "bad_config",
                    "parameters.gamma is 0");
  EXPECT_JSON_ERROR(with(", \"parameters\": {\"reduction\": \"avg\"}"), 400,
                    "bad_config", "parameters.reduction is \"avg\"");
  EXPECT_JSON_ERROR(with(", \"parameters\": {\"gama\": 1}"), 400, "unknown_key",
                    "\"gama\" in parameters");
  EXPECT_JSON_ERROR(with(", \"parameters\": {\"gamma\": 1, \"gamma\": 2}"), 400,
                    "duplicate_key", "\"gamma\"");
  EXPECT_JSON_ERROR(with(", \"parameters\": {\"normalize\": \"yes\"}"), 400,
                    "bad_config", "parameters.normalize is a string");
  EXPECT_JSON_ERROR(with(", \"parameters\": {\"tag\": \"a/b\"}"), 400, "bad_tag",
                    "parameters.tag");
  EXPECT_JSON_ERROR(with(", \"parameters\": {\"binary_data_output\": 1}"), 400,
                    "wrong_type", "binary_data_output");
  EXPECT_JSON_ERROR(with(", \"parameters\": {\"stats\": \"no\"}"), 400,
                    "wrong_type", "parameters.stats is a string; expected true or false");
  EXPECT_JSON_ERROR(with(", \"parameters\": {\"retrieval\": 1}"), 400,
                    "wrong_type",
                    "parameters.retrieval is a number; expected true or false");
  EXPECT_JSON_ERROR(with(", \"parameters\": {\"retrieval\": \"true\"}"), 400,
                    "wrong_type", "parameters.retrieval is a string");
  EXPECT_JSON_ERROR(with(", \"parameters\": [1]"), 400, "wrong_type",
                    "parameters is an array");
  EXPECT_JSON_ERROR(with(", \"model_name\": \"resnet\""), 400, "wrong_type",
                    "model_name must be \"circle\"");
  EXPECT_JSON_ERROR(with(", \"model_version\": \"2\""), 400, "wrong_type",
                    "model_version");
  EXPECT_JSON_ERROR(with(", \"id\": 5"), 400, "wrong_type", "id must be a string");
  EXPECT_JSON_ERROR(with(", \"extra\": 5"), 400, "unknown_key", "\"extra\"");
}
END_TEST

START_TEST(codec_oip_should_follow_requested_outputs) {
  circle_request req;
  circle_error err;
  ck_assert_int_eq(
      decode_json(with(", \"outputs\": [{\"name\": \"embeddings_grad\", "
                       "\"parameters\": {\"binary_data\": true}}, {\"name\": "
                       "\"loss\"}], \"parameters\": {\"binary_data_output\": "
                       "false}"),
                  &req, &err),
      0);
  ck_assert_uint_eq(req.want, CIRCLE_OUT_GRAD | CIRCLE_OUT_LOSS | CIRCLE_OUT_STATS);
  ck_assert_uint_eq(req.binary_outputs, CIRCLE_OUT_GRAD);
  ck_assert_uint_eq(req.out_count, 2);
  ck_assert_uint_eq(req.out_order[0], CIRCLE_OUT_GRAD);
  ck_assert_uint_eq(req.out_order[1], CIRCLE_OUT_LOSS);
  circle_request_free(&req);
  /* The request-level default applies unless an output overrides it. */
  ck_assert_int_eq(
      decode_json(with(", \"outputs\": [{\"name\": \"loss\", \"parameters\": "
                       "{\"binary_data\": false}}, {\"name\": "
                       "\"per_sample_loss\"}], \"parameters\": "
                       "{\"binary_data_output\": true}"),
                  &req, &err),
      0);
  ck_assert_uint_eq(req.binary_outputs, CIRCLE_OUT_PER_SAMPLE);
  circle_request_free(&req);
  /* parameters.stats: false leaves the quality figures out; true (the
   * default) keeps them. */
  ck_assert_int_eq(
      decode_json(with(", \"outputs\": [{\"name\": \"loss\"}], \"parameters\": "
                       "{\"stats\": false}"),
                  &req, &err),
      0);
  ck_assert_uint_eq(req.want, CIRCLE_OUT_LOSS);
  circle_request_free(&req);
  ck_assert_int_eq(decode_json(with(", \"parameters\": {\"stats\": true}"), &req, &err), 0);
  ck_assert_uint_ne(req.want & CIRCLE_OUT_STATS, 0);
  /* parameters.retrieval: off by default; true adds the retrieval figures
   * (parameters too, never a tensor), with or without the stats. */
  ck_assert_uint_eq(req.want & CIRCLE_OUT_RETRIEVAL, 0);
  circle_request_free(&req);
  ck_assert_int_eq(
      decode_json(with(", \"outputs\": [{\"name\": \"loss\"}], \"parameters\": "
                       "{\"stats\": false, \"retrieval\": true}"),
                  &req, &err),
      0);
  ck_assert_uint_eq(req.want, CIRCLE_OUT_LOSS | CIRCLE_OUT_RETRIEVAL);
  ck_assert_uint_eq(req.out_count, 1);
  circle_request_free(&req);
  ck_assert_int_eq(
      decode_json(with(", \"parameters\": {\"retrieval\": false}"), &req, &err), 0);
  ck_assert_uint_eq(req.want & CIRCLE_OUT_RETRIEVAL, 0);
  ck_assert_uint_ne(req.want & CIRCLE_OUT_STATS, 0);
  circle_request_free(&req);
  /* It is a parameter, not an output. */
  EXPECT_JSON_ERROR(with(", \"outputs\": [{\"name\": \"retrieval\"}]"), 400,
                    "bad_output", "no output 'retrieval'");
  EXPECT_JSON_ERROR(with(", \"outputs\": [{\"name\": \"logits\"}]"), 400,
                    "bad_output", "no output 'logits'");
  EXPECT_JSON_ERROR(with(", \"outputs\": [{\"name\": \"loss\"}, {\"name\": \"loss\"}]"),
                    400, "bad_output", "'loss' is requested twice");
  EXPECT_JSON_ERROR(with(", \"outputs\": [{\"name\": \"ref_embeddings_grad\"}]"),
                    400, "bad_output", "needs the inputs ref_labels");
  EXPECT_JSON_ERROR(with(", \"outputs\": [{\"name\": \"loss\", \"parameters\": "
                         "{\"classification\": 3}}]"),
                    400, "bad_output", "classification");
  EXPECT_JSON_ERROR(with(", \"outputs\": []"), 400, "bad_output", "outputs is empty");
  EXPECT_JSON_ERROR(with(", \"outputs\": [\"loss\"]"), 400, "bad_output",
                    "outputs[0] is a string");
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Decoding errors                                                          */
/* ------------------------------------------------------------------------ */

START_TEST(codec_oip_should_check_binary_sizes_against_shapes) {
  int64_t labels[2] = {1, 2};
  float emb[4] = {1, 2, 3, 4};
  circle_limits l;
  circle_limits_init(&l);
  /* binary_data_size disagrees with the shape. */
  expect_error_body(
      body_make("{\"inputs\": [{\"name\": \"labels\", \"shape\": [2], "
                "\"datatype\": \"INT64\", \"parameters\": {\"binary_data_size\": "
                "16}}, {\"name\": \"embeddings\", \"shape\": [2, 3], "
                "\"datatype\": \"FP32\", \"parameters\": {\"binary_data_size\": "
                "16}}]}",
                labels, sizeof(labels), emb, sizeof(emb), NULL),
      &l, 400, "shape_mismatch",
      "input 'embeddings': binary_data_size is 16 bytes but shape [2, 3] of "
      "FP32 needs 24",
      (const char *)NULL);
  /* Truncated binary data. */
  const char *ok =
      "{\"inputs\": [{\"name\": \"labels\", \"shape\": [2], \"datatype\": "
      "\"INT64\", \"parameters\": {\"binary_data_size\": 16}}, {\"name\": "
      "\"embeddings\", \"shape\": [2, 2], \"datatype\": \"FP32\", "
      "\"parameters\": {\"binary_data_size\": 16}}]}";
  expect_error_body(body_make(ok, labels, sizeof(labels), emb, (size_t)10, NULL),
                    &l, 400, "shape_mismatch",
                    "input 'embeddings' needs 16 bytes", "only 10 bytes left",
                    "truncated", (const char *)NULL);
  expect_error_body(body_make(ok, NULL), &l, 400, "shape_mismatch",
                    "input 'labels' needs 16 bytes", (const char *)NULL);
  /* Bytes left over after the last input. */
  expect_error_body(body_make(ok, labels, sizeof(labels), emb, sizeof(emb),
                              "xx", (size_t)2, NULL),
                    &l, 400, "shape_mismatch", "2 bytes after the binary data",
                    (const char *)NULL);
  /* Binary bytes with no binary input. */
  expect_error_body(body_make(with(""), "abc", (size_t)3, NULL), &l, 400,
                    "shape_mismatch", "3 bytes after", (const char *)NULL);
  /* Both JSON data and binary_data_size. */
  EXPECT_JSON_ERROR("{\"inputs\": [{\"name\": \"labels\", \"shape\": [2], "
                    "\"datatype\": \"INT64\", \"data\": [1, 2], \"parameters\": "
                    "{\"binary_data_size\": 16}}, " EMB_JSON "]}",
                    400, "wrong_type", "both JSON data and binary_data_size");
  EXPECT_JSON_ERROR("{\"inputs\": [{\"name\": \"labels\", \"shape\": [2], "
                    "\"datatype\": \"INT64\", \"parameters\": "
                    "{\"binary_data_size\": -1}}, " EMB_JSON "]}",
                    400, "wrong_type", "binary_data_size must be an integer");
  /* A header length past the body. */
  circle_request req;
  circle_error err;
  circle_request_init(&req);
  ck_assert_int_eq(circle_oip_decode("{}", 2, 3, NULL, &l, &req, &err), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_error_http(err.kind), 400);
}
END_TEST

START_TEST(codec_oip_should_check_json_data_against_shapes) {
  EXPECT_JSON_ERROR("{\"inputs\": [" LABELS_JSON ", {\"name\": \"embeddings\", "
                    "\"shape\": [2, 2], \"datatype\": \"FP32\", \"data\": [1, 2, "
                    "3]}]}",
                    400, "shape_mismatch",
                    "input 'embeddings': data has 3 elements but shape [2, 2] "
                    "holds 4");
  EXPECT_JSON_ERROR("{\"inputs\": [" LABELS_JSON ", {\"name\": \"embeddings\", "
                    "\"shape\": [2, 2], \"datatype\": \"FP32\", \"data\": [[1, "
                    "2], [3, 4, 5]]}]}",
                    400, "shape_mismatch", "data has 5 elements");
  EXPECT_JSON_ERROR("{\"inputs\": [" LABELS_JSON ", {\"name\": \"embeddings\", "
                    "\"shape\": [2, 2], \"datatype\": \"FP32\", \"data\": [1, 2, "
                    "3, \"4\"]}]}",
                    400, "wrong_type", "element embeddings[1, 1] is a string");
  EXPECT_JSON_ERROR("{\"inputs\": [" LABELS_JSON ", {\"name\": \"embeddings\", "
                    "\"shape\": [2, 2], \"datatype\": \"FP32\", \"data\": [1, 2, "
                    "3, 1e39]}]}",
                    400, "non_finite", "embeddings[1, 1] is 1e+39",
                    "overflows float32");
  EXPECT_JSON_ERROR("{\"inputs\": [" LABELS_JSON ", {\"name\": \"embeddings\", "
                    "\"shape\": [2, 2], \"datatype\": \"FP32\", \"data\": "
                    "{\"a\": 1}}]}",
                    400, "wrong_type", "data is an object");
  EXPECT_JSON_ERROR("{\"inputs\": [" LABELS_JSON ", " EMB_JSON ", {\"name\": "
                    "\"sample_weight\", \"shape\": [2], \"datatype\": \"FP32\", "
                    "\"data\": [1, -1]}]}",
                    400, "wrong_type", "sample_weight[1] is -1", ">= 0");
}
END_TEST

START_TEST(codec_oip_should_check_names_types_and_shapes) {
  EXPECT_JSON_ERROR("{\"inputs\": [" LABELS_JSON "]}", 400, "missing_field",
                    "input 'embeddings' is missing");
  EXPECT_JSON_ERROR("{\"inputs\": [" EMB_JSON "]}", 400, "missing_field",
                    "input 'labels' is missing");
  EXPECT_JSON_ERROR("{\"outputs\": []}", 400, "missing_field", "inputs is missing");
  EXPECT_JSON_ERROR("{\"inputs\": {}}", 400, "wrong_type", "inputs is an object");
  EXPECT_JSON_ERROR("[1]", 400, "wrong_type", "inference request is an array");
  EXPECT_JSON_ERROR("{\"inputs\": [" LABELS_JSON ", " EMB_JSON ", {\"name\": "
                    "\"logits\", \"shape\": [1], \"datatype\": \"FP32\", "
                    "\"data\": [1]}]}",
                    400, "unknown_key", "no input 'logits'");
  EXPECT_JSON_ERROR("{\"inputs\": [" LABELS_JSON ", " EMB_JSON ", " LABELS_JSON "]}",
                    400, "duplicate_key",
                    "input 'labels' is given twice (inputs[0] and inputs[2])");
  EXPECT_JSON_ERROR("{\"inputs\": [{\"name\": \"labels\", \"shape\": [2], "
                    "\"datatype\": \"FP32\", \"data\": [1, 2]}, " EMB_JSON "]}",
                    400, "wrong_type",
                    "input 'labels' has datatype \"FP32\"; expected INT32 or "
                    "INT64");
  EXPECT_JSON_ERROR("{\"inputs\": [" LABELS_JSON ", {\"name\": \"embeddings\", "
                    "\"shape\": [2, 2], \"datatype\": \"INT64\", \"data\": [1, "
                    "0, 0, 1]}]}",
                    400, "wrong_type", "input 'embeddings' has datatype \"INT64\"");
  EXPECT_JSON_ERROR("{\"inputs\": [" LABELS_JSON ", {\"name\": \"embeddings\", "
                    "\"shape\": [2, 2], \"datatype\": \"BYTES\", \"data\": [1, "
                    "0, 0, 1]}]}",
                    400, "wrong_type", "\"BYTES\"");
  EXPECT_JSON_ERROR("{\"inputs\": [" LABELS_JSON ", {\"name\": \"embeddings\", "
                    "\"shape\": [4], \"datatype\": \"FP32\", \"data\": [1, 0, 0, "
                    "1]}]}",
                    400, "shape_mismatch", "input 'embeddings' has rank 1",
                    "[N, D]");
  EXPECT_JSON_ERROR("{\"inputs\": [{\"name\": \"labels\", \"shape\": [1, 2], "
                    "\"datatype\": \"INT64\", \"data\": [1, 2]}, " EMB_JSON "]}",
                    400, "shape_mismatch", "[N] or [N, 1]");
  EXPECT_JSON_ERROR("{\"inputs\": [{\"name\": \"labels\", \"shape\": [3], "
                    "\"datatype\": \"INT64\", \"data\": [1, 2, 3]}, " EMB_JSON "]}",
                    400, "shape_mismatch",
                    "input 'embeddings' has 2 rows; expected 3");
  EXPECT_JSON_ERROR("{\"inputs\": [{\"name\": \"labels\", \"shape\": [-1], "
                    "\"datatype\": \"INT64\", \"data\": [1]}, " EMB_JSON "]}",
                    400, "wrong_type", "shape[0] is not an integer");
  EXPECT_JSON_ERROR("{\"inputs\": [{\"name\": \"labels\", \"shape\": [0], "
                    "\"datatype\": \"INT64\", \"data\": []}, {\"name\": "
                    "\"embeddings\", \"shape\": [0, 2], \"datatype\": \"FP32\", "
                    "\"data\": []}]}",
                    400, "empty_batch", "input 'labels' has shape [0]");
  EXPECT_JSON_ERROR("{\"inputs\": [{\"name\": \"labels\", \"shape\": [1], "
                    "\"datatype\": \"INT64\", \"data\": [1]}, {\"name\": "
                    "\"embeddings\", \"shape\": [1, 0], \"datatype\": \"FP32\", "
                    "\"data\": []}]}",
                    400, "shape_mismatch", "[1, 0]");
  EXPECT_JSON_ERROR("{\"inputs\": [" LABELS_JSON ", " EMB_JSON ", {\"name\": "
                    "\"sample_weight\", \"shape\": [3], \"datatype\": \"FP32\", "
                    "\"data\": [1, 1, 1]}]}",
                    400, "shape_mismatch", "'sample_weight' has 3 elements");
  EXPECT_JSON_ERROR("{\"inputs\": [" LABELS_JSON ", " EMB_JSON ", {\"name\": "
                    "\"ref_labels\", \"shape\": [1], \"datatype\": \"INT64\", "
                    "\"data\": [1]}]}",
                    400, "half_reference",
                    "input 'ref_labels' is given without 'ref_embeddings'");
  EXPECT_JSON_ERROR("{\"inputs\": [" LABELS_JSON ", " EMB_JSON ", {\"name\": "
                    "\"ref_labels\", \"shape\": [1], \"datatype\": \"INT64\", "
                    "\"data\": [1]}, {\"name\": \"ref_embeddings\", \"shape\": "
                    "[1, 3], \"datatype\": \"FP32\", \"data\": [1, 2, 3]}]}",
                    400, "shape_mismatch",
                    "'ref_embeddings' has shape [1, 3]; expected [1, 2]");
  EXPECT_JSON_ERROR("{\"inputs\": [{\"name\": \"labels\", \"shape\": [2], "
                    "\"datatype\": \"INT64\", \"data\": [1, 2], \"parameters\": "
                    "{\"shared_memory_region\": \"r\"}}, " EMB_JSON "]}",
                    400, "wrong_type", "shared memory");
  EXPECT_JSON_ERROR("{\"inputs\": [{\"name\": \"labels\", \"shape\": [2], "
                    "\"datatype\": \"INT64\"}, " EMB_JSON "]}",
                    400, "missing_field", "input 'labels' has no data");
  EXPECT_JSON_ERROR("{\"inputs\": [{\"shape\": [2], \"datatype\": \"INT64\", "
                    "\"data\": [1, 2]}, " EMB_JSON "]}",
                    400, "missing_field", "inputs[0].name is missing");
  EXPECT_JSON_ERROR("{\"inputs\": [{\"name\": \"labels\", \"shape\": [2], "
                    "\"datatype\": \"INT64\", \"data\": [1, 2], \"dims\": [2]}, "
                    EMB_JSON "]}",
                    400, "unknown_key", "\"dims\" in inputs[0]");
  /* KServe's content_type input parameter is accepted and ignored. */
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode_json("{\"inputs\": [{\"name\": \"labels\", \"shape\": "
                               "[2], \"datatype\": \"INT64\", \"data\": [1, 2], "
                               "\"parameters\": {\"content_type\": \"np\"}}, "
                               EMB_JSON "]}",
                               &req, &err),
                   0);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_oip_should_enforce_limits) {
  circle_limits l;
  circle_limits_init(&l);
  l.max_n = 1;
  expect_error_body(body_make(with(""), NULL), &l, 413, "limit_exceeded",
                    "N = 2 exceeds this server's limit of 1", (const char *)NULL);
  circle_limits_init(&l);
  l.max_d = 1;
  expect_error_body(body_make(with(""), NULL), &l, 413, "limit_exceeded",
                    "D = 2", (const char *)NULL);
  circle_limits_init(&l);
  l.max_pairs = 3;
  expect_error_body(body_make(with(""), NULL), &l, 413, "limit_exceeded",
                    "2 x 2 = 4 pairs", (const char *)NULL);
  circle_limits_init(&l);
  l.max_m = 1;
  expect_error_body(
      body_make("{\"inputs\": [" LABELS_JSON ", " EMB_JSON ", {\"name\": "
                "\"ref_labels\", \"shape\": [2], \"datatype\": \"INT64\", "
                "\"data\": [1, 2]}, {\"name\": \"ref_embeddings\", \"shape\": "
                "[2, 2], \"datatype\": \"FP32\", \"data\": [1, 2, 3, 4]}]}",
                NULL),
      &l, 413, "limit_exceeded", "M = 2", (const char *)NULL);
  /* A huge claimed shape is refused before anything is allocated. */
  circle_limits_init(&l);
  expect_error_body(
      body_make("{\"inputs\": [{\"name\": \"labels\", \"shape\": [4000000000], "
                "\"datatype\": \"INT64\", \"parameters\": {\"binary_data_size\": "
                "32000000000}}, " EMB_JSON "]}",
                NULL),
      &l, 400, "shape_mismatch", "needs 32000000000 bytes", (const char *)NULL);
  /* Deep nesting: refused by the pre-scan. */
  char *deep = malloc(100002);
  memset(deep, '[', 100000);
  deep[100000] = '\0';
  expect_error_body(body_make(deep, NULL), &l, 400, "limit_exceeded",
                    "nesting deeper than 32", (const char *)NULL);
  free(deep);
}
END_TEST

/* n copies of s appended to b. */
static void puts_n(circle_buf *b, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) circle_buf_puts(b, s);
}

/* JSON data used to become a cJSON node (about 80 bytes) per element: 40
 * times the body. Now every input's data is read from the text and the
 * rest of the header may hold no more values than a request needs. With
 * the address space capped at 6 bodies above what the test holds, a
 * decoder that builds a tree of the data runs out of memory (503). */
START_TEST(codec_oip_should_decode_within_a_small_multiple_of_the_body) {
  circle_buf data, outputs, longer;
  circle_buf_init(&data);
  circle_buf_puts(&data, "{\"inputs\": [{\"name\": \"labels\", \"shape\": [2048], "
                         "\"datatype\": \"INT64\", \"data\": [");
  puts_n(&data, "0,", 2047);
  circle_buf_puts(&data, "0]}, {\"name\": \"embeddings\", \"shape\": [2048, 4096], "
                         "\"datatype\": \"FP32\", \"data\": [");
  puts_n(&data, "0,", 2048 * 4096 - 1); /* 16 MiB */
  circle_buf_puts(&data, "\"x\"]}]}");
  circle_buf_init(&outputs);
  circle_buf_puts(&outputs, "{\"inputs\": [" LABELS_JSON ", " EMB_JSON "], \"outputs\": [");
  puts_n(&outputs, "{\"name\": \"loss\"}, ", 1 << 20);
  circle_buf_puts(&outputs, "{\"name\": \"loss\"}]}");
  /* More data than the shape holds is counted, not stored. */
  circle_buf_init(&longer);
  circle_buf_puts(&longer, "{\"inputs\": [" LABELS_JSON ", {\"name\": \"embeddings\", "
                           "\"shape\": [2, 2], \"datatype\": \"FP64\", \"data\": [[");
  puts_n(&longer, "1,", (size_t)8 << 20);
  circle_buf_puts(&longer, "1]]}]}");
  ck_assert(!data.failed && !outputs.failed && !longer.failed);
  ck_assert(util_cap_address_space(6 * longer.len + ((size_t)64 << 20)));
  circle_limits l;
  circle_limits_init(&l);
  body_t b = {strdup(data.data), data.len, data.len};
  expect_error_body(b, &l, 400, "wrong_type",
                    "input 'embeddings': element embeddings[2047, 4095] is a "
                    "string; expected a number",
                    (const char *)NULL);
  b = (body_t){strdup(outputs.data), outputs.len, outputs.len};
  expect_error_body(b, &l, 413, "limit_exceeded", "JSON values and keys besides",
                    (const char *)NULL);
  b = (body_t){strdup(longer.data), longer.len, longer.len};
  expect_error_body(b, &l, 400, "shape_mismatch",
                    "data has 8388609 elements but shape [2, 2] holds 4",
                    (const char *)NULL);
  circle_buf_free(&data);
  circle_buf_free(&outputs);
  circle_buf_free(&longer);
}
END_TEST

START_TEST(codec_oip_should_report_invalid_json_with_the_byte_offset) {
  EXPECT_JSON_ERROR("{\"inputs\": [1,]}", 400, "invalid_json", "byte 14");
  EXPECT_JSON_ERROR("{\"inputs\": [{\"name\": \"labels\", \"shape\": [2], "
                    "\"datatype\": \"INT64\", \"data\": [1, 2], \"name\": \"x\"}, "
                    EMB_JSON "]}",
                    400, "duplicate_key", "\"name\" in inputs[0]");
}
END_TEST

START_TEST(codec_oip_should_refuse_bad_arguments) {
  circle_limits l;
  circle_limits_init(&l);
  circle_request req;
  circle_request_init(&req);
  circle_error err;
  ck_assert_int_eq(circle_oip_decode("{}", 2, 2, NULL, NULL, &req, &err), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_error_http(err.kind), 500);
  ck_assert_int_eq(circle_oip_decode("{}", 2, 2, NULL, &l, NULL, &err), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_oip_decode("{}", 2, 2, NULL, &l, &req, NULL), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_oip_decode(NULL, 2, 2, NULL, &l, &req, &err), CIRCLE_EINVAL);
  circle_output out;
  memset(&out, 0, sizeof(out));
  circle_buf b;
  circle_buf_init(&b);
  size_t hl;
  ck_assert_int_eq(circle_oip_encode(NULL, &out, &b, &hl), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_oip_encode(&req, NULL, &b, &hl), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_oip_encode(&req, &out, NULL, &hl), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_oip_encode(&req, &out, &b, NULL), CIRCLE_EINVAL);
  circle_oip_error(NULL, &b);
  circle_oip_error(&err, NULL);
  circle_oip_model_metadata(NULL);
  circle_oip_server_metadata(NULL, "1");
  circle_config cfg;
  circle_config_init(&cfg);
  circle_oip_model_config(NULL, &cfg);
  circle_oip_model_config(&b, NULL);
  ck_assert_uint_eq(b.len, 0);
  circle_buf_free(&b);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Encoding                                                                 */
/* ------------------------------------------------------------------------ */

static cJSON *parse_prefix(const char *p, size_t n) {
  const char *end;
  cJSON *j = cJSON_ParseWithLengthOpts(p, n, &end, 0);
  ck_assert_msg(j != NULL && end == p + n, "not JSON: %.*s", (int)n, p);
  return j;
}

static const cJSON *find_output(const cJSON *root, const char *name) {
  const cJSON *o;
  cJSON_ArrayForEach(o, cJSON_GetObjectItem(root, "outputs")) {
    if (strcmp(cJSON_GetObjectItem(o, "name")->valuestring, name) == 0) return o;
  }
  return NULL;
}

START_TEST(codec_oip_should_encode_json_outputs) {
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode_json(with(", \"id\": \"abc\""), &req, &err), 0);
  float per[2] = {0.5f, 0.25f}, grad[4] = {1, -2, 0.1f, 4};
  circle_output out;
  memset(&out, 0, sizeof(out));
  out.want = req.want;
  out.loss = 0.375;
  out.per_sample = per;
  out.grad = grad;
  out.stats.recall_at_1 = 1;
  out.stats.pos_pairs = 2;
  circle_buf b;
  circle_buf_init(&b);
  size_t hl = 0;
  ck_assert_int_eq(circle_oip_encode(&req, &out, &b, &hl), 0);
  ck_assert_uint_eq(hl, b.len); /* no binary part */
  cJSON *j = parse_prefix(b.data, hl);
  ck_assert_str_eq(cJSON_GetObjectItem(j, "model_name")->valuestring, "circle");
  ck_assert_str_eq(cJSON_GetObjectItem(j, "model_version")->valuestring, "1");
  ck_assert_str_eq(cJSON_GetObjectItem(j, "id")->valuestring, "abc");
  const cJSON *loss = find_output(j, "loss");
  ck_assert_str_eq(cJSON_GetObjectItem(loss, "datatype")->valuestring, "FP32");
  ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(loss, "shape")), 1);
  ck_assert_int_eq(cJSON_GetObjectItem(loss, "shape")->child->valueint, 1);
  ck_assert(cJSON_GetObjectItem(loss, "data")->child->valuedouble == 0.375);
  const cJSON *g = find_output(j, "embeddings_grad");
  const cJSON *gs = cJSON_GetObjectItem(g, "shape");
  ck_assert_int_eq(gs->child->valueint, 2);
  ck_assert_int_eq(gs->child->next->valueint, 2);
  const cJSON *gd = cJSON_GetObjectItem(g, "data");
  ck_assert_int_eq(cJSON_GetArraySize(gd), 4);
  ck_assert((float)gd->child->next->next->valuedouble == 0.1f);
  ck_assert_ptr_null(find_output(j, "ref_embeddings_grad"));
  const cJSON *params = cJSON_GetObjectItem(j, "parameters");
  ck_assert(cJSON_GetObjectItem(params, "recall_at_1")->valuedouble == 1);
  ck_assert_int_eq(cJSON_GetObjectItem(params, "pos_pairs")->valueint, 2);
  /* Canonical order without requested outputs. */
  ck_assert(strstr(b.data, "\"loss\"") < strstr(b.data, "\"per_sample_loss\""));
  ck_assert(strstr(b.data, "\"per_sample_loss\"") < strstr(b.data, "\"embeddings_grad\""));
  cJSON_Delete(j);
  circle_buf_free(&b);
  circle_request_free(&req);
}
END_TEST

/* The retrieval figures join the stats in the response parameters, named
 * retrieval_<figure>; without the stats they are the parameters alone, and
 * with neither there are none. Binary outputs are unaffected. */
START_TEST(codec_oip_should_encode_the_retrieval_figures_as_parameters) {
  for (int stats = 0; stats < 2; stats++) {
    circle_request req;
    circle_error err;
    ck_assert_int_eq(
        decode_json(with(stats ? ", \"parameters\": {\"retrieval\": true, "
                                 "\"binary_data_output\": true}"
                               : ", \"parameters\": {\"retrieval\": true, "
                                 "\"stats\": false, \"binary_data_output\": true}"),
                    &req, &err),
        0);
    float per[2] = {0.5f, 0.25f}, grad[4] = {1, -2, 0.1f, 4};
    circle_output out;
    memset(&out, 0, sizeof(out));
    out.want = req.want;
    out.loss = 0.375;
    out.per_sample = per;
    out.grad = grad;
    out.stats.recall_at_1 = 1;
    out.stats.pos_pairs = 2;
    out.retrieval.precision_at_1 = 0.5;
    out.retrieval.r_precision = 0.25;
    out.retrieval.map_at_r = 1.0 / 3;
    out.retrieval.queries = 2;
    circle_buf b;
    circle_buf_init(&b);
    size_t hl = 0;
    ck_assert_int_eq(circle_oip_encode(&req, &out, &b, &hl), 0);
    /* loss (one float), per_sample_loss (2) and embeddings_grad (4) follow
     * the header as bytes. */
    ck_assert_uint_eq(b.len - hl, 7 * sizeof(float));
    cJSON *j = parse_prefix(b.data, hl);
    const cJSON *params = cJSON_GetObjectItem(j, "parameters");
    ck_assert(cJSON_IsObject(params));
    ck_assert_int_eq(cJSON_GetArraySize(params), stats ? 12 + 4 : 4);
    ck_assert(cJSON_GetObjectItem(params, "retrieval_precision_at_1")->valuedouble == 0.5);
    ck_assert(cJSON_GetObjectItem(params, "retrieval_r_precision")->valuedouble == 0.25);
    ck_assert(cJSON_GetObjectItem(params, "retrieval_map_at_r")->valuedouble == 1.0 / 3);
    ck_assert(cJSON_IsNumber(cJSON_GetObjectItem(params, "retrieval_queries")));
    ck_assert_int_eq(cJSON_GetObjectItem(params, "retrieval_queries")->valueint, 2);
    ck_assert_int_eq(cJSON_GetObjectItem(params, "recall_at_1") != NULL, stats);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "outputs")), 3);
    cJSON_Delete(j);
    circle_buf_free(&b);
    circle_request_free(&req);
  }
  /* Neither: no parameters at all. */
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode_json(with(", \"parameters\": {\"stats\": false}"), &req,
                               &err),
                   0);
  float per[2] = {0}, grad[4] = {0};
  circle_output out;
  memset(&out, 0, sizeof(out));
  out.want = CIRCLE_OUT_ALL; /* what the engine filled does not matter */
  out.per_sample = per;
  out.grad = grad;
  circle_buf b;
  circle_buf_init(&b);
  size_t hl = 0;
  ck_assert_int_eq(circle_oip_encode(&req, &out, &b, &hl), 0);
  ck_assert_ptr_null(strstr(b.data, "\"parameters\""));
  ck_assert_ptr_null(strstr(b.data, "retrieval"));
  circle_buf_free(&b);
  circle_request_free(&req);
}
END_TEST

/* A half-precision dtype, by name or as a serialized DTypePolicy: FP64
 * inputs are rounded once to the format, and the outputs go out as FP16 /
 * BF16, JSON or binary (bits as numpy writes them). Without parameters.dtype
 * FP64 embeddings still compute in float64, whatever the server default. */
START_TEST(codec_oip_should_compute_a_half_dtype_and_return_its_tensors) {
  static const char *const dtypes[] = {
      "\"mixed_float16\"",
      "{\"module\": \"keras\", \"class_name\": \"DTypePolicy\", \"config\": "
      "{\"name\": \"bfloat16\"}, \"registered_name\": null}"};
  for (int k = 0; k < 2; k++) {
    circle_request req;
    circle_error err;
    ck_assert_int_eq(
        decode_json(strf("{\"inputs\": [" LABELS_JSON ", {\"name\": "
                         "\"embeddings\", \"shape\": [2, 2], \"datatype\": "
                         "\"FP64\", \"data\": [0.1, 0, 0, 1]}], \"outputs\": "
                         "[{\"name\": \"per_sample_loss\", \"parameters\": "
                         "{\"binary_data\": true}}, {\"name\": \"loss\"}], "
                         "\"parameters\": {\"dtype\": %s}}",
                         dtypes[k]),
                    &req, &err),
        0);
    circle_half h = k ? CIRCLE_HALF_BFLOAT16 : CIRCLE_HALF_FLOAT16;
    ck_assert_int_eq(req.cfg.dtype, CIRCLE_DTYPE_FLOAT32);
    ck_assert_int_eq(req.cfg.half, h);
    ck_assert(((float *)req.x)[0] == (k ? 0.10009765625f : 0.0999755859375f));
    float per[2] = {1.0f / 3, -2};
    circle_output out;
    memset(&out, 0, sizeof(out));
    out.want = req.want;
    out.loss = 0.375;
    out.per_sample = per;
    circle_input in = {.n = 2, .d = 2};
    ck_assert_int_eq(circle_output_round(&req.cfg, &in, &out, NULL, 0), 0);
    circle_buf b;
    circle_buf_init(&b);
    size_t hl = 0;
    ck_assert_int_eq(circle_oip_encode(&req, &out, &b, &hl), 0);
    ck_assert_uint_eq(b.len, hl + 4);
    cJSON *j = parse_prefix(b.data, hl);
    const char *type = k ? "BF16" : "FP16";
    const cJSON *loss = find_output(j, "loss");
    ck_assert_str_eq(cJSON_GetObjectItem(loss, "datatype")->valuestring, type);
    ck_assert(cJSON_GetObjectItem(loss, "data")->child->valuedouble == 0.375);
    const cJSON *ps = find_output(j, "per_sample_loss");
    ck_assert_str_eq(cJSON_GetObjectItem(ps, "datatype")->valuestring, type);
    ck_assert_int_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(ps, "parameters"),
                                         "binary_data_size")->valueint, 4);
    /* numpy: float16(1/3) is 0x3555, bfloat16(1/3) 0x3eab; -2: 0xc000. */
    uint16_t bits[2];
    memcpy(bits, b.data + hl, 4);
    ck_assert_uint_eq(bits[0], k ? 0x3eab : 0x3555);
    ck_assert_uint_eq(bits[1], 0xc000);
    cJSON_Delete(j);
    circle_buf_free(&b);
    circle_request_free(&req);
  }
  /* float16 subnormal and largest value bits. */
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode_json(with(", \"outputs\": [{\"name\": "
                                    "\"per_sample_loss\", \"parameters\": "
                                    "{\"binary_data\": true}}], \"parameters\": "
                                    "{\"dtype\": \"float16\"}"),
                               &req, &err),
                   0);
  float per[2] = {0x1p-24f, -65504};
  circle_output out;
  memset(&out, 0, sizeof(out));
  out.want = req.want;
  out.per_sample = per;
  circle_buf b;
  circle_buf_init(&b);
  size_t hl = 0;
  ck_assert_int_eq(circle_oip_encode(&req, &out, &b, &hl), 0);
  uint16_t bits[2];
  memcpy(bits, b.data + hl, 4);
  ck_assert_uint_eq(bits[0], 0x0001);
  ck_assert_uint_eq(bits[1], 0xfbff);
  circle_buf_free(&b);
  circle_request_free(&req);

  /* No dtype parameter: FP64 embeddings compute in float64 even when the
   * server's default is a half format. */
  circle_config dflt;
  circle_config_init(&dflt);
  dflt.half = CIRCLE_HALF_FLOAT16;
  const char *json = strf("{\"inputs\": [" LABELS_JSON ", {\"name\": "
                          "\"embeddings\", \"shape\": [2, 2], \"datatype\": "
                          "\"FP64\", \"data\": [0.1, 0, 0, 1]}]}");
  circle_limits l;
  circle_limits_init(&l);
  circle_request_init(&req);
  ck_assert_int_eq(circle_oip_decode(json, strlen(json), strlen(json), &dflt,
                                     &l, &req, &err), 0);
  ck_assert_int_eq(req.cfg.dtype, CIRCLE_DTYPE_FLOAT64);
  ck_assert_int_eq(req.cfg.half, CIRCLE_HALF_NONE);
  ck_assert(((double *)req.x)[0] == 0.1);
  circle_request_free(&req);
  /* FP32 embeddings take the half default. */
  ck_assert_int_eq(circle_oip_decode(with(""), strlen(with("")), strlen(with("")),
                                     &dflt, &l, &req, &err), 0);
  ck_assert_int_eq(req.cfg.half, CIRCLE_HALF_FLOAT16);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_oip_should_refuse_other_dtypes_and_half_overflow) {
  EXPECT_JSON_ERROR(with(", \"parameters\": {\"dtype\": \"int32\"}"), 400,
                    "bad_config", "parameters.dtype is \"int32\"",
                    "\"mixed_bfloat16\"", "DTypePolicy");
  EXPECT_JSON_ERROR(with(", \"parameters\": {\"dtype\": {\"class_name\": "
                         "\"DTypePolicy\", \"config\": {\"name\": \"half\"}}}"),
                    400, "bad_config", "parameters.dtype.config.name is \"half\"");
  EXPECT_JSON_ERROR(strf("{\"inputs\": [" LABELS_JSON ", {\"name\": "
                         "\"embeddings\", \"shape\": [2, 2], \"datatype\": "
                         "\"FP32\", \"data\": [1, 0, 0, 7e4]}], \"parameters\": "
                         "{\"dtype\": \"float16\"}}"),
                    400, "non_finite", "input 'embeddings': element "
                    "embeddings[1, 1] is 7e+04, beyond float16's largest "
                    "finite value 65504");
}
END_TEST

START_TEST(codec_oip_should_encode_binary_outputs_after_the_json) {
  circle_request req;
  circle_error err;
  ck_assert_int_eq(
      decode_json(strf("{\"inputs\": [" LABELS_JSON ", {\"name\": "
                       "\"embeddings\", \"shape\": [2, 2], \"datatype\": "
                       "\"FP64\", \"data\": [1, 0, 0, 1]}], \"outputs\": "
                       "[{\"name\": \"embeddings_grad\", \"parameters\": "
                       "{\"binary_data\": true}}, {\"name\": \"loss\"}, "
                       "{\"name\": \"per_sample_loss\", \"parameters\": "
                       "{\"binary_data\": true}}], \"parameters\": "
                       "{\"reduction\": \"none\"}}"),
                  &req, &err),
      0);
  ck_assert_int_eq(req.cfg.dtype, CIRCLE_DTYPE_FLOAT64);
  double lv[2] = {0.1, 0.2}, per[2] = {1.0 / 3, 2}, grad[4] = {1, 2, 3, 4};
  circle_output out;
  memset(&out, 0, sizeof(out));
  out.want = req.want;
  out.loss_values = lv;
  out.per_sample = per;
  out.grad = grad;
  circle_buf b;
  circle_buf_init(&b);
  size_t hl = 0;
  ck_assert_int_eq(circle_oip_encode(&req, &out, &b, &hl), 0);
  ck_assert_uint_eq(b.len, hl + sizeof(grad) + sizeof(per));
  /* Binary parts in output order: embeddings_grad, then per_sample_loss. */
  ck_assert_mem_eq(b.data + hl, grad, sizeof(grad));
  ck_assert_mem_eq(b.data + hl + sizeof(grad), per, sizeof(per));
  cJSON *j = parse_prefix(b.data, hl);
  const cJSON *o = cJSON_GetObjectItem(j, "outputs")->child;
  ck_assert_str_eq(cJSON_GetObjectItem(o, "name")->valuestring, "embeddings_grad");
  ck_assert_str_eq(cJSON_GetObjectItem(o, "datatype")->valuestring, "FP64");
  ck_assert_int_eq(
      cJSON_GetObjectItem(cJSON_GetObjectItem(o, "parameters"), "binary_data_size")->valueint,
      32);
  ck_assert_ptr_null(cJSON_GetObjectItem(o, "data"));
  o = o->next;
  ck_assert_str_eq(cJSON_GetObjectItem(o, "name")->valuestring, "loss");
  ck_assert_int_eq(cJSON_GetObjectItem(o, "shape")->child->valueint, 2); /* [N] */
  ck_assert(cJSON_GetObjectItem(o, "data")->child->next->valuedouble == 0.2);
  o = o->next;
  ck_assert_str_eq(cJSON_GetObjectItem(o, "name")->valuestring, "per_sample_loss");
  ck_assert_int_eq(
      cJSON_GetObjectItem(cJSON_GetObjectItem(o, "parameters"), "binary_data_size")->valueint,
      16);
  ck_assert_ptr_null(o->next);
  cJSON_Delete(j);
  circle_buf_free(&b);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_oip_should_encode_a_binary_scalar_loss) {
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode_json(with(", \"outputs\": [{\"name\": \"loss\", "
                                    "\"parameters\": {\"binary_data\": true}}]"),
                               &req, &err),
                   0);
  circle_output out;
  memset(&out, 0, sizeof(out));
  out.want = req.want;
  out.loss = 1.5;
  circle_buf b;
  circle_buf_init(&b);
  size_t hl = 0;
  ck_assert_int_eq(circle_oip_encode(&req, &out, &b, &hl), 0);
  ck_assert_uint_eq(b.len, hl + 4);
  float f;
  memcpy(&f, b.data + hl, 4);
  ck_assert(f == 1.5f);
  ck_assert(strstr(b.data, "\"shape\": [1]") != NULL);
  circle_buf_free(&b);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_oip_should_write_metadata_and_errors) {
  circle_buf b;
  circle_buf_init(&b);
  circle_oip_model_metadata(&b);
  cJSON *j = parse_prefix(b.data, b.len);
  ck_assert_str_eq(cJSON_GetObjectItem(j, "name")->valuestring, "circle");
  ck_assert_str_eq(cJSON_GetObjectItem(j, "platform")->valuestring, "circled");
  ck_assert_str_eq(cJSON_GetObjectItem(j, "versions")->child->valuestring, "1");
  ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "inputs")), 5);
  ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "outputs")), 4);
  const cJSON *e = cJSON_GetObjectItem(j, "inputs")->child->next;
  ck_assert_str_eq(cJSON_GetObjectItem(e, "name")->valuestring, "embeddings");
  ck_assert_int_eq(cJSON_GetObjectItem(e, "shape")->child->valueint, -1);
  cJSON_Delete(j);
  circle_buf_free(&b);

  /* The model configuration carries the tensors and the defaults. */
  circle_config cfg;
  circle_config_init(&cfg);
  cfg.gamma = 64;
  cfg.margin = 0.25;
  cfg.remove_diagonal = false;
  cfg.reduction = CIRCLE_REDUCTION_SUM;
  cfg.dtype = CIRCLE_DTYPE_FLOAT64;
  circle_buf_init(&b);
  circle_oip_model_config(&b, &cfg);
  j = parse_prefix(b.data, b.len);
  ck_assert_str_eq(cJSON_GetObjectItem(j, "name")->valuestring, "circle");
  ck_assert_int_eq(cJSON_GetObjectItem(j, "max_batch_size")->valueint, 0);
  ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "input")), 5);
  ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "output")), 4);
  e = cJSON_GetObjectItem(j, "input")->child->next;
  ck_assert_str_eq(cJSON_GetObjectItem(e, "name")->valuestring, "embeddings");
  ck_assert_str_eq(cJSON_GetObjectItem(e, "data_type")->valuestring, "TYPE_FP32");
  ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(e, "dims")), 2);
  const cJSON *prm = cJSON_GetObjectItem(j, "parameters");
  static const char *want[][2] = {{"gamma", "64.0"},
                                  {"margin", "0.25"},
                                  {"remove_diagonal", "false"},
                                  {"reduction", "sum"},
                                  {"dtype", "float64"},
                                  {"normalize", "false"}};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    const cJSON *v = cJSON_GetObjectItem(cJSON_GetObjectItem(prm, want[i][0]),
                                         "string_value");
    ck_assert_msg(cJSON_IsString(v), "no parameter %s", want[i][0]);
    ck_assert_str_eq(v->valuestring, want[i][1]);
  }
  cJSON_Delete(j);
  circle_buf_free(&b);

  circle_buf_init(&b);
  circle_oip_server_metadata(&b, "1.2.3");
  ck_assert_str_eq(b.data, "{\"name\": \"circled\", \"version\": \"1.2.3\", "
                           "\"extensions\": [\"binary_tensor_data\"]}");
  circle_buf_free(&b);

  circle_error err;
  circle_error_set(&err, CIRCLE_ERR_BAD_LABEL, "input 'labels': \"x\"");
  circle_buf_init(&b);
  circle_oip_error(&err, &b);
  ck_assert_str_eq(b.data, "{\"error\": \"input 'labels': \\\"x\\\"\"}");
  circle_buf_free(&b);
}
END_TEST

Suite *codec_oip_suite(void) {
  Suite *s = suite_create("codec_oip");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, codec_oip_should_decode_json_tensors);
  tcase_add_test(tc, codec_oip_should_decode_nested_data_and_n_by_1_labels);
  tcase_add_test(tc, codec_oip_should_decode_binary_tensors_like_tritonclient);
  tcase_add_test(tc, codec_oip_should_widen_fp16_and_bf16);
  tcase_add_test(tc, codec_oip_should_refuse_json_data_beyond_fp16_and_bf16);
  tcase_add_test(tc, codec_oip_should_refuse_an_id_that_is_not_utf8);
  tcase_add_test(tc, codec_oip_should_take_binary_n_by_1_labels_and_ref_sets);
  tcase_add_test(tc, codec_oip_should_check_same_width_binary_floats_in_every_block);
  tcase_add_test(tc, codec_oip_should_read_int64_labels_exactly);
  tcase_add_test(tc, codec_oip_should_take_parameters);
  tcase_add_test(tc, codec_oip_should_reject_bad_parameters);
  tcase_add_test(tc, codec_oip_should_follow_requested_outputs);
  tcase_add_test(tc, codec_oip_should_check_binary_sizes_against_shapes);
  tcase_add_test(tc, codec_oip_should_check_json_data_against_shapes);
  tcase_add_test(tc, codec_oip_should_check_names_types_and_shapes);
  tcase_add_test(tc, codec_oip_should_enforce_limits);
  tcase_add_test(tc, codec_oip_should_report_invalid_json_with_the_byte_offset);
  tcase_add_test(tc, codec_oip_should_decode_within_a_small_multiple_of_the_body);
  tcase_add_test(tc, codec_oip_should_refuse_bad_arguments);
  tcase_add_test(tc, codec_oip_should_encode_json_outputs);
  tcase_add_test(tc, codec_oip_should_encode_binary_outputs_after_the_json);
  tcase_add_test(tc, codec_oip_should_encode_the_retrieval_figures_as_parameters);
  tcase_add_test(tc, codec_oip_should_compute_a_half_dtype_and_return_its_tensors);
  tcase_add_test(tc, codec_oip_should_refuse_other_dtypes_and_half_overflow);
  tcase_add_test(tc, codec_oip_should_encode_a_binary_scalar_loss);
  tcase_add_test(tc, codec_oip_should_write_metadata_and_errors);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(codec_oip_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
