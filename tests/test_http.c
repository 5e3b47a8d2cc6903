/* test_http.c -- black-box tests of circled: the real binary ($CIRCLED_BIN)
 * on 127.0.0.1 with an ephemeral port, real libcurl requests and raw
 * sockets. Every endpoint, every error, the limits, concurrency, draining
 * on SIGTERM and bearer auth.
 *
 * Oracles and tolerances, stated before any number is compared:
 *  - results are compared with the engine itself, run in this process on
 *    the same float32/float64 inputs (the engine's own tests hold it to
 *    Keras): relative 1e-6 for float32 (a few ulps: the daemon may load a
 *    different OpenBLAS kernel), 1e-12 for float64;
 *  - one golden file made by real Keras goes through both protocols:
 *    relative 1e-4 on the loss in float32;
 *  - /v2 results must equal /v1 results for the same input exactly
 *    (same engine, same daemon, same numbers).
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <zlib.h>

#include "circle/circle.h"
#include "util_daemon.h"

/* ======================================================================== */
/* Helpers                                                                  */
/* ======================================================================== */

/* A growable string for building request bodies. */
typedef struct {
  char *p;
  size_t len, cap;
} sb;

static void sb_add(sb *s, const void *data, size_t n) {
  if (s->len + n + 1 > s->cap) {
    size_t cap = s->cap ? s->cap : 4096;
    while (cap < s->len + n + 1) cap *= 2;
    s->p = realloc(s->p, cap);
    ck_assert_ptr_nonnull(s->p);
    s->cap = cap;
  }
  memcpy(s->p + s->len, data, n);
  s->len += n;
  s->p[s->len] = '\0';
}

static void sb_printf(sb *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void sb_printf(sb *s, const char *fmt, ...) {
  char tmp[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  ck_assert_int_lt(n, (int)sizeof tmp);
  sb_add(s, tmp, (size_t)n);
}

/* Deterministic embeddings: small values of both signs. */
static void fill_emb(float *x, size_t count, unsigned seed) {
  uint32_t s = 2463534242u ^ seed;
  for (size_t i = 0; i < count; i++) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    x[i] = (float)((double)(s % 20001) / 20000.0 - 0.5) * 0.6f;
  }
}

static void fill_labels(int64_t *l, size_t n, int classes) {
  for (size_t i = 0; i < n; i++) l[i] = (int64_t)((i * 7 + i / 3) % (size_t)classes);
}

/* Rows of floats as JSON, with 9 significant digits (enough for float32)
 * or more. */
static void sb_floats_digits(sb *s, const float *x, size_t rows, size_t d,
                             int digits) {
  sb_add(s, "[", 1);
  for (size_t i = 0; i < rows; i++) {
    sb_add(s, i ? ",[" : "[", i ? 2 : 1);
    for (size_t j = 0; j < d; j++)
      sb_printf(s, j ? ",%.*g" : "%.*g", digits, (double)x[i * d + j]);
    sb_add(s, "]", 1);
  }
  sb_add(s, "]", 1);
}

static void sb_floats(sb *s, const float *x, size_t rows, size_t d) {
  sb_floats_digits(s, x, rows, d, 9);
}

static void sb_labels(sb *s, const int64_t *l, size_t n) {
  sb_add(s, "[", 1);
  for (size_t i = 0; i < n; i++)
    sb_printf(s, i ? ",%lld" : "%lld", (long long)l[i]);
  sb_add(s, "]", 1);
}

/* A /v1/loss body for n x d generated inputs; extra (may be NULL) is
 * inserted as more top-level members ("\"config\": {...}"). */
static char *v1_body_digits(size_t n, size_t d, unsigned seed,
                            const char *extra, int digits) {
  float *x = malloc(n * d * sizeof *x);
  int64_t *l = malloc(n * sizeof *l);
  fill_emb(x, n * d, seed);
  fill_labels(l, n, 3);
  sb s = {0};
  sb_add(&s, "{\"labels\": ", 11);
  sb_labels(&s, l, n);
  sb_add(&s, ", \"embeddings\": ", 16);
  sb_floats_digits(&s, x, n, d, digits);
  if (extra) sb_printf(&s, ", %s", extra);
  sb_add(&s, "}", 1);
  free(x);
  free(l);
  return s.p;
}

static char *v1_body(size_t n, size_t d, unsigned seed, const char *extra) {
  return v1_body_digits(n, d, seed, extra, 9);
}

/* The engine's float32 scalar loss for v1_body(n, d, seed) under cfg. */
static double engine_loss(size_t n, size_t d, unsigned seed,
                          const circle_config *cfg) {
  float *x = malloc(n * d * sizeof *x);
  int64_t *l = malloc(n * sizeof *l);
  fill_emb(x, n * d, seed);
  fill_labels(l, n, 3);
  circle_engine *e = NULL;
  circle_engine_opts o = {.threads = 1};
  ck_assert_int_eq(circle_engine_init(&e, &o), CIRCLE_OK);
  circle_input in = {.n = n, .d = d, .labels = l, .embeddings = x};
  circle_output out;
  memset(&out, 0, sizeof out);
  out.want = CIRCLE_OUT_LOSS;
  ck_assert_int_eq(circle_loss_compute(e, cfg, &in, &out), CIRCLE_OK);
  circle_engine_free(e);
  free(x);
  free(l);
  return out.loss;
}

static bool close_rel(double a, double b, double rel) {
  return fabs(a - b) <= rel * fmax(fabs(b), 1e-30);
}

static cJSON *parse(const td_resp *r) {
  cJSON *j = cJSON_ParseWithLengthOpts(r->body, r->len, NULL, 0);
  ck_assert_msg(j != NULL, "response is not JSON: %.300s", r->body);
  return j;
}

/* Member key of object j, asserted present and of the expected kind. */
static cJSON *jget(const cJSON *j, const char *key) {
  cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
  ck_assert_msg(v != NULL, "no \"%s\" in the response", key);
  return v;
}

static const char *jstr(const cJSON *j, const char *key) {
  cJSON *v = jget(j, key);
  ck_assert_msg(cJSON_IsString(v), "\"%s\" is not a string", key);
  return v->valuestring;
}

static double jnum(const cJSON *j, const char *key) {
  cJSON *v = jget(j, key);
  ck_assert_msg(cJSON_IsNumber(v), "\"%s\" is not a number", key);
  return v->valuedouble;
}

static const char *JSON_HDR[] = {"Content-Type: application/json", NULL};

static void req(const td_daemon *d, const char *method, const char *path,
                const char *body, td_resp *r) {
  int rc = td_request(d, NULL, method, path, body, body ? strlen(body) : 0,
                      body ? JSON_HDR : NULL, NULL, r);
  ck_assert_msg(rc == 0, "%s %s failed: %s", method, path, r->error);
}

/* Asserts a /v1-style error with this status and code; returns the
 * message (valid while r lives, copied to a static buffer). */
static const char *assert_v1_error(const td_resp *r, long status,
                                   const char *code) {
  static char msg[600];
  ck_assert_msg(r->status == status, "want %ld, got %ld: %.400s", status,
                r->status, r->body);
  cJSON *j = parse(r);
  cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
  ck_assert_msg(cJSON_IsObject(e), "no error object: %.300s", r->body);
  cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "code");
  cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
  ck_assert(cJSON_IsString(c) && cJSON_IsString(m));
  ck_assert_msg(!strcmp(c->valuestring, code), "want code %s, got %s (%s)",
                code, c->valuestring, m->valuestring);
  ck_assert_msg(strlen(m->valuestring) > 10, "message too short to help: %s",
                m->valuestring);
  snprintf(msg, sizeof msg, "%s", m->valuestring);
  cJSON_Delete(j);
  return msg;
}

/* Asserts a Triton-style error {"error": "message"}. */
static void assert_oip_error(const td_resp *r, long status) {
  ck_assert_msg(r->status == status, "want %ld, got %ld: %.400s", status,
                r->status, r->body);
  cJSON *j = parse(r);
  cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
  ck_assert_msg(cJSON_IsString(e), "want {\"error\": string}: %.300s",
                r->body);
  cJSON_Delete(j);
}

static double json_loss(const td_resp *r) {
  ck_assert_msg(r->status == 200, "status %ld: %.400s", r->status, r->body);
  cJSON *j = parse(r);
  cJSON *l = cJSON_GetObjectItemCaseSensitive(j, "loss");
  ck_assert_msg(cJSON_IsNumber(l), "no numeric loss: %.300s", r->body);
  double v = l->valuedouble;
  cJSON_Delete(j);
  return v;
}

static double config_number(const td_resp *r, const char *key) {
  cJSON *j = parse(r);
  cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "config");
  if (!c) c = j;
  cJSON *v = cJSON_GetObjectItemCaseSensitive(c, key);
  ck_assert_msg(cJSON_IsNumber(v), "no %s in %.300s", key, r->body);
  double x = v->valuedouble;
  cJSON_Delete(j);
  return x;
}

static void start_or_fail(td_daemon *d, const char *const *args,
                          const char *const *env) {
  ck_assert_msg(td_start(d, args, env) == 0, "circled did not start");
}

static void stop_expect_0(td_daemon *d) {
  int rc = td_stop(d, SIGTERM, 60);
  ck_assert_msg(rc == 0, "circled exited with %d after SIGTERM", rc);
}

/* The shared daemon of the "shared" case: started once in the parent
 * process (unchecked fixture), used by every forked test. */
static td_daemon g_d;

static void shared_setup(void) {
  curl_global_init(CURL_GLOBAL_ALL);
  static const char *args[] = {"--workers", "2", NULL};
  if (td_start(&g_d, args, NULL) != 0) {
    fprintf(stderr, "test_http: cannot start circled ($CIRCLED_BIN)\n");
    exit(1);
  }
}

static void shared_teardown(void) {
  int rc = td_stop(&g_d, SIGTERM, 60);
  if (rc != 0) {
    fprintf(stderr, "test_http: shared circled exited with %d\n", rc);
    exit(1);
  }
}

/* ======================================================================== */
/* GET endpoints                                                            */
/* ======================================================================== */

START_TEST(http_should_answer_healthz_and_readyz) {
  td_resp r;
  req(&g_d, "GET", "/healthz", NULL, &r);
  ck_assert_int_eq(r.status, 200);
  td_resp_free(&r);
  req(&g_d, "GET", "/readyz", NULL, &r);
  ck_assert_int_eq(r.status, 200);
  td_resp_free(&r);
}
END_TEST

START_TEST(http_should_serve_default_config_as_keras_get_config) {
  td_resp r;
  req(&g_d, "GET", "/config", NULL, &r);
  ck_assert_int_eq(r.status, 200);
  cJSON *j = parse(&r);
  ck_assert_str_eq(jstr(j, "name"),
                   "circle");
  ck_assert_str_eq(
      jstr(j, "reduction"),
      "sum_over_batch_size");
  ck_assert(jnum(j, "gamma") == 80.0);
  ck_assert(jnum(j, "margin") == 0.4);
  ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "remove_diagonal")));
  /* Floats are written as Python writes them. */
  ck_assert_ptr_nonnull(strstr(r.body, "80.0"));
  cJSON_Delete(j);
  td_resp_free(&r);
}
END_TEST

START_TEST(http_should_serve_oip_server_metadata_and_health) {
  td_resp r;
  req(&g_d, "GET", "/v2", NULL, &r);
  ck_assert_int_eq(r.status, 200);
  cJSON *j = parse(&r);
  ck_assert(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "name")));
  ck_assert(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "version")));
  cJSON_Delete(j);
  td_resp_free(&r);
  const char *paths[] = {"/v2/health/live", "/v2/health/ready"};
  for (size_t i = 0; i < 2; i++) {
    req(&g_d, "GET", paths[i], NULL, &r);
    ck_assert_int_eq(r.status, 200);
    cJSON_Delete(parse(&r));
    td_resp_free(&r);
  }
}
END_TEST

START_TEST(http_should_serve_model_routes_with_and_without_version) {
  const char *meta[] = {"/v2/models/circle", "/v2/models/circle/versions/1"};
  const char *ready[] = {"/v2/models/circle/ready",
                         "/v2/models/circle/versions/1/ready"};
  td_resp r;
  for (size_t i = 0; i < 2; i++) {
    req(&g_d, "GET", meta[i], NULL, &r);
    ck_assert_int_eq(r.status, 200);
    cJSON *j = parse(&r);
    cJSON *name = cJSON_GetObjectItemCaseSensitive(j, "name");
    ck_assert(cJSON_IsString(name));
    ck_assert_str_eq(name->valuestring, "circle");
    ck_assert(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(j, "inputs")));
    ck_assert(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(j, "outputs")));
    cJSON_Delete(j);
    td_resp_free(&r);
    req(&g_d, "GET", ready[i], NULL, &r);
    ck_assert_int_eq(r.status, 200);
    td_resp_free(&r);
  }
}
END_TEST

START_TEST(http_should_404_unknown_model_like_triton) {
  td_resp r;
  req(&g_d, "GET", "/v2/models/resnet/ready", NULL, &r);
  assert_oip_error(&r, 404);
  ck_assert_ptr_nonnull(strstr(r.body, "unknown model: 'resnet'"));
  td_resp_free(&r);
  req(&g_d, "POST", "/v2/models/resnet/infer", "{}", &r);
  assert_oip_error(&r, 404);
  td_resp_free(&r);
  req(&g_d, "GET", "/v2/models/circle/versions/7", NULL, &r);
  assert_oip_error(&r, 404);
  ck_assert_ptr_nonnull(strstr(r.body, "version 7"));
  td_resp_free(&r);
}
END_TEST

START_TEST(http_should_404_unknown_paths_in_each_family) {
  td_resp r;
  req(&g_d, "GET", "/v1/nothing", NULL, &r);
  assert_v1_error(&r, 404, "not_found");
  td_resp_free(&r);
  req(&g_d, "GET", "/", NULL, &r);
  assert_v1_error(&r, 404, "not_found");
  td_resp_free(&r);
  req(&g_d, "POST", "/v1/loss/extra", "{}", &r);
  assert_v1_error(&r, 404, "not_found");
  td_resp_free(&r);
  req(&g_d, "GET", "/v2/repository/index", NULL, &r);
  assert_oip_error(&r, 404);
  td_resp_free(&r);
}
END_TEST

START_TEST(http_should_405_with_allow) {
  static const struct {
    const char *method, *path, *allow;
    bool oip;
  } cases[] = {
      {"GET", "/v1/loss", "POST", false},
      {"PUT", "/v1/loss", "POST", false},
      {"POST", "/healthz", "GET, HEAD", false},
      {"DELETE", "/config", "GET, HEAD", false},
      {"GET", "/v2/models/circle/infer", "POST", true},
      {"POST", "/v2/health/ready", "GET, HEAD", true},
      {"PATCH", "/v2/models/circle/versions/1/infer", "POST", true},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    td_resp r;
    req(&g_d, cases[i].method, cases[i].path, NULL, &r);
    if (cases[i].oip)
      assert_oip_error(&r, 405);
    else
      assert_v1_error(&r, 405, "method_not_allowed");
    char allow[64];
    ck_assert_ptr_nonnull(td_header(&r, "Allow", allow, sizeof allow));
    ck_assert_str_eq(allow, cases[i].allow);
    td_resp_free(&r);
  }
}
END_TEST

START_TEST(http_should_answer_head_without_body) {
  td_resp r;
  req(&g_d, "HEAD", "/config", NULL, &r);
  ck_assert_int_eq(r.status, 200);
  ck_assert_uint_eq(r.len, 0);
  char cl[32];
  ck_assert_ptr_nonnull(td_header(&r, "Content-Length", cl, sizeof cl));
  ck_assert_int_gt(atoi(cl), 10);
  td_resp_free(&r);
}
END_TEST

START_TEST(http_should_keep_connections_alive) {
  CURL *h = curl_easy_init();
  const char *paths[] = {"/healthz", "/config", "/nothing", "/v2"};
  for (size_t i = 0; i < 4; i++) {
    td_resp r;
    ck_assert_int_eq(
        td_request(&g_d, h, "GET", paths[i], NULL, 0, NULL, NULL, &r), 0);
    long fresh = -1;
    curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &fresh);
    ck_assert_msg(i == 0 || fresh == 0,
                  "request %zu (%s) needed a new connection", i, paths[i]);
    td_resp_free(&r);
  }
  curl_easy_cleanup(h);
}
END_TEST

/* ======================================================================== */
/* POST /v1/loss                                                            */
/* ======================================================================== */

START_TEST(http_should_compute_v1_loss_like_the_engine) {
  char *body = v1_body(24, 8, 1, NULL);
  td_resp r;
  req(&g_d, "POST", "/v1/loss", body, &r);
  double got = json_loss(&r);
  circle_config cfg;
  circle_config_init(&cfg);
  double want = engine_loss(24, 8, 1, &cfg);
  ck_assert_msg(close_rel(got, want, 1e-6), "loss %.9g, engine %.9g", got,
                want);
  cJSON *j = parse(&r);
  cJSON *ps = cJSON_GetObjectItemCaseSensitive(j, "per_sample_loss");
  cJSON *g = cJSON_GetObjectItemCaseSensitive(j, "embeddings_grad");
  ck_assert_int_eq(cJSON_GetArraySize(ps), 24);
  ck_assert_int_eq(cJSON_GetArraySize(g), 24);
  ck_assert_int_eq((int)jnum(j, "n"), 24);
  ck_assert_int_eq((int)jnum(j, "d"), 8);
  ck_assert_str_eq(jstr(j, "dtype"),
                   "float32");
  cJSON_Delete(j);
  td_resp_free(&r);
  free(body);
}
END_TEST

START_TEST(http_should_compute_v1_with_request_config) {
  /* Inputs written with 17 digits, so the server's doubles are exactly the
   * widened floats the oracle uses. */
  char *body = v1_body_digits(16, 4, 2,
                              "\"config\": {\"gamma\": 32.0, \"margin\": "
                              "0.25, \"reduction\": \"sum\", \"dtype\": "
                              "\"float64\"}",
                              17);
  td_resp r;
  req(&g_d, "POST", "/v1/loss", body, &r);
  double got = json_loss(&r);
  ck_assert(config_number(&r, "gamma") == 32.0);
  cJSON *j = parse(&r);
  ck_assert_str_eq(jstr(j, "dtype"),
                   "float64");
  cJSON_Delete(j);
  /* The float64 oracle: same float inputs, widened. */
  float *x = malloc(16 * 4 * sizeof *x);
  double *xd = malloc(16 * 4 * sizeof *xd);
  int64_t l[16];
  fill_emb(x, 64, 2);
  for (size_t i = 0; i < 64; i++) xd[i] = x[i];
  fill_labels(l, 16, 3);
  circle_config cfg;
  circle_config_init(&cfg);
  cfg.gamma = 32;
  cfg.margin = 0.25;
  cfg.reduction = CIRCLE_REDUCTION_SUM;
  cfg.dtype = CIRCLE_DTYPE_FLOAT64;
  circle_engine *e = NULL;
  ck_assert_int_eq(circle_engine_init(&e, NULL), CIRCLE_OK);
  circle_input in = {.n = 16, .d = 4, .labels = l, .embeddings = xd};
  circle_output out;
  memset(&out, 0, sizeof out);
  out.want = CIRCLE_OUT_LOSS;
  ck_assert_int_eq(circle_loss_compute(e, &cfg, &in, &out), CIRCLE_OK);
  circle_engine_free(e);
  ck_assert_msg(close_rel(got, out.loss, 1e-12), "loss %.17g, engine %.17g",
                got, out.loss);
  free(x);
  free(xd);
  td_resp_free(&r);
  free(body);
}
END_TEST

START_TEST(http_should_not_leak_config_between_requests) {
  char *custom = v1_body(12, 4, 3, "\"config\": {\"gamma\": 7.5}");
  char *plain = v1_body(12, 4, 3, NULL);
  td_resp r;
  req(&g_d, "POST", "/v1/loss", custom, &r);
  ck_assert(config_number(&r, "gamma") == 7.5);
  td_resp_free(&r);
  req(&g_d, "POST", "/v1/loss", plain, &r);
  ck_assert(config_number(&r, "gamma") == 80.0);
  td_resp_free(&r);
  req(&g_d, "GET", "/config", NULL, &r);
  ck_assert(config_number(&r, "gamma") == 80.0);
  td_resp_free(&r);
  free(custom);
  free(plain);
}
END_TEST

/* One error case: a body and the status + code it must get. */
typedef struct {
  const char *body;
  long status;
  const char *code;
  const char *mention; /* the message must contain this, or NULL */
} bad_case;

static void check_bad(const bad_case *c) {
  td_resp r;
  req(&g_d, "POST", "/v1/loss", c->body, &r);
  const char *msg = assert_v1_error(&r, c->status, c->code);
  if (c->mention)
    ck_assert_msg(strstr(msg, c->mention) != NULL,
                  "message '%s' should mention '%s'", msg, c->mention);
  td_resp_free(&r);
}

START_TEST(http_should_reject_invalid_json_with_offset) {
  bad_case c = {"{\"labels\": [0, 1], \"embeddings\": [[1, 2], [3, 4]",
                400, "invalid_json", "byte"};
  check_bad(&c);
  bad_case c2 = {"", 400, "invalid_json", NULL};
  check_bad(&c2);
  bad_case c3 = {"[1, 2, 3]", 400, "wrong_type", NULL};
  check_bad(&c3);
}
END_TEST

START_TEST(http_should_reject_wrong_types) {
  bad_case cases[] = {
      {"{\"labels\": [0, 1], \"embeddings\": \"nope\"}", 400, "wrong_type",
       "embeddings"},
      {"{\"labels\": [0, 1], \"embeddings\": [[1, \"x\"], [3, 4]]}", 400,
       "wrong_type", "embeddings"},
      {"{\"labels\": 3, \"embeddings\": [[1, 2], [3, 4]]}", 400, "wrong_type",
       "labels"},
  };
  for (size_t i = 0; i < 3; i++) check_bad(&cases[i]);
}
END_TEST

START_TEST(http_should_reject_ragged_rows) {
  bad_case c = {"{\"labels\": [0, 1, 0], \"embeddings\": [[1, 2], [3, 4, 5], "
                "[6, 7]]}",
                400, "ragged_rows", "1"};
  check_bad(&c);
}
END_TEST

START_TEST(http_should_reject_n_and_d_mismatch) {
  bad_case n = {"{\"labels\": [0, 1, 2], \"embeddings\": [[1, 2], [3, 4]]}",
                400, "shape_mismatch", NULL};
  check_bad(&n);
  bad_case d = {"{\"labels\": [0, 1], \"embeddings\": [[1, 2], [3, 4]], "
                "\"ref_labels\": [0], \"ref_embeddings\": [[1, 2, 3]]}",
                400, "shape_mismatch", "ref_embeddings[0]"};
  check_bad(&d);
  bad_case w = {"{\"labels\": [0, 1], \"embeddings\": [[1, 2], [3, 4]], "
                "\"sample_weight\": [1]}",
                400, "shape_mismatch", NULL};
  check_bad(&w);
}
END_TEST

START_TEST(http_should_reject_empty_batch) {
  bad_case c = {"{\"labels\": [], \"embeddings\": []}", 400, "empty_batch",
                NULL};
  check_bad(&c);
}
END_TEST

START_TEST(http_should_reject_non_finite) {
  bad_case c = {"{\"labels\": [0, 1], \"embeddings\": [[1, 2], [3, 1e999]]}",
                400, "non_finite", NULL};
  check_bad(&c);
}
END_TEST

START_TEST(http_should_reject_embeddings_too_large_for_the_dtype) {
  /* |s| ~ 1e36 would overflow gamma * (1 - s)^2 in float32. */
  bad_case c = {"{\"labels\": [0, 1], \"embeddings\": [[1e18, 0], [1e18, 1]]}",
                400, "out_of_range", "embeddings[0]"};
  check_bad(&c);
}
END_TEST

START_TEST(http_should_reject_bad_labels) {
  bad_case cases[] = {
      {"{\"labels\": [0, 1.5], \"embeddings\": [[1, 2], [3, 4]]}", 400,
       "bad_label", NULL},
      {"{\"labels\": [0, true], \"embeddings\": [[1, 2], [3, 4]]}", 400,
       "bad_label", NULL},
      {"{\"labels\": [0, null], \"embeddings\": [[1, 2], [3, 4]]}", 400,
       "bad_label", NULL},
  };
  for (size_t i = 0; i < 3; i++) check_bad(&cases[i]);
}
END_TEST

START_TEST(http_should_reject_bad_config) {
  bad_case cases[] = {
      {"{\"labels\": [0, 1], \"embeddings\": [[1, 2], [3, 4]], "
       "\"config\": {\"gamma\": 0}}",
       400, "bad_config", "gamma"},
      {"{\"labels\": [0, 1], \"embeddings\": [[1, 2], [3, 4]], "
       "\"config\": {\"gamma\": -3}}",
       400, "bad_config", "gamma"},
      {"{\"labels\": [0, 1], \"embeddings\": [[1, 2], [3, 4]], "
       "\"config\": {\"reduction\": \"average\"}}",
       400, "bad_config", "reduction"},
      {"{\"labels\": [0, 1], \"embeddings\": [[1, 2], [3, 4]], "
       "\"config\": {\"dtype\": \"int8\"}}",
       400, "bad_config", "dtype"},
  };
  for (size_t i = 0; i < 4; i++) check_bad(&cases[i]);
}
END_TEST

START_TEST(http_should_reject_unknown_key) {
  bad_case cases[] = {
      {"{\"labels\": [0, 1], \"embeddings\": [[1, 2], [3, 4]], "
       "\"config\": {\"gama\": 3}}",
       400, "unknown_key", "gama"},
      {"{\"labels\": [0, 1], \"embeddings\": [[1, 2], [3, 4]], "
       "\"lables\": [0, 1]}",
       400, "unknown_key", "lables"},
  };
  for (size_t i = 0; i < 2; i++) check_bad(&cases[i]);
}
END_TEST

START_TEST(http_should_reject_half_reference_set) {
  bad_case cases[] = {
      {"{\"labels\": [0, 1], \"embeddings\": [[1, 2], [3, 4]], "
       "\"ref_labels\": [0, 1]}",
       400, "half_reference", NULL},
      {"{\"labels\": [0, 1], \"embeddings\": [[1, 2], [3, 4]], "
       "\"ref_embeddings\": [[1, 2]]}",
       400, "half_reference", NULL},
  };
  for (size_t i = 0; i < 2; i++) check_bad(&cases[i]);
}
END_TEST

START_TEST(http_should_refuse_unknown_content_encoding) {
  const char *h[] = {"Content-Encoding: br", NULL};
  td_resp r;
  ck_assert_int_eq(td_request(&g_d, NULL, "POST", "/v1/loss", "{}", 2, h,
                              NULL, &r),
                   0);
  assert_v1_error(&r, 415, "bad_encoding");
  td_resp_free(&r);
}
END_TEST

/* ---- body limits -------------------------------------------------------- */

/* Sends a request head whose body never follows and asserts a 413
 * body_too_large: since no body is sent, any answer at all came from the
 * head alone. */
static void assert_413_from_head(const td_daemon *d, const char *head) {
  char out[2048];
  long n = td_raw(d, head, strlen(head), out, sizeof out, 10);
  ck_assert_int_gt(n, 0);
  ck_assert_msg(!strncmp(out, "HTTP/1.1 413", 12), "got: %.200s", out);
  ck_assert_ptr_nonnull(strstr(out, "body_too_large"));
}

START_TEST(http_should_refuse_oversize_body_from_content_length) {
  assert_413_from_head(&g_d, "POST /v1/loss HTTP/1.1\r\nHost: x\r\n"
                             "Content-Type: application/json\r\n"
                             "Content-Length: 100000000\r\n\r\n");
}
END_TEST

START_TEST(http_should_refuse_oversize_body_before_100_continue) {
  /* The client asks whether to send 3 MiB and sends nothing until told:
   * the first answer must be the 413, never "100 Continue". */
  td_daemon d;
  const char *args[] = {"--max-body-mb", "1", NULL};
  start_or_fail(&d, args, NULL);
  assert_413_from_head(&d, "POST /v1/loss HTTP/1.1\r\nHost: x\r\n"
                           "Content-Type: application/json\r\n"
                           "Expect: 100-continue\r\n"
                           "Content-Length: 3145728\r\n\r\n");
  stop_expect_0(&d);
}
END_TEST

START_TEST(http_should_refuse_oversize_chunked_body) {
  td_daemon d;
  const char *args[] = {"--max-body-mb", "1", NULL};
  start_or_fail(&d, args, NULL);
  int s = td_connect(&d);
  ck_assert_int_ge(s, 0);
  const char *head = "POST /v1/loss HTTP/1.1\r\nHost: x\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n";
  ck_assert(send(s, head, strlen(head), MSG_NOSIGNAL) > 0);
  static char chunk[65536];
  memset(chunk, '1', sizeof chunk);
  char line[32];
  int cl = snprintf(line, sizeof line, "%zx\r\n", sizeof chunk);
  for (int i = 0; i < 24; i++) { /* 1.5 MiB */
    ck_assert(send(s, line, (size_t)cl, MSG_NOSIGNAL) > 0);
    ck_assert(send(s, chunk, sizeof chunk, MSG_NOSIGNAL) > 0);
    ck_assert(send(s, "\r\n", 2, MSG_NOSIGNAL) > 0);
  }
  ck_assert(send(s, "0\r\n\r\n", 5, MSG_NOSIGNAL) > 0);
  char out[2048] = "";
  size_t got = 0;
  double deadline = td_now() + 10;
  while (got < sizeof out - 1 && td_now() < deadline) {
    ssize_t n = recv(s, out + got, sizeof out - 1 - got, MSG_DONTWAIT);
    if (n > 0) got += (size_t)n;
    else if (n == 0) break;
    else usleep(10000);
    out[got] = '\0';
    if (strstr(out, "}}")) break;
  }
  close(s);
  ck_assert_msg(!strncmp(out, "HTTP/1.1 413", 12), "got: %.300s", out);
  ck_assert_ptr_nonnull(strstr(out, "body_too_large"));
  stop_expect_0(&d);
}
END_TEST

/* ======================================================================== */
/* Open Inference Protocol                                                  */
/* ======================================================================== */

/* An OIP JSON infer body for v1_body's inputs. */
static char *oip_json_body(size_t n, size_t d, unsigned seed,
                           const char *outputs) {
  float *x = malloc(n * d * sizeof *x);
  int64_t *l = malloc(n * sizeof *l);
  fill_emb(x, n * d, seed);
  fill_labels(l, n, 3);
  sb s = {0};
  sb_printf(&s, "{\"id\": \"t1\", \"inputs\": [{\"name\": \"labels\", "
                "\"datatype\": \"INT64\", \"shape\": [%zu], \"data\": ",
            n);
  sb_labels(&s, l, n);
  sb_printf(&s, "}, {\"name\": \"embeddings\", \"datatype\": \"FP32\", "
                "\"shape\": [%zu, %zu], \"data\": ",
            n, d);
  sb_floats(&s, x, n, d);
  sb_add(&s, "}]", 2);
  if (outputs) sb_printf(&s, ", \"outputs\": %s", outputs);
  sb_add(&s, "}", 1);
  free(x);
  free(l);
  return s.p;
}

/* An OIP binary infer body; *header_len receives the JSON part's size. */
static char *oip_binary_body(size_t n, size_t d, unsigned seed,
                             size_t *total, size_t *header_len) {
  float *x = malloc(n * d * sizeof *x);
  int64_t *l = malloc(n * sizeof *l);
  fill_emb(x, n * d, seed);
  fill_labels(l, n, 3);
  sb s = {0};
  sb_printf(&s,
            "{\"inputs\": [{\"name\": \"labels\", \"datatype\": \"INT64\", "
            "\"shape\": [%zu], \"parameters\": {\"binary_data_size\": %zu}}, "
            "{\"name\": \"embeddings\", \"datatype\": \"FP32\", \"shape\": "
            "[%zu, %zu], \"parameters\": {\"binary_data_size\": %zu}}], "
            "\"outputs\": [{\"name\": \"loss\", \"parameters\": "
            "{\"binary_data\": true}}]}",
            n, n * 8, n, d, n * d * 4);
  *header_len = s.len;
  sb_add(&s, l, n * 8);
  sb_add(&s, x, n * d * 4);
  *total = s.len;
  free(x);
  free(l);
  return s.p;
}

/* The "loss" output of an OIP JSON response. */
static double oip_json_loss(const td_resp *r) {
  ck_assert_msg(r->status == 200, "status %ld: %.400s", r->status, r->body);
  cJSON *j = parse(r);
  cJSON *outs = cJSON_GetObjectItemCaseSensitive(j, "outputs");
  ck_assert(cJSON_IsArray(outs));
  double v = NAN;
  cJSON *o;
  cJSON_ArrayForEach(o, outs) {
    cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
    if (!cJSON_IsString(name) || strcmp(name->valuestring, "loss")) continue;
    cJSON *data = cJSON_GetObjectItemCaseSensitive(o, "data");
    ck_assert(cJSON_IsArray(data) && cJSON_GetArraySize(data) == 1);
    cJSON *first;
    cJSON_ArrayForEach(first, data) v = first->valuedouble;
  }
  cJSON_Delete(j);
  ck_assert_msg(!isnan(v), "no loss output: %.300s", r->body);
  return v;
}

static double v1_loss_for(size_t n, size_t d, unsigned seed) {
  char *body = v1_body(n, d, seed, NULL);
  td_resp r;
  req(&g_d, "POST", "/v1/loss", body, &r);
  double v = json_loss(&r);
  td_resp_free(&r);
  free(body);
  return v;
}

START_TEST(http_should_compute_oip_json_like_v1) {
  double want = v1_loss_for(20, 6, 4);
  const char *paths[] = {"/v2/models/circle/infer",
                         "/v2/models/circle/versions/1/infer"};
  for (size_t i = 0; i < 2; i++) {
    char *body = oip_json_body(20, 6, 4, NULL);
    td_resp r;
    /* No Content-Type, as tritonclient sends none. */
    ck_assert_int_eq(td_request(&g_d, NULL, "POST", paths[i], body,
                                strlen(body), NULL, NULL, &r),
                     0);
    double got = oip_json_loss(&r);
    ck_assert_msg(got == want, "%s: %.9g, /v1: %.9g", paths[i], got, want);
    cJSON *j = parse(&r);
    cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
    ck_assert(cJSON_IsString(id) && !strcmp(id->valuestring, "t1"));
    cJSON *mn = cJSON_GetObjectItemCaseSensitive(j, "model_name");
    ck_assert(cJSON_IsString(mn) && !strcmp(mn->valuestring, "circle"));
    cJSON_Delete(j);
    td_resp_free(&r);
    free(body);
  }
}
END_TEST

/* Splits a binary OIP response and returns the float32 loss. */
static double oip_binary_loss(const td_resp *r) {
  ck_assert_msg(r->status == 200, "status %ld: %.400s", r->status, r->body);
  char h[32];
  ck_assert_ptr_nonnull(
      td_header(r, "Inference-Header-Content-Length", h, sizeof h));
  size_t hl = (size_t)atol(h);
  ck_assert_uint_lt(hl, r->len);
  cJSON *j = cJSON_ParseWithLengthOpts(r->body, hl, NULL, 0);
  ck_assert_ptr_nonnull(j);
  cJSON *outs = cJSON_GetObjectItemCaseSensitive(j, "outputs");
  cJSON *o = NULL, *loss = NULL;
  size_t offset = 0, size = 0;
  cJSON_ArrayForEach(o, outs) {
    cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "parameters");
    cJSON *bs = cJSON_GetObjectItemCaseSensitive(p, "binary_data_size");
    ck_assert_msg(cJSON_IsNumber(bs), "output without binary_data_size");
    if (!strcmp(jstr(o, "name"),
                "loss")) {
      loss = o;
      size = (size_t)bs->valuedouble;
      break;
    }
    offset += (size_t)bs->valuedouble;
  }
  ck_assert_ptr_nonnull(loss);
  ck_assert_str_eq(
      jstr(loss, "datatype"), "FP32");
  ck_assert_uint_eq(size, 4);
  ck_assert_uint_le(hl + offset + size, r->len);
  float f;
  memcpy(&f, r->body + hl + offset, 4);
  cJSON_Delete(j);
  return f;
}

/* POSTs oip_binary_body(n, d, seed) to the infer route of the shared
 * daemon; the answer is in *r. */
static void post_oip_binary(size_t n, size_t d, unsigned seed, td_resp *r) {
  size_t total, hl;
  char *body = oip_binary_body(n, d, seed, &total, &hl);
  char ih[80];
  snprintf(ih, sizeof ih, "Inference-Header-Content-Length: %zu", hl);
  const char *h[] = {ih, NULL};
  ck_assert_int_eq(td_request(&g_d, NULL, "POST", "/v2/models/circle/infer",
                              body, total, h, NULL, r),
                   0);
  free(body);
}

START_TEST(http_should_compute_oip_binary_like_v1) {
  double want = v1_loss_for(20, 6, 5);
  td_resp r;
  post_oip_binary(20, 6, 5, &r);
  /* /v1 writes 9 digits: the same float32 once read back as a float. */
  double got = oip_binary_loss(&r);
  ck_assert_msg((float)got == (float)want, "binary %.9g, /v1 %.9g", got, want);
  td_resp_free(&r);
}
END_TEST

/* Checks a Server-Timing value: "name;dur=ms" items joined by ", ", with
 * the names in want (in order), each duration >= 0; returns their sum. */
static double check_server_timing(const char *v, const char *const *want) {
  double sum = 0;
  const char *p = v;
  for (size_t k = 0; want[k]; k++) {
    size_t len = strlen(want[k]);
    ck_assert_msg(strncmp(p, want[k], len) == 0 && strncmp(p + len, ";dur=", 5) == 0,
                  "Server-Timing \"%s\": expected %s at \"%s\"", v, want[k], p);
    char *end;
    double ms = strtod(p + len + 5, &end);
    ck_assert_msg(end > p + len + 5 && ms >= 0, "bad duration in \"%s\"", v);
    sum += ms;
    p = end;
    if (want[k + 1]) {
      ck_assert_msg(strncmp(p, ", ", 2) == 0, "Server-Timing \"%s\" ends early", v);
      p += 2;
    }
  }
  ck_assert_msg(*p == '\0', "Server-Timing \"%s\" has more than expected", v);
  return sum;
}

START_TEST(http_should_report_where_the_time_went_in_server_timing) {
  /* A computed request: every phase, adding up to no more than the client
   * waited. */
  td_resp r;
  double t0 = td_now();
  post_oip_binary(200, 32, 5, &r);
  double waited_ms = (td_now() - t0) * 1e3;
  ck_assert_int_eq(r.status, 200);
  char st[256];
  ck_assert_ptr_nonnull(td_header(&r, "Server-Timing", st, sizeof st));
  const char *all[] = {"recv", "queue", "decode", "compute", "encode", NULL};
  double sum = check_server_timing(st, all);
  ck_assert_msg(sum <= waited_ms, "phases add up to %.3f ms, the client waited %.3f",
                sum, waited_ms);
  td_resp_free(&r);

  /* A request its decoding refuses: the phases it reached. */
  req(&g_d, "POST", "/v1/loss",
      "{\"labels\": [0, 1], \"embeddings\": [[1, 2], [3, 4, 5]]}", &r);
  ck_assert_int_eq(r.status, 400);
  ck_assert_ptr_nonnull(td_header(&r, "Server-Timing", st, sizeof st));
  const char *reached[] = {"recv", "queue", NULL};
  check_server_timing(st, reached);
  td_resp_free(&r);

  /* Nothing computed, nothing to report. */
  req(&g_d, "GET", "/healthz", NULL, &r);
  ck_assert_ptr_null(td_header(&r, "Server-Timing", st, sizeof st));
  td_resp_free(&r);
}
END_TEST

static char *zcompress(const char *in, size_t len, bool gzip, size_t *out_len) {
  z_stream zs;
  memset(&zs, 0, sizeof zs);
  ck_assert_int_eq(deflateInit2(&zs, 6, Z_DEFLATED, gzip ? 31 : 15, 8,
                                Z_DEFAULT_STRATEGY),
                   Z_OK);
  size_t cap = deflateBound(&zs, len);
  char *out = malloc(cap);
  zs.next_in = (Bytef *)in;
  zs.avail_in = (uInt)len;
  zs.next_out = (Bytef *)out;
  zs.avail_out = (uInt)cap;
  ck_assert_int_eq(deflate(&zs, Z_FINISH), Z_STREAM_END);
  *out_len = zs.total_out;
  deflateEnd(&zs);
  return out;
}

START_TEST(http_should_accept_gzip_and_deflate_bodies) {
  double want = v1_loss_for(20, 6, 6);
  for (int gz = 0; gz < 2; gz++) {
    /* OIP binary, compressed as a whole: the header length counts the
     * uncompressed JSON part, as tritonclient sends it. */
    size_t total, hl, zlen;
    char *body = oip_binary_body(20, 6, 6, &total, &hl);
    char *z = zcompress(body, total, gz, &zlen);
    char ih[80];
    snprintf(ih, sizeof ih, "Inference-Header-Content-Length: %zu", hl);
    const char *h[] = {ih, gz ? "Content-Encoding: gzip"
                              : "Content-Encoding: deflate",
                       NULL};
    td_resp r;
    ck_assert_int_eq(td_request(&g_d, NULL, "POST",
                                "/v2/models/circle/infer", z, zlen, h, NULL,
                                &r),
                     0);
    ck_assert_msg((float)oip_binary_loss(&r) == (float)want, "%s body",
                  gz ? "gzip" : "deflate");
    td_resp_free(&r);
    free(z);
    free(body);
    /* And /v1. */
    char *v1 = v1_body(20, 6, 6, NULL);
    z = zcompress(v1, strlen(v1), gz, &zlen);
    const char *h1[] = {gz ? "Content-Encoding: gzip"
                           : "Content-Encoding: deflate",
                        NULL};
    ck_assert_int_eq(
        td_request(&g_d, NULL, "POST", "/v1/loss", z, zlen, h1, NULL, &r), 0);
    ck_assert(json_loss(&r) == want);
    td_resp_free(&r);
    free(z);
    free(v1);
  }
}
END_TEST

START_TEST(http_should_refuse_corrupt_gzip_body) {
  const char *h[] = {"Content-Encoding: gzip", NULL};
  td_resp r;
  ck_assert_int_eq(td_request(&g_d, NULL, "POST", "/v1/loss",
                              "definitely not gzip", 19, h, NULL, &r),
                   0);
  assert_v1_error(&r, 400, "bad_encoding");
  td_resp_free(&r);
}
END_TEST

START_TEST(http_should_compress_the_response_when_asked) {
  char *body = v1_body(64, 16, 7, NULL);
  td_resp plain, zipped;
  req(&g_d, "POST", "/v1/loss", body, &plain);
  ck_assert_int_eq(td_request(&g_d, NULL, "POST", "/v1/loss", body,
                              strlen(body), JSON_HDR, "gzip", &zipped),
                   0);
  ck_assert_int_eq(zipped.status, 200);
  char ce[32];
  ck_assert_ptr_nonnull(td_header(&zipped, "Content-Encoding", ce, sizeof ce));
  ck_assert_str_eq(ce, "gzip");
  /* curl decoded it: the same bytes as the plain answer. */
  ck_assert_uint_eq(zipped.len, plain.len);
  ck_assert(memcmp(zipped.body, plain.body, plain.len) == 0);
  td_resp_free(&plain);
  td_resp_free(&zipped);
  free(body);
}
END_TEST

START_TEST(http_should_answer_oip_errors_as_triton_does) {
  td_resp r;
  req(&g_d, "POST", "/v2/models/circle/infer", "{\"inputs\": 3}", &r);
  assert_oip_error(&r, 400);
  td_resp_free(&r);
  req(&g_d, "POST", "/v2/models/circle/infer", "{not json", &r);
  assert_oip_error(&r, 400);
  td_resp_free(&r);
  /* A header length past the body. */
  const char *h[] = {"Inference-Header-Content-Length: 5000", NULL};
  ck_assert_int_eq(td_request(&g_d, NULL, "POST", "/v2/models/circle/infer",
                              "{}", 2, h, NULL, &r),
                   0);
  assert_oip_error(&r, 400);
  td_resp_free(&r);
}
END_TEST

START_TEST(http_should_match_a_keras_golden_file_on_both_protocols) {
  const char *dir = getenv("CIRCLE_GOLDEN_DIR");
  char path[512];
  snprintf(path, sizeof path, "%s/defaults_32.json", dir ? dir : "tests/golden");
  FILE *f = fopen(path, "rb");
  ck_assert_msg(f != NULL, "no golden file %s", path);
  sb g = {0};
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) sb_add(&g, buf, n);
  fclose(f);
  cJSON *gold = cJSON_ParseWithLengthOpts(g.p, g.len, NULL, 0);
  ck_assert_ptr_nonnull(gold);
  double want = jnum(gold, "loss");
  int gn = (int)jnum(gold, "n");
  int gd = (int)jnum(gold, "d");

  /* /v1: labels + embeddings as rows. */
  sb s = {0};
  char *labels = cJSON_PrintUnformatted(
      cJSON_GetObjectItemCaseSensitive(gold, "labels"));
  sb_printf(&s, "{\"labels\": ");
  sb_add(&s, labels, strlen(labels));
  sb_printf(&s, ", \"embeddings\": [");
  cJSON *e;
  int k = 0;
  cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(gold, "embeddings")) {
    if (k % gd == 0) sb_add(&s, k ? "],[" : "[", k ? 3 : 1);
    else sb_add(&s, ",", 1);
    sb_printf(&s, "%.17g", e->valuedouble);
    k++;
  }
  sb_add(&s, "]]}", 3);
  td_resp r;
  req(&g_d, "POST", "/v1/loss", s.p, &r);
  double v1 = json_loss(&r);
  ck_assert_msg(close_rel(v1, want, 1e-4), "/v1 %.9g, Keras %.9g", v1, want);
  td_resp_free(&r);

  /* /v2 JSON with flat data. */
  sb o = {0};
  sb_printf(&o, "{\"inputs\": [{\"name\": \"labels\", \"datatype\": "
                "\"INT64\", \"shape\": [%d], \"data\": ",
            gn);
  sb_add(&o, labels, strlen(labels));
  char *emb = cJSON_PrintUnformatted(
      cJSON_GetObjectItemCaseSensitive(gold, "embeddings"));
  sb_printf(&o, "}, {\"name\": \"embeddings\", \"datatype\": \"FP32\", "
                "\"shape\": [%d, %d], \"data\": ",
            gn, gd);
  sb_add(&o, emb, strlen(emb));
  sb_add(&o, "}]}", 3);
  ck_assert_int_eq(td_request(&g_d, NULL, "POST", "/v2/models/circle/infer",
                              o.p, o.len, NULL, NULL, &r),
                   0);
  double v2 = oip_json_loss(&r);
  ck_assert_msg(v2 == v1, "/v2 %.9g, /v1 %.9g", v2, v1);
  td_resp_free(&r);
  free(labels);
  free(emb);
  free(s.p);
  free(o.p);
  free(g.p);
  cJSON_Delete(gold);
}
END_TEST

/* ======================================================================== */
/* Concurrency                                                              */
/* ======================================================================== */

typedef struct {
  const td_daemon *d;
  double gamma;
  int rounds;
  int wrong; /* responses with another request's config or loss */
  int failed;
} gamma_job;

static void *gamma_worker(void *arg) {
  gamma_job *j = arg;
  char extra[64];
  snprintf(extra, sizeof extra, "\"config\": {\"gamma\": %.1f}", j->gamma);
  char *body = v1_body(32, 8, 11, extra);
  circle_config cfg;
  circle_config_init(&cfg);
  cfg.gamma = j->gamma;
  double want = engine_loss(32, 8, 11, &cfg);
  for (int i = 0; i < j->rounds; i++) {
    td_resp r;
    if (td_request(j->d, NULL, "POST", "/v1/loss", body, strlen(body),
                   JSON_HDR, NULL, &r) != 0 ||
        r.status != 200) {
      j->failed++;
      td_resp_free(&r);
      continue;
    }
    cJSON *js = cJSON_ParseWithLengthOpts(r.body, r.len, NULL, 0);
    cJSON *c = cJSON_GetObjectItemCaseSensitive(js, "config");
    cJSON *g = cJSON_GetObjectItemCaseSensitive(c, "gamma");
    cJSON *l = cJSON_GetObjectItemCaseSensitive(js, "loss");
    if (!cJSON_IsNumber(g) || g->valuedouble != j->gamma ||
        !cJSON_IsNumber(l) || !close_rel(l->valuedouble, want, 1e-6))
      j->wrong++;
    cJSON_Delete(js);
    td_resp_free(&r);
  }
  free(body);
  return NULL;
}

START_TEST(http_should_keep_each_concurrent_request_config) {
  gamma_job jobs[2] = {{&g_d, 10.0, 40, 0, 0}, {&g_d, 120.0, 40, 0, 0}};
  pthread_t t[2];
  for (int i = 0; i < 2; i++)
    pthread_create(&t[i], NULL, gamma_worker, &jobs[i]);
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(jobs[i].failed, 0);
    ck_assert_int_eq(jobs[i].wrong, 0);
  }
}
END_TEST

/* ---- long requests, sized on this machine ------------------------------ */
/* A test that needs a computation longer than something (a timeout, a
 * drain, a queue slot held) never picks a fixed size and hopes the machine
 * is slow enough: long_n() measures the daemon the test will use, as that
 * daemon's own Server-Timing "compute" phase reports it, and grows n
 * (the work grows as n^2 at a fixed d) until one request computes for at
 * least target_ms. The request is OIP binary, n x n pairs at d = LONG_D,
 * loss only. LONG_N_MAX is the largest n the default limits accept
 * (--max-n 65536, --max-pairs 2^32; a 32 MiB body at LONG_D); a machine
 * so fast that even it computes in less than target_ms fails the test
 * loudly, naming the figures, instead of passing on a premise that does
 * not hold. Each test then checks its premise again on the request it
 * makes (long_premise), since a later request can run faster than the
 * probe did. */
#define LONG_D 128
#define LONG_N_FIRST 2048
#define LONG_N_MAX 65536

typedef struct {
  const td_daemon *d;
  size_t n;
  char *body; /* built by long_prepare, before the clock matters */
  size_t total;
  char ih[80];
  long status;
  double ms;         /* what the client waited */
  double compute_ms; /* the server's compute phase; -1 when not reported */
  volatile int finished;
  char body_head[200];
} long_job;

/* The "compute" duration of r's Server-Timing header, or -1. */
static double server_compute_ms(const td_resp *r) {
  char st[256];
  if (!td_header(r, "Server-Timing", st, sizeof st)) return -1;
  const char *p = strstr(st, "compute;dur=");
  return p ? strtod(p + strlen("compute;dur="), NULL) : -1;
}

static void long_prepare(long_job *j, const td_daemon *d, size_t n) {
  memset(j, 0, sizeof *j);
  j->d = d;
  j->n = n;
  j->compute_ms = -1;
  size_t hl;
  j->body = oip_binary_body(j->n, LONG_D, 9, &j->total, &hl);
  snprintf(j->ih, sizeof j->ih, "Inference-Header-Content-Length: %zu", hl);
}

static void *long_worker(void *arg) {
  long_job *j = arg;
  const char *h[] = {j->ih, NULL};
  td_resp r;
  td_request(j->d, NULL, "POST", "/v2/models/circle/infer", j->body, j->total,
             h, NULL, &r);
  j->status = r.status;
  j->ms = r.ms;
  j->compute_ms = server_compute_ms(&r);
  snprintf(j->body_head, sizeof j->body_head, "%.199s",
           r.body ? r.body : r.error);
  td_resp_free(&r);
  free(j->body);
  j->body = NULL;
  __atomic_store_n(&j->finished, 1, __ATOMIC_SEQ_CST);
  return NULL;
}

/* The n whose request computes for at least target_ms on d (see above);
 * *ms_out, when not NULL, gets what that probe computed for. Every probe
 * must succeed; the figures go to stderr for the log. */
static size_t long_n(const td_daemon *d, double target_ms, double *ms_out) {
  size_t n = LONG_N_FIRST;
  double t = 0;
  for (int probe = 0; probe < 12; probe++) {
    long_job j;
    long_prepare(&j, d, n);
    long_worker(&j);
    ck_assert_msg(j.status == 200, "probe n = %zu: %ld %s", n, j.status,
                  j.body_head);
    t = j.compute_ms;
    ck_assert_msg(t >= 0, "probe n = %zu: no compute phase in Server-Timing",
                  n);
    if (t >= target_ms) {
      fprintf(stderr, "long_n: n = %zu x d = %d computes in %.0f ms (>= %.0f)\n",
              n, LONG_D, t, target_ms);
      if (ms_out) *ms_out = t;
      return n;
    }
    if (n == LONG_N_MAX) break;
    /* Aim a quarter past the target; grow at least 1.25x, at most 4x. */
    double f = t > 0 ? sqrt(target_ms / t) * 1.25 : 4;
    f = f < 1.25 ? 1.25 : f > 4 ? 4 : f;
    n = (size_t)((double)n * f);
    if (n > LONG_N_MAX) n = LONG_N_MAX;
  }
  ck_abort_msg("n = %zu x d = %d computes in %.0f ms on this machine: no "
               "request within the default limits reaches the %.0f ms this "
               "test needs",
               n, LONG_D, t, target_ms);
  return 0;
}

/* Fails unless job j computed for at least need_ms: the premise of the
 * test that made it. */
static void long_premise(const long_job *j, double need_ms, const char *why) {
  ck_assert_msg(j->compute_ms >= need_ms,
                "the long request (n = %zu) computed for %.0f ms, less than "
                "the %.0f ms needed %s: the test proves nothing",
                j->n, j->compute_ms, need_ms, why);
}

START_TEST(http_should_answer_healthz_fast_during_a_long_compute) {
  /* /healthz is probed every 10 ms while a request computes for about a
   * second. Were /healthz to wait for the compute, the probes sent in the
   * first half of the compute would take at least half of it; each must
   * take less than a quarter. The window is known afterwards: the compute
   * ended by the time the client had its answer and lasted compute_ms. */
  size_t n = long_n(&g_d, 1000, NULL);
  long_job j;
  long_prepare(&j, &g_d, n);
  pthread_t t;
  double t0 = td_now();
  pthread_create(&t, NULL, long_worker, &j);
  enum { MAX_PROBES = 2000 };
  static double sent[MAX_PROBES], took[MAX_PROBES];
  int probes = 0;
  while (!__atomic_load_n(&j.finished, __ATOMIC_SEQ_CST) &&
         probes < MAX_PROBES) {
    td_resp r;
    sent[probes] = td_now();
    req(&g_d, "GET", "/healthz", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    took[probes++] = r.ms;
    td_resp_free(&r);
    usleep(10000);
  }
  pthread_join(t, NULL);
  double t_end = t0 + j.ms / 1e3;
  ck_assert_msg(j.status == 200, "long request: %ld %s", j.status,
                j.body_head);
  long_premise(&j, 500, "to probe /healthz during it");
  double from = t_end - j.compute_ms / 1e3, to = from + j.compute_ms / 2e3;
  int during = 0;
  for (int i = 0; i < probes; i++) {
    if (sent[i] < from || sent[i] > to) continue;
    during++;
    ck_assert_msg(took[i] < j.compute_ms / 4,
                  "/healthz took %.1f ms during a %.0f ms compute", took[i],
                  j.compute_ms);
  }
  ck_assert_msg(during >= 3, "only %d probes during the compute", during);
}
END_TEST

/* ======================================================================== */
/* Daemons of their own: signals, auth, limits, flags                       */
/* ======================================================================== */

START_TEST(http_should_drain_on_sigterm_and_exit_0) {
  td_daemon d;
  const char *args[] = {"--workers", "1", NULL};
  start_or_fail(&d, args, NULL);
  CURL *keep = curl_easy_init();
  td_resp r;
  ck_assert_int_eq(
      td_request(&d, keep, "GET", "/readyz", NULL, 0, NULL, NULL, &r), 0);
  ck_assert_int_eq(r.status, 200);
  td_resp_free(&r);

  /* About 2 s of compute: still running through the checks below. */
  size_t n = long_n(&d, 2000, NULL);
  long_job j;
  long_prepare(&j, &d, n);
  pthread_t t;
  pthread_create(&t, NULL, long_worker, &j);
  usleep(200000);
  ck_assert_msg(!__atomic_load_n(&j.finished, __ATOMIC_SEQ_CST),
                "the long request ended too soon to test draining");
  kill(d.pid, SIGTERM);
  usleep(100000);
  /* The open connection sees the drain; new ones are refused. */
  ck_assert_int_eq(
      td_request(&d, keep, "GET", "/readyz", NULL, 0, NULL, NULL, &r), 0);
  ck_assert_int_eq(r.status, 503);
  td_resp_free(&r);
  curl_easy_cleanup(keep);
  bool refused = td_request(&d, NULL, "GET", "/healthz", NULL, 0, NULL, NULL,
                            &r) != 0;
  td_resp_free(&r);
  ck_assert_msg(refused, "a new connection was accepted while draining");
  ck_assert_msg(!__atomic_load_n(&j.finished, __ATOMIC_SEQ_CST),
                "the long request ended before the drain was checked");

  pthread_join(t, NULL);
  ck_assert_msg(j.status == 200, "in-flight request got %ld: %s", j.status,
                j.body_head);
  int rc = td_stop(&d, SIGTERM, 60);
  ck_assert_int_eq(rc, 0);
}
END_TEST

START_TEST(http_should_require_the_bearer_token_but_keep_health_open) {
  char keyfile[] = "/tmp/circled-key-XXXXXX";
  int fd = mkstemp(keyfile);
  ck_assert_int_ge(fd, 0);
  const char *key = "s3cret-Token_42";
  ck_assert(write(fd, key, strlen(key)) == (ssize_t)strlen(key));
  ck_assert(write(fd, "\n", 1) == 1);
  close(fd);
  td_daemon d;
  const char *args[] = {"--api-key-file", keyfile, NULL};
  start_or_fail(&d, args, NULL);

  td_resp r;
  const char *closed[] = {"/config", "/v2", "/v2/models/circle", "/nowhere"};
  for (size_t i = 0; i < 4; i++) {
    req(&d, "GET", closed[i], NULL, &r);
    ck_assert_msg(r.status == 401, "%s: %ld", closed[i], r.status);
    char www[64];
    ck_assert_ptr_nonnull(td_header(&r, "WWW-Authenticate", www, sizeof www));
    ck_assert_msg(!strncmp(www, "Bearer", 6), "WWW-Authenticate: %s", www);
    td_resp_free(&r);
  }
  req(&d, "POST", "/v1/loss", "{}", &r);
  assert_v1_error(&r, 401, "unauthorized");
  td_resp_free(&r);

  const char *wrong[] = {"Authorization: Bearer s3cret-Token_4",
                         "Authorization: Bearer s3cret-Token_422",
                         "Authorization: Basic s3cret-Token_42",
                         "Authorization: Bearer S3cret-Token_42", NULL};
  for (size_t i = 0; wrong[i]; i++) {
    const char *h[] = {wrong[i], NULL};
    ck_assert_int_eq(
        td_request(&d, NULL, "GET", "/config", NULL, 0, h, NULL, &r), 0);
    ck_assert_msg(r.status == 401, "%s let in", wrong[i]);
    td_resp_free(&r);
  }
  const char *right[] = {"Authorization: Bearer s3cret-Token_42", NULL};
  ck_assert_int_eq(
      td_request(&d, NULL, "GET", "/config", NULL, 0, right, NULL, &r), 0);
  ck_assert_int_eq(r.status, 200);
  td_resp_free(&r);
  char *body = v1_body(8, 4, 1, NULL);
  const char *h2[] = {"Authorization: bearer s3cret-Token_42", NULL};
  ck_assert_int_eq(td_request(&d, NULL, "POST", "/v1/loss", body,
                              strlen(body), h2, NULL, &r),
                   0);
  ck_assert_int_eq(r.status, 200);
  td_resp_free(&r);
  free(body);

  const char *open[] = {"/healthz", "/readyz", "/v2/health/live",
                        "/v2/health/ready"};
  for (size_t i = 0; i < 4; i++) {
    req(&d, "GET", open[i], NULL, &r);
    ck_assert_msg(r.status == 200, "%s: %ld", open[i], r.status);
    td_resp_free(&r);
  }
  stop_expect_0(&d);
  char *log = td_log(&d);
  ck_assert_ptr_nonnull(log);
  ck_assert_msg(strstr(log, key) == NULL, "the key is in the log");
  free(log);
  unlink(keyfile);
}
END_TEST

START_TEST(http_should_refuse_to_start_with_an_empty_key_file) {
  char keyfile[] = "/tmp/circled-key-XXXXXX";
  int fd = mkstemp(keyfile);
  close(fd);
  td_daemon d;
  const char *args[] = {"--api-key-file", keyfile, NULL};
  ck_assert_int_ne(td_start(&d, args, NULL), 0);
  unlink(keyfile);
}
END_TEST

START_TEST(http_should_answer_503_with_retry_after_when_the_queue_is_full) {
  /* One compute thread and one queue slot: of four simultaneous requests
   * one runs, one waits and the others are turned away at once. */
  td_daemon d;
  const char *args[] = {"--workers", "1", "--max-queue", "1", NULL};
  start_or_fail(&d, args, NULL);
  /* Each computes for about 2 s, so all four have arrived while the
   * first computes. */
  size_t n = long_n(&d, 2000, NULL);
  long_job jobs[4];
  pthread_t t[4];
  for (int i = 0; i < 4; i++) long_prepare(&jobs[i], &d, n);
  for (int i = 0; i < 4; i++)
    pthread_create(&t[i], NULL, long_worker, &jobs[i]);
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  int ok = 0, busy = 0;
  for (int i = 0; i < 4; i++) {
    if (jobs[i].status == 200) ok++;
    if (jobs[i].status == 503) busy++;
  }
  ck_assert_msg(ok >= 1 && busy >= 1, "200s: %d, 503s: %d", ok, busy);
  ck_assert_int_eq(ok + busy, 4);

  /* With one request computing and one waiting, a third gets 503,
   * Retry-After: 1 and Triton's error shape. */
  for (int i = 0; i < 2; i++) {
    /* About 2 s each on one thread: the second request is still queued
     * when the third arrives (checked below). */
    long_prepare(&jobs[i], &d, n);
    pthread_create(&t[i], NULL, long_worker, &jobs[i]);
    usleep(250000);
  }
  /* Under load the uploads can take longer than the sleeps: wait (up to
   * 10 s) until /metrics shows one request waiting in the queue. */
  for (int tries = 0; tries < 100; tries++) {
    td_resp m;
    req(&d, "GET", "/metrics", NULL, &m);
    bool queued = m.body && strstr(m.body, "\ncircled_engine_queue_depth 1\n");
    td_resp_free(&m);
    if (queued) break;
    usleep(100000);
  }
  size_t total, hl;
  char *body = oip_binary_body(8, 4, 1, &total, &hl);
  char ih[80];
  snprintf(ih, sizeof ih, "Inference-Header-Content-Length: %zu", hl);
  const char *h[] = {ih, NULL};
  ck_assert_msg(!__atomic_load_n(&jobs[1].finished, __ATOMIC_SEQ_CST),
                "the queued request ended too soon to test this: %ld",
                jobs[1].status);
  td_resp r;
  ck_assert_int_eq(td_request(&d, NULL, "POST", "/v2/models/circle/infer",
                              body, total, h, NULL, &r),
                   0);
  assert_oip_error(&r, 503);
  char ra[16];
  ck_assert_ptr_nonnull(td_header(&r, "Retry-After", ra, sizeof ra));
  ck_assert_str_eq(ra, "1");
  td_resp_free(&r);
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  ck_assert_int_eq(jobs[0].status, 200);
  ck_assert_int_eq(jobs[1].status, 200);
  free(body);
  stop_expect_0(&d);
}
END_TEST

START_TEST(http_should_refuse_a_request_that_can_never_fit_in_flight) {
  td_daemon d;
  const char *args[] = {"--max-inflight-mb", "2", "--max-body-mb", "2", NULL};
  start_or_fail(&d, args, NULL);
  /* 1500 x 128 floats: 0.75 MiB of body, but inputs + gradients + the
   * JSON response need well over 2 MiB. */
  size_t total, hl;
  char *body = oip_binary_body(1500, 128, 3, &total, &hl);
  ck_assert_uint_lt(total, 2u << 20);
  char ih[80];
  snprintf(ih, sizeof ih, "Inference-Header-Content-Length: %zu", hl);
  const char *h[] = {ih, NULL};
  td_resp r;
  ck_assert_int_eq(td_request(&d, NULL, "POST", "/v2/models/circle/infer",
                              body, total, h, NULL, &r),
                   0);
  assert_oip_error(&r, 413);
  ck_assert_ptr_nonnull(strstr(r.body, "max-inflight-mb"));
  td_resp_free(&r);
  free(body);
  /* A small one still works. */
  char *small = v1_body(8, 4, 1, NULL);
  req(&d, "POST", "/v1/loss", small, &r);
  ck_assert_int_eq(r.status, 200);
  td_resp_free(&r);
  free(small);
  stop_expect_0(&d);
}
END_TEST

START_TEST(http_should_apply_the_limit_flags) {
  td_daemon d;
  const char *args[] = {"--max-n", "4", "--max-d", "3", "--max-inflated-mb",
                        "1", NULL};
  start_or_fail(&d, args, NULL);
  td_resp r;
  char *body = v1_body(8, 2, 1, NULL);
  req(&d, "POST", "/v1/loss", body, &r);
  assert_v1_error(&r, 413, "limit_exceeded");
  td_resp_free(&r);
  free(body);
  body = v1_body(4, 4, 1, NULL);
  req(&d, "POST", "/v1/loss", body, &r);
  assert_v1_error(&r, 413, "limit_exceeded");
  td_resp_free(&r);
  free(body);
  body = v1_body(4, 3, 1, NULL);
  req(&d, "POST", "/v1/loss", body, &r);
  ck_assert_int_eq(r.status, 200);
  td_resp_free(&r);
  free(body);
  /* A deflate bomb: 8 MiB of blanks in a few KiB, refused at 1 MiB. */
  size_t big = 8u << 20, zlen;
  char *blank = malloc(big);
  memset(blank, ' ', big);
  char *z = zcompress(blank, big, true, &zlen);
  ck_assert_uint_lt(zlen, 64u << 10);
  const char *h[] = {"Content-Encoding: gzip", NULL};
  ck_assert_int_eq(
      td_request(&d, NULL, "POST", "/v1/loss", z, zlen, h, NULL, &r), 0);
  assert_v1_error(&r, 413, "limit_exceeded");
  td_resp_free(&r);
  free(z);
  free(blank);
  stop_expect_0(&d);
}
END_TEST

START_TEST(http_should_take_defaults_from_flags_and_environment) {
  td_daemon d;
  const char *args[] = {"--gamma",     "32",  "--no-remove-diagonal",
                        "--reduction", "sum", "--name",
                        "mine",        NULL};
  const char *env[] = {"CIRCLED_GAMMA=12", "CIRCLED_MARGIN=0.25", NULL};
  start_or_fail(&d, args, env);
  td_resp r;
  req(&d, "GET", "/config", NULL, &r);
  ck_assert_int_eq(r.status, 200);
  cJSON *j = parse(&r);
  /* The flag beats the variable; the variable beats the default. */
  ck_assert(jnum(j, "gamma") == 32);
  ck_assert(jnum(j, "margin") == 0.25);
  ck_assert(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(j, "remove_diagonal")));
  ck_assert_str_eq(
      jstr(j, "reduction"), "sum");
  ck_assert_str_eq(jstr(j, "name"),
                   "mine");
  cJSON_Delete(j);
  td_resp_free(&r);
  /* Requests start from these defaults. */
  char *body = v1_body(8, 4, 1, NULL);
  req(&d, "POST", "/v1/loss", body, &r);
  ck_assert(config_number(&r, "gamma") == 32);
  td_resp_free(&r);
  free(body);
  stop_expect_0(&d);
}
END_TEST

/* Runs circled with args and returns its exit status; its stdout and
 * stderr go to *out (malloc'd). */
static int run_circled(const char *const *args, char **out) {
  td_daemon d;
  memset(&d, 0, sizeof d);
  snprintf(d.log_path, sizeof d.log_path, "/tmp/circled-run-XXXXXX");
  int fd = mkstemp(d.log_path);
  ck_assert_int_ge(fd, 0);
  const char *bin = getenv("CIRCLED_BIN");
  if (!bin) bin = "build/circled";
  const char *argv[16] = {bin};
  size_t n = 1;
  for (size_t i = 0; args[i] && n < 15; i++) argv[n++] = args[i];
  argv[n] = NULL;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fd, 1);
    dup2(fd, 2);
    execv(bin, (char *const *)argv);
    _exit(127);
  }
  close(fd);
  int st;
  waitpid(pid, &st, 0);
  *out = td_log(&d);
  unlink(d.log_path);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

START_TEST(http_should_list_every_flag_with_its_variable_and_default) {
  const char *args[] = {"--help", NULL};
  char *out = NULL;
  ck_assert_int_eq(run_circled(args, &out), 0);
  ck_assert_ptr_nonnull(out);
  static const char *flags[][2] = {
      {"--bind", "CIRCLED_BIND"},
      {"--port", "CIRCLED_PORT"},
      {"--net-threads", "CIRCLED_NET_THREADS"},
      {"--workers", "CIRCLED_WORKERS"},
      {"--timeout", "CIRCLED_TIMEOUT"},
      {"--max-body-mb", "CIRCLED_MAX_BODY_MB"},
      {"--max-inflight-mb", "CIRCLED_MAX_INFLIGHT_MB"},
      {"--max-connections", "CIRCLED_MAX_CONNECTIONS"},
      {"--gamma", "CIRCLED_GAMMA"},
      {"--margin", "CIRCLED_MARGIN"},
      {"--remove-diagonal", "CIRCLED_REMOVE_DIAGONAL"},
      {"--reduction", "CIRCLED_REDUCTION"},
      {"--dtype", "CIRCLED_DTYPE"},
      {"--name", "CIRCLED_NAME"},
      {"--api-key-file", "CIRCLED_API_KEY_FILE"},
      {"--quiet", "CIRCLED_QUIET"},
  };
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
    const char *p = strstr(out, flags[i][0]);
    ck_assert_msg(p != NULL, "--help lacks %s", flags[i][0]);
    const char *eol = strchr(p, '\n');
    const char *env = strstr(p, flags[i][1]);
    const char *def = strstr(p, "default:");
    ck_assert_msg(env && env < eol && def && def < eol,
                  "%s: variable or default missing from its line",
                  flags[i][0]);
  }
  ck_assert_ptr_nonnull(strstr(out, "default: 64"));
  ck_assert_ptr_nonnull(strstr(out, "default: 2048"));
  free(out);
}
END_TEST

START_TEST(http_should_exit_2_on_a_bad_flag) {
  const char *bad[][3] = {{"--no-such-flag", NULL, NULL},
                          {"--gamma", "abc", NULL},
                          {"--port", "70000", NULL},
                          {"--reduction", "average", NULL},
                          {"--gamma", "-1", NULL}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char *out = NULL;
    int rc = run_circled(bad[i], &out);
    ck_assert_msg(rc == 2, "%s %s: exit %d", bad[i][0],
                  bad[i][1] ? bad[i][1] : "", rc);
    ck_assert_ptr_nonnull(strstr(out, "circled:"));
    free(out);
  }
}
END_TEST

START_TEST(http_should_close_idle_connections_after_the_timeout) {
  td_daemon d;
  const char *args[] = {"--timeout", "1", NULL};
  start_or_fail(&d, args, NULL);
  int s = td_connect(&d);
  ck_assert_int_ge(s, 0);
  /* Half a request line, then silence. */
  ck_assert(send(s, "GET /hea", 8, MSG_NOSIGNAL) == 8);
  /* Not before the 1 s timeout (less 0.2 s: the client's clock starts
   * after the send); the upper bound only guards against a hang. */
  double t0 = td_now();
  char buf[256];
  ssize_t n = -1;
  while (td_now() - t0 < 20) {
    n = recv(s, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) break;
    usleep(20000);
  }
  double waited = td_now() - t0;
  close(s);
  ck_assert_msg(n == 0, "the idle connection was not closed in 20 s");
  ck_assert_msg(waited > 0.8, "closed after %.2f s, before the timeout",
                waited);
  stop_expect_0(&d);
}
END_TEST

START_TEST(http_should_answer_a_compute_longer_than_the_idle_timeout) {
  /* A suspended connection is not idle: its answer must still be sent.
   * long_n's probes are the test: every one must be answered, and the
   * last computed for at least three times the 1 s idle timeout. */
  td_daemon d;
  const char *args[] = {"--timeout", "1", "--workers", "1", NULL};
  start_or_fail(&d, args, NULL);
  double ms = 0;
  size_t n = long_n(&d, 3000, &ms);
  ck_assert_uint_gt(n, 0);
  ck_assert_double_ge(ms, 3000);
  stop_expect_0(&d);
}
END_TEST

START_TEST(http_should_answer_while_hundreds_of_connections_idle) {
  int socks[300];
  int open_count = 0;
  for (int i = 0; i < 300; i++) {
    socks[i] = td_connect(&g_d);
    if (socks[i] >= 0) {
      open_count++;
      /* Trickle: a partial request line. */
      send(socks[i], "POST /v1/lo", 11, MSG_NOSIGNAL);
    }
  }
  ck_assert_int_eq(open_count, 300);
  /* A server that served connections a few at a time would answer only
   * once the idle ones were closed (by the shared daemon's 30 s
   * --timeout): every probe must be answered in a tenth of that, and all
   * 300 must still be open afterwards. */
  double worst = 0;
  for (int k = 0; k < 10; k++) {
    td_resp r;
    req(&g_d, "GET", "/healthz", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    if (r.ms > worst) worst = r.ms;
    td_resp_free(&r);
  }
  int still_open = 0;
  for (int i = 0; i < 300; i++) {
    char c;
    ssize_t got = recv(socks[i], &c, 1, MSG_DONTWAIT);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) still_open++;
    close(socks[i]);
  }
  ck_assert_msg(worst < 3000, "/healthz took %.1f ms", worst);
  ck_assert_int_eq(still_open, 300);
}
END_TEST

/* ======================================================================== */
/* Suite                                                                    */
/* ======================================================================== */

static Suite *http_suite(void) {
  Suite *s = suite_create("http");
  TCase *shared = tcase_create("shared");
  tcase_add_unchecked_fixture(shared, shared_setup, shared_teardown);
  tcase_set_timeout(shared, 60);
  tcase_add_test(shared, http_should_answer_healthz_and_readyz);
  tcase_add_test(shared, http_should_serve_default_config_as_keras_get_config);
  tcase_add_test(shared, http_should_serve_oip_server_metadata_and_health);
  tcase_add_test(shared, http_should_serve_model_routes_with_and_without_version);
  tcase_add_test(shared, http_should_404_unknown_model_like_triton);
  tcase_add_test(shared, http_should_404_unknown_paths_in_each_family);
  tcase_add_test(shared, http_should_405_with_allow);
  tcase_add_test(shared, http_should_answer_head_without_body);
  tcase_add_test(shared, http_should_keep_connections_alive);
  tcase_add_test(shared, http_should_compute_v1_loss_like_the_engine);
  tcase_add_test(shared, http_should_compute_v1_with_request_config);
  tcase_add_test(shared, http_should_not_leak_config_between_requests);
  tcase_add_test(shared, http_should_reject_invalid_json_with_offset);
  tcase_add_test(shared, http_should_reject_wrong_types);
  tcase_add_test(shared, http_should_reject_ragged_rows);
  tcase_add_test(shared, http_should_reject_n_and_d_mismatch);
  tcase_add_test(shared, http_should_reject_empty_batch);
  tcase_add_test(shared, http_should_reject_non_finite);
  tcase_add_test(shared, http_should_reject_embeddings_too_large_for_the_dtype);
  tcase_add_test(shared, http_should_reject_bad_labels);
  tcase_add_test(shared, http_should_reject_bad_config);
  tcase_add_test(shared, http_should_reject_unknown_key);
  tcase_add_test(shared, http_should_reject_half_reference_set);
  tcase_add_test(shared, http_should_refuse_unknown_content_encoding);
  tcase_add_test(shared, http_should_refuse_oversize_body_from_content_length);
  tcase_add_test(shared, http_should_compute_oip_json_like_v1);
  tcase_add_test(shared, http_should_compute_oip_binary_like_v1);
  tcase_add_test(shared, http_should_report_where_the_time_went_in_server_timing);
  tcase_add_test(shared, http_should_accept_gzip_and_deflate_bodies);
  tcase_add_test(shared, http_should_refuse_corrupt_gzip_body);
  tcase_add_test(shared, http_should_compress_the_response_when_asked);
  tcase_add_test(shared, http_should_answer_oip_errors_as_triton_does);
  tcase_add_test(shared, http_should_match_a_keras_golden_file_on_both_protocols);
  tcase_add_test(shared, http_should_keep_each_concurrent_request_config);
  tcase_add_test(shared, http_should_answer_healthz_fast_during_a_long_compute);
  tcase_add_test(shared, http_should_answer_while_hundreds_of_connections_idle);
  suite_add_tcase(s, shared);

  TCase *own = tcase_create("own daemon");
  tcase_set_timeout(own, 120);
  tcase_add_test(own, http_should_refuse_oversize_body_before_100_continue);
  tcase_add_test(own, http_should_refuse_oversize_chunked_body);
  tcase_add_test(own, http_should_drain_on_sigterm_and_exit_0);
  tcase_add_test(own, http_should_require_the_bearer_token_but_keep_health_open);
  tcase_add_test(own, http_should_refuse_to_start_with_an_empty_key_file);
  tcase_add_test(own, http_should_answer_503_with_retry_after_when_the_queue_is_full);
  tcase_add_test(own, http_should_refuse_a_request_that_can_never_fit_in_flight);
  tcase_add_test(own, http_should_apply_the_limit_flags);
  tcase_add_test(own, http_should_take_defaults_from_flags_and_environment);
  tcase_add_test(own, http_should_list_every_flag_with_its_variable_and_default);
  tcase_add_test(own, http_should_exit_2_on_a_bad_flag);
  tcase_add_test(own, http_should_close_idle_connections_after_the_timeout);
  tcase_add_test(own, http_should_answer_a_compute_longer_than_the_idle_timeout);
  suite_add_tcase(s, own);
  return s;
}

int main(void) {
  curl_global_init(CURL_GLOBAL_ALL);
  SRunner *sr = srunner_create(http_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  curl_global_cleanup();
  return failed ? 1 : 0;
}
