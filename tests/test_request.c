/* test_request.c -- limits, requests, errors and the response buffer: the
 * number formatter round-trips every float and double bit for bit and
 * writes what "%.9g" / "%.17g" write, strings come out as valid UTF-8 JSON,
 * and the buffer survives growth and overflow.
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "request.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next_u64(void) { /* xorshift64* */
  rng ^= rng >> 12;
  rng ^= rng << 25;
  rng ^= rng >> 27;
  return rng * 2685821657736338717ull;
}

/* Strict JSON number syntax (RFC 8259). */
static bool json_number_ok(const char *s) {
  const char *p = s;
  if (*p == '-') p++;
  if (*p == '0') p++;
  else if (*p >= '1' && *p <= '9') while (*p >= '0' && *p <= '9') p++;
  else return false;
  if (*p == '.') {
    p++;
    if (!(*p >= '0' && *p <= '9')) return false;
    while (*p >= '0' && *p <= '9') p++;
  }
  if (*p == 'e' || *p == 'E') {
    p++;
    if (*p == '+' || *p == '-') p++;
    if (!(*p >= '0' && *p <= '9')) return false;
    while (*p >= '0' && *p <= '9') p++;
  }
  return *p == '\0';
}

static const char *fmt(double v, circle_dtype dt) {
  static char buf[CIRCLE_JSON_NUMBER_MAX + 1];
  size_t n = circle__json_number_write(buf, v, dt);
  ck_assert_uint_le(n, CIRCLE_JSON_NUMBER_MAX);
  buf[n] = '\0';
  return buf;
}

/* Checks one double: round trip, JSON syntax, same text as %.17g. */
static void check_double(double v, long *differs) {
  const char *s = fmt(v, CIRCLE_DTYPE_FLOAT64);
  ck_assert_msg(json_number_ok(s), "not a JSON number: %s", s);
  double back = strtod(s, NULL);
  ck_assert_msg(memcmp(&back, &v, sizeof(v)) == 0, "%a -> %s -> %a", v, s, back);
  char ref[40];
  snprintf(ref, sizeof(ref), "%.17g", v);
  if (strcmp(ref, s) != 0) {
    (*differs)++;
    if (*differs < 5) fprintf(stderr, "differs from %%.17g: %s vs %s\n", s, ref);
  }
}

static void check_float(float f, long *differs) {
  const char *s = fmt(f, CIRCLE_DTYPE_FLOAT32);
  ck_assert_msg(json_number_ok(s), "not a JSON number: %s", s);
  float back = strtof(s, NULL);
  ck_assert_msg(memcmp(&back, &f, sizeof(f)) == 0, "%a -> %s -> %a", (double)f, s,
                (double)back);
  char ref[40];
  snprintf(ref, sizeof(ref), "%.9g", (double)f);
  if (strcmp(ref, s) != 0) {
    (*differs)++;
    if (*differs < 5) fprintf(stderr, "differs from %%.9g: %s vs %s\n", s, ref);
  }
}

START_TEST(request_should_round_trip_random_doubles_bit_for_bit) {
  long differs = 0;
  for (long i = 0; i < 300000; i++) {
    uint64_t u = next_u64();
    double v;
    memcpy(&v, &u, sizeof(v));
    if (!isfinite(v)) continue;
    check_double(v, &differs);
  }
  /* Values a loss actually produces: moderate magnitudes. */
  for (long i = 0; i < 300000; i++) {
    double v = ((double)(next_u64() >> 11) * 0x1p-53 - 0.5) *
               pow(10, (double)(next_u64() % 40) - 30);
    check_double(v, &differs);
  }
  /* In practice the digits are glibc's too (the design allows a last-digit
   * difference only within 1e-29 of a rounding tie). */
  ck_assert_int_eq(differs, 0);
}
END_TEST

START_TEST(request_should_round_trip_random_floats_bit_for_bit) {
  long differs = 0;
  for (long i = 0; i < 600000; i++) {
    uint32_t u = (uint32_t)next_u64();
    float f;
    memcpy(&f, &u, sizeof(f));
    if (!isfinite(f)) continue;
    check_float(f, &differs);
  }
  ck_assert_int_eq(differs, 0);
}
END_TEST

START_TEST(request_should_format_edge_values) {
  long differs = 0;
  const double d[] = {DBL_MAX, -DBL_MAX, DBL_MIN, 4.9406564584124654e-324,
                      2.2250738585072009e-308, 1e-280, 9.9999999999999997e-281,
                      1e280, 1e23, 1e22, 9007199254740993.0, 0.1, 0.3, 1.0 / 3,
                      123456789012345678.0, 1e16, 1e15, 1e-5, 1e-4, 5e-324,
                      1000000000000000.25, 0.5, 2.5, 1e100, 1e-100};
  for (size_t i = 0; i < sizeof(d) / sizeof(d[0]); i++) {
    check_double(d[i], &differs);
    check_double(-d[i], &differs);
  }
  /* Powers of ten and their neighbours, where the exponent guess is
   * hardest. */
  for (int e = -300; e <= 300; e++) {
    double p = pow(10, e);
    check_double(p, &differs);
    check_double(nextafter(p, 0), &differs);
    check_double(nextafter(p, INFINITY), &differs);
  }
  ck_assert_int_eq(differs, 0);
  const float f[] = {FLT_MAX, FLT_MIN, FLT_TRUE_MIN, 1e-45f, 16777217.0f,
                     0.1f, 1e10f, 1e-10f, 3.4e38f, 1.17549421e-38f};
  for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
    check_float(f[i], &differs);
    check_float(-f[i], &differs);
  }
  for (int e = -45; e <= 38; e++) {
    float p = (float)pow(10, e);
    check_float(p, &differs);
    check_float(nextafterf(p, 0), &differs);
    check_float(nextafterf(p, INFINITY), &differs);
  }
  ck_assert_int_eq(differs, 0);
  /* Zeros keep their sign; integers have no point; non-finite is null. */
  ck_assert_str_eq(fmt(0.0, CIRCLE_DTYPE_FLOAT64), "0");
  ck_assert_str_eq(fmt(-0.0, CIRCLE_DTYPE_FLOAT64), "-0");
  ck_assert_str_eq(fmt(-0.0, CIRCLE_DTYPE_FLOAT32), "-0");
  ck_assert_str_eq(fmt(80, CIRCLE_DTYPE_FLOAT32), "80");
  ck_assert_str_eq(fmt(0.1, CIRCLE_DTYPE_FLOAT32), "0.100000001");
  ck_assert_str_eq(fmt(0.1, CIRCLE_DTYPE_FLOAT64), "0.10000000000000001");
  ck_assert_str_eq(fmt(1e-5, CIRCLE_DTYPE_FLOAT32), "9.99999975e-06");
  ck_assert_str_eq(fmt(1e300, CIRCLE_DTYPE_FLOAT64), "1.0000000000000001e+300");
  ck_assert_str_eq(fmt(NAN, CIRCLE_DTYPE_FLOAT64), "null");
  ck_assert_str_eq(fmt(INFINITY, CIRCLE_DTYPE_FLOAT32), "null");
  ck_assert_str_eq(fmt(-INFINITY, CIRCLE_DTYPE_FLOAT64), "null");
  /* A double beyond float range is null in float32. */
  ck_assert_str_eq(fmt(1e39, CIRCLE_DTYPE_FLOAT32), "null");
  /* float32 formats the float nearest v. */
  ck_assert_str_eq(fmt(0.30000000000000004, CIRCLE_DTYPE_FLOAT32), "0.300000012");
}
END_TEST

START_TEST(request_should_time_the_formatter_against_snprintf) {
  /* Not asserted (timings vary with load and sanitizers); printed so the
   * figure is visible in the test log. */
  enum { N = 200000 };
  double *v = malloc(N * sizeof(double));
  for (int i = 0; i < N; i++)
    v[i] = ((double)(next_u64() >> 11) * 0x1p-53 - 0.5) * 0.01;
  char buf[64];
  size_t total = 0;
  struct timespec t0, t1, t2;
  for (int dt = 0; dt < 2; dt++) {
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < N; i++) total += circle__json_number_write(buf, v[i], dt);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    for (int i = 0; i < N; i++)
      total += (size_t)snprintf(buf, sizeof(buf), dt ? "%.17g" : "%.9g",
                                dt ? v[i] : (double)(float)v[i]);
    clock_gettime(CLOCK_MONOTONIC, &t2);
    double a = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / N;
    double b = ((double)(t2.tv_sec - t1.tv_sec) * 1e9 + (double)(t2.tv_nsec - t1.tv_nsec)) / N;
    fprintf(stderr, "%s: circle__json_number_write %.0f ns, snprintf %.0f ns\n",
            dt ? "float64" : "float32", a, b);
  }
  ck_assert_uint_gt(total, 0);
  free(v);
}
END_TEST

START_TEST(request_should_append_numbers_and_integers_to_a_buffer) {
  circle_buf b;
  circle_buf_init(&b);
  for (int i = 0; i < 10000; i++) {
    if (i) circle_buf_append(&b, ",", 1);
    circle_buf_json_number(&b, i * 0.25, CIRCLE_DTYPE_FLOAT64);
  }
  ck_assert(!b.failed);
  ck_assert_uint_eq(strlen(b.data), b.len);
  ck_assert(strncmp(b.data, "0,0.25,0.5,0.75,1,1.25", 22) == 0);
  circle_buf_free(&b);
  circle_buf_init(&b);
  circle_buf_json_uint(&b, 0);
  circle_buf_puts(&b, " ");
  circle_buf_json_uint(&b, UINT64_MAX);
  ck_assert_str_eq(b.data, "0 18446744073709551615");
  circle_buf_free(&b);
  circle_buf_free(&b); /* twice is fine: it re-inits */
  circle_buf_free(NULL);
}
END_TEST

START_TEST(request_should_grow_printf_and_fail_cleanly) {
  circle_buf b;
  circle_buf_init(&b);
  char big[1000];
  memset(big, 'q', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  circle_buf_printf(&b, "<%s|%d>", big, 42);
  ck_assert_uint_eq(b.len, 999 + 5);
  ck_assert(strcmp(b.data + 1000, "|42>") == 0);
  /* An impossible reservation marks the buffer failed and keeps it so. */
  ck_assert(!circle_buf_reserve(&b, SIZE_MAX - 4));
  ck_assert(b.failed);
  size_t len = b.len;
  circle_buf_puts(&b, "more");
  ck_assert_uint_eq(b.len, len);
  circle_buf_json_number(&b, 1, CIRCLE_DTYPE_FLOAT64);
  ck_assert_uint_eq(b.len, len);
  circle_buf_free(&b);
  ck_assert(!b.failed);
}
END_TEST

START_TEST(request_should_write_strings_as_valid_json) {
  circle_buf b;
  circle_buf_init(&b);
  circle_buf_json_string(&b, "a\"b\\c\n\t\x01/é€😀");
  ck_assert_str_eq(b.data, "\"a\\\"b\\\\c\\n\\t\\u0001/é€😀\"");
  circle_buf_free(&b);
  /* Invalid UTF-8 (a lone continuation byte, an overlong, a surrogate, a
   * cut sequence) becomes U+FFFD, so the JSON stays valid. */
  circle_buf_init(&b);
  circle_buf_json_string(&b, "x\x80y\xc0\xafz\xed\xa0\x80w\xe2\x82");
  ck_assert_str_eq(b.data,
                   "\"x\\ufffdy\\ufffd\\ufffdz\\ufffd\\ufffd\\ufffdw\\ufffd\\ufffd\"");
  circle_buf_free(&b);
  circle_buf_init(&b);
  circle_buf_json_string(&b, NULL);
  ck_assert_str_eq(b.data, "null");
  circle_buf_free(&b);
}
END_TEST

START_TEST(request_should_write_python_floats) {
  const struct {
    double v;
    const char *py;
  } cases[] = {{80, "80.0"}, {0.4, "0.4"}, {1e-5, "1e-05"}, {1e22, "1e+22"},
               {0.1 + 0.2, "0.30000000000000004"}, {5e-324, "5e-324"},
               {-0.0, "-0.0"}, {0.0, "0.0"}, {1e-4, "0.0001"},
               {123456789012345678.0, "1.2345678901234568e+17"},
               {9999999999999998.0, "9999999999999998.0"}};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    circle_buf b;
    circle_buf_init(&b);
    circle_buf_python_float(&b, cases[i].v);
    ck_assert_str_eq(b.data, cases[i].py);
    circle_buf_free(&b);
  }
}
END_TEST

START_TEST(request_should_init_limits_requests_and_errors) {
  circle_limits l;
  memset(&l, 0xff, sizeof(l));
  circle_limits_init(&l);
  ck_assert_uint_eq(l.max_n, 65536);
  ck_assert_uint_eq(l.max_m, 65536);
  ck_assert_uint_eq(l.max_d, 4096);
  ck_assert_uint_eq(l.max_pairs, (uint64_t)1 << 32);
  ck_assert_uint_eq(l.max_depth, 32);
  ck_assert_uint_eq(l.max_inflated, (size_t)256 << 20);

  circle_request r;
  memset(&r, 0xff, sizeof(r));
  circle_request_init(&r);
  ck_assert_ptr_null(r.labels);
  ck_assert_uint_eq(r.n, 0);
  ck_assert(r.cfg.gamma == 80 && r.cfg.margin == 0.4);
  ck_assert_str_eq(r.name, "circle");
  r.labels = malloc(16);
  r.x = malloc(16);
  circle_request_free(&r); /* frees and re-inits */
  ck_assert_ptr_null(r.labels);
  ck_assert_ptr_null(r.x);
  circle_request_free(NULL);

  circle_error e;
  ck_assert_int_eq(circle_error_set(&e, 413, "limit_exceeded", "n=%d", 5), CIRCLE_EINVAL);
  ck_assert_int_eq(e.http_status, 413);
  ck_assert_str_eq(e.code, "limit_exceeded");
  ck_assert_str_eq(e.message, "n=5");
  ck_assert_int_eq(circle_error_set(NULL, 400, "x", "y"), CIRCLE_EINVAL);
  /* Long messages are cut, not overflowed. */
  char big[2000];
  memset(big, 'm', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  circle_error_set(&e, 400, "a_code_that_is_much_longer_than_thirty_two_bytes", "%s", big);
  ck_assert_uint_eq(strlen(e.message), sizeof(e.message) - 1);
  ck_assert_uint_eq(strlen(e.code), sizeof(e.code) - 1);
}
END_TEST

START_TEST(request_should_ignore_null_arguments) {
  circle_limits_init(NULL);
  circle_request_init(NULL);
  circle_request_free(NULL);
  circle_buf_init(NULL);
  circle_buf_free(NULL);
  ck_assert(!circle_buf_reserve(NULL, 1));
  circle_buf_append(NULL, "x", 1);
  circle_buf_puts(NULL, "x");
  circle_buf_printf(NULL, "%d", 1);
  circle_buf_json_string(NULL, "x");
  circle_buf_json_number(NULL, 1, CIRCLE_DTYPE_FLOAT32);
  circle_buf_json_uint(NULL, 1);
  circle_buf_python_float(NULL, 1);
  circle_buf b;
  circle_buf_init(&b);
  circle_buf_puts(&b, NULL);
  circle_buf_append(&b, NULL, 3);
  circle_buf_printf(&b, NULL);
  ck_assert_uint_eq(b.len, 0);
  ck_assert(!b.failed);
  circle_buf_free(&b);
}
END_TEST

int main(void) {
  Suite *s = suite_create("request");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, request_should_round_trip_random_doubles_bit_for_bit);
  tcase_add_test(tc, request_should_round_trip_random_floats_bit_for_bit);
  tcase_add_test(tc, request_should_format_edge_values);
  tcase_add_test(tc, request_should_time_the_formatter_against_snprintf);
  tcase_add_test(tc, request_should_append_numbers_and_integers_to_a_buffer);
  tcase_add_test(tc, request_should_grow_printf_and_fail_cleanly);
  tcase_add_test(tc, request_should_write_strings_as_valid_json);
  tcase_add_test(tc, request_should_write_python_floats);
  tcase_add_test(tc, request_should_init_limits_requests_and_errors);
  tcase_add_test(tc, request_should_ignore_null_arguments);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
