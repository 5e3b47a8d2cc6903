/* test_codec_json.c -- the /v1/loss codec: every decode error a client can
 * cause (with its HTTP status, code and a message naming the field and
 * row), limits, duplicate keys, deep nesting, exact labels, the get_config
 * round trip, and the encoder's JSON.
 */
#include <check.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <cjson/cJSON.h>

#include "codec_config.h"
#include "codec_json.h"
#include "util_mem.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static circle_limits lim;

static int decode_lim(const char *body, const circle_limits *l,
                      circle_request *req, circle_error *err) {
  circle_request_init(req);
  memset(err, 0, sizeof(*err));
  return circle_json_decode(body, strlen(body), NULL, NULL, l, req, err);
}

static int decode(const char *body, circle_request *req, circle_error *err) {
  circle_limits_init(&lim);
  return decode_lim(body, &lim, req, err);
}

/* Decodes body expecting a failure with this status, code and a message
 * containing every fragment in the NULL-terminated list. */
static void expect_error_lim(const char *body, const circle_limits *l,
                             int status, const char *code, ...) {
  circle_request req;
  circle_error err;
  int rc = decode_lim(body, l, &req, &err);
  ck_assert_msg(rc != 0, "decoded although an error was expected: %s", body);
  ck_assert_int_eq(circle_error_http(err.kind), status);
  ck_assert_str_eq(circle_error_code(err.kind), code);
  va_list ap;
  va_start(ap, code);
  const char *frag;
  while ((frag = va_arg(ap, const char *)) != NULL)
    ck_assert_msg(strstr(err.message, frag) != NULL,
                  "message \"%s\" lacks \"%s\"", err.message, frag);
  va_end(ap);
  /* On failure the request is left freed. */
  ck_assert_ptr_null(req.labels);
  ck_assert_ptr_null(req.x);
  circle_request_free(&req);
}

#define EXPECT_ERROR(body, status, code, ...)                                 \
  do {                                                                        \
    circle_limits l_;                                                         \
    circle_limits_init(&l_);                                                  \
    expect_error_lim(body, &l_, status, code, __VA_ARGS__, (const char *)NULL); \
  } while (0)

static const char *const OK2x3 =
    "{\"labels\": [1, 2], \"embeddings\": [[1, 0, 0], [0, 1, 0]]";

static char *strf(const char *fmt, ...) {
  static char buf[1 << 16];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  return buf;
}

/* ------------------------------------------------------------------------ */
/* Successful decoding                                                      */
/* ------------------------------------------------------------------------ */

START_TEST(codec_json_should_decode_a_minimal_request) {
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode("{\"labels\": [3, 3, 7], \"embeddings\": "
                          "[[0.5, -1.25], [1e-3, 2], [0, -0.0]]}",
                          &req, &err),
                   0);
  ck_assert_uint_eq(req.n, 3);
  ck_assert_uint_eq(req.d, 2);
  ck_assert_uint_eq(req.m, 0);
  ck_assert(!req.has_ref);
  ck_assert_int_eq(req.cfg.dtype, CIRCLE_DTYPE_FLOAT32);
  ck_assert_int_eq(req.labels[0], 3);
  ck_assert_int_eq(req.labels[2], 7);
  const float *x = req.x;
  ck_assert(x[0] == 0.5f && x[1] == -1.25f && x[2] == 1e-3f && x[3] == 2.0f);
  ck_assert(x[5] == 0.0f && signbit(x[5]));
  ck_assert_ptr_null(req.sw);
  ck_assert_uint_eq(req.want, CIRCLE_OUT_LOSS | CIRCLE_OUT_PER_SAMPLE |
                                  CIRCLE_OUT_GRAD | CIRCLE_OUT_STATS);
  ck_assert_str_eq(req.name, "circle");
  ck_assert_str_eq(req.tag, "");
  ck_assert_int_eq(req.proto, CIRCLE_PROTO_V1);
  circle_request_free(&req);
  ck_assert_ptr_null(req.labels);
  circle_request_free(NULL);
}
END_TEST

START_TEST(codec_json_should_use_the_server_defaults) {
  circle_config def;
  circle_config_init(&def);
  def.gamma = 32;
  def.dtype = CIRCLE_DTYPE_FLOAT64;
  circle_limits_init(&lim);
  circle_request req;
  circle_request_init(&req);
  circle_error err;
  const char *b = "{\"labels\": [1, 2], \"embeddings\": [[0.1], [0.2]]}";
  ck_assert_int_eq(circle_json_decode(b, strlen(b), &def, "srv", &lim, &req, &err), 0);
  ck_assert(req.cfg.gamma == 32);
  ck_assert_int_eq(req.cfg.dtype, CIRCLE_DTYPE_FLOAT64);
  ck_assert_str_eq(req.name, "srv");
  ck_assert(((double *)req.x)[0] == 0.1); /* converted as double, exactly */
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_json_should_share_string_label_ids_with_ref_labels) {
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode("{\"labels\": [\"cat\", \"dog\", \"cat\", \"caté\"], "
                          "\"embeddings\": [[1], [2], [3], [4]], "
                          "\"ref_labels\": [\"dog\", \"emu\", \"cat\"], "
                          "\"ref_embeddings\": [[1], [2], [3]]}",
                          &req, &err),
                   0);
  ck_assert(req.has_ref);
  ck_assert_uint_eq(req.m, 3);
  int64_t *l = req.labels, *r = req.ref_labels;
  ck_assert_int_eq(l[0], l[2]);
  ck_assert_int_ne(l[0], l[1]);
  ck_assert_int_ne(l[0], l[3]);
  ck_assert_int_eq(r[0], l[1]);
  ck_assert_int_eq(r[2], l[0]);
  ck_assert_int_ne(r[1], l[0]);
  ck_assert_int_ne(r[1], l[1]);
  ck_assert_int_ne(r[1], l[3]);
  ck_assert_uint_eq(req.want & CIRCLE_OUT_REF_GRAD, CIRCLE_OUT_REF_GRAD);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_json_should_read_integer_labels_exactly) {
  circle_request req;
  circle_error err;
  ck_assert_int_eq(
      decode("{\"labels\": [9007199254740993, 9007199254740992, "
             "9223372036854775807, -9223372036854775808, 1.0, 2e3, -0, "
             "12345678901234567000e-3], "
             "\"embeddings\": [[1], [2], [3], [4], [5], [6], [7], [8]]}",
             &req, &err),
      0);
  ck_assert_int_eq(req.labels[0], 9007199254740993LL);
  ck_assert_int_eq(req.labels[1], 9007199254740992LL);
  ck_assert_int_eq(req.labels[2], INT64_MAX);
  ck_assert_int_eq(req.labels[3], INT64_MIN);
  ck_assert_int_eq(req.labels[4], 1);
  ck_assert_int_eq(req.labels[5], 2000);
  ck_assert_int_eq(req.labels[6], 0);
  ck_assert_int_eq(req.labels[7], 12345678901234567LL);
  circle_request_free(&req);
  /* Exact big ints in ref_labels too, and through escaped keys. */
  ck_assert_int_eq(
      decode("{\"labels\": [1], \"embeddings\": [[1]], "
             "\"ref_embeddings\": [[1], [2]], "
             "\"ref_\\u006cabels\": [9007199254740993, 9007199254740995]}",
             &req, &err),
      0);
  ck_assert_int_eq(req.ref_labels[0], 9007199254740993LL);
  ck_assert_int_eq(req.ref_labels[1], 9007199254740995LL);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_json_should_accept_keras_get_config_as_is) {
  /* Exactly what keras.losses.Circle().get_config() gives, json.dumps'ed
   * (Keras 3.15), and variants Keras produces for other arguments. */
  const char *configs[] = {
      "{\"name\": \"circle\", \"reduction\": \"sum_over_batch_size\", "
      "\"gamma\": 80.0, \"margin\": 0.4, \"remove_diagonal\": true}",
      "{\"name\": \"circle\", \"reduction\": null, \"gamma\": 80.0, "
      "\"margin\": 0.4, \"remove_diagonal\": true}",
      "{\"name\": \"x\", \"reduction\": \"sum_over_batch_size\", \"gamma\": "
      "80, \"margin\": 1e-20, \"remove_diagonal\": true}",
      "{\"name\": \"circle\", \"reduction\": \"none\", \"gamma\": 64.0, "
      "\"margin\": 0.25, \"remove_diagonal\": false, \"fn\": {\"module\": "
      "\"builtins\", \"class_name\": \"function\", \"config\": \"circle\", "
      "\"registered_name\": \"function\"}}",
  };
  const circle_reduction red[] = {CIRCLE_REDUCTION_SUM_OVER_BATCH_SIZE,
                                  CIRCLE_REDUCTION_NULL,
                                  CIRCLE_REDUCTION_SUM_OVER_BATCH_SIZE,
                                  CIRCLE_REDUCTION_NONE};
  for (int i = 0; i < 4; i++) {
    circle_request req;
    circle_error err;
    int rc = decode(strf("%s, \"config\": %s}", OK2x3, configs[i]), &req, &err);
    ck_assert_msg(rc == 0, "config %d: %s", i, err.message);
    ck_assert_int_eq(req.cfg.reduction, red[i]);
    if (i == 2) {
      ck_assert_str_eq(req.name, "x");
      ck_assert(req.cfg.margin == 1e-20);
    }
    if (i == 3) {
      ck_assert(req.cfg.gamma == 64 && req.cfg.margin == 0.25);
      ck_assert(!req.cfg.remove_diagonal);
    }
    circle_request_free(&req);
  }
}
END_TEST

START_TEST(codec_json_should_round_trip_its_own_config_json) {
  circle_config c;
  circle_config_init(&c);
  c.gamma = 0.1 + 0.2;
  c.margin = -1e-5;
  c.reduction = CIRCLE_REDUCTION_NULL;
  c.remove_diagonal = false;
  circle_buf b;
  circle_buf_init(&b);
  circle__config_to_json(&b, &c, "my\"loss");
  ck_assert_str_eq(b.data,
                   "{\"name\": \"my\\\"loss\", \"reduction\": null, \"gamma\": "
                   "0.30000000000000004, \"margin\": -1e-05, "
                   "\"remove_diagonal\": false}");
  const char *end;
  cJSON *j = cJSON_ParseWithLengthOpts(b.data, b.len, &end, 0);
  ck_assert_ptr_nonnull(j);
  circle_config d;
  circle_config_init(&d);
  char name[128];
  circle_error err;
  ck_assert_int_eq(circle__config_from_json(j, &d, name, sizeof(name), &err), 0);
  ck_assert(d.gamma == c.gamma && d.margin == c.margin);
  ck_assert_int_eq(d.reduction, c.reduction);
  ck_assert(!d.remove_diagonal);
  ck_assert_str_eq(name, "my\"loss");
  cJSON_Delete(j);
  circle_buf_free(&b);
}
END_TEST

/* Found by fuzz/fuzz_config: a name that is not UTF-8 is refused, because
 * get_config() would echo it with U+FFFD for each bad byte: the echo would
 * not be the name sent, and 127 such bytes would come back as 249 that the
 * parser then refuses. */
START_TEST(codec_json_should_reject_a_config_name_that_is_not_utf8) {
  EXPECT_ERROR(strf("%s, \"config\": {\"name\": \"nn\x81nn\"}}", OK2x3), 400,
               "bad_config", "config.name is not valid UTF-8");
  char bad[128];
  memset(bad, 0xcc, 127);
  bad[127] = '\0';
  EXPECT_ERROR(strf("%s, \"config\": {\"name\": \"%s\"}}", OK2x3, bad), 400,
               "bad_config", "config.name is not valid UTF-8");
  /* Overlong, surrogate and past-U+10FFFF encodings are not UTF-8 either. */
  EXPECT_ERROR(strf("%s, \"config\": {\"name\": \"\xc0\xaf\"}}", OK2x3), 400,
               "bad_config", "UTF-8");
  EXPECT_ERROR(strf("%s, \"config\": {\"name\": \"\xed\xa0\x80\"}}", OK2x3),
               400, "bad_config", "UTF-8");
  EXPECT_ERROR(strf("%s, \"config\": {\"name\": \"\xf4\x90\x80\x80\"}}", OK2x3),
               400, "bad_config", "UTF-8");

  /* Real UTF-8 comes back byte for byte. */
  const char *utf8 = "\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80";
  circle_request req;
  circle_error err;
  ck_assert_int_eq(
      decode(strf("%s, \"config\": {\"name\": \"%s\"}}", OK2x3, utf8), &req,
             &err),
      0);
  ck_assert_str_eq(req.name, utf8);
  circle_buf b;
  circle_buf_init(&b);
  circle__config_to_json(&b, &req.cfg, req.name);
  ck_assert_ptr_nonnull(strstr(b.data, utf8));
  circle_buf_free(&b);
  circle_request_free(&req);
}
END_TEST

/* Every dtype spelling keras.losses.Circle takes: the compute dtype it
 * names, the "dtype" the response carries, and a config echo that stays
 * exactly get_config() (which has no dtype key), also against a float64
 * server default (null is Keras' floatx, float32, not the default). */
START_TEST(codec_json_should_accept_every_keras_dtype_spelling) {
#define POLICY(cls, name)                                                     \
  "{\"module\": \"keras\", \"class_name\": \"" cls "\", \"config\": "         \
  "{\"name\": " name "}, \"registered_name\": null}"
  static const struct {
    const char *json;
    const char *compute;
  } cases[] = {
      {"null", "float32"},
      {"\"float16\"", "float16"},
      {"\"bfloat16\"", "bfloat16"},
      {"\"float32\"", "float32"},
      {"\"float64\"", "float64"},
      {"\"mixed_float16\"", "float16"},
      {"\"mixed_bfloat16\"", "bfloat16"},
      {POLICY("DTypePolicy", "\"float16\""), "float16"},
      {POLICY("DTypePolicy", "\"bfloat16\""), "bfloat16"},
      {POLICY("DTypePolicy", "\"float32\""), "float32"},
      {POLICY("DTypePolicy", "\"float64\""), "float64"},
      {POLICY("DTypePolicy", "\"mixed_float16\""), "float16"},
      {POLICY("DTypePolicy", "\"mixed_bfloat16\""), "bfloat16"},
      {POLICY("DTypePolicy", "null"), "float32"},
      {POLICY("FloatDTypePolicy", "\"float16\""), "float16"}, /* Keras 3.0-3.3 */
      {"{\"class_name\": \"DTypePolicy\", \"config\": {}}", "float32"},
      {"{\"module\": \"keras.mixed_precision\", \"class_name\": "
       "\"DTypePolicy\", \"config\": {\"name\": \"float64\"}, "
       "\"registered_name\": \"DTypePolicy\"}",
       "float64"},
  };
#undef POLICY
  static const char *const get_config =
      "\"config\": {\"name\": \"circle\", \"reduction\": "
      "\"sum_over_batch_size\", \"gamma\": 80.0, \"margin\": 0.4, "
      "\"remove_diagonal\": true}, \"dtype\": \"";
  circle_config f64;
  circle_config_init(&f64);
  f64.dtype = CIRCLE_DTYPE_FLOAT64;
  for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
    for (int srv = 0; srv < 2; srv++) {
      const char *body = strf("%s, \"config\": {\"dtype\": %s}}", OK2x3,
                              cases[k].json);
      circle_request req;
      circle_error err;
      circle_request_init(&req);
      circle_limits_init(&lim);
      int rc = circle_json_decode(body, strlen(body), srv ? &f64 : NULL, NULL,
                                  &lim, &req, &err);
      ck_assert_msg(rc == 0, "%s: %s", cases[k].json, err.message);
      ck_assert_str_eq(circle_config_dtype_name(&req.cfg), cases[k].compute);
      circle_output out;
      memset(&out, 0, sizeof out);
      circle_buf b;
      circle_buf_init(&b);
      ck_assert_int_eq(circle_json_encode(&req, &out, &b), 0);
      char want[512];
      snprintf(want, sizeof want, "%s%s\"", get_config, cases[k].compute);
      ck_assert_msg(strstr(b.data, want) != NULL, "%s: %s", cases[k].json,
                    b.data);
      circle_buf_free(&b);
      circle_request_free(&req);
    }
  }
}
END_TEST

START_TEST(codec_json_should_refuse_other_dtypes_listing_the_accepted_ones) {
  static const char *const bad[] = {
      "\"int32\"", "\"half\"", "\"Float16\"", "\"mixed_float32\"",
      "\"int8_from_float32\"", "16", "true", "[\"float16\"]",
      "{\"class_name\": \"QuantizedDTypePolicy\", \"config\": {\"name\": "
      "\"int8_from_float32\"}}",
      "{\"class_name\": \"DTypePolicy\", \"config\": {\"name\": \"int32\"}}",
      "{\"class_name\": \"DTypePolicy\", \"config\": {\"name\": 16}}",
      "{\"class_name\": \"DTypePolicy\", \"config\": \"float16\"}",
      "{\"class_name\": \"DTypePolicy\"}",
      "{\"config\": {\"name\": \"float16\"}}",
      "{\"module\": 3, \"class_name\": \"DTypePolicy\", \"config\": "
      "{\"name\": \"float16\"}}",
      "{\"class_name\": \"DTypePolicy\", \"config\": {\"name\": "
      "\"float16\"}, \"registered_name\": []}",
  };
  for (size_t k = 0; k < sizeof bad / sizeof *bad; k++)
    EXPECT_ERROR(strf("%s, \"config\": {\"dtype\": %s}}", OK2x3, bad[k]), 400,
                 "bad_config", "config.dtype", "\"mixed_bfloat16\"",
                 "\"class_name\": \"DTypePolicy\"", "null (Keras' floatx");
  /* Keys Keras' DTypePolicy does not have are unknown keys, named. */
  EXPECT_ERROR(strf("%s, \"config\": {\"dtype\": {\"class_name\": "
                    "\"DTypePolicy\", \"config\": {\"name\": \"float16\", "
                    "\"source_name\": \"x\"}}}}",
                    OK2x3),
               400, "unknown_key", "\"source_name\" in config.dtype.config");
  EXPECT_ERROR(strf("%s, \"config\": {\"dtype\": {\"class_name\": "
                    "\"DTypePolicy\", \"config\": {}, \"shared\": 1}}}",
                    OK2x3),
               400, "unknown_key", "\"shared\" in config.dtype");
}
END_TEST

/* A half-precision dtype rounds every input once, straight from the JSON
 * number to the format (as Keras converts the arrays), on both the fast
 * and the cJSON path; a value past the format's range is refused. */
START_TEST(codec_json_should_round_inputs_to_a_half_dtype) {
  static const char *const bodies[] = {
      /* usual shape: json_fast.c reads the matrices */
      "{\"labels\": [1, 2], \"embeddings\": [[0.1, 65504, 1e-8], [-0.3, "
      "1.0004882812509095, 3]], \"sample_weight\": [0.1, 3], \"ref_labels\": "
      "[1], \"ref_embeddings\": [[0.7, 0, 2049]], \"config\": {\"dtype\": "
      "\"float16\"}}",
      /* an extra space and a nested config the fast path may not take */
      "{\"config\": {\"dtype\": {\"class_name\": \"DTypePolicy\", \"config\": "
      "{\"name\": \"mixed_float16\"}}}, \"labels\": [1, 2], \"embeddings\": "
      "[[0.1 , 65504, 1e-8], [-0.3, 1.0004882812509095, 3]], "
      "\"sample_weight\": [0.1, 3], \"ref_labels\": [1], \"ref_embeddings\": "
      "[[0.7, 0, 2049]]}"};
  for (size_t k = 0; k < 2; k++) {
    circle_request req;
    circle_error err;
    ck_assert_msg(decode(bodies[k], &req, &err) == 0, "%s", err.message);
    ck_assert_int_eq(req.cfg.dtype, CIRCLE_DTYPE_FLOAT32);
    ck_assert_int_eq(req.cfg.half, CIRCLE_HALF_FLOAT16);
    const float *rx = req.x, *rr = req.r, *sw = req.sw;
    ck_assert(rx[0] == 0.0999755859375f && rx[1] == 65504);
    ck_assert(rx[2] == 0); /* 1e-8 is below half float16's smallest subnormal */
    ck_assert(rx[3] == -0.300048828125f);
    /* just above the midpoint 1 + 2^-11: up, though a float would be the
     * midpoint itself and round to 1 */
    ck_assert(rx[4] == 1.0009765625f && rx[5] == 3);
    ck_assert(rr[0] == 0.7001953125f && rr[2] == 2048); /* 2049: tie to even */
    ck_assert(sw[0] == 0.0999755859375f && sw[1] == 3);
    circle_request_free(&req);
  }
  EXPECT_ERROR("{\"labels\": [1, 2], \"embeddings\": [[1, 65520], [0, 1]], "
               "\"config\": {\"dtype\": \"float16\"}}",
               400, "non_finite", "embeddings[0][1] is 6.552e+04",
               "beyond float16's largest finite value 65504",
               "dtype \"float32\"");
  EXPECT_ERROR("{\"labels\": [1, 2], \"embeddings\": [[1, 0], [0, 1]], "
               "\"sample_weight\": [1, 1e5], \"config\": {\"dtype\": "
               "\"mixed_float16\"}}",
               400, "non_finite", "sample_weight[1] is 1e+05");
  EXPECT_ERROR("{\"labels\": [1, 2], \"embeddings\": [[1, 3.4e38], [0, 1]], "
               "\"config\": {\"dtype\": \"bfloat16\"}}",
               400, "non_finite", "embeddings[0][1]", "bfloat16");
}
END_TEST

START_TEST(codec_json_should_write_config_floats_as_python_does) {
  const struct {
    double v;
    const char *py;
  } cases[] = {{80, "80.0"},   {0.4, "0.4"},       {1e-5, "1e-05"},
               {1e-4, "0.0001"}, {1e16, "1e+16"},  {1e15, "1000000000000000.0"},
               {123.5, "123.5"}, {2.5e-300, "2.5e-300"}, {-3.0, "-3.0"},
               {1.7976931348623157e308, "1.7976931348623157e+308"}};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    circle_buf b;
    circle_buf_init(&b);
    circle_buf_python_float(&b, cases[i].v);
    ck_assert_str_eq(b.data, cases[i].py);
    circle_buf_free(&b);
  }
  circle_config c;
  circle_config_init(&c);
  circle_buf b;
  circle_buf_init(&b);
  circle__config_to_json(&b, &c, "circle");
  ck_assert_str_eq(b.data,
                   "{\"name\": \"circle\", \"reduction\": "
                   "\"sum_over_batch_size\", \"gamma\": 80.0, \"margin\": 0.4, "
                   "\"remove_diagonal\": true}");
  circle_buf_free(&b);
}
END_TEST

START_TEST(codec_json_should_convert_to_float64_when_asked) {
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode("{\"labels\": [1, 1], \"embeddings\": [[1e300], "
                          "[0.1]], \"sample_weight\": [0.5, 0], "
                          "\"config\": {\"dtype\": \"float64\"}}",
                          &req, &err),
                   0);
  ck_assert_int_eq(req.cfg.dtype, CIRCLE_DTYPE_FLOAT64);
  ck_assert(((double *)req.x)[0] == 1e300);
  ck_assert(((double *)req.x)[1] == 0.1);
  ck_assert(((double *)req.sw)[0] == 0.5);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_json_should_take_options_outputs_and_tag) {
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode(strf("%s, \"normalize\": true, \"outputs\": "
                               "[\"per_sample_loss\", \"stats\"], \"tag\": "
                               "\"exp-1:run_2.a\"}",
                               OK2x3),
                          &req, &err),
                   0);
  ck_assert(req.cfg.normalize);
  ck_assert_uint_eq(req.want, CIRCLE_OUT_PER_SAMPLE | CIRCLE_OUT_STATS);
  ck_assert_str_eq(req.tag, "exp-1:run_2.a");
  circle_request_free(&req);
  /* null means absent for optional members. */
  ck_assert_int_eq(decode(strf("%s, \"normalize\": null, \"outputs\": null, "
                               "\"tag\": null, \"config\": null, "
                               "\"sample_weight\": null, \"ref_labels\": null, "
                               "\"ref_embeddings\": null}",
                               OK2x3),
                          &req, &err),
                   0);
  ck_assert(!req.has_ref);
  ck_assert_ptr_null(req.sw);
  circle_request_free(&req);
  /* config.normalize works too, and agreeing twice is fine. */
  ck_assert_int_eq(decode(strf("%s, \"normalize\": true, \"config\": "
                               "{\"normalize\": true}}",
                               OK2x3),
                          &req, &err),
                   0);
  ck_assert(req.cfg.normalize);
  circle_request_free(&req);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Errors: syntax and structure                                             */
/* ------------------------------------------------------------------------ */

START_TEST(codec_json_should_report_invalid_json_with_the_byte_offset) {
  EXPECT_ERROR("{\"labels\": [1, 2,], \"embeddings\": [[1], [2]]}", 400,
               "invalid_json", "byte 17");
  EXPECT_ERROR("{\"labels\": [1, 2], \"embeddings\": [[1], [2]]", 400,
               "invalid_json", "1 unclosed", "truncated");
  EXPECT_ERROR("{\"labels\": [1, 2], \"embeddings\": [[1], [2", 400,
               "invalid_json", "3 unclosed", "truncated");
  EXPECT_ERROR("", 400, "invalid_json", "empty");
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": [[1]]} x", 400,
               "invalid_json", "after the JSON value", "byte 37");
  EXPECT_ERROR("{\"labels\": [01], \"embeddings\": [[1]]}", 400,
               "invalid_json", "malformed number", "byte 12");
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": [[1.]]}", 400,
               "invalid_json", "malformed number");
  EXPECT_ERROR("{\"labels\": [\"a\\u0000b\"], \"embeddings\": [[1]]}", 400,
               "invalid_json", "NUL");
  EXPECT_ERROR("{\"labels\": [\"a\tb\"], \"embeddings\": [[1]]}", 400,
               "invalid_json", "control character 0x09");
  EXPECT_ERROR("{\"labels\": [\"a\\xb\"], \"embeddings\": [[1]]}", 400,
               "invalid_json", "unknown escape");
  EXPECT_ERROR("{\"labels\": [\"ab], \"embeddings\": [[1]]}", 400,
               "invalid_json", "never closed");
  /* The grammar is checked on the whole body before anything is built,
   * the embeddings included: the offset is the first byte that cannot
   * continue the text. */
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": [[1], [2],]}", 400,
               "invalid_json", "byte 40");
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": [[1] [2]]}", 400,
               "invalid_json", "byte 35");
  EXPECT_ERROR("{\"labels\" [1], \"embeddings\": [[1]]}", 400,
               "invalid_json", "byte 10");
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": [[tru]]}", 400,
               "invalid_json", "byte 32");
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": [[1}]}", 400,
               "invalid_json", "byte 33");
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": [[1]], }", 400,
               "invalid_json", "byte 37");
  /* cJSON refuses half a UTF-16 surrogate pair; so does the pre-scan. */
  EXPECT_ERROR("{\"labels\": [\"\\ud800\"], \"embeddings\": [[1]]}", 400,
               "invalid_json", "byte 13", "surrogate");
  EXPECT_ERROR("{\"labels\": [\"\\udc00\\ud800\"], \"embeddings\": [[1]]}",
               400, "invalid_json", "surrogate");
  circle_request ok_req;
  circle_error ok_err;
  ck_assert_int_eq(decode("{\"labels\": [\"\\ud83d\\ude00\"], \"embeddings\": [[1]]}",
                          &ok_req, &ok_err),
                   0);
  circle_request_free(&ok_req);
  /* A body with an embedded NUL byte. */
  circle_request req;
  circle_error err;
  circle_limits_init(&lim);
  circle_request_init(&req);
  const char nul[] = "{\"labels\": [1]\0, \"embeddings\": [[1]]}";
  ck_assert_int_ne(circle_json_decode(nul, sizeof(nul) - 1, NULL, NULL, &lim,
                                      &req, &err),
                   0);
  ck_assert_str_eq(circle_error_code(err.kind), "invalid_json");
}
END_TEST

/* Found by fuzz/fuzz_json: the bytes quoted after "near" went into the
 * message raw, so a body of binary junk put bytes that are not UTF-8 (or a
 * sequence cut at byte 20) into the JSON error response. */
START_TEST(codec_json_should_quote_the_bytes_near_a_syntax_error_printably) {
  static const char junk[] = "[7\xd4\xdf\xcd\xd7 3\xdd";
  EXPECT_ERROR(junk, 400, "invalid_json", "at byte 2",
               "(near \"???? 3?\")");
  circle_request req;
  circle_request_init(&req);
  circle_error err;
  circle_limits_init(&lim);
  ck_assert_int_ne(
      circle_json_decode(junk, sizeof junk - 1, NULL, NULL, &lim, &req, &err), 0);
  for (const char *p = err.message; *p; p++)
    ck_assert_msg((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f,
                  "byte 0x%02x in \"%s\"", (unsigned char)*p, err.message);
}
END_TEST

START_TEST(codec_json_should_reject_duplicate_keys) {
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": [[1]], \"labels\": [2]}",
               400, "duplicate_key", "\"labels\"", "request body");
  EXPECT_ERROR(strf("%s, \"config\": {\"gamma\": 1, \"gamma\": 2}}", OK2x3),
               400, "duplicate_key", "\"gamma\"", "config");
  EXPECT_ERROR(strf("%s, \"config\": {\"fn\": {\"config\": \"circle\", "
                    "\"config\": \"circle\"}}}",
                    OK2x3),
               400, "duplicate_key", "config.fn");
  /* Escaped spelling of the same key is the same key. */
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": [[1]], \"\\u006cabels\": [2]}",
               400, "duplicate_key", "\"labels\"");
}
END_TEST

START_TEST(codec_json_should_reject_unknown_keys) {
  EXPECT_ERROR(strf("%s, \"gama\": 3}", OK2x3), 400, "unknown_key",
               "\"gama\"", "request body", "labels, embeddings");
  EXPECT_ERROR(strf("%s, \"config\": {\"gama\": 3}}", OK2x3), 400,
               "unknown_key", "\"gama\" in config", "gamma");
}
END_TEST

START_TEST(codec_json_should_refuse_deep_nesting_before_parsing) {
  /* Deeper than the limit: 400 limit_exceeded, found by the pre-scan. */
  char *deep = malloc(200001);
  memset(deep, '[', 200000);
  deep[200000] = '\0';
  EXPECT_ERROR(deep, 400, "limit_exceeded", "nesting deeper than 32",
               "byte 32");
  free(deep);
  circle_limits l;
  circle_limits_init(&l);
  l.max_depth = 2;
  expect_error_lim(OK2x3, &l, 400, "limit_exceeded", "deeper than 2",
                   (const char *)NULL);
  /* Brackets inside strings do not count. */
  circle_request req;
  circle_error err;
  l.max_depth = 3;
  ck_assert_int_eq(decode_lim("{\"labels\": [\"[[[[[[\", \"{{{{\"], "
                              "\"embeddings\": [[1], [2]]}",
                              &l, &req, &err),
                   0);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_json_should_reject_wrong_types) {
  EXPECT_ERROR("[1, 2]", 400, "wrong_type", "the body is an array");
  EXPECT_ERROR("{\"labels\": 3, \"embeddings\": [[1]]}", 400, "wrong_type",
               "labels is a number");
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": {}}", 400, "wrong_type",
               "embeddings is an object");
  EXPECT_ERROR("{\"labels\": [1, 2], \"embeddings\": [[1], 2]}", 400,
               "wrong_type", "embeddings[1] is a number", "array of 1 numbers");
  EXPECT_ERROR("{\"labels\": [1, 2], \"embeddings\": [\"a\", [2]]}", 400,
               "wrong_type", "embeddings[0] is a string");
  EXPECT_ERROR("{\"labels\": [1, 2], \"embeddings\": [[1, 2], [3, \"4\"]]}",
               400, "wrong_type", "embeddings[1][1] is a string",
               "expected a number");
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": [[true]]}", 400,
               "wrong_type", "embeddings[0][0] is a boolean");
  EXPECT_ERROR(strf("%s, \"normalize\": 1}", OK2x3), 400, "wrong_type",
               "normalize is a number");
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": [[1]], \"sample_weight\": "
               "[\"1\"]}",
               400, "wrong_type", "sample_weight[0] is a string");
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": [[1]], \"sample_weight\": 1}",
               400, "wrong_type", "sample_weight is a number");
}
END_TEST

START_TEST(codec_json_should_require_labels_and_embeddings) {
  EXPECT_ERROR("{\"embeddings\": [[1]]}", 400, "missing_field",
               "labels is missing");
  EXPECT_ERROR("{\"labels\": [1]}", 400, "missing_field",
               "embeddings is missing");
  EXPECT_ERROR("{\"labels\": null, \"embeddings\": [[1]]}", 400, "wrong_type",
               "labels is null");
}
END_TEST

START_TEST(codec_json_should_name_ragged_rows) {
  EXPECT_ERROR("{\"labels\": [1, 2, 3, 4], \"embeddings\": [[1, 2, 3], [4, 5, "
               "6], [7, 8, 9], [1, 2]]}",
               400, "ragged_rows",
               "embeddings[3] has 2 numbers; expected 3 like embeddings[0]");
  EXPECT_ERROR("{\"labels\": [1, 2], \"embeddings\": [[1, 2], [4, 5, 6]]}",
               400, "ragged_rows",
               "embeddings[1] has 3 numbers; expected 2 like embeddings[0]");
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": [[1, 2]], \"ref_labels\": "
               "[1, 2], \"ref_embeddings\": [[1, 2], [3]]}",
               400, "shape_mismatch",
               "ref_embeddings[1] has 1 numbers; expected 2 like "
               "embeddings[0]");
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": [[1, 2]], \"ref_labels\": "
               "[1], \"ref_embeddings\": [[1, 2, 3]]}",
               400, "shape_mismatch", "ref_embeddings[0] has 3 numbers",
               "expected 2 like embeddings[0]");
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": [[]]}", 400,
               "shape_mismatch", "embeddings[0] is empty");
}
END_TEST

START_TEST(codec_json_should_check_every_row_before_allocating) {
  /* One full row of D = 4096 and 65535 empty rows: a 200 KB body that
   * would need N x D = 1 GiB if the matrix were allocated from row 0. With
   * the address space capped, only a decoder that checks the rows first
   * gets to the ragged row. (ASan reserves terabytes of address space, so
   * the cap is skipped there; the error is still checked.) */
  size_t n = 65536, d = 4096;
  circle_buf b;
  circle_buf_init(&b);
  circle_buf_puts(&b, "{\"labels\": [");
  for (size_t i = 0; i < n; i++) circle_buf_puts(&b, i ? ",1" : "1");
  circle_buf_puts(&b, "], \"embeddings\": [[");
  for (size_t i = 0; i < d; i++) circle_buf_puts(&b, i ? ",1" : "1");
  circle_buf_puts(&b, "]");
  for (size_t i = 1; i < n; i++) circle_buf_puts(&b, ",[]");
  circle_buf_puts(&b, "]}");
#if !defined(__SANITIZE_ADDRESS__)
  struct rlimit rl = {(rlim_t)768 << 20, (rlim_t)768 << 20};
  ck_assert_int_eq(setrlimit(RLIMIT_AS, &rl), 0);
#endif
  circle_limits l;
  circle_limits_init(&l);
  l.max_pairs = UINT64_MAX;
  expect_error_lim(b.data, &l, 400, "ragged_rows",
                   "embeddings[1] has 0 numbers; expected 4096 like embeddings[0]",
                   (const char *)NULL);
  circle_buf_free(&b);
}
END_TEST

/* n copies of s appended to b. */
static void puts_n(circle_buf *b, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) circle_buf_puts(b, s);
}

/* Decoding used to build a cJSON node (about 80 bytes) for every value of
 * the body before any limit was checked, twice on this route: 40 times the
 * body. Now nothing is built for the matrices, and labels past N and
 * values past what a request can need are refused first. With the address
 * space capped at 6 bodies above what the test holds, a decoder that builds
 * a tree of the body runs out of memory (503) instead of answering. */
START_TEST(codec_json_should_decode_within_a_small_multiple_of_the_body) {
  circle_limits_init(&lim);
  circle_buf labels, nested, matrix;
  circle_buf_init(&labels);
  circle_buf_puts(&labels, "{\"labels\": [");
  puts_n(&labels, "0,", (size_t)16 << 20); /* 32 MiB */
  circle_buf_puts(&labels, "0], \"embeddings\": [[1.0]]}");
  circle_buf_init(&nested);
  circle_buf_puts(&nested, "{\"labels\": [[");
  puts_n(&nested, "0,", (size_t)4 << 20);
  circle_buf_puts(&nested, "0]], \"embeddings\": [[1.0]]}");
  /* 16 MiB of numbers within the limits, the last one a string: read to
   * the end the slow way. */
  circle_buf_init(&matrix);
  circle_buf_puts(&matrix, "{\"labels\": [");
  puts_n(&matrix, "0,", 2047);
  circle_buf_puts(&matrix, "0], \"embeddings\": [");
  for (int r = 0; r < 2048; r++) {
    circle_buf_puts(&matrix, r ? ",[" : "[");
    puts_n(&matrix, "0,", 4095);
    circle_buf_puts(&matrix, r == 2047 ? "\"x\"]" : "0]");
  }
  circle_buf_puts(&matrix, "]}");
  ck_assert(!labels.failed && !nested.failed && !matrix.failed);
  ck_assert(util_cap_address_space(6 * labels.len + ((size_t)64 << 20)));
  expect_error_lim(labels.data, &lim, 413, "limit_exceeded",
                   "labels has 16777217 rows; the batch limit N is 65536",
                   (const char *)NULL);
  expect_error_lim(nested.data, &lim, 413, "limit_exceeded", "4194311 JSON values and keys",
                   (const char *)NULL);
  expect_error_lim(matrix.data, &lim, 400, "wrong_type",
                   "embeddings[2047][4095] is a string; expected a number",
                   (const char *)NULL);
  circle_buf_free(&labels);
  circle_buf_free(&nested);
  circle_buf_free(&matrix);
}
END_TEST

/* The slow path cuts the matrices out of the tree by their decoded key and
 * reads them from the text: a key written with an escape, and a repeated
 * key, still mean what they say. */
START_TEST(codec_json_should_read_matrices_from_the_text_on_the_slow_path) {
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode("{\"labels\": [0, 1], \"embedd\\u0069ngs\": [[1, 2], "
                          "[3, 4.5]], \"config\": {\"dtype\": \"float64\"}}",
                          &req, &err),
                   0);
  const double *x = req.x;
  ck_assert(req.n == 2 && req.d == 2 && x[0] == 1 && x[1] == 2 && x[2] == 3 &&
            x[3] == 4.5);
  circle_request_free(&req);
  EXPECT_ERROR("{\"labels\": [0], \"embeddings\": [[1]], \"embeddings\": [[2]]}",
               400, "duplicate_key", "\"embeddings\"");
  EXPECT_ERROR("{\"labels\": [0, 1], \"embeddings\": [[1, 2], [3, [4]]]}", 400,
               "wrong_type", "embeddings[1][1] is an array; expected a number");
}
END_TEST

START_TEST(codec_json_should_report_count_mismatches) {
  EXPECT_ERROR("{\"labels\": [1, 2, 3], \"embeddings\": [[1], [2]]}", 400,
               "shape_mismatch", "embeddings has 2 rows; expected 3");
  EXPECT_ERROR("{\"labels\": [1, 2], \"embeddings\": [[1], [2]], "
               "\"sample_weight\": [1]}",
               400, "shape_mismatch", "sample_weight has 1 numbers; expected 2");
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": [[1]], \"ref_labels\": [1, "
               "2], \"ref_embeddings\": [[1]]}",
               400, "shape_mismatch", "ref_embeddings has 1 rows; expected 2");
}
END_TEST

START_TEST(codec_json_should_reject_an_empty_batch) {
  EXPECT_ERROR("{\"labels\": [], \"embeddings\": []}", 400, "empty_batch",
               "labels is empty");
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": []}", 400, "empty_batch",
               "embeddings has 0 rows");
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": [[1]], \"ref_labels\": [], "
               "\"ref_embeddings\": []}",
               400, "empty_batch", "ref_labels is empty");
}
END_TEST

START_TEST(codec_json_should_reject_non_finite_numbers) {
  EXPECT_ERROR("{\"labels\": [1, 2], \"embeddings\": [[1], [1e999]]}", 400,
               "non_finite", "embeddings[1][0] overflows");
  EXPECT_ERROR("{\"labels\": [1, 2], \"embeddings\": [[1], [-1e39]]}", 400,
               "non_finite", "embeddings[1][0] is -1e+39", "float32",
               "float64");
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": [[1]], \"sample_weight\": "
               "[1e999]}",
               400, "non_finite", "sample_weight[0]");
  EXPECT_ERROR("{\"labels\": [1], \"embeddings\": [[1]], \"ref_labels\": [1], "
               "\"ref_embeddings\": [[1e400]]}",
               400, "non_finite", "ref_embeddings[0][0]");
  /* 1e39 is fine in float64. */
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode("{\"labels\": [1], \"embeddings\": [[1e39]], "
                          "\"config\": {\"dtype\": \"float64\"}}",
                          &req, &err),
                   0);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_json_should_reject_bad_labels) {
  EXPECT_ERROR("{\"labels\": [1, 2.5], \"embeddings\": [[1], [2]]}", 400,
               "bad_label", "labels[1] is 2.5", "integers or strings");
  EXPECT_ERROR("{\"labels\": [1, null], \"embeddings\": [[1], [2]]}", 400,
               "bad_label", "labels[1] is null");
  EXPECT_ERROR("{\"labels\": [true], \"embeddings\": [[1]]}", 400,
               "bad_label", "labels[0] is a boolean");
  EXPECT_ERROR("{\"labels\": [[1]], \"embeddings\": [[1]]}", 400, "bad_label",
               "labels[0] is an array");
  EXPECT_ERROR("{\"labels\": [1, \"a\"], \"embeddings\": [[1], [2]]}", 400,
               "bad_label", "labels[1] is a string but labels[0] is a number");
  EXPECT_ERROR("{\"labels\": [\"a\"], \"embeddings\": [[1]], \"ref_labels\": "
               "[\"b\", 3], \"ref_embeddings\": [[1], [2]]}",
               400, "bad_label",
               "ref_labels[1] is a number but labels[0] is a string");
  EXPECT_ERROR("{\"labels\": [9223372036854775808], \"embeddings\": [[1]]}",
               400, "bad_label", "labels[0] is outside the int64 range");
  EXPECT_ERROR("{\"labels\": [1, -9223372036854775809], \"embeddings\": "
               "[[1], [2]]}",
               400, "bad_label", "labels[1] is outside the int64 range");
  EXPECT_ERROR("{\"labels\": [1e300], \"embeddings\": [[1]]}", 400,
               "bad_label", "labels[0] is outside the int64 range");
}
END_TEST

START_TEST(codec_json_should_reject_bad_config_values) {
  EXPECT_ERROR(strf("%s, \"config\": {\"gamma\": 0}}", OK2x3), 400,
               "bad_config", "config.gamma is 0", "> 0");
  EXPECT_ERROR(strf("%s, \"config\": {\"gamma\": -2.5}}", OK2x3), 400,
               "bad_config", "config.gamma is -2.5");
  EXPECT_ERROR(strf("%s, \"config\": {\"gamma\": 1e999}}", OK2x3), 400,
               "bad_config", "config.gamma");
  EXPECT_ERROR(strf("%s, \"config\": {\"gamma\": \"80\"}}", OK2x3), 400,
               "bad_config", "config.gamma is a string");
  EXPECT_ERROR(strf("%s, \"config\": {\"margin\": 1e999}}", OK2x3), 400,
               "bad_config", "config.margin");
  EXPECT_ERROR(strf("%s, \"config\": {\"margin\": null}}", OK2x3), 400,
               "bad_config", "config.margin is null");
  EXPECT_ERROR(strf("%s, \"config\": {\"reduction\": \"avg\"}}", OK2x3), 400,
               "bad_config", "config.reduction is \"avg\"",
               "\"sum_over_batch_size\"");
  EXPECT_ERROR(strf("%s, \"config\": {\"reduction\": 3}}", OK2x3), 400,
               "bad_config", "config.reduction is a number");
  EXPECT_ERROR(strf("%s, \"config\": {\"remove_diagonal\": 1}}", OK2x3), 400,
               "bad_config", "config.remove_diagonal is a number");
  EXPECT_ERROR(strf("%s, \"config\": {\"dtype\": \"float8\"}}", OK2x3), 400,
               "bad_config", "config.dtype is \"float8\"", "\"mixed_bfloat16\"");
  EXPECT_ERROR(strf("%s, \"config\": {\"name\": \"\"}}", OK2x3), 400,
               "bad_config", "config.name has 0 bytes");
  EXPECT_ERROR(strf("%s, \"config\": {\"fn\": \"mse\"}}", OK2x3), 400,
               "bad_config", "config.fn");
  EXPECT_ERROR(strf("%s, \"config\": [1]}", OK2x3), 400, "bad_config",
               "config is an array");
  EXPECT_ERROR(strf("%s, \"normalize\": false, \"config\": {\"normalize\": "
                    "true}}",
                    OK2x3),
               400, "bad_config", "give it once");
}
END_TEST

START_TEST(codec_json_should_reject_half_a_reference_set) {
  EXPECT_ERROR(strf("%s, \"ref_labels\": [1]}", OK2x3), 400, "half_reference",
               "ref_labels is given without ref_embeddings");
  EXPECT_ERROR(strf("%s, \"ref_embeddings\": [[1, 2, 3]]}", OK2x3), 400,
               "half_reference", "ref_embeddings is given without ref_labels");
}
END_TEST

START_TEST(codec_json_should_enforce_size_limits_with_413) {
  circle_limits l;
  circle_limits_init(&l);
  l.max_n = 2;
  expect_error_lim("{\"labels\": [1, 2, 3], \"embeddings\": [[1], [2], [3]]}",
                   &l, 413, "limit_exceeded", "3 rows", "limit N is 2",
                   (const char *)NULL);
  circle_limits_init(&l);
  l.max_d = 2;
  expect_error_lim(strf("%s}", OK2x3) /* d = 3 */, &l, 413, "limit_exceeded",
                   "embeddings[0] has 3 numbers", "limit D is 2",
                   (const char *)NULL);
  circle_limits_init(&l);
  l.max_m = 1;
  expect_error_lim(strf("%s, \"ref_labels\": [1, 2], \"ref_embeddings\": [[1, "
                        "2, 3], [1, 2, 3]]}",
                        OK2x3),
                   &l, 413, "limit_exceeded", "limit M is 1",
                   (const char *)NULL);
  circle_limits_init(&l);
  l.max_pairs = 3; /* 2 x 2 = 4 without a reference set */
  expect_error_lim(strf("%s}", OK2x3), &l, 413, "limit_exceeded",
                   "2 x 2 = 4 pairs", "limit of 3", (const char *)NULL);
  l.max_pairs = 5; /* 2 x 3 = 6 with one */
  expect_error_lim(strf("%s, \"ref_labels\": [1, 2, 3], \"ref_embeddings\": "
                        "[[1, 2, 3], [1, 2, 3], [1, 2, 3]]}",
                        OK2x3),
                   &l, 413, "limit_exceeded", "2 x 3 = 6 pairs",
                   (const char *)NULL);
  /* Exactly at the limits is fine. */
  circle_limits_init(&l);
  l.max_n = 2;
  l.max_d = 3;
  l.max_pairs = 4;
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode_lim(strf("%s}", OK2x3), &l, &req, &err), 0);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_json_should_check_outputs) {
  EXPECT_ERROR(strf("%s, \"outputs\": [\"loss\", \"grad\"]}", OK2x3), 400,
               "bad_output", "outputs[1] is \"grad\"", "\"embeddings_grad\"");
  EXPECT_ERROR(strf("%s, \"outputs\": [\"loss\", \"loss\"]}", OK2x3), 400,
               "bad_output", "outputs[1] repeats \"loss\"");
  EXPECT_ERROR(strf("%s, \"outputs\": [\"ref_embeddings_grad\"]}", OK2x3), 400,
               "bad_output", "no reference set");
  EXPECT_ERROR(strf("%s, \"outputs\": []}", OK2x3), 400, "bad_output",
               "outputs is empty");
  EXPECT_ERROR(strf("%s, \"outputs\": \"loss\"}", OK2x3), 400, "bad_output",
               "outputs is a string");
  EXPECT_ERROR(strf("%s, \"outputs\": [1]}", OK2x3), 400, "bad_output",
               "outputs[0] is a number");
}
END_TEST

START_TEST(codec_json_should_compute_retrieval_only_when_named) {
  circle_request req;
  circle_error err;
  /* Left out of the defaults: outputs absent means everything but it. */
  ck_assert_int_eq(decode(strf("%s}", OK2x3), &req, &err), 0);
  ck_assert_uint_eq(req.want & CIRCLE_OUT_RETRIEVAL, 0);
  ck_assert(req.want & CIRCLE_OUT_STATS);
  circle_request_free(&req);
  ck_assert_int_eq(decode(strf("%s, \"outputs\": [\"loss\", \"retrieval\"]}",
                               OK2x3),
                          &req, &err),
                   0);
  ck_assert_uint_eq(req.want, CIRCLE_OUT_LOSS | CIRCLE_OUT_RETRIEVAL);
  circle_request_free(&req);
  /* Alone, and with a reference set. */
  ck_assert_int_eq(decode("{\"labels\": [1, 2], \"embeddings\": [[1], [2]], "
                          "\"ref_labels\": [1], \"ref_embeddings\": [[1]], "
                          "\"outputs\": [\"retrieval\"]}",
                          &req, &err),
                   0);
  ck_assert_uint_eq(req.want, CIRCLE_OUT_RETRIEVAL);
  circle_request_free(&req);
  /* Named twice, or misspelt: the list of names says it exists. */
  EXPECT_ERROR(strf("%s, \"outputs\": [\"retrieval\", \"retrieval\"]}", OK2x3),
               400, "bad_output", "outputs[1] repeats \"retrieval\"");
  EXPECT_ERROR(strf("%s, \"outputs\": [\"map_at_r\"]}", OK2x3), 400,
               "bad_output", "outputs[0] is \"map_at_r\"", "\"retrieval\"");
}
END_TEST

START_TEST(codec_json_should_check_the_tag) {
  EXPECT_ERROR(strf("%s, \"tag\": \"a b\"}", OK2x3), 400, "bad_tag",
               "tag has the character ' ' at byte 1");
  EXPECT_ERROR(strf("%s, \"tag\": 5}", OK2x3), 400, "bad_tag", "tag is a number");
  char long_tag[80];
  memset(long_tag, 'a', 64);
  long_tag[64] = '\0';
  EXPECT_ERROR(strf("%s, \"tag\": \"%s\"}", OK2x3, long_tag), 400, "bad_tag",
               "64 bytes", "at most 63");
  long_tag[63] = '\0';
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode(strf("%s, \"tag\": \"%s\"}", OK2x3, long_tag), &req, &err), 0);
  ck_assert_str_eq(req.tag, long_tag);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_json_should_check_sample_weights) {
  EXPECT_ERROR("{\"labels\": [1, 2], \"embeddings\": [[1], [2]], "
               "\"sample_weight\": [1, -0.5]}",
               400, "wrong_type", "sample_weight[1] is -0.5", ">= 0");
}
END_TEST

START_TEST(codec_json_should_refuse_bad_arguments) {
  circle_request req;
  circle_request_init(&req);
  circle_error err;
  circle_limits_init(&lim);
  ck_assert_int_eq(circle_json_decode("{}", 2, NULL, NULL, NULL, &req, &err),
                   CIRCLE_EINVAL);
  ck_assert_int_eq(circle_error_http(err.kind), 500);
  ck_assert_int_eq(circle_json_decode("{}", 2, NULL, NULL, &lim, NULL, &err),
                   CIRCLE_EINVAL);
  ck_assert_int_eq(circle_json_decode("{}", 2, NULL, NULL, &lim, &req, NULL),
                   CIRCLE_EINVAL);
  ck_assert_int_eq(circle_json_decode(NULL, 2, NULL, NULL, &lim, &req, &err),
                   CIRCLE_EINVAL);
  circle_config c;
  circle_config_init(&c);
  char name[8];
  ck_assert_int_eq(circle__config_from_json(NULL, &c, name, sizeof(name), &err),
                   CIRCLE_EINVAL);
  ck_assert_int_eq(circle__config_from_json(NULL, &c, name, sizeof(name), NULL),
                   CIRCLE_EINVAL);
  circle_output out;
  memset(&out, 0, sizeof(out));
  circle_buf b;
  circle_buf_init(&b);
  ck_assert_int_eq(circle_json_encode(NULL, &out, &b), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_json_encode(&req, NULL, &b), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_json_encode(&req, &out, NULL), CIRCLE_EINVAL);
  circle_json_error(NULL, &b);
  circle_json_error(&err, NULL);
  circle__config_to_json(NULL, &c, "x");
  circle__config_to_json(&b, NULL, "x");
  ck_assert_uint_eq(b.len, 0);
  circle_buf_free(&b);
  /* A config name longer than the caller's buffer is refused, not cut. */
  const char *cj = "{\"name\": \"much_too_long\"}";
  cJSON *j = cJSON_Parse(cj);
  ck_assert_int_eq(circle__config_from_json(j, &c, name, sizeof(name), &err),
                   CIRCLE_EINVAL);
  ck_assert_str_eq(circle_error_code(err.kind), "bad_config");
  cJSON_Delete(j);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Encoding                                                                 */
/* ------------------------------------------------------------------------ */

static cJSON *parse_buf(const circle_buf *b) {
  const char *end;
  cJSON *j = cJSON_ParseWithLengthOpts(b->data, b->len, &end, 0);
  ck_assert_msg(j != NULL && end == b->data + b->len, "not JSON: %s", b->data);
  return j;
}

START_TEST(codec_json_should_encode_everything_asked_for) {
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode("{\"labels\": [1, 2], \"embeddings\": [[1, 0], [0, "
                          "1]], \"ref_labels\": [1], \"ref_embeddings\": [[1, "
                          "1]], \"config\": {\"dtype\": \"float64\", \"gamma\": 2}}",
                          &req, &err),
                   0);
  double per[2] = {0.1, 1.0 / 3}, grad[4] = {1, -2, 3e-300, 4}, rgrad[2] = {-0.0, 5};
  circle_output out;
  memset(&out, 0, sizeof(out));
  out.want = req.want;
  out.loss = 0.25;
  out.per_sample = per;
  out.grad = grad;
  out.ref_grad = rgrad;
  out.stats.pos_row_frac = 0.5;
  out.stats.max_neg_sim = NAN;
  out.stats.pos_pairs = 3;
  out.stats.neg_pairs = 12345678901ull;
  circle_buf b;
  circle_buf_init(&b);
  ck_assert_int_eq(circle_json_encode(&req, &out, &b), 0);
  cJSON *j = parse_buf(&b);
  ck_assert(cJSON_GetObjectItem(j, "loss")->valuedouble == 0.25);
  cJSON *ps = cJSON_GetObjectItem(j, "per_sample_loss");
  ck_assert_int_eq(cJSON_GetArraySize(ps), 2);
  ck_assert(ps->child->next->valuedouble == 1.0 / 3); /* round trip */
  cJSON *g = cJSON_GetObjectItem(j, "embeddings_grad");
  ck_assert_int_eq(cJSON_GetArraySize(g), 2);
  ck_assert(g->child->next->child->valuedouble == 3e-300);
  cJSON *rg = cJSON_GetObjectItem(j, "ref_embeddings_grad");
  ck_assert_int_eq(cJSON_GetArraySize(rg), 1);
  ck_assert(signbit(rg->child->child->valuedouble));
  cJSON *st = cJSON_GetObjectItem(j, "stats");
  ck_assert(cJSON_GetObjectItem(st, "pos_row_frac")->valuedouble == 0.5);
  ck_assert(cJSON_IsNull(cJSON_GetObjectItem(st, "max_neg_sim")));
  ck_assert(cJSON_GetObjectItem(st, "neg_pairs")->valuedouble == 12345678901.0);
  ck_assert_int_eq(cJSON_GetArraySize(st), 12);
  cJSON *cfg = cJSON_GetObjectItem(j, "config");
  ck_assert(cJSON_GetObjectItem(cfg, "gamma")->valuedouble == 2);
  ck_assert_str_eq(cJSON_GetObjectItem(j, "dtype")->valuestring, "float64");
  ck_assert_int_eq(cJSON_GetObjectItem(j, "n")->valueint, 2);
  ck_assert_int_eq(cJSON_GetObjectItem(j, "m")->valueint, 1);
  ck_assert_int_eq(cJSON_GetObjectItem(j, "d")->valueint, 2);
  ck_assert(strstr(b.data, "\"gamma\": 2.0") != NULL);
  cJSON_Delete(j);
  circle_buf_free(&b);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_json_should_encode_only_what_was_asked) {
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode(strf("%s, \"outputs\": [\"loss\"], \"config\": "
                               "{\"reduction\": \"none\"}}",
                               OK2x3),
                          &req, &err),
                   0);
  float lv[2] = {0.5f, 1.1f};
  circle_output out;
  memset(&out, 0, sizeof(out));
  out.want = req.want;
  out.loss_values = lv;
  circle_buf b;
  circle_buf_init(&b);
  ck_assert_int_eq(circle_json_encode(&req, &out, &b), 0);
  ck_assert_str_eq(b.data,
                   "{\"loss\": [0.5,1.10000002], \"config\": {\"name\": "
                   "\"circle\", \"reduction\": \"none\", \"gamma\": 80.0, "
                   "\"margin\": 0.4, \"remove_diagonal\": true}, \"dtype\": "
                   "\"float32\", \"n\": 2, \"m\": 0, \"d\": 3}");
  circle_buf_free(&b);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_json_should_encode_the_retrieval_figures_when_asked) {
  circle_request req;
  circle_error err;
  ck_assert_int_eq(decode(strf("%s, \"outputs\": [\"loss\", \"retrieval\"]}",
                               OK2x3),
                          &req, &err),
                   0);
  circle_output out;
  memset(&out, 0, sizeof(out));
  out.want = req.want;
  out.loss = 0.5;
  out.retrieval.precision_at_1 = 0.75;
  out.retrieval.r_precision = 1.0 / 3;
  out.retrieval.map_at_r = 0.1;
  out.retrieval.queries = 12345678901ull;
  out.stats.pos_pairs = 7; /* computed but not asked for: not returned */
  circle_buf b;
  circle_buf_init(&b);
  ck_assert_int_eq(circle_json_encode(&req, &out, &b), 0);
  cJSON *j = parse_buf(&b);
  ck_assert_ptr_null(cJSON_GetObjectItem(j, "stats"));
  cJSON *rt = cJSON_GetObjectItem(j, "retrieval");
  ck_assert(cJSON_IsObject(rt));
  ck_assert_int_eq(cJSON_GetArraySize(rt), 4);
  ck_assert(cJSON_GetObjectItem(rt, "precision_at_1")->valuedouble == 0.75);
  ck_assert(cJSON_GetObjectItem(rt, "r_precision")->valuedouble == 1.0 / 3);
  ck_assert(cJSON_GetObjectItem(rt, "map_at_r")->valuedouble == 0.1);
  ck_assert(cJSON_GetObjectItem(rt, "queries")->valuedouble == 12345678901.0);
  ck_assert(strstr(b.data, "\"queries\": 12345678901}") != NULL);
  cJSON_Delete(j);
  circle_buf_free(&b);
  /* The engine's figures are not returned unless the request named them. */
  req.want &= ~(unsigned)CIRCLE_OUT_RETRIEVAL;
  circle_buf_init(&b);
  ck_assert_int_eq(circle_json_encode(&req, &out, &b), 0);
  ck_assert_ptr_null(strstr(b.data, "retrieval"));
  circle_buf_free(&b);
  circle_request_free(&req);
}
END_TEST

START_TEST(codec_json_should_write_errors_as_valid_json) {
  circle_error err;
  circle_error_set(&err, CIRCLE_ERR_BAD_LABEL, "labels[%d] is \"%s\"\n", 2,
                   "\x01\xff\xc3\xa9");
  circle_buf b;
  circle_buf_init(&b);
  circle_json_error(&err, &b);
  ck_assert_str_eq(b.data,
                   "{\"error\": {\"code\": \"bad_label\", \"message\": "
                   "\"labels[2] is \\\"\\u0001\\ufffd\xc3\xa9\\\"\\n\"}}");
  cJSON *j = parse_buf(&b);
  cJSON_Delete(j);
  circle_buf_free(&b);
}
END_TEST

Suite *codec_json_suite(void) {
  Suite *s = suite_create("codec_json");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, codec_json_should_decode_a_minimal_request);
  tcase_add_test(tc, codec_json_should_use_the_server_defaults);
  tcase_add_test(tc, codec_json_should_share_string_label_ids_with_ref_labels);
  tcase_add_test(tc, codec_json_should_read_integer_labels_exactly);
  tcase_add_test(tc, codec_json_should_accept_keras_get_config_as_is);
  tcase_add_test(tc, codec_json_should_round_trip_its_own_config_json);
  tcase_add_test(tc, codec_json_should_reject_a_config_name_that_is_not_utf8);
  tcase_add_test(tc, codec_json_should_write_config_floats_as_python_does);
  tcase_add_test(tc, codec_json_should_accept_every_keras_dtype_spelling);
  tcase_add_test(tc, codec_json_should_refuse_other_dtypes_listing_the_accepted_ones);
  tcase_add_test(tc, codec_json_should_round_inputs_to_a_half_dtype);
  tcase_add_test(tc, codec_json_should_convert_to_float64_when_asked);
  tcase_add_test(tc, codec_json_should_take_options_outputs_and_tag);
  tcase_add_test(tc, codec_json_should_report_invalid_json_with_the_byte_offset);
  tcase_add_test(tc, codec_json_should_decode_within_a_small_multiple_of_the_body);
  tcase_add_test(tc, codec_json_should_read_matrices_from_the_text_on_the_slow_path);
  tcase_add_test(tc, codec_json_should_quote_the_bytes_near_a_syntax_error_printably);
  tcase_add_test(tc, codec_json_should_reject_duplicate_keys);
  tcase_add_test(tc, codec_json_should_reject_unknown_keys);
  tcase_add_test(tc, codec_json_should_refuse_deep_nesting_before_parsing);
  tcase_add_test(tc, codec_json_should_reject_wrong_types);
  tcase_add_test(tc, codec_json_should_require_labels_and_embeddings);
  tcase_add_test(tc, codec_json_should_name_ragged_rows);
  tcase_add_test(tc, codec_json_should_check_every_row_before_allocating);
  tcase_add_test(tc, codec_json_should_report_count_mismatches);
  tcase_add_test(tc, codec_json_should_reject_an_empty_batch);
  tcase_add_test(tc, codec_json_should_reject_non_finite_numbers);
  tcase_add_test(tc, codec_json_should_reject_bad_labels);
  tcase_add_test(tc, codec_json_should_reject_bad_config_values);
  tcase_add_test(tc, codec_json_should_reject_half_a_reference_set);
  tcase_add_test(tc, codec_json_should_enforce_size_limits_with_413);
  tcase_add_test(tc, codec_json_should_check_outputs);
  tcase_add_test(tc, codec_json_should_compute_retrieval_only_when_named);
  tcase_add_test(tc, codec_json_should_check_the_tag);
  tcase_add_test(tc, codec_json_should_check_sample_weights);
  tcase_add_test(tc, codec_json_should_refuse_bad_arguments);
  tcase_add_test(tc, codec_json_should_encode_everything_asked_for);
  tcase_add_test(tc, codec_json_should_encode_only_what_was_asked);
  tcase_add_test(tc, codec_json_should_encode_the_retrieval_figures_when_asked);
  tcase_add_test(tc, codec_json_should_write_errors_as_valid_json);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(codec_json_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
