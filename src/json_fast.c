/* json_fast.c -- fast path of the /v1 codec for big numeric arrays. Must keep
 * true: every number it returns is bit for bit what strtod returns for the
 * same text (so the request is the one the cJSON path would build), and it
 * gives up -- never guesses -- on anything but plain rectangular arrays of
 * finite numbers, leaving every error message to the cJSON path.
 *
 * Why: through cJSON a number costs a node allocation, a locale query, a
 * copy and glibc's strtod (whose exact path for 17-digit numbers, what
 * Python's json.dumps writes for float32 data, is the slowest); about 1 us a
 * number in all. Here a number is scanned once and converted by
 *
 *   1. Clinger's fast path: up to 15-16 significant digits (mantissa <=
 *      2^53) and a power of ten 10^-22..10^22 are both exact doubles, so one
 *      IEEE multiply or divide gives the correctly rounded result;
 *   2. otherwise the Eisel-Lemire algorithm (as in Go's strconv and
 *      fast_float): the 64-bit mantissa times a 128-bit truncated power of
 *      ten; it reports the rare inputs it cannot round with certainty;
 *   3. those, numbers with more than 19 significant digits and anything
 *      outside the table go to strtod.
 *
 * The 128-bit powers of ten (10^-348 .. 10^347, rounded down) are computed
 * once, exactly, with a small big-integer routine, at first use.
 */
#include "json_fast.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

bool circle__json_fast_enabled = true;

/* Longest number the codecs accept (codec_util.c's pre-scan says the same). */
#define NUMBER_MAX 63
/* Exponents of the 128-bit table. */
#define POW_MIN (-348)
#define POW_MAX 347

/* ======================================================================== */
/* Powers of ten                                                            */
/* ======================================================================== */

static uint64_t pow10_hi[POW_MAX - POW_MIN + 1];
static uint64_t pow10_lo[POW_MAX - POW_MIN + 1];
static pthread_once_t pow10_once = PTHREAD_ONCE_INIT;

/* Little-endian base-2^32 integers big enough for 2^(bitlen(10^348) + 128). */
#define LIMBS 48
typedef struct {
  uint32_t w[LIMBS];
  int n; /* limbs in use; w[n-1] != 0 unless the value is 0 */
} big;

static void big_mul_small(big *a, uint32_t m) {
  uint64_t carry = 0;
  for (int i = 0; i < a->n; i++) {
    uint64_t t = (uint64_t)a->w[i] * m + carry;
    a->w[i] = (uint32_t)t;
    carry = t >> 32;
  }
  if (carry) a->w[a->n++] = (uint32_t)carry;
}

static void big_div_small(big *a, uint32_t q) {
  uint64_t rem = 0;
  for (int i = a->n - 1; i >= 0; i--) {
    uint64_t cur = (rem << 32) | a->w[i];
    a->w[i] = (uint32_t)(cur / q);
    rem = cur % q;
  }
  while (a->n > 0 && a->w[a->n - 1] == 0) a->n--;
}

static int big_bitlen(const big *a) {
  if (a->n == 0) return 0;
  return 32 * (a->n - 1) + (32 - __builtin_clz(a->w[a->n - 1]));
}

/* Bits [lo, lo + 64) of a. */
static uint64_t big_bits64(const big *a, int lo) {
  uint64_t r = 0;
  for (int k = 0; k < 64; k++) {
    int b = lo + k;
    if (b < 0 || b / 32 >= a->n) continue;
    if (a->w[b / 32] >> (b % 32) & 1u) r |= (uint64_t)1 << k;
  }
  return r;
}

/* The top 128 bits of a (floor), with a zero-extended when shorter. */
static void big_top128(const big *a, uint64_t *hi, uint64_t *lo) {
  int lead = big_bitlen(a) - 128; /* lowest bit kept; may be negative */
  *hi = big_bits64(a, lead + 64);
  *lo = big_bits64(a, lead);
}

static void pow10_build(void) {
  static big p;           /* 10^e, e = 0, 1, ... */
  static big two_k;
  memset(&p, 0, sizeof p);
  p.w[0] = 1;
  p.n = 1;
  for (int e = 0; e <= -POW_MIN; e++) {
    int l = big_bitlen(&p);
    if (e <= POW_MAX) big_top128(&p, &pow10_hi[e - POW_MIN], &pow10_lo[e - POW_MIN]);
    if (e > 0) {
      /* 10^-e: floor(2^(l + 127) / 10^e), in [2^127, 2^128) because 10^e
       * is not a power of two. Floors nest, so divide by 10^9 at a time. */
      memset(&two_k, 0, sizeof two_k);
      int k = l + 127;
      two_k.w[k / 32] = 1u << (k % 32);
      two_k.n = k / 32 + 1;
      int left = e;
      for (; left >= 9; left -= 9) big_div_small(&two_k, 1000000000u);
      uint32_t rest = 1;
      while (left-- > 0) rest *= 10;
      if (rest > 1) big_div_small(&two_k, rest);
      big_top128(&two_k, &pow10_hi[-e - POW_MIN], &pow10_lo[-e - POW_MIN]);
    }
    big_mul_small(&p, 10);
  }
}

bool circle__json_fast_pow10(int e, uint64_t *hi, uint64_t *lo) {
  if (e < POW_MIN || e > POW_MAX) return false;
  pthread_once(&pow10_once, pow10_build);
  *hi = pow10_hi[e - POW_MIN];
  *lo = pow10_lo[e - POW_MIN];
  return true;
}

/* ======================================================================== */
/* Conversion                                                               */
/* ======================================================================== */

static const double exact_pow10[23] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Eisel-Lemire for man * 10^exp10 (man exact, at most 19 digits). False when
 * the result cannot be rounded with certainty or falls outside the normal
 * double range; the caller then asks strtod. After Go's strconv
 * (eisel_lemire.go) and https://nigeltao.github.io/blog/2020/eisel-lemire.html */
static bool eisel_lemire(uint64_t man, int exp10, bool neg, double *out) {
  if (exp10 < POW_MIN || exp10 > POW_MAX) return false;
  int clz = __builtin_clzll(man);
  man <<= clz;
  int64_t prod = (int64_t)217706 * exp10; /* floor(exp10 * log2(10) * 2^16) */
  int64_t fl = prod >= 0 ? prod >> 16 : -((-prod + 65535) >> 16);
  uint64_t ret_exp2 = (uint64_t)(fl + 64 + 1023) - (uint64_t)clz;
  const int idx = exp10 - POW_MIN;
  unsigned __int128 x = (unsigned __int128)man * pow10_hi[idx];
  uint64_t x_hi = (uint64_t)(x >> 64), x_lo = (uint64_t)x;
  if ((x_hi & 0x1FF) == 0x1FF && x_lo + man < man) {
    unsigned __int128 y = (unsigned __int128)man * pow10_lo[idx];
    uint64_t y_hi = (uint64_t)(y >> 64), y_lo = (uint64_t)y;
    uint64_t merged_hi = x_hi, merged_lo = x_lo + y_hi;
    if (merged_lo < x_lo) merged_hi++;
    if ((merged_hi & 0x1FF) == 0x1FF && merged_lo + 1 == 0 && y_lo + man < man)
      return false;
    x_hi = merged_hi;
    x_lo = merged_lo;
  }
  uint64_t msb = x_hi >> 63;
  uint64_t ret_man = x_hi >> (msb + 9);
  ret_exp2 -= 1 ^ msb;
  if (x_lo == 0 && (x_hi & 0x1FF) == 0 && (ret_man & 3) == 1) return false;
  ret_man += ret_man & 1;
  ret_man >>= 1;
  if (ret_man >> 53 > 0) {
    ret_man >>= 1;
    ret_exp2 += 1;
  }
  if (ret_exp2 - 1 >= 0x7FF - 1) return false; /* subnormal, inf: strtod */
  uint64_t bits = ret_exp2 << 52 | (ret_man & 0x000FFFFFFFFFFFFFull);
  if (neg) bits |= 0x8000000000000000ull;
  memcpy(out, &bits, sizeof bits);
  return true;
}

static inline bool is_digit(char c) { return c >= '0' && c <= '9'; }

size_t circle__json_fast_number(const char *p, const char *end, double *out) {
  const char *s = p;
  bool neg = false;
  if (p < end && *p == '-') {
    neg = true;
    p++;
  }
  if (p >= end || !is_digit(*p)) return 0;
  uint64_t man = 0;
  int nd = 0;        /* significant digits in man */
  int64_t exp10 = 0; /* value = man * 10^exp10 (before the exponent part) */
  bool truncated = false;
  if (*p == '0') {
    p++;
  } else {
    for (; p < end && is_digit(*p); p++) {
      if (nd < 19) {
        man = man * 10 + (uint64_t)(*p - '0');
        nd += man != 0;
      } else {
        truncated |= *p != '0';
        exp10++;
      }
    }
  }
  if (p < end && *p == '.') {
    p++;
    if (p >= end || !is_digit(*p)) return 0;
    for (; p < end && is_digit(*p); p++) {
      if (nd < 19) {
        man = man * 10 + (uint64_t)(*p - '0');
        nd += man != 0;
        exp10--;
      } else {
        truncated |= *p != '0';
      }
    }
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    p++;
    bool eneg = false;
    if (p < end && (*p == '+' || *p == '-')) eneg = *p++ == '-';
    if (p >= end || !is_digit(*p)) return 0;
    int64_t e = 0;
    for (; p < end && is_digit(*p); p++)
      if (e < 100000) e = e * 10 + (*p - '0');
    exp10 += eneg ? -e : e;
  }
  size_t span = (size_t)(p - s);
  if (span > NUMBER_MAX) return 0;
  if (man == 0 && !truncated) {
    *out = neg ? -0.0 : 0.0;
    return span;
  }
  if (!truncated && man <= ((uint64_t)1 << 53) && exp10 >= -22 && exp10 <= 22) {
    double v = (double)man;
    v = exp10 < 0 ? v / exact_pow10[-exp10] : v * exact_pow10[exp10];
    *out = neg ? -v : v;
    return span;
  }
  pthread_once(&pow10_once, pow10_build);
  if (!truncated && exp10 >= POW_MIN && exp10 <= POW_MAX &&
      eisel_lemire(man, (int)exp10, neg, out))
    return span;
  char tmp[NUMBER_MAX + 1];
  memcpy(tmp, s, span);
  tmp[span] = '\0';
  *out = strtod(tmp, NULL);
  return span;
}

/* ======================================================================== */
/* The body                                                                 */
/* ======================================================================== */

static inline size_t skip_ws(const char *b, size_t len, size_t p) {
  while (p < len && (b[p] == ' ' || b[p] == '\t' || b[p] == '\n' || b[p] == '\r'))
    p++;
  return p;
}

/* After an element of a list closed by `close`: skips blanks and a comma
 * (returns 1, *p at the next element) or the closing bracket (returns 0,
 * *p past it); -1 for anything else. */
static int next_item(const char *b, size_t len, size_t *p, char close) {
  size_t q = skip_ws(b, len, *p);
  if (q < len && b[q] == ',') {
    *p = skip_ws(b, len, q + 1);
    return 1;
  }
  if (q < len && b[q] == close) {
    *p = q + 1;
    return 0;
  }
  return -1;
}

/* Reads [[n, ...], ...] at *pos into m. */
static bool read_matrix(const char *b, size_t len, size_t *pos, size_t max_rows,
                        size_t max_d, circle__json_fast_matrix *m) {
  size_t p = *pos;
  const char *end = b + len;
  if (p >= len || b[p] != '[') return false;
  p = skip_ws(b, len, p + 1);
  size_t rows = 0, d = 0, count = 0, cap = 0;
  double *v = NULL;
  for (;;) {
    if (p >= len || b[p] != '[') goto fail;
    p = skip_ws(b, len, p + 1);
    size_t in_row = 0;
    for (;;) {
      double x;
      size_t used = circle__json_fast_number(b + p, end, &x);
      if (used == 0 || !isfinite(x)) goto fail;
      p += used;
      if (count == cap) {
        size_t ncap = cap ? 2 * cap : 4096;
        if (ncap > SIZE_MAX / sizeof *v) goto fail;
        double *nv = realloc(v, ncap * sizeof *v);
        if (nv == NULL) goto fail;
        v = nv;
        cap = ncap;
      }
      v[count++] = x;
      in_row++;
      if (rows == 0 && in_row > max_d) goto fail;
      if (rows > 0 && in_row > d) goto fail;
      int more = next_item(b, len, &p, ']');
      if (more < 0) goto fail;
      if (!more) break;
    }
    if (rows == 0) d = in_row;
    else if (in_row != d) goto fail;
    if (++rows > max_rows) goto fail;
    int more = next_item(b, len, &p, ']');
    if (more < 0) goto fail;
    if (!more) break;
  }
  m->found = true;
  m->begin = *pos;
  m->end = p;
  m->rows = rows;
  m->d = d;
  m->v = v;
  *pos = p;
  return true;
fail:
  free(v);
  return false;
}

/* Skips one JSON value at *pos (string, number, literal, array, object)
 * without converting it; brackets must match and nest at most max_depth
 * deep (counting the enclosing object). Not a validator: cJSON checks the
 * text again; this only has to find where a valid value ends. */
static bool skip_value(const char *b, size_t len, size_t *pos, size_t max_depth) {
  char stack[64];
  size_t depth = 0, p = *pos;
  if (max_depth > sizeof stack) max_depth = sizeof stack;
  do {
    if (p >= len) return false;
    char c = b[p];
    if (c == '"') {
      for (p++;; p++) {
        if (p >= len || (unsigned char)b[p] < 0x20) return false;
        if (b[p] == '\\') {
          p++;
          continue;
        }
        if (b[p] == '"') break;
      }
      p++;
    } else if (c == '[' || c == '{') {
      if (depth + 1 >= max_depth) return false; /* + the top-level object */
      stack[depth++] = c == '[' ? ']' : '}';
      p++;
    } else if (c == ']' || c == '}') {
      if (depth == 0 || stack[depth - 1] != c) return false;
      depth--;
      p++;
    } else if (c == '-' || is_digit(c)) {
      double x;
      size_t used = circle__json_fast_number(b + p, b + len, &x);
      if (used == 0) return false;
      p += used;
    } else if (len - p >= 4 && (!memcmp(b + p, "true", 4) || !memcmp(b + p, "null", 4))) {
      p += 4;
    } else if (len - p >= 5 && !memcmp(b + p, "false", 5)) {
      p += 5;
    } else if (depth > 0 && (c == ',' || c == ':' || c == ' ' || c == '\t' ||
                             c == '\n' || c == '\r')) {
      p++;
    } else {
      return false;
    }
  } while (depth > 0);
  *pos = p;
  return true;
}

void circle__json_fast_body_free(circle__json_fast_body *fb) {
  if (fb == NULL) return;
  free(fb->emb.v);
  free(fb->ref.v);
  free(fb->copy);
  memset(fb, 0, sizeof *fb);
}

bool circle__json_fast_body_read(const char *body, size_t len, size_t max_depth,
                                 size_t max_rows, size_t max_ref_rows,
                                 size_t max_d, circle__json_fast_body *fb) {
  memset(fb, 0, sizeof *fb);
  /* The matrices cut from the copy lose two levels of nesting: keep the
   * depth limit the cJSON path would apply to them. */
  if (!circle__json_fast_enabled || body == NULL || max_depth < 3) return false;
  size_t p = skip_ws(body, len, 0);
  if (p >= len || body[p] != '{') return false;
  p = skip_ws(body, len, p + 1);
  if (p < len && body[p] == '}') return false;
  for (;;) {
    if (p >= len || body[p] != '"') goto fail;
    size_t k0 = ++p;
    while (p < len && body[p] != '"') {
      if (body[p] == '\\' || (unsigned char)body[p] < 0x20) goto fail;
      p++;
    }
    if (p >= len) goto fail;
    size_t klen = p - k0;
    const char *key = body + k0;
    p = skip_ws(body, len, p + 1);
    if (p >= len || body[p] != ':') goto fail;
    p = skip_ws(body, len, p + 1);
    circle__json_fast_matrix *m = NULL;
    size_t rows_limit = 0;
    if (klen == 10 && !memcmp(key, "embeddings", 10)) {
      m = &fb->emb;
      rows_limit = max_rows;
    } else if (klen == 14 && !memcmp(key, "ref_embeddings", 14)) {
      m = &fb->ref;
      rows_limit = max_ref_rows;
    }
    if (m != NULL) {
      if (m->found) goto fail; /* a repeated key: the cJSON path says so */
      if (!read_matrix(body, len, &p, rows_limit, max_d, m)) goto fail;
    } else if (!skip_value(body, len, &p, max_depth)) {
      goto fail;
    }
    int more = next_item(body, len, &p, '}');
    if (more < 0) goto fail;
    if (!more) break;
  }
  if (skip_ws(body, len, p) != len || !fb->emb.found) goto fail;
  /* The copy: the body with each matrix cut down to []. */
  fb->copy = malloc(len + 1);
  if (fb->copy == NULL) goto fail;
  circle__json_fast_matrix *ms[2] = {&fb->emb, &fb->ref};
  if (fb->ref.found && fb->ref.begin < fb->emb.begin) {
    ms[0] = &fb->ref;
    ms[1] = &fb->emb;
  }
  size_t from = 0, o = 0;
  for (int i = 0; i < 2; i++) {
    if (!ms[i]->found) continue;
    memcpy(fb->copy + o, body + from, ms[i]->begin - from);
    o += ms[i]->begin - from;
    memcpy(fb->copy + o, "[]", 2);
    o += 2;
    from = ms[i]->end;
  }
  memcpy(fb->copy + o, body + from, len - from);
  o += len - from;
  fb->copy[o] = '\0';
  fb->copy_len = o;
  return true;
fail:
  circle__json_fast_body_free(fb);
  return false;
}
