/* test_json_fast.c -- the /v1 codec's fast path (json_fast.c): every number
 * it converts is bit for bit what strtod gives (random doubles in every
 * printing style, random float32 as Python writes them, random 1-19 digit
 * mantissas over the whole exponent range, more than 19 digits, subnormals,
 * overflow, halfway cases), it takes exactly the characters the JSON grammar
 * gives (millions of generated numbers, each ending at the very end of a
 * malloc'd buffer, inside a body, and cut short), it refuses what is not a
 * JSON number, it never reads past the end of a body, and a body decoded
 * with the fast path on is the same request -- or the same error, status,
 * code and message -- as with it off.
 *
 * To run all of it against the path json_fast.c takes without SSE2:
 *   make CC="cc -DCIRCLE_JSON_FAST_PORTABLE" BUILD=build/portable
 *        build/portable/tests/test_json_fast
 *   build/portable/tests/test_json_fast
 */
#include <check.h>
#include <float.h>
#include <stdarg.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec_json.h"
#include "codec_util.h"
#include "json_fast.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static uint64_t rng_state = 0x853c49e6748fea9bull;
static uint64_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

/* The JSON number grammar as circle__json_fast_number applies it, written
 * plainly as the reference: how many characters of t[0, n) make the number
 * at its start; 0 when there is none, it is malformed (a '.' or an 'e'
 * without digits after it) or longer than 63 characters. */
static size_t ref_span(const char *t, size_t n) {
#define REF_DIGIT(i) ((i) < n && t[i] >= '0' && t[i] <= '9')
  size_t i = 0;
  if (i < n && t[i] == '-') i++;
  if (!REF_DIGIT(i)) return 0;
  if (t[i] == '0') i++;
  else
    while (REF_DIGIT(i)) i++;
  if (i < n && t[i] == '.') {
    size_t f = ++i;
    while (REF_DIGIT(i)) i++;
    if (i == f) return 0;
  }
  if (i < n && (t[i] == 'e' || t[i] == 'E')) {
    i++;
    if (i < n && (t[i] == '+' || t[i] == '-')) i++;
    size_t e = i;
    while (REF_DIGIT(i)) i++;
    if (i == e) return 0;
  }
#undef REF_DIGIT
  return i > 63 ? 0 : i;
}

/* The double strtod reads from t[0, n) (n <= 63). */
static double strtod_n(const char *t, size_t n) {
  char tmp[64];
  memcpy(tmp, t, n);
  tmp[n] = '\0';
  return strtod(tmp, NULL);
}

/* Checks circle__json_fast_number on text[0, end - text) against the
 * grammar's length and then, bit for bit, the double strtod reads from
 * those characters (want: that double when the caller knows it, for the
 * length want_len); nothing stored when it takes none. Returns 1 on a
 * mismatch (printing the first few), else 0. */
static int check_span(const char *text, const char *end, size_t want_len, double want,
                      const char *how) {
  static int printed = 0;
  size_t span = ref_span(text, (size_t)(end - text));
  double got = 12345.0, wantv = 12345.0;
  if (span > 0) wantv = span == want_len ? want : strtod_n(text, span);
  size_t used = circle__json_fast_number(text, end, &got);
  uint64_t a, b;
  memcpy(&a, &wantv, 8);
  memcpy(&b, &got, 8);
  if (used != span || a != b) {
    if (printed++ < 10)
      fprintf(stderr, "mismatch (%s): \"%.*s\": used %zu, want %zu; got %.17g (%016llx), "
                      "want %.17g (%016llx)\n",
              how, (int)(end - text > 80 ? 80 : end - text), text, used, span, got,
              (unsigned long long)b, wantv, (unsigned long long)a);
    return 1;
  }
  return 0;
}

/* Checks a whole text that is one number against strtod: as check_span,
 * and the grammar takes all of it. */
static int check_text(const char *text) {
  size_t len = strlen(text);
  int bad = check_span(text, text + len, 0, 0, "whole text");
  if (!bad && ref_span(text, len) != len) {
    fprintf(stderr, "not one whole number: \"%s\"\n", text);
    bad = 1;
  }
  return bad;
}

static double random_double(void) {
  for (;;) {
    uint64_t bits = rnd();
    double v;
    memcpy(&v, &bits, 8);
    if (isfinite(v)) return v;
  }
}

/* Decodes body with the fast path on or off. */
static int decode_with(bool fast, const char *body, const circle_limits *lim,
                       circle_request *req, circle_error *err) {
  circle__json_fast_enabled = fast;
  circle_request_init(req);
  memset(err, 0, sizeof *err);
  int rc = circle_json_decode(body, strlen(body), NULL, NULL, lim, req, err);
  circle__json_fast_enabled = true;
  return rc;
}

static void expect_same_array(const void *a, const void *b, size_t bytes,
                              const char *what) {
  ck_assert_msg((a == NULL) == (b == NULL), "%s: one side missing", what);
  if (a) ck_assert_msg(memcmp(a, b, bytes) == 0, "%s differs", what);
}

/* A body the fast walk takes leaves a copy that the pre-scan and grammar
 * pass with the count the walk gave: the tree is then built from it
 * without checking it again (circle__json_parse_valid). */
static void expect_walk_valid(const char *body, const circle_limits *lim) {
  circle__json_fast_body fb;
  if (!circle__json_fast_body_read(body, strlen(body), lim->max_depth, lim->max_n,
                                   lim->max_m, lim->max_d, &fb))
    return;
  size_t values = 0;
  circle_error err;
  int rc = circle__json_validate(fb.copy, fb.copy_len, lim->max_depth, &values, &err);
  ck_assert_msg(rc == 0, "walked %s, but its copy is refused: %s", body,
                err.message);
  ck_assert_msg(values == fb.values, "%s: %zu values, the walk counted %zu", body,
                values, fb.values);
  circle__json_fast_body_free(&fb);
}

/* Decodes body both ways and insists on the same outcome. */
static void expect_same(const char *body, const circle_limits *lim) {
  expect_walk_valid(body, lim);
  circle_request r1, r2;
  circle_error e1, e2;
  int rc1 = decode_with(true, body, lim, &r1, &e1);
  int rc2 = decode_with(false, body, lim, &r2, &e2);
  ck_assert_int_eq(rc1, rc2);
  if (rc1 != 0) {
    ck_assert_int_eq(circle_error_http(e1.kind), circle_error_http(e2.kind));
    ck_assert_str_eq(circle_error_code(e1.kind), circle_error_code(e2.kind));
    ck_assert_str_eq(e1.message, e2.message);
    return;
  }
  ck_assert_uint_eq(r1.n, r2.n);
  ck_assert_uint_eq(r1.m, r2.m);
  ck_assert_uint_eq(r1.d, r2.d);
  ck_assert_int_eq(r1.has_ref, r2.has_ref);
  ck_assert_uint_eq(r1.want, r2.want);
  ck_assert(memcmp(&r1.cfg, &r2.cfg, sizeof r1.cfg) == 0);
  ck_assert_str_eq(r1.name, r2.name);
  ck_assert_str_eq(r1.tag, r2.tag);
  size_t es = circle_dtype_size(r1.cfg.dtype);
  expect_same_array(r1.labels, r2.labels, r1.n * 8, "labels");
  expect_same_array(r1.ref_labels, r2.ref_labels, r1.m * 8, "ref_labels");
  expect_same_array(r1.x, r2.x, r1.n * r1.d * es, "embeddings");
  expect_same_array(r1.r, r2.r, r1.m * r1.d * es, "ref_embeddings");
  expect_same_array(r1.sw, r2.sw, r1.n * es, "sample_weight");
  circle_request_free(&r1);
  circle_request_free(&r2);
}

/* A growing string. */
typedef struct {
  char *s;
  size_t len, cap;
} sb;

static void sb_add(sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(sb *b, const char *fmt, ...) {
  va_list ap;
  for (;;) {
    va_start(ap, fmt);
    int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
    va_end(ap);
    if (b->s && (size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return;
    }
    b->cap = (b->cap + (size_t)n + 1) * 2;
    b->s = realloc(b->s, b->cap);
    ck_assert_ptr_nonnull(b->s);
  }
}

static const char *const WS[] = {"", " ", "\n  ", "\t", "\r\n"};

/* A random matrix value of rows x d in one of several number styles. */
static void add_matrix(sb *b, size_t rows, size_t d, int style) {
  const char *w = WS[rnd() % 5];
  sb_add(b, "[%s", w);
  for (size_t i = 0; i < rows; i++) {
    sb_add(b, "%s[%s", i ? ", " : "", w);
    for (size_t k = 0; k < d; k++) {
      double v = ((double)(rnd() >> 11) / 9007199254740992.0 - 0.5) * 2;
      if (k) sb_add(b, ",%s", w);
      switch (style) {
      case 0: sb_add(b, "%.17g", (double)(float)v); break;
      case 1: sb_add(b, "%.9g", v); break;
      case 2: sb_add(b, "%.3e", v * 1e-5); break;
      case 3: sb_add(b, "%d", (int)(v * 100)); break;
      default: sb_add(b, "%.20f", v); break;
      }
    }
    sb_add(b, "%s]", w);
  }
  sb_add(b, "%s]", w);
}

/* ------------------------------------------------------------------------ */
/* Numbers                                                                  */
/* ------------------------------------------------------------------------ */

START_TEST(json_fast_should_match_strtod_on_edge_numbers) {
  static const char *const cases[] = {
      "0", "-0", "0.0", "-0.0", "0e5", "0E-5", "1", "-1", "0.1", "0.2", "0.3",
      "123456789", "1e22", "1e23", "9007199254740992", "9007199254740993",
      "9007199254740995", "18014398509481985", "1.7976931348623157e308",
      "1.7976931348623158e308", "1.7976931348623159e308", "1e309", "-1e400",
      "2.2250738585072011e-308", "2.2250738585072014e-308",
      "2.225073858507201e-308", "4.9406564584124654e-324", "5e-324",
      "2.4703282292062327e-324", "2.4703282292062328e-324", "1e-400",
      "7.2057594037927933e16", "1.00000000000000011102230246251565404236316680908203125",
      "1.00000000000000011102230246251565404236316680908203124",
      "1.00000000000000011102230246251565404236316680908203126",
      "9223372036854775807", "9223372036854775808", "18446744073709551615",
      "18446744073709551616", "99999999999999999999", "0.000000000000000000000000001",
      "123456789012345678901234567890e-30", "3.4028234663852886e38",
      "1.401298464324817e-45", "0.30000000000000004", "8.98846567431158e307",
      "6.103515625e-05", "1e-7", "-0.012345678912345678", "1E+2", "1e+0",
      "4.35679716e-11", "100000000000000000000000", "1e-342", "1e-343",
      "1e-348", "1e-349", "1e308", "1e347", "1e348", "0.9999999999999999999"};
  int bad = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) bad += check_text(cases[i]);
  ck_assert_int_eq(bad, 0);
}
END_TEST

START_TEST(json_fast_should_match_strtod_on_random_doubles) {
  static const char *const fmts[] = {"%.17g", "%.16g", "%.15g", "%.9g",
                                     "%.3e", "%.1f", "%.25g"};
  char text[80];
  int bad = 0;
  for (int i = 0; i < 300000; i++) {
    double v = random_double();
    snprintf(text, sizeof text, fmts[i % 7], v);
    if (strlen(text) > 63 || strchr(text, 'n') || strchr(text, 'i')) continue;
    bad += check_text(text);
  }
  ck_assert_int_eq(bad, 0);
}
END_TEST

START_TEST(json_fast_should_match_strtod_on_python_floats) {
  /* What json.dumps writes for float32 data (x.tolist()) and for doubles. */
  int bad = 0;
  for (int i = 0; i < 200000; i++) {
    double v = i % 2 ? (double)(float)(((double)(rnd() >> 11) / 9007199254740992.0 - 0.5) *
                                       pow(10, (int)(rnd() % 20) - 10))
                     : random_double();
    circle_buf b;
    circle_buf_init(&b);
    circle_buf_python_float(&b, v);
    ck_assert(!b.failed);
    if (b.len <= 63) bad += check_text(b.data);
    circle_buf_free(&b);
  }
  ck_assert_int_eq(bad, 0);
}
END_TEST

START_TEST(json_fast_should_match_strtod_on_random_mantissas_and_exponents) {
  char text[128];
  int bad = 0;
  for (int i = 0; i < 400000; i++) {
    int nd = 1 + (int)(rnd() % (i % 10 == 0 ? 30 : 19));
    char dig[40];
    for (int k = 0; k < nd; k++) dig[k] = (char)('0' + rnd() % 10);
    if (dig[0] == '0') dig[0] = '1' + (char)(rnd() % 9);
    if (i % 7 == 0) /* many trailing zeros or nines: rounding boundaries */
      for (int k = nd / 2; k < nd; k++) dig[k] = i % 14 ? '0' : '9';
    int exp = (int)(rnd() % 700) - 370;
    int point = (int)(rnd() % (unsigned)(nd + 1)); /* digits before '.' */
    char *o = text;
    if (rnd() & 1) *o++ = '-';
    if (point == 0) {
      *o++ = '0';
      *o++ = '.';
      memcpy(o, dig, (size_t)nd);
      o += nd;
    } else {
      memcpy(o, dig, (size_t)point);
      o += point;
      if (point < nd) {
        *o++ = '.';
        memcpy(o, dig + point, (size_t)(nd - point));
        o += nd - point;
      }
    }
    snprintf(o, 16, "e%d", exp);
    if (strlen(text) <= 63) bad += check_text(text);
  }
  ck_assert_int_eq(bad, 0);
}
END_TEST

static const double small_pow10[12] = {1, 10, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11};

/* n random digits at *o, the first not 0 when asked; runs of one digit,
 * zeros and nines most of all, now and then (rounding boundaries). */
static void add_digits(char **o, int n, bool nonzero_first) {
  char c = '0';
  for (int k = 0; k < n; k++) {
    int r = (int)(rnd() % 16);
    if (r > 3 || k == 0) c = r == 0 ? '0' : r == 1 ? '9' : (char)('0' + rnd() % 10);
    if (k == 0 && nonzero_first && c == '0') c = (char)('1' + rnd() % 9);
    *(*o)++ = c;
  }
}

/* v laid out as Python's repr lays out a float (0.000123, 12.5, 1e-05,
 * 1.5e+16), with p + 1 significant digits (not necessarily the shortest:
 * the layout is what matters here). */
static void python_layout(char *out, double v, int p) {
  char tmp[64], dig[32];
  snprintf(tmp, sizeof tmp, "%.*e", p, v);
  const char *q = tmp;
  char *o = out;
  if (*q == '-') *o++ = *q++;
  int nd = 0;
  for (; *q != 'e'; q++)
    if (*q != '.') dig[nd++] = *q;
  int x = atoi(q + 1);
  while (nd > 1 && dig[nd - 1] == '0') nd--;
  if (x >= -4 && x < 16) {
    if (x < 0) {
      o += sprintf(o, "0.");
      for (int k = 0; k < -x - 1; k++) *o++ = '0';
      memcpy(o, dig, (size_t)nd);
      o += nd;
    } else {
      for (int k = 0; k <= x; k++) *o++ = k < nd ? dig[k] : '0';
      *o++ = '.';
      if (nd > x + 1) {
        memcpy(o, dig + x + 1, (size_t)(nd - x - 1));
        o += nd - x - 1;
      } else {
        *o++ = '0';
      }
    }
    *o = '\0';
  } else {
    *o++ = dig[0];
    if (nd > 1) {
      *o++ = '.';
      memcpy(o, dig + 1, (size_t)(nd - 1));
      o += nd - 1;
    }
    sprintf(o, "e%c%02d", x < 0 ? '-' : '+', x < 0 ? -x : x);
  }
}

/* A random number text (NUL-terminated, under 100 characters) in one of
 * many forms: Python's layout of float32 values and of doubles, printf's,
 * and numbers put together from parts -- 1 to 25 digits, leading and
 * trailing zeros, "0.000...", exponents with and without signs and leading
 * zeros, over 63 characters now and then -- and, rarely, a malformed one.
 * The forms made with printf are the slow ones to make: one in six. */
static void random_number(char *out) {
  static const char *const fmts[] = {"%.17g", "%.16g", "%.9g", "%.3e", "%.1f", "%.0f",
                                     "%.20f", "%.25g"};
  int kind = (int)(rnd() % 24);
  if (kind == 0 && rnd() % 64 == 0) { /* Python's repr itself, slow to make */
    circle_buf b;
    circle_buf_init(&b);
    circle_buf_python_float(&b, rnd() % 2 ? random_double()
                                          : (double)(float)((double)(rnd() >> 11) / 1e16));
    ck_assert(!b.failed && b.len < 100);
    memcpy(out, b.data, b.len + 1);
    circle_buf_free(&b);
  } else if (kind == 0) {
    python_layout(out, random_double(), (int)(rnd() % 17));
  } else if (kind <= 2) {
    /* float32 values as json.dumps(x.tolist()) writes them. */
    double u = ((double)(rnd() >> 11) / 9007199254740992.0 - 0.5) * 2;
    double v = (double)(float)(u * small_pow10[rnd() % 12] / 1e8);
    python_layout(out, v, 16 - (int)(rnd() % 3));
  } else if (kind == 3) {
    double v = rnd() % 2 ? random_double()
                         : ((double)(rnd() >> 11) / 9007199254740992.0 - 0.5) * 1e3;
    snprintf(out, 100, fmts[rnd() % 8], v);
    if (strlen(out) > 99 || strchr(out, 'n') || strchr(out, 'i')) strcpy(out, "1");
  } else {
    char *o = out;
    if (rnd() % 2) *o++ = '-';
    if (rnd() % 5 < 2) *o++ = '0';
    else add_digits(&o, 1 + (int)(rnd() % (rnd() % 4 ? 8 : 22)), true);
    if (rnd() % 4) {
      *o++ = '.';
      int zeros = rnd() % 3 ? 0 : (int)(rnd() % 20); /* 0.000... */
      for (int k = 0; k < zeros; k++) *o++ = '0';
      add_digits(&o, (zeros ? 0 : 1) + (int)(rnd() % 25), false);
      int trailing = rnd() % 4 ? 0 : (int)(rnd() % 10);
      for (int k = 0; k < trailing; k++) *o++ = '0';
    }
    if (rnd() % 10 < 3) {
      *o++ = rnd() % 2 ? 'e' : 'E';
      int sign = (int)(rnd() % 3);
      if (sign) *o++ = sign == 1 ? '+' : '-';
      int zeros = rnd() % 8 ? 0 : 1 + (int)(rnd() % 3);
      for (int k = 0; k < zeros; k++) *o++ = '0';
      unsigned e = (unsigned)(rnd() % (rnd() % 2 ? 30 : 400));
      char ed[8];
      int ne = 0;
      do {
        ed[ne++] = (char)('0' + e % 10);
        e /= 10;
      } while (e);
      while (ne) *o++ = ed[--ne];
    }
    *o = '\0';
  }
  if (rnd() % 40 == 0) { /* malformed: a character replaced or dropped */
    static const char bad[] = "-+.eE0x ,]";
    size_t n = strlen(out), at = rnd() % (n + 1);
    if (rnd() % 2 && at < n) memmove(out + at, out + at + 1, n - at);
    else if (at < n) out[at] = bad[rnd() % (sizeof bad - 1)];
  }
}

START_TEST(json_fast_should_match_strtod_on_millions_of_numbers_wherever_they_end) {
  /* Each number is read three ways: ending exactly at the end of a malloc'd
   * buffer (AddressSanitizer catches a read past it), followed by what
   * follows numbers in a body (room enough for the usual way), and with
   * the end set inside it (digits after the end must not count). */
  static const char *const after[] = {", ", ",", "]", "], [", "]]}", " ", "\n  ", ",\n",
                                      "}", "e", "E+", ".", "x", "5", "-"};
  enum { TAIL_ROOM = 64 };
  char *edge = malloc(TAIL_ROOM);
  ck_assert_ptr_nonnull(edge);
  char text[128], buf[256], filler[1024 + 80], digits[1024 + 40];
  for (size_t k = 0; k < sizeof filler; k++) filler[k] = "0123456789, ]"[rnd() % 13];
  for (size_t k = 0; k < sizeof digits; k++) digits[k] = (char)('0' + rnd() % 10);
  int bad = 0;
  long forms = 0;
  for (int i = 0; i < 1500000; i++) {
    random_number(text);
    size_t n = strlen(text);
    if (n == 0 || n > TAIL_ROOM) continue;
    forms++;
    size_t span = ref_span(text, n);
    double want = span ? strtod_n(text, span) : 0;
    /* At the very end of the buffer. */
    memcpy(edge + TAIL_ROOM - n, text, n);
    bad += check_span(edge + TAIL_ROOM - n, edge + TAIL_ROOM, span, want, "at the end");
    /* In a body: at any alignment, with a separator and more numbers. */
    size_t off = rnd() % 16, o = off;
    memcpy(buf + o, text, n);
    o += n;
    const char *a = after[rnd() % (sizeof after / sizeof after[0])];
    memcpy(buf + o, a, strlen(a));
    o += strlen(a);
    memcpy(buf + o, filler + rnd() % 1024, 80); /* more numbers */
    o += 80;
    bad += check_span(buf + off, buf + o, span, want, "in a body");
    /* With its end inside: what lies after must not be read as digits. */
    memcpy(buf + off + n, digits + rnd() % 1024, 40);
    size_t cut = rnd() % 4 ? n : rnd() % (n + 1);
    bad += check_span(buf + off, buf + off + cut, span, want, "cut short");
  }
  free(edge);
  ck_assert_int_gt(forms, 1000000);
  ck_assert_int_eq(bad, 0);
}
END_TEST

/* Matrices of every number form, separated in every way, each number
 * read back as strtod reads its text; then the same body cut short at
 * every length, each in a malloc'd buffer of exactly that length, never
 * read past and never accepted. */
START_TEST(json_fast_should_read_matrices_of_every_number_form) {
  static const char *const seps[] = {", ", ",", " , ", ",\n  ", ",\t", ",  "};
  int bad = 0;
  for (int iter = 0; iter < 400; iter++) {
    size_t rows = 1 + rnd() % 6, d = 1 + rnd() % 40;
    sb b = {0};
    char (*texts)[128] = malloc(rows * d * sizeof *texts);
    ck_assert_ptr_nonnull(texts);
    const char *sep = seps[rnd() % (sizeof seps / sizeof seps[0])];
    sb_add(&b, "{\"labels\": [");
    for (size_t i = 0; i < rows; i++) sb_add(&b, "%s%zu", i ? ", " : "", i % 3);
    sb_add(&b, "], \"embeddings\": [");
    for (size_t i = 0; i < rows; i++) {
      sb_add(&b, "%s[", i ? sep : "");
      for (size_t k = 0; k < d; k++) {
        char *t = texts[i * d + k];
        do {
          random_number(t);
        } while (*t == '\0' || ref_span(t, strlen(t)) != strlen(t) ||
                 !isfinite(strtod(t, NULL)));
        sb_add(&b, "%s%s", k ? sep : "", t);
      }
      sb_add(&b, "]");
    }
    sb_add(&b, "]}");
    char *exact = malloc(b.len);
    ck_assert_ptr_nonnull(exact);
    memcpy(exact, b.s, b.len);
    circle__json_fast_body fb;
    ck_assert_msg(circle__json_fast_body_read(exact, b.len, 32, 100, 100, 100, &fb),
                  "not read: %.300s", b.s);
    ck_assert_uint_eq(fb.emb.rows, rows);
    ck_assert_uint_eq(fb.emb.d, d);
    for (size_t j = 0; j < rows * d; j++) {
      double want = strtod(texts[j], NULL);
      if (memcmp(&want, &fb.emb.v[j], 8) != 0 && bad++ < 10)
        fprintf(stderr, "matrix: \"%s\" read as %.17g, strtod %.17g\n", texts[j],
                fb.emb.v[j], want);
    }
    circle__json_fast_body_free(&fb);
    free(exact);
    /* Cut short: at every length in the small bodies, at some in the rest. */
    size_t step = b.len < 1200 ? 1 : b.len / 40;
    for (size_t cut = 0; cut < b.len; cut += 1 + rnd() % step) {
      char *part = malloc(cut ? cut : 1);
      ck_assert_ptr_nonnull(part);
      memcpy(part, b.s, cut);
      ck_assert_msg(!circle__json_fast_body_read(part, cut, 32, 100, 100, 100, &fb),
                    "accepted %zu of %zu bytes", cut, b.len);
      free(part);
    }
    free(texts);
    free(b.s);
  }
  ck_assert_int_eq(bad, 0);
}
END_TEST

/* 10^e for |e| <= 38 checked exactly with 128-bit integers: 10^e shifted
 * up for e >= 0, floor(2^(bitlen(10^-e) + 127) / 10^-e) for e < 0. */
START_TEST(json_fast_should_hold_exact_powers_of_ten) {
  typedef unsigned __int128 u128;
  uint64_t hi, lo;
  ck_assert(!circle__json_fast_pow10(-349, &hi, &lo));
  ck_assert(!circle__json_fast_pow10(348, &hi, &lo));
  ck_assert(circle__json_fast_pow10(-348, &hi, &lo) && hi >> 63 == 1);
  ck_assert(circle__json_fast_pow10(347, &hi, &lo) && hi >> 63 == 1);
  u128 p = 1;
  for (int e = 0; e <= 38; e++) {
    int l = 0;
    while (l < 128 && (p >> l) != 0) l++;
    u128 want_pos = p << (128 - l);
    ck_assert(circle__json_fast_pow10(e, &hi, &lo));
    ck_assert_msg(((u128)hi << 64 | lo) == want_pos, "10^%d", e);
    if (e > 0 && l <= 126) {
      /* Long division of 2^(l + 127) by p, one bit at a time. */
      u128 q = 0, r = 0;
      for (int bit = l + 127; bit >= 0; bit--) {
        r = (r << 1) | (bit == l + 127 ? 1 : 0);
        q <<= 1;
        if (r >= p) {
          r -= p;
          q |= 1;
        }
      }
      ck_assert(circle__json_fast_pow10(-e, &hi, &lo));
      ck_assert_msg(((u128)hi << 64 | lo) == q, "10^-%d", e);
    }
    if (e < 38) p *= 10;
  }
}
END_TEST

START_TEST(json_fast_should_refuse_what_is_not_a_json_number) {
  static const char *const cases[] = {"", "+1", ".5", "5.", "1e", "1e+", "-",
                                      "--1", "-.5", "inf", "nan", " 1", "e5",
                                      "x", "-e1", "1.e5"};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    double v = 42;
    const char *t = cases[i];
    ck_assert_msg(circle__json_fast_number(t, t + strlen(t), &v) == 0, "%s", t);
    ck_assert(v == 42);
  }
  /* A number stops where the grammar does; "01" is "0" then "1". */
  double v;
  ck_assert_uint_eq(circle__json_fast_number("01", "01" + 2, &v), 1);
  ck_assert_uint_eq(circle__json_fast_number("1.5,2", "1.5,2" + 5, &v), 3);
  ck_assert(v == 1.5);
  ck_assert_uint_eq(circle__json_fast_number("0x10", "0x10" + 4, &v), 1);
  /* Never reads past end. */
  ck_assert_uint_eq(circle__json_fast_number("123", "123" + 2, &v), 2);
  ck_assert(v == 12);
  /* The codecs' 63-character limit. */
  char longnum[80];
  memset(longnum, '1', 64);
  longnum[64] = '\0';
  ck_assert_uint_eq(circle__json_fast_number(longnum, longnum + 64, &v), 0);
  ck_assert_uint_eq(circle__json_fast_number(longnum, longnum + 63, &v), 63);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Bodies                                                                   */
/* ------------------------------------------------------------------------ */

START_TEST(json_fast_should_read_common_bodies) {
  circle_limits lim;
  circle_limits_init(&lim);
  const char *body = "{\"labels\": [0, 1], \"embeddings\": [[1, 2.5], [-3e2, 0]], "
                     "\"config\": {\"gamma\": 64}}";
  circle__json_fast_body fb;
  ck_assert(circle__json_fast_body_read(body, strlen(body), lim.max_depth, lim.max_n,
                                        lim.max_m, lim.max_d, &fb));
  ck_assert(fb.emb.found && !fb.ref.found);
  ck_assert_uint_eq(fb.emb.rows, 2);
  ck_assert_uint_eq(fb.emb.d, 2);
  ck_assert(fb.emb.v[0] == 1 && fb.emb.v[1] == 2.5 && fb.emb.v[2] == -300 &&
            fb.emb.v[3] == 0);
  ck_assert_str_eq(fb.copy, "{\"labels\": [0, 1], \"embeddings\": [], "
                            "\"config\": {\"gamma\": 64}}");
  ck_assert_uint_eq(fb.copy_len, strlen(fb.copy));
  circle__json_fast_body_free(&fb);
  ck_assert_ptr_null(fb.copy);
  circle__json_fast_body_free(NULL); /* a no-op */

  /* Off: never reads. */
  circle__json_fast_enabled = false;
  ck_assert(!circle__json_fast_body_read(body, strlen(body), lim.max_depth, lim.max_n,
                                         lim.max_m, lim.max_d, &fb));
  circle__json_fast_enabled = true;
  ck_assert(!circle__json_fast_body_read(NULL, 0, 32, 10, 10, 10, &fb));
}
END_TEST

START_TEST(json_fast_should_leave_unusual_bodies_to_cjson) {
  static const char *const cases[] = {
      "[1]",
      "{}",
      "{\"labels\": [0], \"embeddings\": [[1, \"2\" 3]]}",
      "{\"labels\": [0], \"emb\\qeddings\": [[1]]}",
      "{\"labels\": [0], \"embeddings\": [[1]], \"embeddings\": [1,]}",
      "{\"labels\": [0], \"embeddings\": [[1, 01]]}",
      "{\"labels\": [0], \"embeddings\": [[1], [2],]}",
      "{\"labels\": [0], \"embeddings\": [[1], 2 3]}",
      "{\"labels\": [0], \"embeddings\": [[1]]} x",
      "{\"labels\": [0], \"embeddings\": [[1]],}",
      "{\"labels\": [0] \"embeddings\": [[1]]}",
      "{\"labels\": [0, \"embeddings\": [[1]]}",
      "{\"labels\": [0}, \"embeddings\": [[1]]}",
      /* Nine array values of matrix keys: the slow path refuses the ninth
       * before building a tree. */
      "{\"labels\": [0], \"embeddings\": [[1]], \"embeddings\": [[1]], \"embeddings\": [[1]], "
      "\"embeddings\": [[1]], \"embeddings\": [[1]], \"embeddings\": [[1]], \"embeddings\": "
      "[[1]], \"embeddings\": [[1]], \"embeddings\": [[1]]}"};
  circle__json_fast_body fb;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    ck_assert_msg(!circle__json_fast_body_read(cases[i], strlen(cases[i]), 32, 100, 100,
                                               100, &fb),
                  "%s", cases[i]);
  /* A number past the double range is read, as strtod reads it, and its
   * place kept: the codec names it. */
  const char *inf = "{\"labels\": [0, 1], \"embeddings\": [[1, 2], [-1e400, 1e400]]}";
  ck_assert(circle__json_fast_body_read(inf, strlen(inf), 32, 100, 100, 100, &fb));
  ck_assert_uint_eq(fb.emb.first_inf, 2);
  ck_assert(isinf(fb.emb.v[2]) && fb.emb.v[2] < 0 && isinf(fb.emb.v[3]));
  circle__json_fast_body_free(&fb);
  const char *fin = "{\"labels\": [0], \"embeddings\": [[1, 2]]}";
  ck_assert(circle__json_fast_body_read(fin, strlen(fin), 32, 100, 100, 100, &fb));
  ck_assert_uint_eq(fb.emb.first_inf, 2);
  circle__json_fast_body_free(&fb);
  /* Limits: rows, reference rows, D, and a depth limit under the matrix's. */
  const char *b = "{\"labels\": [0, 1], \"embeddings\": [[1, 2], [3, 4]], "
                  "\"ref_labels\": [0], \"ref_embeddings\": [[1, 2]]}";
  ck_assert(circle__json_fast_body_read(b, strlen(b), 32, 2, 1, 2, &fb));
  ck_assert(fb.ref.found && fb.ref.rows == 1);
  circle__json_fast_body_free(&fb);
  /* Past a limit, a matrix is odd: counted, not kept. */
  ck_assert(circle__json_fast_body_read(b, strlen(b), 32, 1, 1, 2, &fb));
  ck_assert(fb.emb.odd && fb.emb.rows == 2 && fb.emb.v == NULL && !fb.ref.odd);
  circle__json_fast_body_free(&fb);
  ck_assert(circle__json_fast_body_read(b, strlen(b), 32, 2, 0, 2, &fb));
  ck_assert(!fb.emb.odd && fb.ref.odd && fb.ref.rows == 1);
  circle__json_fast_body_free(&fb);
  ck_assert(circle__json_fast_body_read(b, strlen(b), 32, 2, 1, 1, &fb));
  ck_assert(fb.emb.odd && fb.emb.row0_len == 2 && fb.emb.bad_row == 2);
  circle__json_fast_body_free(&fb);
  ck_assert(!circle__json_fast_body_read(b, strlen(b), 2, 2, 1, 2, &fb));
}
END_TEST

/* Valid JSON that is not a usual matrix is walked to its end with its shape
 * noted (the codec names the first bad row from it, reading the numbers
 * once more at most); the rest of the body is still read the fast way. */
START_TEST(json_fast_should_note_the_shape_of_odd_matrices) {
  static const struct {
    const char *emb;
    size_t rows, row0_len, bad_row, bad_len;
  } cases[] = {
      {"[]", 0, 0, 0, 0},
      {"[[]]", 1, 0, 1, 0},
      {"[[1, \"2\"]]", 1, 2, 1, 0},
      {"[[1, 2], [3]]", 2, 2, 1, 1},
      {"[[1, 2], [3, 4, 5], [6]]", 3, 2, 1, 3},
      {"[[1, 2], null, [3]]", 3, 2, 1, SIZE_MAX},
      {"[7, [1]]", 2, 0, 0, SIZE_MAX},
      {"[[1, null, {\"a\": [true]}], [2, 3, 4]]", 2, 3, 2, 0},
      {"[[1, 2], [3, [4]], [5, 6]]", 3, 2, 3, 0},
      {"[[1, 2], [], [5, 6]]", 3, 2, 1, 0},
  };
  circle__json_fast_body fb;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char body[256];
    snprintf(body, sizeof body, "{\"labels\": [0, 1], \"embeddings\": %s, \"tag\": \"t\"}",
             cases[i].emb);
    ck_assert_msg(circle__json_fast_body_read(body, strlen(body), 32, 100, 100, 100, &fb),
                  "%s", body);
    ck_assert_msg(fb.emb.odd && fb.emb.v == NULL, "%s: not odd", body);
    ck_assert_uint_eq(fb.emb.rows, cases[i].rows);
    if (cases[i].rows > 0) {
      ck_assert_uint_eq(fb.emb.bad_row, cases[i].bad_row);
      if (fb.emb.bad_row < fb.emb.rows) ck_assert_uint_eq(fb.emb.bad_len, cases[i].bad_len);
      if (!(fb.emb.bad_row == 0 && fb.emb.bad_len == SIZE_MAX))
        ck_assert_uint_eq(fb.emb.row0_len, cases[i].row0_len);
    }
    ck_assert_str_eq(fb.copy, "{\"labels\": [0, 1], \"embeddings\": [], \"tag\": \"t\"}");
    circle__json_fast_body_free(&fb);
  }
}
END_TEST

START_TEST(json_fast_should_give_the_same_request_as_cjson) {
  circle_limits lim;
  circle_limits_init(&lim);
  for (int iter = 0; iter < 300; iter++) {
    sb b = {0};
    size_t n = 1 + rnd() % 40, d = 1 + rnd() % 20, m = 1 + rnd() % 30;
    bool ref = rnd() % 3 == 0, strings = rnd() % 4 == 0, sw = rnd() % 3 == 0;
    int style = (int)(rnd() % 5);
    const char *w = WS[rnd() % 5];
    sb_add(&b, "{%s", w);
    /* Members in a random order. */
    int order[6] = {0, 1, 2, 3, 4, 5};
    for (int k = 5; k > 0; k--) {
      int j = (int)(rnd() % (unsigned)(k + 1)), t = order[k];
      order[k] = order[j];
      order[j] = t;
    }
    bool first = true;
    for (int k = 0; k < 6; k++) {
      const char *sep = first ? "" : ",";
      switch (order[k]) {
      case 0:
        sb_add(&b, "%s\"labels\"%s:%s[", sep, w, w);
        for (size_t i = 0; i < n; i++)
          sb_add(&b, strings ? "%s\"c%d\"" : "%s%d", i ? "," : "", (int)(rnd() % 5));
        sb_add(&b, "]");
        break;
      case 1:
        sb_add(&b, "%s\"embeddings\":%s", sep, w);
        add_matrix(&b, n, d, style);
        break;
      case 2:
        if (!ref) continue;
        sb_add(&b, "%s\"ref_labels\": [", sep);
        for (size_t i = 0; i < m; i++)
          sb_add(&b, strings ? "%s\"c%d\"" : "%s%d", i ? "," : "", (int)(rnd() % 5));
        sb_add(&b, "], \"ref_embeddings\": ");
        add_matrix(&b, m, d, (style + 1) % 5);
        break;
      case 3:
        if (!sw) continue;
        sb_add(&b, "%s\"sample_weight\": [", sep);
        for (size_t i = 0; i < n; i++) sb_add(&b, "%s%.17g", i ? "," : "",
                                              (double)(rnd() % 1000) / 7);
        sb_add(&b, "]");
        break;
      case 4:
        if (rnd() % 2) continue;
        sb_add(&b, "%s\"config\": {\"gamma\": 64, \"margin\": 0.25, \"dtype\": \"%s\"}", sep,
               rnd() % 2 ? "float64" : "float32");
        break;
      case 5:
        if (rnd() % 2) continue;
        sb_add(&b, "%s\"outputs\": [\"loss\", \"embeddings_grad\"], \"tag\": \"t\", "
                   "\"normalize\": %s", sep, rnd() % 2 ? "true" : "false");
        break;
      }
      first = false;
    }
    sb_add(&b, "%s}%s", w, w);
    /* The fast path must be taken for every one of these. */
    circle__json_fast_body fb;
    ck_assert_msg(circle__json_fast_body_read(b.s, b.len, lim.max_depth, lim.max_n,
                                              lim.max_m, lim.max_d, &fb), "%s", b.s);
    circle__json_fast_body_free(&fb);
    expect_same(b.s, &lim);
    free(b.s);
  }
}
END_TEST

START_TEST(json_fast_should_give_the_same_errors_as_cjson) {
  static const char *const cases[] = {
      "{\"labels\": [0, 1], \"embeddings\": [[1, 2]]}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"ref_labels\": [0], "
      "\"ref_embeddings\": [[1, 2, 3]]}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"ref_embeddings\": [[1, 2]]}",
      "{\"labels\": [0], \"embeddings\": [[1e39]], \"config\": {\"dtype\": \"float32\"}}",
      "{\"labels\": [0], \"embeddings\": [[1e39]], \"config\": {\"dtype\": \"float64\"}}",
      "{\"labels\": [0, 1], \"embeddings\": [[1, 2], [3, 1e400]]}",
      "{\"labels\": [0, 1], \"embeddings\": [[1, 2], [-1e400, 1e39]], \"config\": "
      "{\"dtype\": \"float64\"}}",
      "{\"labels\": [0, 1], \"embeddings\": [[1, 1e39], [-1e400, 1]]}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"ref_labels\": [0, 1], "
      "\"ref_embeddings\": [[1, 2], [3, 1e999]], \"config\": {\"dtype\": \"float64\"}}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"ref_labels\": [0, 1], "
      "\"ref_embeddings\": [[1, 2], [3, 1e999]], \"config\": {\"dtype\": \"float16\"}}",
      "{\"labels\": [0], \"embeddings\": [[1e400, 2]], \"labels\": [1]}",
      "{\"labels\": [0.5], \"embeddings\": [[1e400, 2]]}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"bogus\": 1}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"config\": {\"gamma\": -1}}",
      "{\"labels\": [0.5], \"embeddings\": [[1, 2]]}",
      "{\"labels\": [], \"embeddings\": [[1, 2]]}",
      "{\"embeddings\": [[1, 2]]}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"outputs\": [\"ref_embeddings_grad\"]}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"sample_weight\": [-1]}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"ref_labels\": [], "
      "\"ref_embeddings\": [[1, 2]]}",
      "{\"labels\": [0, 1, 2], \"embeddings\": [[1], [2], [3]]}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"tag\": 5}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"normalize\": 1}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"config\": \"x\"}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"labels\": [1]}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"x\": \"\\u0000\"}",
      /* Repeated and escaped matrix keys: cut as the slow path cuts them. */
      "{\"labels\": [0], \"embeddings\": [[1]], \"embeddings\": [[2]]}",
      "{\"labels\": [0], \"embeddings\": [[1]], \"embeddings\": [[2, \"x\"]], \"bogus\": 1}",
      "{\"labels\": [0], \"embedd\\u0069ngs\": [[1]]}",
      "{\"labels\": [0], \"embedd\\u0069ngs\": [[1, 2]], \"ref_labels\": [0], "
      "\"ref\\u005fembeddings\": [[1]]}",
      "{\"labels\": [0], \"embeddings\": [[1]], \"embedd\\u0069ngs\": [[1]]}",
      "{\"labels\": [0], \"embeddings\\u00e9\": [[1]], \"embeddings\": [[1]]}",
      "{\"labels\": [0], \"embeddings\": [[1]], \"embeddings\": [[1]], \"embeddings\": [[1]], "
      "\"embeddings\": [[1]], \"embeddings\": [[1]], \"embeddings\": [[1]], \"embeddings\": "
      "[[1]], \"embeddings\": [[1]], \"embeddings\": [[1]]}",
      /* A matrix key whose value is no array, or none at all. */
      "{\"labels\": [0], \"embeddings\": null}",
      "{\"labels\": [0], \"embeddings\": 5, \"ref_labels\": [0], \"ref_embeddings\": [[1]]}",
      "{\"labels\": [0], \"embeddings\": [[1]], \"ref_labels\": [0], \"ref_embeddings\": \"x\"}",
      "{\"labels\": [0], \"embeddings\": null, \"embeddings\": [[1]]}",
      "{\"labels\": [0], \"embeddings\": {}, \"embeddings\": {}}",
      "{\"labels\": [0]}",
      "{\"labels\": [0], \"ref_embeddings\": [[1]], \"ref_labels\": [0]}",
      /* What the pre-scan refuses outside the matrices, and what it takes. */
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"tag\": \"a\\qb\"}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"tag\": \"\\ud800\"}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"tag\": \"\\udc00\\ud800\"}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"tag\": \"\\ud83d\\ude00\"}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"tag\": \"a\\u00e9\\n\\/\"}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"tag\": \"a\tb\"}",
      "{\"labels\": [01], \"embeddings\": [[1, 2]]}",
      "{\"labels\": [1.], \"embeddings\": [[1, 2]]}",
      "{\"labels\": [-], \"embeddings\": [[1, 2]]}",
      "{\"labels\": [1e5e], \"embeddings\": [[1, 2]]}",
      "{\"labels\": [0,], \"embeddings\": [[1, 2]]}",
      "{\"labels\": [0 1], \"embeddings\": [[1, 2]]}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"config\": {\"gamma\" 1}}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"config\": {\"gamma\": 1,}}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"config\": {,}}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"config\": {1: 2}}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"normalize\": truex}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"normalize\": tru}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"x\": [{\"a\": [null, false, {}], \"b\": []}]}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"x\": [1]]}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"x\": \x01 1}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"x\": \"\xc3\xa9\"}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"x\": 1\xc3}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"x\": 1234567890123456789012345678901234567890123456789012345678901234}",
      "{\"labels\": [0], \"embeddings\": [[1, 2]], \"x\": [[[[[[[[[[[[[[[[[[[[[[[[[[[["
      "[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
      "{\"labels\": [9007199254740993, 9007199254740992], \"embeddings\": [[1], [2]]}",
      "{\"labels\": [0, 1], \"embeddings\": [[1, 2], [3, 4]], \"ref_labels\": [0], "
      "\"ref_embeddings\": [[1, 2]], \"outputs\": [\"ref_embeddings_grad\", \"loss\"]}",
  };
  circle_limits lim;
  circle_limits_init(&lim);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) expect_same(cases[i], &lim);
  /* Limits that the fast path checks on its own. */
  circle_limits small = lim;
  small.max_n = 2;
  small.max_m = 1;
  small.max_d = 2;
  expect_same("{\"labels\": [0, 1, 2], \"embeddings\": [[1], [2], [3]]}", &small);
  expect_same("{\"labels\": [0], \"embeddings\": [[1, 2, 3]]}", &small);
  expect_same("{\"labels\": [0], \"embeddings\": [[1]], \"ref_labels\": [0, 1], "
              "\"ref_embeddings\": [[1], [2]]}", &small);
  /* Matrices the fast path reads, arrays the slow path refuses by their
   * length before its tree is built: its messages win. */
  expect_same("{\"labels\": [0], \"embeddings\": [[1]], \"sample_weight\": [1, 1, 1]}",
              &small);
  expect_same("{\"labels\": [0], \"embeddings\": [[1]], \"ref_labels\": [0, 1], "
              "\"ref_embeddings\": [[1]]}", &small);
  expect_same("{\"labels\": [0, 1, 2], \"embeddings\": [[1]]}", &small);
  expect_same("{\"labels\": [0], \"embeddings\": [[1]], \"labels\": [0, 1, 2]}", &small);
  expect_same("{\"bogus\": 1, \"embeddings\": [[1]], \"labels\": [0, 1, 2]}", &small);
  expect_same("{\"labels\": [0], \"embeddings\": [[1]], \"sample_weight\": [1, 1]}",
              &small);
  small = lim;
  small.max_depth = 2;
  expect_same("{\"labels\": [0], \"embeddings\": [[1]]}", &small);
  small.max_pairs = 3;
  small.max_depth = 32;
  expect_same("{\"labels\": [0, 1], \"embeddings\": [[1], [2]]}", &small);
}
END_TEST

/* Random edits of valid bodies: whatever they turn into, both paths agree. */
START_TEST(json_fast_should_agree_with_cjson_on_mutated_bodies) {
  static const char alphabet[] = "[]{},:\"-+.eE0123456789 \ntruefalsnl\\ux";
  static const char *const seeds[] = {
      "{\"labels\": [0, 1, 1], \"embeddings\": [[0.5, -1e-3], [2, 3.25], [0, 1]]}",
      "{\"embeddings\": [[1, 2], [3, 4]], \"labels\": [\"a\", \"b\"], "
      "\"ref_labels\": [\"a\"], \"ref_embeddings\": [[0.1, 0.2]], \"config\": "
      "{\"dtype\": \"float64\"}}",
      "{\"labels\": [0, 0], \"embeddings\": [[1e-5, 2E+3], [-0.0, 1.5]], "
      "\"sample_weight\": [1, 0.5], \"outputs\": [\"loss\"]}"};
  circle_limits lim;
  circle_limits_init(&lim);
  char buf[512];
  for (int iter = 0; iter < 6000; iter++) {
    const char *seed = seeds[iter % 3];
    size_t len = strlen(seed);
    memcpy(buf, seed, len + 1);
    int edits = 1 + (int)(rnd() % 3);
    for (int k = 0; k < edits && len > 2; k++) {
      size_t at = rnd() % len;
      char c = alphabet[rnd() % (sizeof alphabet - 1)];
      switch (rnd() % 3) {
      case 0: buf[at] = c; break;                                   /* replace */
      case 1: memmove(buf + at, buf + at + 1, len - at); len--; break; /* delete */
      default:                                                      /* insert */
        if (len + 2 < sizeof buf) {
          memmove(buf + at + 1, buf + at, len - at + 1);
          buf[at] = c;
          len++;
        }
      }
    }
    expect_same(buf, &lim);
  }
}
END_TEST

static Suite *json_fast_suite(void) {
  Suite *s = suite_create("json_fast");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, json_fast_should_match_strtod_on_edge_numbers);
  tcase_add_test(tc, json_fast_should_match_strtod_on_random_doubles);
  tcase_add_test(tc, json_fast_should_match_strtod_on_python_floats);
  tcase_add_test(tc, json_fast_should_match_strtod_on_random_mantissas_and_exponents);
  tcase_add_test(tc, json_fast_should_match_strtod_on_millions_of_numbers_wherever_they_end);
  tcase_add_test(tc, json_fast_should_read_matrices_of_every_number_form);
  tcase_add_test(tc, json_fast_should_hold_exact_powers_of_ten);
  tcase_add_test(tc, json_fast_should_refuse_what_is_not_a_json_number);
  tcase_add_test(tc, json_fast_should_read_common_bodies);
  tcase_add_test(tc, json_fast_should_leave_unusual_bodies_to_cjson);
  tcase_add_test(tc, json_fast_should_note_the_shape_of_odd_matrices);
  tcase_add_test(tc, json_fast_should_give_the_same_request_as_cjson);
  tcase_add_test(tc, json_fast_should_give_the_same_errors_as_cjson);
  tcase_add_test(tc, json_fast_should_agree_with_cjson_on_mutated_bodies);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(json_fast_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
