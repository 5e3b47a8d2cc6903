/* test_request.c -- limits, requests, errors and the response buffer: the
 * number formatter writes, byte for byte, what the double-double writer it
 * replaced wrote (a frozen copy below is the oracle), which is also what
 * "%.9g" / "%.17g" write, and round-trips every float and double bit for
 * bit; strings come out as valid UTF-8 JSON, and the buffer survives growth
 * and overflow.
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "request.h"

/* ------------------------------------------------------------------------ */
/* The reference writer                                                     */
/* ------------------------------------------------------------------------ */

/* A frozen copy of circle__json_number_write (and the double-double
 * arithmetic under it) as it was before its fast paths, at commit 821edca,
 * renamed ref_*.  Every byte the writer emits must be what this wrote.  It
 * lives here, not in request.c, so that a change there cannot change the
 * oracle too; do not edit it. */

typedef struct {
  double hi, lo;
} ref_dd;

/* Dekker's ref_split: a == hi + lo with hi, lo of 26 significant bits. */
static inline void ref_split(double a, double *hi, double *lo) {
  double c = 134217729.0 * a; /* 2^27 + 1 */
  *hi = c - (c - a);
  *lo = a - *hi;
}

/* a * b == p + e exactly (Dekker / Veltkamp). */
static inline void ref_two_prod(double a, double b, double *p, double *e) {
  double ah, al, bh, bl;
  *p = a * b;
  ref_split(a, &ah, &al);
  ref_split(b, &bh, &bl);
  *e = ((ah * bh - *p) + ah * bl + al * bh) + al * bl;
}

static inline ref_dd ref_quick_two_sum(double a, double b) {
  ref_dd r;
  r.hi = a + b;
  r.lo = b - (r.hi - a);
  return r;
}

static inline ref_dd ref_dd_mul_d(ref_dd a, double b) {
  double p, e;
  ref_two_prod(a.hi, b, &p, &e);
  e += a.lo * b;
  return ref_quick_two_sum(p, e);
}

static inline ref_dd ref_dd_div_d(ref_dd a, double b) {
  double q1 = a.hi / b;
  double p, e;
  ref_two_prod(q1, b, &p, &e);
  double r = ((a.hi - p) - e) + a.lo;
  return ref_quick_two_sum(q1, r / b);
}

/* 10^p as a double-double for p in [-REF_POW10_MAX, REF_POW10_MAX]. */
#define REF_POW10_MAX 300
static ref_dd ref_pow10_tab[2 * REF_POW10_MAX + 1];
/* Dekker halves of each ref_pow10_tab[].hi, so the hot product splits one
 * operand instead of two. */
static double ref_pow10_split[2 * REF_POW10_MAX + 1][2];
static pthread_once_t ref_pow10_once = PTHREAD_ONCE_INIT;

static void ref_pow10_build(void) {
  ref_dd one = {1.0, 0.0};
  ref_pow10_tab[REF_POW10_MAX] = one;
  for (int i = 1; i <= REF_POW10_MAX; i++) {
    ref_pow10_tab[REF_POW10_MAX + i] = ref_dd_mul_d(ref_pow10_tab[REF_POW10_MAX + i - 1], 10.0);
    ref_pow10_tab[REF_POW10_MAX - i] = ref_dd_div_d(ref_pow10_tab[REF_POW10_MAX - i + 1], 10.0);
  }
  for (int i = 0; i < 2 * REF_POW10_MAX + 1; i++)
    ref_split(ref_pow10_tab[i].hi, &ref_pow10_split[i][0], &ref_pow10_split[i][1]);
}

/* ref_pow10_tab[i] * b, as ref_dd_mul_d, with the table's ref_split precomputed. */
static inline ref_dd ref_pow10_mul(int i, double b) {
  double bh, bl;
  ref_split(b, &bh, &bl);
  double ah = ref_pow10_split[i][0], al = ref_pow10_split[i][1];
  double p = ref_pow10_tab[i].hi * b;
  double e = ((ah * bh - p) + ah * bl + al * bh) + al * bl;
  e += ref_pow10_tab[i].lo * b;
  return ref_quick_two_sum(p, e);
}

static const uint64_t ref_pow10_u64[] = {
    1ull, 10ull, 100ull, 1000ull, 10000ull, 100000ull, 1000000ull,
    10000000ull, 100000000ull, 1000000000ull, 10000000000ull,
    100000000000ull, 1000000000000ull, 10000000000000ull,
    100000000000000ull, 1000000000000000ull, 10000000000000000ull,
    100000000000000000ull};

/* round-half-even(a.hi + a.lo) for 0 < a < 2^62 (|a.lo| <= ulp(a.hi)/2,
 * which may be 8 or more when a.hi > 2^53). */
static inline uint64_t ref_dd_round(ref_dd a) {
  double r = (double)(uint64_t)a.hi; /* floor: a.hi > 0 */
  double d = (a.hi - r) + a.lo; /* a.hi - r is exact; d is small */
  int64_t id = (int64_t)d;          /* truncation ... */
  if ((double)id > d) id--;         /* ... made floor */
  double f = d - (double)id;        /* exact: in [0, 1) */
  uint64_t u = (uint64_t)r + (uint64_t)id;
  if (f > 0.5 || (f == 0.5 && (u & 1))) u++;
  return u;
}

static const char ref_digit_pairs[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* Writes the n decimal digits of u (u < 10^n <= 10^9, leading zeros kept),
 * in 32-bit arithmetic. */
static inline void ref_write_digits32(char *dst, uint32_t u, int n) {
  int i = n;
  while (i >= 2) {
    uint32_t q = u % 100;
    u /= 100;
    memcpy(dst + i - 2, ref_digit_pairs + 2 * q, 2);
    i -= 2;
  }
  if (i == 1) dst[0] = (char)('0' + u % 10);
}

/* Writes the prec decimal digits of u (u < 10^prec, leading zeros kept).
 * Splitting at 10^8 keeps the dependent divisions 32-bit and short. */
static inline void ref_write_digits(char *dst, uint64_t u, int prec) {
  if (prec <= 9) {
    ref_write_digits32(dst, (uint32_t)u, prec);
    return;
  }
  ref_write_digits32(dst, (uint32_t)(u / 100000000u), prec - 8);
  ref_write_digits32(dst + prec - 8, (uint32_t)(u % 100000000u), 8);
}

/* Lays out nd significant digits dig[] with decimal exponent x the way
 * printf's %g does for precision prec (trailing zeros already removed). */
static size_t ref_layout_g(char *o, bool neg, const char *dig, int nd, int x,
                       int prec) {
  char *s = o;
  if (neg) *o++ = '-';
  if (x < -4 || x >= prec) {
    *o++ = dig[0];
    if (nd > 1) {
      *o++ = '.';
      memcpy(o, dig + 1, (size_t)(nd - 1));
      o += nd - 1;
    }
    *o++ = 'e';
    int ax = x;
    if (ax < 0) {
      *o++ = '-';
      ax = -ax;
    } else {
      *o++ = '+';
    }
    if (ax >= 100) {
      *o++ = (char)('0' + ax / 100);
      ax %= 100;
    }
    *o++ = ref_digit_pairs[2 * ax];
    *o++ = ref_digit_pairs[2 * ax + 1];
  } else if (x >= 0) {
    int ip = x + 1; /* digits before the point */
    if (nd <= ip) {
      memcpy(o, dig, (size_t)nd);
      o += nd;
      for (int i = nd; i < ip; i++) *o++ = '0';
    } else {
      memcpy(o, dig, (size_t)ip);
      o += ip;
      *o++ = '.';
      memcpy(o, dig + ip, (size_t)(nd - ip));
      o += nd - ip;
    }
  } else {
    *o++ = '0';
    *o++ = '.';
    for (int i = -1; i > x; i--) *o++ = '0';
    memcpy(o, dig, (size_t)nd);
    o += nd;
  }
  return (size_t)(o - s);
}

/* Fast path: |v| finite, non-zero and inside the table's range. Returns 0
 * when it cannot decide (the caller falls back to snprintf). */
static size_t ref_fmt_fast(char *o, double v, int prec) {
  bool neg = v < 0;
  double a = neg ? -v : v;
  uint64_t bits;
  memcpy(&bits, &a, sizeof(bits));
  int e = (int)(bits >> 52) - 1023; /* a in [2^e, 2^(e+1)); subnormals: less */
  /* floor(e * log10(2)), exact for |e| < 1650; for subnormals (e = -1023)
   * an underestimate that the loop below corrects. */
  int k = (e * 78913) >> 18;
  /* k must start at or below the true decade: the loop only moves it up
   * when the digits overflow. Starting too high could round a value just
   * under 10^(k+1) to exactly 10^(prec-1) and lose its last digit. */
  uint64_t lo_bound = ref_pow10_u64[prec - 1], hi_bound = ref_pow10_u64[prec];
  uint64_t u = 0;
  int tries;
  for (tries = 0; tries < 8; tries++) {
    int p = prec - 1 - k;
    if (p < -REF_POW10_MAX || p > REF_POW10_MAX) return 0;
    u = ref_dd_round(ref_pow10_mul(REF_POW10_MAX + p, a));
    if (u >= hi_bound) k++;
    else if (u < lo_bound) k--;
    else break;
  }
  if (tries == 8) return 0;
  char dig[20];
  ref_write_digits(dig, u, prec);
  int nd = prec;
  while (nd > 1 && dig[nd - 1] == '0') nd--;
  return ref_layout_g(o, neg, dig, nd, k, prec);
}

static size_t ref_number_write(char *dst, double v, circle_dtype dtype) {
  if (dtype == CIRCLE_DTYPE_FLOAT32) v = (double)(float)v;
  if (!isfinite(v)) {
    memcpy(dst, "null", 4);
    return 4;
  }
  if (v == 0) {
    if (signbit(v)) {
      memcpy(dst, "-0", 2);
      return 2;
    }
    dst[0] = '0';
    return 1;
  }
  pthread_once(&ref_pow10_once, ref_pow10_build);
  int prec = dtype == CIRCLE_DTYPE_FLOAT32 ? 9 : 17;
  double a = fabs(v);
  if (prec == 9 || (a >= 1e-280 && a < 1e280)) {
    size_t n = ref_fmt_fast(dst, v, prec);
    if (n) return n;
  }
  char tmp[CIRCLE_JSON_NUMBER_MAX + 1];
  int n = snprintf(tmp, sizeof(tmp), "%.*g", prec, v);
  memcpy(dst, tmp, (size_t)n);
  return (size_t)n;
}

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

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

/* The checks below run millions of times: they call ck_abort_msg only on
 * failure, since every passing ck_assert reports a mark point to the parent
 * process (a write per call under CK_FORK). */

/* What the writer writes for v, as a string, after checking it against the
 * reference writer (same bytes) and that nothing was written past
 * CIRCLE_JSON_NUMBER_MAX bytes (the writer may use all of them). */
static const char *fmt(double v, circle_dtype dt) {
  static char buf[CIRCLE_JSON_NUMBER_MAX + 16];
  char ref[CIRCLE_JSON_NUMBER_MAX + 1];
  memset(buf, 0xa5, sizeof(buf));
  size_t n = circle__json_number_write(buf, v, dt);
  if (n > CIRCLE_JSON_NUMBER_MAX) ck_abort_msg("%a: %zu bytes", v, n);
  for (size_t i = CIRCLE_JSON_NUMBER_MAX; i < sizeof(buf); i++)
    if ((unsigned char)buf[i] != 0xa5)
      ck_abort_msg("%a: wrote past byte %d", v, CIRCLE_JSON_NUMBER_MAX);
  size_t rn = ref_number_write(ref, v, dt);
  if (n != rn || memcmp(buf, ref, n) != 0)
    ck_abort_msg("%a (%s): wrote %.*s, the reference %.*s", v,
                 dt == CIRCLE_DTYPE_FLOAT32 ? "float32" : "float64", (int)n,
                 buf, (int)rn, ref);
  buf[n] = '\0';
  return buf;
}

/* Checks one double: the reference's bytes (fmt), JSON syntax, round trip;
 * counts where the text is not what %.17g writes. */
static void check_double(double v, long *differs) {
  const char *s = fmt(v, CIRCLE_DTYPE_FLOAT64);
  if (!json_number_ok(s)) ck_abort_msg("not a JSON number: %s", s);
  double back = strtod(s, NULL);
  if (memcmp(&back, &v, sizeof(v)) != 0)
    ck_abort_msg("%a -> %s -> %a", v, s, back);
  char ref[40];
  snprintf(ref, sizeof(ref), "%.17g", v);
  if (strcmp(ref, s) != 0) {
    (*differs)++;
    if (*differs < 5) fprintf(stderr, "differs from %%.17g: %s vs %s\n", s, ref);
  }
}

static void check_float(float f, long *differs) {
  const char *s = fmt(f, CIRCLE_DTYPE_FLOAT32);
  if (!json_number_ok(s)) ck_abort_msg("not a JSON number: %s", s);
  float back = strtof(s, NULL);
  if (memcmp(&back, &f, sizeof(f)) != 0)
    ck_abort_msg("%a -> %s -> %a", (double)f, s, (double)back);
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

static float float_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

static double double_from_bits(uint64_t u) {
  double v;
  memcpy(&v, &u, sizeof(v));
  return v;
}

/* A random odd m < 2^bits for which m 5^q has exactly `digits` digits
 * (digits <= 18), or 0 when there is none: m 2^-q is then an exact tie
 * for digits - 1 significant digits, its expansion m 5^q 10^-q ending in
 * 5. */
static uint64_t random_tie_significand(int q, int digits, int bits) {
  uint64_t p5 = 1, lo_dec = 1;
  for (int i = 0; i < q; i++) p5 *= 5;
  for (int i = 1; i < digits; i++) lo_dec *= 10;
  uint64_t lo = (lo_dec + p5 - 1) / p5, hi = (lo_dec * 10 - 1) / p5;
  if (hi > (1ull << bits) - 1) hi = (1ull << bits) - 1;
  for (int tries = 0; lo <= hi && tries < 4; tries++) {
    uint64_t m = (lo + next_u64() % (hi - lo + 1)) | 1;
    if (m <= hi) return m;
  }
  return 0;
}

/* Checks f, -f and the n floats either side of each. */
static void check_float_around(float f, int n, long *differs) {
  float x = f;
  for (int i = 0; i < n && x != 0; i++) x = nextafterf(x, 0);
  for (int i = 0; i <= 2 * n && isfinite(x); i++) {
    check_float(x, differs);
    check_float(-x, differs);
    x = nextafterf(x, INFINITY);
  }
}

static void check_double_around(double v, int n, long *differs) {
  double x = v;
  for (int i = 0; i < n && x != 0; i++) x = nextafter(x, 0);
  for (int i = 0; i <= 2 * n && isfinite(x); i++) {
    check_double(x, differs);
    check_double(-x, differs);
    x = nextafter(x, INFINITY);
  }
}

START_TEST(request_should_write_the_reference_bytes_for_random_float_bits) {
  /* Random bit patterns reach every exponent in proportion: subnormals,
   * zeros, infinities and NaNs included.  All are compared with the
   * reference; one in four also with glibc and strtof, which cost ten
   * times as much. */
  long differs = 0;
  for (long i = 0; i < 4000000; i++) {
    float f = float_from_bits((uint32_t)next_u64());
    if (isfinite(f) && i % 4 == 0) check_float(f, &differs);
    else if (isfinite(f)) (void)fmt(f, CIRCLE_DTYPE_FLOAT32);
    else if (strcmp(fmt(f, CIRCLE_DTYPE_FLOAT32), "null") != 0)
      ck_abort_msg("%a is not null", (double)f);
  }
  ck_assert_int_eq(differs, 0);
}
END_TEST

START_TEST(request_should_write_the_reference_bytes_for_hard_floats) {
  long differs = 0;
  /* Both ends of every binade (exponent field 0: the subnormals). */
  for (uint32_t ex = 0; ex < 255; ex++)
    for (uint32_t m = 0; m < 64; m++) {
      check_float(float_from_bits(ex << 23 | m), &differs);
      check_float(-float_from_bits(ex << 23 | (0x7fffffu - m)), &differs);
    }
  /* Powers of ten and the decade thresholds T_k = (10^9 - 1/2) 10^(k-8),
   * past which the 9 digits round up into the next decade, 64 floats
   * either side. */
  for (int k = -46; k <= 38; k++) {
    char s[32];
    snprintf(s, sizeof(s), "1e%d", k);
    check_float_around(strtof(s, NULL), 64, &differs);
    snprintf(s, sizeof(s), "9999999995e%d", k - 9);
    check_float_around(strtof(s, NULL), 64, &differs);
  }
  /* Exact ties: m 2^-q whose decimal expansion m 5^q 10^-q has 10 digits
   * (m odd, so it ends in 5): the 9 digits round half to even.  Such
   * floats lie in [1e-5, 1e7); there q is 3 to 14. */
  long ties = 0;
  for (int q = 1; q <= 24; q++)
    for (int i = 0; i < 2000; i++) {
      uint64_t m = random_tie_significand(q, 10, 24);
      if (m == 0) break;
      float f = ldexpf((float)m, -q); /* exact: m < 2^24 */
      check_float(f, &differs);
      check_float(-f, &differs);
      ties++;
    }
  ck_assert_int_gt(ties, 20000);
  /* Near ties: whole binades scanned for floats whose 9-digit product is
   * within 2^-12 of a half-integer but not on it (the fast path decides
   * alone only outside 2^-20 of one; exact ties are above).  The estimate
   * here is a plain double product, good to 1e-6: enough to pick them. */
  static const uint32_t fields[] = {1, 30, 97, 113, 126, 127, 130, 146, 160,
                                    200, 254};
  long near = 0;
  for (size_t j = 0; j < sizeof(fields) / sizeof(fields[0]); j++) {
    double lo = ldexp(1, (int)fields[j] - 127);
    int kb = (int)floor(log10(lo));
    double up = 9999999995.0 * pow(10, kb - 8); /* T_kb */
    double p0 = pow(10, 8 - kb), p1 = pow(10, 7 - kb);
    for (uint32_t m = 0; m < (1u << 23); m++) {
      float f = float_from_bits(fields[j] << 23 | m);
      double t = (double)f * ((double)f >= up ? p1 : p0);
      double h = fabs(t - (double)(int64_t)t - 0.5);
      if (h < 0x1p-12 && h != 0) {
        check_float(f, &differs);
        near++;
      }
    }
  }
  ck_assert_int_gt(near, 500);
  /* Some of the 3,129 positive floats (found by scanning all 2^31) whose
   * one-multiply product falls within 2^-20 of a tie without being an
   * exact one: the writer must take its double-double fallback for them
   * (the closest 16, then one in 65). */
  static const uint32_t in_margin[] = {
      0x00128d49u, 0x00488a0fu, 0x01c007f9u, 0x01f8d51du, 0x024007f9u, 0x03855f84u,
      0x03efa6f4u, 0x05087582u, 0x05d9588du, 0x05f79a70u, 0x06b9b3d4u, 0x0739b3d4u,
      0x079ac086u, 0x07d8a722u, 0x07ed352bu, 0x080b46dfu, 0x082a3a2du, 0x08492d7bu,
      0x086820c9u, 0x08e820c9u, 0x09ee9884u, 0x0b486d52u, 0x0bf4bea7u, 0x0de59358u,
      0x0fffc5e4u, 0x11ece777u, 0x13d95974u, 0x15c01c69u, 0x17bf5641u, 0x19c1f7c7u,
      0x1bc5884du, 0x1dc7f636u, 0x1fc50599u, 0x21c02ad9u, 0x23bb4542u, 0x25a49abbu,
      0x27d150f0u, 0x29caed11u, 0x2bc9170eu, 0x2dce7566u, 0x2fc3991fu, 0x31c5e3bdu,
      0x33df4014u, 0x35cfef40u, 0x37d47932u, 0x39cf43edu, 0x3bd6c68bu, 0x5d17b830u,
      0x5f15014bu, 0x6112f957u, 0x6301cab4u, 0x650c67e1u, 0x670c72e3u, 0x69028e25u,
      0x6b1c1c44u, 0x6d046938u, 0x6ef9cdc3u, 0x70ee0fdfu, 0x730cbe6au, 0x751e7689u,
      0x76e04e5du, 0x791dd96fu, 0x7b55380eu, 0x7d2cc3f8u, 0x7f3767deu};
  for (size_t j = 0; j < sizeof(in_margin) / sizeof(in_margin[0]); j++) {
    check_float(float_from_bits(in_margin[j]), &differs);
    check_float(-float_from_bits(in_margin[j]), &differs);
  }
  ck_assert_int_eq(differs, 0);
}
END_TEST

START_TEST(request_should_write_the_reference_bytes_for_hard_doubles) {
  long differs = 0;
  /* Random bit patterns, infinities and NaNs included (glibc and strtod
   * for one in eight: printf is slowest at the large exponents most of
   * these have). */
  for (long i = 0; i < 2000000; i++) {
    double v = double_from_bits(next_u64());
    if (isfinite(v) && i % 8 == 0) check_double(v, &differs);
    else if (isfinite(v)) (void)fmt(v, CIRCLE_DTYPE_FLOAT64);
    else if (strcmp(fmt(v, CIRCLE_DTYPE_FLOAT64), "null") != 0)
      ck_abort_msg("%a is not null", v);
  }
  /* Powers of ten and the decade thresholds (10^17 - 1/2) 10^(k-16), 16
   * doubles either side. */
  for (int k = -300; k <= 300; k++) {
    char s[48];
    snprintf(s, sizeof(s), "1e%d", k);
    check_double_around(strtod(s, NULL), 16, &differs);
    snprintf(s, sizeof(s), "99999999999999995e%d", k - 17);
    check_double_around(strtod(s, NULL), 16, &differs);
  }
  /* Powers of two (subnormals included) and where the writer hands over
   * to snprintf. */
  for (int e = -1074; e <= 1023; e++) check_double_around(ldexp(1, e), 2, &differs);
  check_double_around(1e-280, 64, &differs);
  check_double_around(1e280, 64, &differs);
  ck_assert_int_eq(differs, 0);
  /* Exact ties: m 2^-q with m 5^q of 18 digits (m odd, below 2^53). */
  long ties = 0;
  for (int q = 1; q <= 26; q++)
    for (int i = 0; i < 2000; i++) {
      uint64_t m = random_tie_significand(q, 18, 53);
      if (m == 0) break;
      double v = ldexp((double)m, -q); /* exact: m < 2^53 */
      check_double(v, &differs);
      check_double(-v, &differs);
      ties++;
    }
  ck_assert_int_gt(ties, 20000);
  ck_assert_int_eq(differs, 0);
}
END_TEST

START_TEST(request_should_round_doubles_to_float_like_the_reference) {
  /* float32 writes the float nearest v: doubles that are not floats take
   * another path than those that are; fmt checks both against the
   * reference. */
  char a[CIRCLE_JSON_NUMBER_MAX + 1];
  for (long i = 0; i < 500000; i++) {
    double v = i % 4 ? ((double)(next_u64() >> 11) * 0x1p-53 - 0.5) *
                           pow(10, (double)(next_u64() % 80) - 45)
                     : double_from_bits(next_u64());
    snprintf(a, sizeof(a), "%s", fmt(v, CIRCLE_DTYPE_FLOAT32));
    if (strcmp(a, fmt((float)v, CIRCLE_DTYPE_FLOAT32)) != 0)
      ck_abort_msg("%a: %s, its float %s", v, a, fmt((float)v, CIRCLE_DTYPE_FLOAT32));
  }
}
END_TEST

START_TEST(request_should_time_the_formatter_against_snprintf) {
  /* Not asserted (timings vary with load and sanitizers); printed so the
   * figures are visible in the test log: the writer, the reference writer
   * it replaced, and glibc, per number of a gradient-like row. */
  enum { N = 200000 };
  double *v = malloc(N * sizeof(double));
  for (int i = 0; i < N; i++)
    v[i] = ((double)(next_u64() >> 11) * 0x1p-53 - 0.5) * 0.01;
  char buf[64];
  size_t total = 0;
  for (int dt = 0; dt < 2; dt++) {
    double ns[3];
    for (int w = 0; w < 3; w++) {
      struct timespec t0, t1;
      clock_gettime(CLOCK_MONOTONIC, &t0);
      for (int i = 0; i < N; i++) {
        double x = dt ? v[i] : (double)(float)v[i];
        if (w == 0) total += circle__json_number_write(buf, x, dt);
        else if (w == 1) total += ref_number_write(buf, x, dt);
        else total += (size_t)snprintf(buf, sizeof(buf), dt ? "%.17g" : "%.9g", x);
      }
      clock_gettime(CLOCK_MONOTONIC, &t1);
      ns[w] = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 +
               (double)(t1.tv_nsec - t0.tv_nsec)) / N;
    }
    fprintf(stderr,
            "%s: circle__json_number_write %.0f ns, reference (old) writer "
            "%.0f ns, snprintf %.0f ns\n",
            dt ? "float64" : "float32", ns[0], ns[1], ns[2]);
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
  ck_assert_int_eq(circle_error_set(&e, CIRCLE_ERR_LIMIT_EXCEEDED, "n=%d", 5), CIRCLE_EINVAL);
  ck_assert_int_eq(e.kind, CIRCLE_ERR_LIMIT_EXCEEDED);
  ck_assert_int_eq(circle_error_http(e.kind), 413);
  ck_assert_str_eq(circle_error_code(e.kind), "limit_exceeded");
  ck_assert_str_eq(e.message, "n=5");
  ck_assert_int_eq(circle_error_set(NULL, CIRCLE_ERR_WRONG_TYPE, "y"), CIRCLE_EINVAL);
  /* One code, two statuses: the row decides. */
  ck_assert_str_eq(circle_error_code(CIRCLE_ERR_TOO_DEEP), "limit_exceeded");
  ck_assert_int_eq(circle_error_http(CIRCLE_ERR_TOO_DEEP), 400);
  ck_assert_str_eq(circle_error_code(CIRCLE_ERR_UNSUPPORTED_ENCODING), "bad_encoding");
  ck_assert_int_eq(circle_error_http(CIRCLE_ERR_UNSUPPORTED_ENCODING), 415);
  ck_assert_int_eq(circle_error_http(CIRCLE_ERR_BAD_ENCODING), 400);
  /* An error never set, or a value outside the table, reads as internal. */
  circle_error z = {0};
  ck_assert_str_eq(circle_error_code(z.kind), "internal");
  ck_assert_int_eq(circle_error_http(z.kind), 500);
  ck_assert_int_eq(circle_error_grpc(z.kind), 13);
  ck_assert_str_eq(circle_error_code(CIRCLE_ERR_COUNT), "internal");
  ck_assert_int_eq(circle_error_http((circle_error_kind)-1), 500);
  /* Long messages are cut, not overflowed. */
  char big[2000];
  memset(big, 'm', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  circle_error_set(&e, CIRCLE_ERR_BAD_TAG, "%s", big);
  ck_assert_uint_eq(strlen(e.message), sizeof(e.message) - 1);
  ck_assert_str_eq(circle_error_code(e.kind), "bad_tag");
}
END_TEST

START_TEST(request_should_check_sizes_against_the_limits) {
  circle_limits lim;
  circle_limits_init(&lim);
  lim.max_n = 100;
  lim.max_m = 50;
  lim.max_d = 8;
  lim.max_pairs = 1000;
  circle_error e;
  memset(&e, 0, sizeof e);
  /* At every limit: accepted, *err untouched. */
  ck_assert_int_eq(circle__limits_check(&lim, 20, 50, true, 8, &e), 0);
  ck_assert_int_eq(circle__limits_check(&lim, 31, 0, false, 0, &e), 0);
  ck_assert_int_eq(e.kind, CIRCLE_ERR_NONE);
  ck_assert_int_eq(circle__limits_check(&lim, 101, 0, false, 1, &e), CIRCLE_EINVAL);
  ck_assert_int_eq(e.kind, CIRCLE_ERR_LIMIT_EXCEEDED);
  ck_assert_str_eq(e.message, "N = 101 exceeds this server's limit of 100");
  circle__limits_check(&lim, 1, 51, true, 1, &e);
  ck_assert_str_eq(e.message, "M = 51 exceeds this server's limit of 50");
  circle__limits_check(&lim, 1, 1, true, 9, &e);
  ck_assert_str_eq(e.message, "D = 9 exceeds this server's limit of 8");
  /* N x N without a reference set, N x M with one. */
  circle__limits_check(&lim, 32, 0, false, 1, &e);
  ck_assert_str_eq(e.message, "32 x 32 = 1024 pairs exceeds the work limit of "
                              "1000 pairs; send a smaller batch");
  circle__limits_check(&lim, 21, 50, true, 1, &e);
  ck_assert_str_eq(e.message, "21 x 50 = 1050 pairs exceeds the work limit of "
                              "1000 pairs; send a smaller batch");
  /* A product past uint64 is over any limit, never wrapped under it. */
  lim.max_n = lim.max_m = SIZE_MAX;
  lim.max_pairs = UINT64_MAX;
  ck_assert_int_eq(circle__limits_check(&lim, (uint64_t)1 << 32,
                                        ((uint64_t)1 << 32) + 1, true, 1, &e),
                   CIRCLE_EINVAL);
  ck_assert_int_eq(circle_error_http(e.kind), 413);
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
  tcase_add_test(tc, request_should_write_the_reference_bytes_for_random_float_bits);
  tcase_add_test(tc, request_should_write_the_reference_bytes_for_hard_floats);
  tcase_add_test(tc, request_should_write_the_reference_bytes_for_hard_doubles);
  tcase_add_test(tc, request_should_round_doubles_to_float_like_the_reference);
  tcase_add_test(tc, request_should_time_the_formatter_against_snprintf);
  tcase_add_test(tc, request_should_append_numbers_and_integers_to_a_buffer);
  tcase_add_test(tc, request_should_grow_printf_and_fail_cleanly);
  tcase_add_test(tc, request_should_write_strings_as_valid_json);
  tcase_add_test(tc, request_should_write_python_floats);
  tcase_add_test(tc, request_should_init_limits_requests_and_errors);
  tcase_add_test(tc, request_should_check_sizes_against_the_limits);
  tcase_add_test(tc, request_should_ignore_null_arguments);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
