/* request.c -- limits, the decoded request, client errors and the response
 * buffer with its JSON writers; every byte it emits is valid UTF-8 JSON.
 *
 * Numbers
 * -------
 * circle_buf_json_number is on the hot path of every response: a 65536 x 128
 * gradient is 8 million numbers, and glibc's "%.17g" costs about half a
 * microsecond each.  The contract is the round trip: strtof / strtod of what
 * is written gives back the same float / double, bit for bit.  We write the
 * 9 (float32) or 17 (float64) significant digits that "%.9g" / "%.17g"
 * would write, in the same layout, computed with double-double arithmetic:
 *
 *     v * 10^p  ~  hi + lo     (10^p held as a double-double, error ~1e-29)
 *     digits    =  round-half-even(hi + lo), an integer of 9 or 17 digits
 *
 * The product is off by ~1e-29 relative, far below what the round trip
 * needs: a correctly rounded 17-digit decimal is within 5e-17 (relative) of
 * v while half a double ulp is at least 5.55e-17; for 9 digits and float32
 * the gap is 5e-9 against 2.98e-8.  So even where the last digit differs
 * from glibc's (a product within 1e-29 of a rounding tie) the result still
 * round-trips.  Doubles outside [1e-280, 1e280) (where the double-double
 * table would underflow) go through snprintf; they are rare.
 *
 * The arithmetic uses plain IEEE double operations only (Dekker's split, no
 * fma, no long double), so it gives the same digits on every x86-64 and
 * aarch64 build and under valgrind.
 */
#include "request.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__FLT_EVAL_METHOD__) && __FLT_EVAL_METHOD__ != 0
#error "request.c needs FLT_EVAL_METHOD 0 (SSE2 doubles, not x87)"
#endif

/* ------------------------------------------------------------------------ */
/* Limits, requests, errors                                                 */
/* ------------------------------------------------------------------------ */

void circle_limits_init(circle_limits *lim) {
  if (lim == NULL) return;
  /* Defaults sized for a 2-core, few-GiB box: 65536 rows x 4096 dims of
   * float64 is 2 GiB of input, and 2^32 pairs is a few seconds of compute.
   * Depth 32 is four times what a valid request needs (3 for /v1, 4 for
   * nested OIP data of rank 2) and keeps any recursive walk shallow. */
  lim->max_n = 65536;
  lim->max_m = 65536;
  lim->max_d = 4096;
  lim->max_pairs = (uint64_t)1 << 32;
  lim->max_depth = 32;
  lim->max_inflated = (size_t)256 << 20;
}

void circle_request_init(circle_request *req) {
  if (req == NULL) return;
  memset(req, 0, sizeof(*req));
  circle_config_init(&req->cfg);
  snprintf(req->name, sizeof(req->name), "%s", "circle");
}

void circle_request_free(circle_request *req) {
  if (req == NULL) return;
  free(req->labels);
  free(req->ref_labels);
  free(req->x);
  free(req->r);
  free(req->sw);
  circle_request_init(req);
}

int circle_error_set(circle_error *err, int http_status, const char *code,
                     const char *fmt, ...) {
  if (err == NULL) return CIRCLE_EINVAL;
  err->http_status = http_status;
  snprintf(err->code, sizeof(err->code), "%s", code ? code : "internal");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof(err->message), fmt, ap);
  va_end(ap);
  return CIRCLE_EINVAL;
}

/* ------------------------------------------------------------------------ */
/* Buffer                                                                   */
/* ------------------------------------------------------------------------ */

void circle_buf_init(circle_buf *b) {
  if (b) memset(b, 0, sizeof(*b));
}

void circle_buf_free(circle_buf *b) {
  if (b == NULL) return;
  free(b->data);
  circle_buf_init(b);
}

bool circle_buf_reserve(circle_buf *b, size_t extra) {
  if (b == NULL || b->failed) return false;
  /* One spare byte so data is always NUL-terminated for debugging and for
   * callers that hand it to string functions. */
  if (extra > SIZE_MAX - b->len - 1) {
    b->failed = true;
    return false;
  }
  size_t need = b->len + extra + 1;
  if (need <= b->cap) return true;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  char *p = realloc(b->data, cap);
  if (p == NULL) {
    b->failed = true;
    return false;
  }
  b->data = p;
  b->cap = cap;
  return true;
}

void circle_buf_append(circle_buf *b, const void *p, size_t len) {
  if (p == NULL && len) return;
  if (!circle_buf_reserve(b, len)) return;
  if (len) memcpy(b->data + b->len, p, len);
  b->len += len;
  b->data[b->len] = '\0';
}

void circle_buf_puts(circle_buf *b, const char *s) {
  if (s) circle_buf_append(b, s, strlen(s));
}

void circle_buf_printf(circle_buf *b, const char *fmt, ...) {
  if (b == NULL || fmt == NULL || b->failed) return;
  va_list ap;
  va_start(ap, fmt);
  char small[256];
  int n = vsnprintf(small, sizeof(small), fmt, ap);
  va_end(ap);
  if (n < 0) {
    b->failed = true;
    return;
  }
  if ((size_t)n < sizeof(small)) {
    circle_buf_append(b, small, (size_t)n);
    return;
  }
  if (!circle_buf_reserve(b, (size_t)n)) return;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

/* Length of the valid UTF-8 sequence at s (at most avail bytes), or 0 when
 * the bytes there are not valid UTF-8 (overlongs, surrogates and code points
 * above U+10FFFF included). */
static size_t utf8_seq_len(const unsigned char *s, size_t avail) {
  unsigned c = s[0];
  size_t n;
  unsigned min;
  unsigned cp;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) { n = 2; min = 0x80; cp = c & 0x1f; }
  else if (c >= 0xe0 && c <= 0xef) { n = 3; min = 0x800; cp = c & 0x0f; }
  else if (c >= 0xf0 && c <= 0xf4) { n = 4; min = 0x10000; cp = c & 0x07; }
  else return 0;
  if (avail < n) return 0;
  for (size_t i = 1; i < n; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

void circle_buf_json_string(circle_buf *b, const char *s) {
  static const char hex[] = "0123456789abcdef";
  if (b == NULL) return;
  if (s == NULL) {
    circle_buf_puts(b, "null");
    return;
  }
  size_t len = strlen(s);
  /* Worst case: every byte becomes \u00XX or \ufffd (6 bytes). */
  if (len > (SIZE_MAX - 2) / 6 || !circle_buf_reserve(b, len * 6 + 2)) {
    b->failed = true;
    return;
  }
  char *o = b->data + b->len;
  const unsigned char *p = (const unsigned char *)s;
  *o++ = '"';
  while (*p) {
    unsigned c = *p;
    if (c == '"' || c == '\\') {
      *o++ = '\\';
      *o++ = (char)c;
      p++;
    } else if (c < 0x20) {
      *o++ = '\\';
      switch (c) {
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        default:
          *o++ = 'u'; *o++ = '0'; *o++ = '0';
          *o++ = hex[c >> 4]; *o++ = hex[c & 15];
      }
      p++;
    } else if (c < 0x80) {
      *o++ = (char)c;
      p++;
    } else {
      size_t n = utf8_seq_len(p, (size_t)((const unsigned char *)s + len - p));
      if (n == 0) {
        /* Not UTF-8: the replacement character keeps the output valid. */
        memcpy(o, "\\ufffd", 6);
        o += 6;
        p++;
      } else {
        memcpy(o, p, n);
        o += n;
        p += n;
      }
    }
  }
  *o++ = '"';
  b->len = (size_t)(o - b->data);
  b->data[b->len] = '\0';
}

bool circle__utf8_valid(const char *s) {
  if (s == NULL) return false;
  const unsigned char *p = (const unsigned char *)s;
  const unsigned char *end = p + strlen(s);
  while (p < end) {
    size_t n = utf8_seq_len(p, (size_t)(end - p));
    if (n == 0) return false;
    p += n;
  }
  return true;
}

/* ------------------------------------------------------------------------ */
/* Double-double arithmetic for the number formatter                        */
/* ------------------------------------------------------------------------ */

typedef struct {
  double hi, lo;
} dd;

/* Dekker's split: a == hi + lo with hi, lo of 26 significant bits. */
static inline void split(double a, double *hi, double *lo) {
  double c = 134217729.0 * a; /* 2^27 + 1 */
  *hi = c - (c - a);
  *lo = a - *hi;
}

/* a * b == p + e exactly (Dekker / Veltkamp). */
static inline void two_prod(double a, double b, double *p, double *e) {
  double ah, al, bh, bl;
  *p = a * b;
  split(a, &ah, &al);
  split(b, &bh, &bl);
  *e = ((ah * bh - *p) + ah * bl + al * bh) + al * bl;
}

static inline dd quick_two_sum(double a, double b) {
  dd r;
  r.hi = a + b;
  r.lo = b - (r.hi - a);
  return r;
}

static inline dd dd_mul_d(dd a, double b) {
  double p, e;
  two_prod(a.hi, b, &p, &e);
  e += a.lo * b;
  return quick_two_sum(p, e);
}

static inline dd dd_div_d(dd a, double b) {
  double q1 = a.hi / b;
  double p, e;
  two_prod(q1, b, &p, &e);
  double r = ((a.hi - p) - e) + a.lo;
  return quick_two_sum(q1, r / b);
}

/* 10^p as a double-double for p in [-POW10_MAX, POW10_MAX]. */
#define POW10_MAX 300
static dd pow10_tab[2 * POW10_MAX + 1];
/* Dekker halves of each pow10_tab[].hi, so the hot product splits one
 * operand instead of two. */
static double pow10_split[2 * POW10_MAX + 1][2];
static pthread_once_t pow10_once = PTHREAD_ONCE_INIT;

static void pow10_build(void) {
  dd one = {1.0, 0.0};
  pow10_tab[POW10_MAX] = one;
  for (int i = 1; i <= POW10_MAX; i++) {
    pow10_tab[POW10_MAX + i] = dd_mul_d(pow10_tab[POW10_MAX + i - 1], 10.0);
    pow10_tab[POW10_MAX - i] = dd_div_d(pow10_tab[POW10_MAX - i + 1], 10.0);
  }
  for (int i = 0; i < 2 * POW10_MAX + 1; i++)
    split(pow10_tab[i].hi, &pow10_split[i][0], &pow10_split[i][1]);
}

/* pow10_tab[i] * b, as dd_mul_d, with the table's split precomputed. */
static inline dd pow10_mul(int i, double b) {
  double bh, bl;
  split(b, &bh, &bl);
  double ah = pow10_split[i][0], al = pow10_split[i][1];
  double p = pow10_tab[i].hi * b;
  double e = ((ah * bh - p) + ah * bl + al * bh) + al * bl;
  e += pow10_tab[i].lo * b;
  return quick_two_sum(p, e);
}

static const uint64_t pow10_u64[] = {
    1ull, 10ull, 100ull, 1000ull, 10000ull, 100000ull, 1000000ull,
    10000000ull, 100000000ull, 1000000000ull, 10000000000ull,
    100000000000ull, 1000000000000ull, 10000000000000ull,
    100000000000000ull, 1000000000000000ull, 10000000000000000ull,
    100000000000000000ull};

/* round-half-even(a.hi + a.lo) for 0 < a < 2^62 (|a.lo| <= ulp(a.hi)/2,
 * which may be 8 or more when a.hi > 2^53). */
static inline uint64_t dd_round(dd a) {
  double r = (double)(uint64_t)a.hi; /* floor: a.hi > 0 */
  double d = (a.hi - r) + a.lo; /* a.hi - r is exact; d is small */
  int64_t id = (int64_t)d;          /* truncation ... */
  if ((double)id > d) id--;         /* ... made floor */
  double f = d - (double)id;        /* exact: in [0, 1) */
  uint64_t u = (uint64_t)r + (uint64_t)id;
  if (f > 0.5 || (f == 0.5 && (u & 1))) u++;
  return u;
}

/* ------------------------------------------------------------------------ */
/* Number formatting                                                        */
/* ------------------------------------------------------------------------ */

static const char digit_pairs[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* Writes the n decimal digits of u (u < 10^n <= 10^9, leading zeros kept),
 * in 32-bit arithmetic. */
static inline void write_digits32(char *dst, uint32_t u, int n) {
  int i = n;
  while (i >= 2) {
    uint32_t q = u % 100;
    u /= 100;
    memcpy(dst + i - 2, digit_pairs + 2 * q, 2);
    i -= 2;
  }
  if (i == 1) dst[0] = (char)('0' + u % 10);
}

/* Writes the prec decimal digits of u (u < 10^prec, leading zeros kept).
 * Splitting at 10^8 keeps the dependent divisions 32-bit and short. */
static inline void write_digits(char *dst, uint64_t u, int prec) {
  if (prec <= 9) {
    write_digits32(dst, (uint32_t)u, prec);
    return;
  }
  write_digits32(dst, (uint32_t)(u / 100000000u), prec - 8);
  write_digits32(dst + prec - 8, (uint32_t)(u % 100000000u), 8);
}

/* Lays out nd significant digits dig[] with decimal exponent x the way
 * printf's %g does for precision prec (trailing zeros already removed). */
static size_t layout_g(char *o, bool neg, const char *dig, int nd, int x,
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
    *o++ = digit_pairs[2 * ax];
    *o++ = digit_pairs[2 * ax + 1];
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
static size_t fmt_fast(char *o, double v, int prec) {
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
  uint64_t lo_bound = pow10_u64[prec - 1], hi_bound = pow10_u64[prec];
  uint64_t u = 0;
  int tries;
  for (tries = 0; tries < 8; tries++) {
    int p = prec - 1 - k;
    if (p < -POW10_MAX || p > POW10_MAX) return 0;
    u = dd_round(pow10_mul(POW10_MAX + p, a));
    if (u >= hi_bound) k++;
    else if (u < lo_bound) k--;
    else break;
  }
  if (tries == 8) return 0;
  char dig[20];
  write_digits(dig, u, prec);
  int nd = prec;
  while (nd > 1 && dig[nd - 1] == '0') nd--;
  return layout_g(o, neg, dig, nd, k, prec);
}

size_t circle__json_number_write(char *dst, double v, circle_dtype dtype) {
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
  pthread_once(&pow10_once, pow10_build);
  int prec = dtype == CIRCLE_DTYPE_FLOAT32 ? 9 : 17;
  double a = fabs(v);
  if (prec == 9 || (a >= 1e-280 && a < 1e280)) {
    size_t n = fmt_fast(dst, v, prec);
    if (n) return n;
  }
  char tmp[CIRCLE_JSON_NUMBER_MAX + 1];
  int n = snprintf(tmp, sizeof(tmp), "%.*g", prec, v);
  memcpy(dst, tmp, (size_t)n);
  return (size_t)n;
}

void circle_buf_json_number(circle_buf *b, double v, circle_dtype dtype) {
  if (!circle_buf_reserve(b, CIRCLE_JSON_NUMBER_MAX)) return; /* b NULL too */
  b->len += circle__json_number_write(b->data + b->len, v, dtype);
  b->data[b->len] = '\0';
}

void circle_buf_json_uint(circle_buf *b, uint64_t v) {
  char tmp[24];
  int i = (int)sizeof(tmp);
  do {
    tmp[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  circle_buf_append(b, tmp + i, sizeof(tmp) - (size_t)i);
}

/* Python's repr(float): the shortest digits that round-trip as a double,
 * in fixed notation for 1e-4 <= |v| < 1e16 (with ".0" when integral) and
 * scientific otherwise ("1e-05", "1.5e+16"). */
void circle_buf_python_float(circle_buf *b, double v) {
  if (b == NULL) return;
  if (!isfinite(v)) {
    /* Python's json module writes these; they are not JSON. Validated
     * configs never get here. */
    circle_buf_puts(b, isnan(v) ? "NaN" : (v > 0 ? "Infinity" : "-Infinity"));
    return;
  }
  if (v == 0) {
    circle_buf_puts(b, signbit(v) ? "-0.0" : "0.0");
    return;
  }
  char tmp[40];
  int prec;
  for (prec = 1; prec < 17; prec++) {
    snprintf(tmp, sizeof(tmp), "%.*e", prec - 1, v);
    if (strtod(tmp, NULL) == v) break;
  }
  snprintf(tmp, sizeof(tmp), "%.*e", prec - 1, v);
  /* tmp is [-]d[.ddd]e[+-]xx: collect the digits and the exponent. */
  bool neg = tmp[0] == '-';
  const char *p = tmp + neg;
  char dig[20];
  int nd = 0;
  for (; *p != 'e'; p++)
    if (*p != '.') dig[nd++] = *p;
  int x = atoi(p + 1);
  while (nd > 1 && dig[nd - 1] == '0') nd--;
  char out[48];
  size_t n;
  if (x < -4 || x >= 16) {
    char *o = out;
    if (neg) *o++ = '-';
    *o++ = dig[0];
    if (nd > 1) {
      *o++ = '.';
      memcpy(o, dig + 1, (size_t)(nd - 1));
      o += nd - 1;
    }
    o += snprintf(o, 8, "e%c%02d", x < 0 ? '-' : '+', x < 0 ? -x : x);
    n = (size_t)(o - out);
  } else {
    n = layout_g(out, neg, dig, nd, x, 17);
    if (memchr(out, '.', n) == NULL) {
      out[n++] = '.';
      out[n++] = '0';
    }
  }
  circle_buf_append(b, out, n);
}
