/* json_fast.c -- fast path of the /v1 codec for big numeric arrays. Must keep
 * true: every number it returns is bit for bit what strtod returns for the
 * same text (so the request is the one the cJSON path would build), and it
 * gives up -- never guesses -- on anything but plain rectangular arrays of
 * numbers (it says where the first infinity is), leaving every error message
 * to the codec.
 *
 * Why: through cJSON a number costs a node allocation, a locale query, a
 * copy and glibc's strtod (whose exact path for 17-digit numbers, what
 * Python's json.dumps writes for float32 data, is the slowest); about 1 us a
 * number in all. Here a number costs about 20 ns:
 *
 *   text      "-0.03348967060446739, "   (most numbers in a matrix)
 *               |                   |
 *   scan      the usual way (SSE2): which of the 32 bytes from the number's
 *             start are digits; bit scans give the '.' and the end; 16
 *             digits at once by multiply-adds. Anything unusual (exponent,
 *             > 19 digits, near the end of the text): the general way, a
 *             loop reading digit runs 8 bytes at a time (SWAR), then bytes.
 *               |
 *   mantissa  man * 10^exp10, man exact in 64 bits (at most 19 digits)
 *               |
 *   convert   1. the Eisel-Lemire algorithm (as in Go's strconv and
 *                fast_float): man times a 128-bit truncated power of ten;
 *                it reports the rare inputs it cannot round with certainty;
 *             2. those, if man <= 2^53 and 10^exp10 is an exact double
 *                (|exp10| <= 22): Clinger's one IEEE multiply or divide;
 *             3. the rest, and numbers with more than 19 significant
 *                digits, go to strtod.
 *
 * The usual way also finds where a number ends before converting it, so the
 * matrix loop moves on to the next number while the processor is still
 * converting this one: the loop is bound by throughput, not by the latency
 * of one number after another.
 *
 * Nothing at or past the end of the text is ever read: the usual way only
 * runs where FAST_SLACK bytes remain, the general way checks each read.
 *
 * The 128-bit powers of ten (10^-348 .. 10^347, rounded down) are computed
 * once, exactly, with a small big-integer routine, when the program loads.
 */
#include "json_fast.h"

#include "codec_util.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

bool circle__json_fast_enabled = true;

/* Longest number the codecs accept (codec_util.c's pre-scan says the same). */
#define NUMBER_MAX 63
/* The usual way needs SSE2 and 64-bit registers; elsewhere (or built with
 * -DCIRCLE_JSON_FAST_PORTABLE, which the tests use to check that path too)
 * every number goes the general way. */
#if defined(__SSE2__) && defined(__x86_64__) && !defined(CIRCLE_JSON_FAST_PORTABLE)
#define USUAL_SSE2 1
#else
#define USUAL_SSE2 0
#endif
/* Exponents of the 128-bit table. */
#define POW_MIN (-348)
#define POW_MAX 347

/* ======================================================================== */
/* Powers of ten                                                            */
/* ======================================================================== */

static uint64_t pow10_hi[POW_MAX - POW_MIN + 1];
static uint64_t pow10_lo[POW_MAX - POW_MIN + 1];

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

/* The table is built when the program is loaded (as request.c builds its
 * number tables), so no lookup needs a once-check; nothing writes it
 * afterwards. */
static __attribute__((constructor)) void pow10_table_build(void) {
  pow10_build();
}

bool circle__json_fast_pow10(int e, uint64_t *hi, uint64_t *lo) {
  if (e < POW_MIN || e > POW_MAX) return false;
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

static const uint64_t pow10_u64[20] = {1u,
                                       10u,
                                       100u,
                                       1000u,
                                       10000u,
                                       100000u,
                                       1000000u,
                                       10000000u,
                                       100000000u,
                                       1000000000u,
                                       10000000000u,
                                       100000000000u,
                                       1000000000000u,
                                       10000000000000u,
                                       100000000000000u,
                                       1000000000000000u,
                                       10000000000000000u,
                                       100000000000000000u,
                                       1000000000000000000u,
                                       10000000000000000000u};

/* Eisel-Lemire for man * 10^exp10 (man exact and nonzero, at most 19
 * digits; exp10 within the table). False when the result cannot be rounded
 * with certainty or falls outside the normal double range; the caller then
 * asks Clinger or strtod. After Go's strconv (eisel_lemire.go) and
 * https://nigeltao.github.io/blog/2020/eisel-lemire.html */
static inline bool eisel_lemire(uint64_t man, int exp10, bool neg, double *out) {
  int clz = __builtin_clzll(man);
  man <<= clz;
  /* floor(exp10 * log2(10)): 217706 = log2(10) * 2^16, and GCC's >> of a
   * negative int is arithmetic, so a floor. */
  int32_t fl = (217706 * exp10) >> 16;
  uint64_t ret_exp2 = (uint64_t)(int64_t)(fl + 64 + 1023) - (uint64_t)clz;
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
  bits |= (uint64_t)neg << 63;
  memcpy(out, &bits, sizeof bits);
  return true;
}

/* man * 10^exp10 (negated when neg) when Eisel-Lemire cannot round it:
 * Clinger's exact case, else strtod on the text s[0, span). exact: man
 * holds every nonzero digit; when false (a nonzero digit past the 19th
 * significant one was dropped) only strtod can round. */
static __attribute__((noinline)) double to_double_slow(uint64_t man, int64_t exp10, bool neg,
                                                       bool exact, const char *s,
                                                       size_t span) {
  if (exact && man == 0) return neg ? -0.0 : 0.0;
  if (exact && man <= (uint64_t)1 << 53 && exp10 >= -22 && exp10 <= 22) {
    double v = (double)man;
    v = exp10 < 0 ? v / exact_pow10[-exp10] : v * exact_pow10[exp10];
    return neg ? -v : v;
  }
  char tmp[NUMBER_MAX + 1];
  memcpy(tmp, s, span);
  tmp[span] = '\0';
  return strtod(tmp, NULL);
}

/* The double strtod reads from the text s[0, span) of a number whose digits
 * make man * 10^exp10, negated when neg (exact: as to_double_slow). Eisel-
 * Lemire first even where Clinger's division would do: it rounds nearly
 * every input with no branch that depends on the digits, which keeps the
 * matrix loop predictable. */
static inline __attribute__((always_inline)) double to_double(uint64_t man, int64_t exp10,
                                                              bool neg, bool exact,
                                                              const char *s, size_t span) {
  double v;
  if (exact && man != 0 && exp10 >= POW_MIN && exp10 <= POW_MAX) {
    if (eisel_lemire(man, (int)exp10, neg, &v)) return v;
  }
  return to_double_slow(man, exp10, neg, exact, s, span);
}

/* ======================================================================== */
/* Digits                                                                   */
/* ======================================================================== */

static inline bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* Digit runs are read eight bytes at a time (SWAR, as in fast_float and
 * simdjson) where eight bytes remain before end: one test finds how many
 * of the eight are digits, three multiplies give their value. Within
 * eight bytes of end, one byte at a time: nothing at or past end is read. */

#define BYTES(b) (0x0101010101010101ull * (uint64_t)(b))

/* Eight bytes of text, the first in the lowest byte on any host. */
static inline uint64_t load8(const char *p) {
  uint64_t v;
  memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  return v;
}

/* How many of the bytes of v, counting from the first, are ASCII digits
 * (0-8): a byte is one when its high nibble is 3 and its low nibble at most
 * 9. Each test stays within its byte (no carries), so the lowest flagged
 * byte is the first non-digit. */
static inline int leading_digits8(uint64_t v) {
  uint64_t bad = ((v & BYTES(0xF0)) ^ BYTES(0x30)) |
                 (((v & BYTES(0x0F)) + BYTES(0x06)) & BYTES(0xF0));
  return bad ? __builtin_ctzll(bad) >> 3 : 8;
}

/* The value of eight digit values (0-9, '0' already taken off), the most
 * significant in the lowest byte: pairs, then fours, then all eight. */
static inline uint64_t value8(uint64_t v) {
  v = v * 10 + (v >> 8); /* byte 2i: 10 * digit 2i + digit 2i+1 */
  return ((v & 0x000000FF000000FFull) * 0x000F424000000064ull +
          ((v >> 16) & 0x000000FF000000FFull) * 0x0000271000000001ull) >> 32;
}

/* The value of the first k (0-8) of the digit values in v ('0' taken off;
 * the bytes after them may hold anything, a borrow from the subtraction
 * included): they are shifted up to be the last k of eight after zeros.
 * Two shifts, as one by 64 bits would be undefined. */
static inline uint64_t value_first8(uint64_t v, int k) {
  return value8(v << (32 - 4 * k) << (32 - 4 * k));
}

/* Reads the run of digits at p (stopping before end) into *man: *man times
 * 10 per digit plus the digit, modulo 2^64 -- exact while the whole number
 * has at most 19 digits, which the caller checks. Returns where the run
 * stops. */
static inline __attribute__((always_inline)) const char *scan_digits(const char *p,
                                                                     const char *end,
                                                                     uint64_t *man) {
  uint64_t m = *man;
  while (end - p >= 8) {
    uint64_t v = load8(p);
    int k = leading_digits8(v);
    m = m * pow10_u64[k] + value_first8(v - BYTES('0'), k);
    p += k;
    if (k < 8) goto done;
  }
  for (; p < end && is_digit(*p); p++) m = m * 10 + (uint64_t)(*p - '0');
done:
  *man = m;
  return p;
}

/* ======================================================================== */
/* Numbers, the general way                                                 */
/* ======================================================================== */

/* A number of more than 19 digits, rare enough to leave out of line: the
 * first 19 significant digits (leading zeros are not) make the mantissa,
 * and the value is converted as usual unless a dropped digit is not 0
 * (then strtod). The integer digits are [i0, i1), the fraction's [f0, f1);
 * exp10 is the exponent part's value. */
static __attribute__((noinline)) double long_number(const char *i0, const char *i1,
                                                    const char *f0, const char *f1,
                                                    int64_t exp10, bool neg, const char *s,
                                                    size_t span) {
  uint64_t m = 0;
  int nd = 0; /* significant digits in m */
  bool exact = true;
  for (const char *q = i0; q < i1; q++) {
    if (nd < 19) {
      m = m * 10 + (uint64_t)(*q - '0');
      nd += m != 0;
    } else {
      exact &= *q == '0';
      exp10++;
    }
  }
  for (const char *q = f0; q < f1; q++) {
    if (nd < 19) {
      m = m * 10 + (uint64_t)(*q - '0');
      nd += m != 0;
      exp10--;
    } else {
      exact &= *q == '0';
    }
  }
  return to_double(m, exp10, neg, exact, s, span);
}

/* Any JSON number at p, reading nothing at or past end: the contract of
 * circle__json_fast_number. */
static size_t parse_number(const char *p, const char *end, double *out) {
  const char *s = p;
  bool neg = p < end && *p == '-';
  p += neg;
  if (p >= end || !is_digit(*p)) return 0;
  uint64_t man = 0;
  /* The integer digits that count: none for a lone 0 (then the grammar
   * allows no more). */
  const char *i0 = p;
  if (*p == '0') i0 = ++p;
  else p = scan_digits(p, end, &man);
  const char *i1 = p, *f0 = p, *f1 = p;
  if (p < end && *p == '.') {
    f0 = ++p;
    p = f1 = scan_digits(p, end, &man);
    if (f1 == f0) return 0;
  }
  int64_t exp10 = 0;
  if (p < end && (*p | 0x20) == 'e') {
    p++;
    bool eneg = false;
    if (p < end && (*p == '+' || *p == '-')) eneg = *p++ == '-';
    if (p >= end || !is_digit(*p)) return 0;
    int64_t e = 0;
    for (; p < end && is_digit(*p); p++)
      if (e < 100000) e = e * 10 + (*p - '0');
    exp10 = eneg ? -e : e;
  }
  size_t span = (size_t)(p - s);
  if (span > NUMBER_MAX) return 0;
  if ((i1 - i0) + (f1 - f0) <= 19) /* then man holds them all, exactly */
    *out = to_double(man, exp10 - (f1 - f0), neg, true, s, span);
  else
    *out = long_number(i0, i1, f0, f1, exp10, neg, s, span);
  return span;
}

/* ======================================================================== */
/* Numbers, the usual way                                                   */
/* ======================================================================== */

/* Most numbers in a matrix are -?D+(.D+)? with at most 19 digits: Python's
 * repr of a float32 is -0. and 16 to 19 digits. Such a number is read from
 * the 32 bytes at its start without a loop or a branch on its digits: one
 * SSE2 compare says which of them are digits, and bit scans then find the
 * end of the integer digits (the '.' if there is one) and of the fraction
 * (L, the first non-digit after the '.'); the digit runs are converted at
 * once, sixteen digits by multiply-adds.
 *
 * Where the next number starts then depends on L alone, found in a few
 * cycles from the text, not on the conversion: the processor goes on to
 * the next number (the branches on the checks predicted) while this one
 * is still being converted. Anything else -- an exponent, a 20th digit,
 * a leading zero, no digit after the '.', fewer than FAST_SLACK bytes
 * left -- goes the general way, which gives the same result for the same
 * text. */
#if USUAL_SSE2
#include <emmintrin.h>

/* Bytes that must be readable from a number's start for the usual way: the
 * 32 it classifies, and 24 from where a digit run starts (by byte 21). */
#define FAST_SLACK 48

/* 5^-j modulo 2^64, j = 0..16: (x * 10^j >> j) * this is x, exactly. */
static const uint64_t inv_pow5[17] = {
    0x0000000000000001ull, 0xcccccccccccccccdull, 0x8f5c28f5c28f5c29ull,
    0x1cac083126e978d5ull, 0xd288ce703afb7e91ull, 0x5d4e8fb00bcbe61dull,
    0x790fb65668c26139ull, 0xe5032477ae8d46a5ull, 0xc767074b22e90e21ull,
    0x8e47ce423a2e9c6dull, 0x4fa7f60d3ed61f49ull, 0x0fee64690c913975ull,
    0x3662e0e1cf503eb1ull, 0xa47a2cf9f6433fbdull, 0x54186f653140a659ull,
    0x7738164770402145ull, 0xe4a4d1417cd9a041ull};

/* 16 bytes of 0xFF then 16 of 0: at offset 16 - k, a mask of k bytes. */
static const unsigned char keep_bytes[32] = {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                                             0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};

static inline __m128i load16(const char *p) {
  return _mm_loadu_si128((const __m128i *)(const void *)p);
}

/* The value of the k (0-16) digits at p (16 bytes readable): the bytes
 * after them are zeroed, the sixteen read as one number (pairs, fours,
 * eights by multiply-adds), which is the value times 10^(16 - k); an exact
 * division by that, a shift and a multiply, leaves the value. */
static inline uint64_t value16(const char *p, int k) {
  const __m128i d = _mm_and_si128(_mm_sub_epi8(load16(p), _mm_set1_epi8('0')),
                                  load16((const char *)keep_bytes + 16 - k));
  const __m128i zero = _mm_setzero_si128(), by10 = _mm_set1_epi32(0x0001000A);
  __m128i x = _mm_packs_epi32(_mm_madd_epi16(_mm_unpacklo_epi8(d, zero), by10),
                              _mm_madd_epi16(_mm_unpackhi_epi8(d, zero), by10));
  x = _mm_madd_epi16(x, _mm_set1_epi32(0x00010064));                     /* 4 x 4 */
  x = _mm_madd_epi16(_mm_packs_epi32(x, x), _mm_set1_epi32(0x00012710)); /* 2 x 8 */
  uint64_t two = (uint64_t)_mm_cvtsi128_si64(x);
  uint64_t all = (two & 0xFFFFFFFFu) * 100000000u + (two >> 32);
  return (all >> (16 - k)) * inv_pow5[16 - k];
}

/* The value of the k (0-19) digits at p (24 bytes readable). */
static inline uint64_t value_digits(const char *p, int k) {
  int k1 = k < 16 ? k : 16, k2 = k - k1;
  return value16(p, k1) * pow10_u64[k2] + value_first8(load8(p + 16) - BYTES('0'), k2);
}

/* Reads the number at s the usual way when it has that form (FAST_SLACK
 * bytes readable from s): stores it in *out, its length in *used and
 * returns true. False, with nothing stored, for anything else. */
static inline __attribute__((always_inline)) bool usual_number(const char *s, size_t *used,
                                                               double *out) {
  const __m128i zero = _mm_set1_epi8('0'), nine = _mm_set1_epi8(9);
  /* Digits: c - '0' at most 9, unsigned. */
  __m128i ta = _mm_sub_epi8(load16(s), zero), tb = _mm_sub_epi8(load16(s + 16), zero);
  uint32_t da = (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_max_epu8(ta, nine), nine));
  uint32_t db = (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_max_epu8(tb, nine), nine));
  bool neg = s[0] == '-';
  /* The non-digits, a leading '-' aside; bits 32 up count as such. */
  uint64_t odd = ~((uint64_t)db << 16 | da) & ~(uint64_t)neg;
  int dot = __builtin_ctzll(odd); /* where the integer digits stop */
  int len = dot, nf = 0;          /* the end, the fraction digits */
  if (s[dot] == '.') {
    len = __builtin_ctzll(odd & (odd - 1));
    nf = len - dot - 1;
  }
  int ni = dot - neg;
  /* A digit before the '.', none more after a leading 0, a digit after a
   * '.', no exponent (the general way reads it), and a mantissa exact in
   * 64 bits (which keeps len at most 21: all inside the 32 bytes). */
  if (ni < 1 || (ni > 1 && s[neg] == '0') || (len > dot && nf < 1) || ni + nf > 19 ||
      (s[len] | 0x20) == 'e')
    return false;
  uint64_t man;
  if (__builtin_expect(ni == 1, 1)) /* a branch: most have one, "0." or "3." */
    man = (uint64_t)(s[neg] - '0');
  else
    man = value_digits(s + neg, ni);
  man = man * pow10_u64[nf] + value_digits(s + dot + 1, nf);
  *out = to_double(man, -nf, neg, true, s, (size_t)len);
  *used = (size_t)len;
  return true;
}
#endif

size_t circle__json_fast_number(const char *p, const char *end, double *out) {
#if USUAL_SSE2
  size_t used;
  if (end - p >= FAST_SLACK && usual_number(p, &used, out)) return used;
#endif
  return parse_number(p, end, out);
}

/* ======================================================================== */
/* The body                                                                 */
/* ======================================================================== */

static inline bool is_ws(char c) {
  return (unsigned char)c <= ' ' && (c == ' ' || c == '\t' || c == '\n' || c == '\r');
}

static inline size_t skip_ws(const char *b, size_t len, size_t p) {
  while (p < len && is_ws(b[p])) p++;
  return p;
}

/* After an element of a list closed by `close`: skips blanks and a comma
 * (returns 1, *p at the next element) or the closing bracket (returns 0,
 * *p past it); -1 for anything else. */
static inline __attribute__((always_inline)) int next_item(const char *b, size_t len,
                                                           size_t *p, char close) {
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

static bool skip_value(const char *b, size_t len, size_t *pos, size_t max_depth,
                       size_t *values);

/* Where read_matrix found that a matrix is not a usual one. */
typedef enum {
  ODD_AT_ROW,     /* p: a row that is not an array */
  ODD_AT_ELEMENT, /* p: an element of the open row not read (in_row before it) */
  ODD_AFTER_ROW   /* p: just past a row (rows counts it) */
} odd_state;

/* The rest of a matrix that stopped being a usual one at b[p]: walked as a
 * validator (what circle__json_validate passes, nested at most max_depth
 * deep with the enclosing object), counting the rows and noting its shape
 * in m (see circle__json_fast_matrix's odd). rows complete rows precede,
 * each of d elements; in_row elements of the row at row_at, when one is
 * open; bad_row, bad_len: a ragged row already found (bad_row == rows when
 * none). False on anything that is not valid JSON. */
static __attribute__((noinline, cold)) bool read_odd(const char *b, size_t len, size_t *pos,
                                                     size_t p, odd_state st, size_t rows,
                                                     size_t d, size_t in_row, size_t row_at,
                                                     size_t bad_row, size_t bad_len,
                                                     size_t max_depth,
                                                     circle__json_fast_matrix *m) {
  size_t unused = 0;
  m->row0_len = rows ? d : 0;
  m->bad_row = SIZE_MAX;
  if (bad_row != rows) {
    m->bad_row = bad_row;
    m->bad_off = row_at;
    m->bad_len = bad_len;
  }
  for (;;) {
    if (st == ODD_AT_ROW) {
      if (p >= len) return false;
      if (b[p] != '[') {
        if (m->bad_row == SIZE_MAX) {
          m->bad_row = rows;
          m->bad_off = p;
          m->bad_len = SIZE_MAX;
        }
        if (!skip_value(b, len, &p, max_depth - 1, &unused)) return false;
        rows++;
        st = ODD_AFTER_ROW;
        continue;
      }
      row_at = p;
      in_row = 0;
      p = skip_ws(b, len, p + 1);
      if (p < len && b[p] == ']') {
        p++;
        goto row_done;
      }
      st = ODD_AT_ELEMENT;
    } else if (st == ODD_AT_ELEMENT) {
      if (p >= len) return false;
      if (in_row == 0 && b[p] == ']') { /* an empty row */
        p++;
        goto row_done;
      }
      if (b[p] == '-' || is_digit(b[p])) {
        size_t k = circle__json_token_len(b + p, b + len);
        if (k == 0) return false;
        p += k;
      } else if (!skip_value(b, len, &p, max_depth - 2, &unused)) {
        return false;
      }
      in_row++;
      p = skip_ws(b, len, p);
      if (p < len && b[p] == ',') {
        p = skip_ws(b, len, p + 1);
        continue;
      }
      if (p >= len || b[p] != ']') return false;
      p++;
      goto row_done;
    } else {
      p = skip_ws(b, len, p);
      if (p < len && b[p] == ',') {
        p = skip_ws(b, len, p + 1);
        st = ODD_AT_ROW;
        continue;
      }
      if (p >= len || b[p] != ']') return false;
      p++;
      break;
    }
    continue;
  row_done:
    if (rows == 0) {
      m->row0_len = in_row;
    } else if (m->bad_row == SIZE_MAX && in_row != m->row0_len) {
      m->bad_row = rows;
      m->bad_off = row_at;
      m->bad_len = in_row;
    }
    rows++;
    st = ODD_AFTER_ROW;
  }
  if (m->bad_row == SIZE_MAX) m->bad_row = rows;
  m->found = true;
  m->odd = true;
  m->begin = *pos;
  m->end = p;
  m->rows = rows;
  m->d = 0;
  m->v = NULL;
  m->first_inf = 0;
  *pos = p;
  return true;
}

/* Reads [[n, ...], ...] at *pos into m. Out of line, so that its loop has
 * the registers to itself; built for AVX2 machines too (BMI2's shifts and
 * bit scans) and picked at load time, as the engine's loops are: about 10%
 * less time a number there (bench_codec, alternating runs). */
#if defined(__x86_64__) && !defined(__clang__) && !defined(CIRCLE_NO_CLONES)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
static __attribute__((noinline)) bool read_matrix(const char *b, size_t len, size_t *pos,
                                                  size_t max_rows, size_t max_d,
                                                  size_t max_depth,
                                                  circle__json_fast_matrix *m) {
  size_t p = *pos;
  if (p >= len || b[p] != '[') return false;
  p = skip_ws(b, len, p + 1);
  size_t rows = 0, d = 0, count = 0, cap = 0, first_inf = SIZE_MAX;
  double *v = NULL;
  /* Where it stops being a usual matrix: read_odd takes over. */
  odd_state st;
  size_t in_row = 0, row_at = p;
  for (;;) {
    if (p >= len || b[p] != '[') {
      st = rows == 0 && p < len && b[p] == ']' ? ODD_AFTER_ROW : ODD_AT_ROW;
      goto odd;
    }
    row_at = p;
    p = skip_ws(b, len, p + 1);
    /* The first row sets d (at most max_d); the others must match it. The
     * row is v[row0, count); one test a number, count == stop, catches
     * both a row one too long and v full. */
    size_t row0 = count, row_max = rows == 0 ? max_d : d;
    size_t stop = cap - row0 < row_max ? cap : row0 + row_max;
    for (;;) {
      if (count == stop) {
        if (count - row0 == row_max) { /* one number too many */
          in_row = count - row0;
          st = ODD_AT_ELEMENT;
          goto odd;
        }
        size_t ncap = cap ? 2 * cap : 4096;
        if (ncap > SIZE_MAX / sizeof *v) goto fail;
        double *nv = realloc(v, ncap * sizeof *v);
        if (nv == NULL) goto fail;
        v = nv;
        cap = ncap;
        stop = cap - row0 < row_max ? cap : row0 + row_max;
      }
      size_t used;
#if USUAL_SSE2
      if (len - p < FAST_SLACK || !usual_number(b + p, &used, &v[count]))
#endif
      {
        used = parse_number(b + p, b + len, &v[count]);
        if (used == 0) {
          in_row = count - row0;
          st = ODD_AT_ELEMENT;
          goto odd;
        }
        if (!isfinite(v[count]) && first_inf == SIZE_MAX) first_inf = count;
      }
      p += used;
      count++;
      /* The usual separator, ", " or ",", then anything next_item takes. */
      if (p < len && b[p] == ',') {
        p++;
        if (p < len && b[p] == ' ') p++;
        if (p < len && is_ws(b[p])) p = skip_ws(b, len, p);
        continue;
      }
      int more = next_item(b, len, &p, ']');
      if (more < 0) goto fail;
      if (!more) break;
    }
    in_row = count - row0;
    if (rows == 0) {
      d = in_row;
    } else if (in_row != d) { /* ragged: row `rows` */
      free(v);
      return read_odd(b, len, pos, p, ODD_AFTER_ROW, rows + 1, d, 0, row_at, rows,
                      in_row, max_depth, m);
    }
    if (++rows > max_rows) {
      st = ODD_AFTER_ROW;
      goto odd;
    }
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
  m->first_inf = first_inf == SIZE_MAX ? count : first_inf;
  *pos = p;
  return true;
fail:
  free(v);
  return false;
odd:
  free(v);
  return read_odd(b, len, pos, p, st, rows, d, in_row, row_at, rows, 0, max_depth, m);
}

/* Skips one JSON value at *pos (string, number, literal, array, object),
 * adding to *values the values and keys it holds (what the pre-scan
 * counts: what cJSON allocates a node or a string for); brackets nest at
 * most max_depth deep, counting the enclosing object. A validator: it
 * takes only what circle__json_validate passes (strings and numbers by
 * circle__json_token_len, the same grammar, blanks between tokens), so a
 * copy of a body it walked needs no second check. */
static bool skip_value(const char *b, size_t len, size_t *pos, size_t max_depth,
                       size_t *values) {
  char stack[64]; /* the closing bracket of each open container */
  size_t depth = 0, p = *pos, count = 0;
  if (max_depth > sizeof stack) max_depth = sizeof stack;
  bool key = false; /* a key (and its colon) comes before the next value */
  for (;;) {
    if (key) {
      size_t k = circle__json_token_len(b + p, b + len);
      if (k == 0 || b[p] != '"') return false;
      count++;
      p = skip_ws(b, len, p + k);
      if (p >= len || b[p] != ':') return false;
      p = skip_ws(b, len, p + 1);
      key = false;
    }
    if (p >= len) return false;
    char c = b[p];
    count++;
    if (c == '[' || c == '{') {
      if (depth + 1 >= max_depth) return false; /* + the top-level object */
      stack[depth++] = c == '[' ? ']' : '}';
      p = skip_ws(b, len, p + 1);
      if (p < len && b[p] == stack[depth - 1]) {
        p++;
        depth--;
      } else {
        key = c == '{';
        continue;
      }
    } else if (c == '"' || c == '-' || is_digit(c)) {
      size_t k = circle__json_token_len(b + p, b + len);
      if (k == 0) return false;
      p += k;
    } else if (len - p >= 4 && (!memcmp(b + p, "true", 4) || !memcmp(b + p, "null", 4))) {
      p += 4;
    } else if (len - p >= 5 && !memcmp(b + p, "false", 5)) {
      p += 5;
    } else {
      return false;
    }
    /* After a value: close containers until one goes on with a comma. */
    for (; depth > 0; depth--, p++) {
      p = skip_ws(b, len, p);
      if (p < len && b[p] == ',') break;
      if (p >= len || b[p] != stack[depth - 1]) return false;
    }
    if (depth == 0) break;
    p = skip_ws(b, len, p + 1);
    key = stack[depth - 1] == '}';
  }
  *pos = p;
  *values += count;
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
  fb->values = 1; /* the object */
  /* Every array value of a matrix key, cut from the copy as the slow path
   * cuts them (8 at most, as there). */
  size_t spans[16], nspans = 0, unused = 0;
  for (;;) {
    size_t kl = p < len && body[p] == '"' ? circle__json_token_len(body + p, body + len) : 0;
    if (kl == 0) goto fail;
    const char *key = body + p + 1;
    size_t klen = kl - 2;
    char decoded[32]; /* a key with escapes, as the slow path reads it */
    if (memchr(key, '\\', klen) != NULL) {
      bool fits = circle__json_key_read(body + p, body + len, decoded, sizeof decoded);
      key = decoded;
      klen = fits ? strlen(decoded) : 0;
    }
    p = skip_ws(body, len, p + kl);
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
    fb->values++; /* the key */
    /* A matrix key whose value is no array is a member like any other:
     * the copy keeps it and its tree says what is wrong, as the slow
     * path's would (it cuts arrays only). */
    if (m != NULL && p < len && body[p] == '[') {
      if (nspans == sizeof spans / sizeof *spans / 2) goto fail;
      size_t begin = p;
      if (!m->found) {
        if (!read_matrix(body, len, &p, rows_limit, max_d, max_depth, m)) goto fail;
      } else if (!skip_value(body, len, &p, max_depth, &unused)) {
        goto fail; /* a repeated key, cut too: the copy's tree says so */
      }
      spans[2 * nspans] = begin;
      spans[2 * nspans + 1] = p;
      nspans++;
      fb->values++; /* its [] in the copy */
    } else if (!skip_value(body, len, &p, max_depth, &fb->values)) {
      goto fail;
    }
    int more = next_item(body, len, &p, '}');
    if (more < 0) goto fail;
    if (!more) break;
  }
  if (skip_ws(body, len, p) != len) goto fail;
  /* The copy: the body with each matrix cut down to []. */
  if (!circle__json_cut(body, len, spans, nspans, &fb->copy, &fb->copy_len)) goto fail;
  fb->text = body;
  fb->text_len = len;
  return true;
fail:
  circle__json_fast_body_free(fb);
  return false;
}
