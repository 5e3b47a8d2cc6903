/* json_number.c -- the JSON number writers of the response buffer: every
 * number written reads back (strtof / strtod) as the same float / double,
 * bit for bit, in printf's "%.9g" / "%.17g" layout.
 *
 * Numbers
 * -------
 * circle_buf_json_number is on the hot path of every response: a 65536 x 128
 * gradient is 8 million numbers, and glibc's "%.17g" costs about half a
 * microsecond each.  The contract is the round trip: strtof / strtod of what
 * is written gives back the same float / double, bit for bit.  We write the
 * 9 (float32) or 17 (float64) significant digits that "%.9g" / "%.17g"
 * would write, in the same layout.  The digits are defined by double-double
 * arithmetic (digits_dd, the reference):
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
 * The fast paths write exactly the reference's bytes, faster (about 14 ns
 * a float32 number and 50 a float64 one on a 2.4 GHz Zen 3, against 80
 * before them):
 *
 *   float32   digits_f32: one double multiply by a double power of ten is
 *             within 2.3e-7 of the exact product, so rounding it gives the
 *             reference's digits except within 2^-20 of a tie (about 2
 *             values in a million), where digits_dd decides; the decade
 *             comes from a table per binary exponent, not a loop.
 *   float64   digits_f64: the reference's own products for both candidate
 *             decades at once, instead of its loop.
 *   layout    layout9 / layout17: the digits as whole 8-byte words (pairs
 *             from a table, trailing zeros counted with one bit scan) and
 *             fixed-size stores, which may write past the number's end but
 *             within CIRCLE_JSON_NUMBER_MAX bytes.
 *
 * The time goes mostly to latency (each number is a chain of dependent
 * multiplies and loads), so the code avoids branches on data and keeps
 * that chain short.  tests/test_request.c checks every path against a
 * frozen copy of the reference writer and against snprintf.  Once, outside
 * the suite, all 2^32 float32 bit patterns went through both writers: no
 * byte differed and none was written past CIRCLE_JSON_NUMBER_MAX.
 *
 * The arithmetic uses plain IEEE double operations in the default rounding
 * mode only (Dekker's split, no fma, no long double), so it gives the same
 * digits on every x86-64 and aarch64 build and under valgrind.
 */
#include "buf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__FLT_EVAL_METHOD__) && __FLT_EVAL_METHOD__ != 0
#error "json_number.c needs FLT_EVAL_METHOD 0 (SSE2 doubles, not x87)"
#endif

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
 * which may be 8 or more when a.hi > 2^53).  Without a branch: above 2^53
 * a.hi is an integer and d below is a.lo, whose sign is a coin toss. */
static inline uint64_t dd_round(dd a) {
  double r = (double)(int64_t)a.hi; /* floor: a.hi > 0 */
  double d = (a.hi - r) + a.lo;     /* a.hi - r is exact; d is small */
  int64_t id = (int64_t)d;          /* truncation ... */
  id -= (double)id > d;             /* ... made floor */
  double f = d - (double)id;        /* exact: in [0, 1) */
  uint64_t u = (uint64_t)(int64_t)r + (uint64_t)id;
  u += (f > 0.5) | ((f == 0.5) & (u & 1));
  return u;
}

/* ------------------------------------------------------------------------ */
/* Number formatting                                                        */
/* ------------------------------------------------------------------------ */

static const char digit_pairs[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

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

/* The prec digits (9 or 17) of a, finite and in (0, inf), by the
 * double-double product: u = round-half-even(a * 10^(prec-1-k)) in
 * [10^(prec-1), 10^prec) with k the decade %g prints.  This is the
 * reference every fast path must agree with; it is also their fallback.
 * k starts at floor(e * log10(2)), at or below the true decade (for
 * subnormal doubles, far below), and only moves up when the digits
 * overflow: starting too high could round a value just under 10^(k+1) to
 * exactly 10^(prec-1) and lose its last digit.  Returns false (outputs
 * untouched) when a is outside the table. */
static bool digits_dd(double a, int prec, uint64_t *u_out, int *k_out) {
  uint64_t bits;
  memcpy(&bits, &a, sizeof(bits));
  int e = (int)(bits >> 52) - 1023; /* a in [2^e, 2^(e+1)); subnormals: less */
  /* floor(e * log10(2)), exact for |e| < 1650. */
  int k = (e * 78913) >> 18;
  uint64_t lo_bound = pow10_u64[prec - 1], hi_bound = pow10_u64[prec];
  for (int tries = 0; tries < 8; tries++) {
    int p = prec - 1 - k;
    if (p < -POW10_MAX || p > POW10_MAX) return false;
    uint64_t u = dd_round(pow10_mul(POW10_MAX + p, a));
    if (u >= hi_bound) {
      k++;
    } else if (u < lo_bound) {
      k--;
    } else {
      *u_out = u;
      *k_out = k;
      return true;
    }
  }
  return false;
}

/* 10^p for p in [POW10_F32_MIN, POW10_F32_MIN + 84] = [-31, 53], each the
 * double nearest 10^p (GCC and Clang convert decimal literals correctly
 * rounded; were one a neighbour instead, the error bound in digits_f32
 * would still be 3.4e-7, inside its margin). */
#define POW10_F32_MIN (-31)
static const union {
  double d;
  uint64_t bits;
} pow10_f32[85] = {
    {1e-31}, {1e-30}, {1e-29}, {1e-28}, {1e-27}, {1e-26}, {1e-25}, {1e-24},
    {1e-23}, {1e-22}, {1e-21}, {1e-20}, {1e-19}, {1e-18}, {1e-17}, {1e-16},
    {1e-15}, {1e-14}, {1e-13}, {1e-12}, {1e-11}, {1e-10}, {1e-9}, {1e-8},
    {1e-7}, {1e-6}, {1e-5}, {1e-4}, {1e-3}, {1e-2}, {1e-1}, {1e0},
    {1e1}, {1e2}, {1e3}, {1e4}, {1e5}, {1e6}, {1e7}, {1e8},
    {1e9}, {1e10}, {1e11}, {1e12}, {1e13}, {1e14}, {1e15}, {1e16},
    {1e17}, {1e18}, {1e19}, {1e20}, {1e21}, {1e22}, {1e23}, {1e24},
    {1e25}, {1e26}, {1e27}, {1e28}, {1e29}, {1e30}, {1e31}, {1e32},
    {1e33}, {1e34}, {1e35}, {1e36}, {1e37}, {1e38}, {1e39}, {1e40},
    {1e41}, {1e42}, {1e43}, {1e44}, {1e45}, {1e46}, {1e47}, {1e48},
    {1e49}, {1e50}, {1e51}, {1e52}, {1e53}};

/* decade_up[k + 45], k in [-45, 38]: T_k = (10^9 - 1/2) * 10^(k-8), the
 * least real whose 9 digits at decade k round up to 10^9 (so its decade
 * is k + 1), as the double nearest it.  No float lies between T_k and
 * that double (none is within 5e-10 of T_k, relative: checked with exact
 * rationals for every k), so for a float a, a >= decade_up[..] exactly
 * when a >= T_k.  T_38 is past FLT_MAX: no float reaches it. */
static const union {
  double d;
  uint64_t bits; /* read as bits: positive doubles order as their bits */
} decade_up[84] = {
    {9999999995e-54}, {9999999995e-53}, {9999999995e-52}, {9999999995e-51},
    {9999999995e-50}, {9999999995e-49}, {9999999995e-48}, {9999999995e-47},
    {9999999995e-46}, {9999999995e-45}, {9999999995e-44}, {9999999995e-43},
    {9999999995e-42}, {9999999995e-41}, {9999999995e-40}, {9999999995e-39},
    {9999999995e-38}, {9999999995e-37}, {9999999995e-36}, {9999999995e-35},
    {9999999995e-34}, {9999999995e-33}, {9999999995e-32}, {9999999995e-31},
    {9999999995e-30}, {9999999995e-29}, {9999999995e-28}, {9999999995e-27},
    {9999999995e-26}, {9999999995e-25}, {9999999995e-24}, {9999999995e-23},
    {9999999995e-22}, {9999999995e-21}, {9999999995e-20}, {9999999995e-19},
    {9999999995e-18}, {9999999995e-17}, {9999999995e-16}, {9999999995e-15},
    {9999999995e-14}, {9999999995e-13}, {9999999995e-12}, {9999999995e-11},
    {9999999995e-10}, {9999999995e-9}, {9999999995e-8}, {9999999995e-7},
    {9999999995e-6}, {9999999995e-5}, {9999999995e-4}, {9999999995e-3},
    {9999999995e-2}, {9999999995e-1}, {9999999995e0}, {9999999995e1},
    {9999999995e2}, {9999999995e3}, {9999999995e4}, {9999999995e5},
    {9999999995e6}, {9999999995e7}, {9999999995e8}, {9999999995e9},
    {9999999995e10}, {9999999995e11}, {9999999995e12}, {9999999995e13},
    {9999999995e14}, {9999999995e15}, {9999999995e16}, {9999999995e17},
    {9999999995e18}, {9999999995e19}, {9999999995e20}, {9999999995e21},
    {9999999995e22}, {9999999995e23}, {9999999995e24}, {9999999995e25},
    {9999999995e26}, {9999999995e27}, {9999999995e28}, {9999999995e29}};

/* For each binary exponent of a float value (as a double: biased exponents
 * BINADE_MIN .. BINADE_MIN + 276, subnormal floats included), what
 * digits_f32 loads first, as bits: the decade threshold T_k0 and the two
 * candidate powers 10^(8-k0) and 10^(7-k0), k0 = floor(e * log10(2)) for
 * the unbiased exponent e.  Indexed by the exponent, the loads need not
 * wait for k0 to be computed. */
#define BINADE_MIN (1023 - 149)
static uint64_t binade_up[277], binade_p0[277], binade_p1[277];

/* Fills pow10_tab, pow10_split and the binade tables when the program is
 * loaded (a constructor, so the hot path has no once-check; it takes a few
 * microseconds).  Nothing writes them afterwards: the writers are
 * thread-safe from main() on. */
static __attribute__((constructor)) void number_tables_build(void) {
  pow10_build();
  for (int i = 0; i < 277; i++) {
    int k0 = ((BINADE_MIN + i - 1023) * 78913) >> 18;
    binade_up[i] = decade_up[k0 + 45].bits;
    binade_p0[i] = pow10_f32[8 - k0 - POW10_F32_MIN].bits;
    binade_p1[i] = pow10_f32[7 - k0 - POW10_F32_MIN].bits;
  }
}

/* The 9 digits of a float32 value a (as a double: positive, finite,
 * non-zero; eb its biased exponent) with one double multiply instead of
 * the double-double product: what digits_dd(a, 9, ..) gives, or false
 * (outputs untouched) when this cannot be sure and digits_dd must decide.
 *
 * With e the binary exponent and k0 = floor(e * log10(2)), 10^k0 <= a <
 * 2 * 10^(k0+1), so the decade k is k0, or k0 + 1 when a >= T_k0
 * (decade_up, compared as bits; the power is picked with a mask, since a
 * branch here would mispredict on values just past a power of ten).  Then
 * x = a * 10^p, p = 8 - k, is in [10^8 - 1/20, 10^9 - 1/2), and u =
 * round-half-even(x) is in [10^8, 10^9).  We compute
 *
 *     t = fl(a * P[p]),   P[p] = 10^p (1 + d1)
 *
 * a is exact (24 bits in a double), |d1| <= 2^-53 and the multiply adds a
 * factor (1 + d2), |d2| <= 2^-53, so |t - x| <= x * (2^-52 + 2^-106) <
 * 2.3e-7.  Rounding t half-even gives round-half-even(x) whenever no
 * half-integer lies within that error of t; we require |t - round(t)| <
 * 1/2 - M with the margin M = 2^-20 (9.5e-7, four times the bound).  Then
 * u is round-half-even of the exact product, which digits_dd also finds:
 * its product is within ~1e-20 of x, and its first try starts at k0.
 *
 * The exception to the margin is an exact tie (t - round(t) == +-1/2 with
 * an exact product, as for 100000.0625: x = 100000062.5), which is common
 * among floats in [1e5, 1e7): when 0 <= p <= 12 the product is exact
 * (10^p is a double and m * 5^p < 2^24 * 5^12 < 2^53, m the float's 24-bit
 * significand), so t == x and rounding t half-even is right.  The rest
 * within the margin (about 2 values in a million) fall back. */
static inline bool digits_f32(double a, unsigned long eb, uint32_t *u_out,
                              long *k_out) {
  uint64_t bits;
  memcpy(&bits, &a, sizeof(bits));
  long k = (((long)eb - 1023) * 78913) >> 18; /* k0, in [-45, 38] */
  unsigned long i = eb - BINADE_MIN;
  bool up = bits >= binade_up[i];
  uint64_t m = 0 - (uint64_t)up; /* not ?: (compilers make it a branch) */
  uint64_t pb = (binade_p1[i] & m) | (binade_p0[i] & ~m);
  double pw;
  memcpy(&pw, &pb, sizeof(pw));
  k += up;
  long p = 8 - k; /* in [-31, 53] */
  double t = a * pw;
  /* Adding 2^52 rounds t half-even to an integer (the ulp there is 1):
   * the low bits of the sum are that integer, and t minus it is exact. */
  double s = t + 0x1p52;
  double d = fabs(t - (s - 0x1p52));
  if (d >= 0.5 - 0x1p-20) {
    bool exact_tie = d == 0.5 && p >= 0 && p <= 12;
    if (!exact_tie) return false;
  }
  uint64_t sb;
  memcpy(&sb, &s, sizeof(sb));
  *u_out = (uint32_t)sb;
  *k_out = k;
  return true;
}

/* The 17 digits of a double a in [1e-280, 1e280): what digits_dd(a, 17,
 * ..) finds, by the same double-double products (so with the same result)
 * but without its loop.  10^k0 <= a < 2 * 10^(k0+1) (see digits_f32), so
 * digits_dd's first try at k0 gives u0 >= 10^16 and either stops there or,
 * when u0 >= 10^17, takes one more try at k0 + 1, which stops.  Both tries
 * are made here, independent of each other, and u0 picks one, with a mask
 * instead of a branch that would mispredict past every power of ten.
 * False (outputs untouched) if the result were out of range, which the
 * argument above rules out; the caller then asks digits_dd. */
static inline bool digits_f64(double a, uint64_t *u_out, long *k_out) {
  uint64_t bits;
  memcpy(&bits, &a, sizeof(bits));
  long k = (((long)(bits >> 52) - 1023) * 78913) >> 18; /* k0 */
  uint64_t u0 = dd_round(pow10_mul((int)(POW10_MAX + 16 - k), a));
  uint64_t u1 = dd_round(pow10_mul((int)(POW10_MAX + 15 - k), a));
  bool up = u0 >= pow10_u64[17];
  uint64_t m = 0 - (uint64_t)up;
  uint64_t u = (u1 & m) | (u0 & ~m);
  if (u < pow10_u64[16] || u >= pow10_u64[17]) return false;
  *u_out = u;
  *k_out = k + up;
  return true;
}

/* The 8 decimal digits of a word z holding two 4-digit halves (the first
 * in bits 0-31, the second in bits 32-63) as byte values 0..9, the most
 * significant in the lowest byte.  Each half splits into two pairs, then
 * each pair into two digits, all lanes at once:
 *
 *     q = (z * 10486 >> 20) & lanes     v / 100 in every 32-bit lane (v < 10^4)
 *     z = q | (z - 100 q) << 16         == (z << 16) - q * (100 * 2^16 - 1)
 *     q = (z * 103 >> 10) & lanes       v / 10 in every 16-bit lane (v < 100)
 *     z = q | (z - 10 q) << 8           == (z << 8) - q * (10 * 2^8 - 1)
 *
 * (no lane's product reaches the next lane, and every lane of the result
 * is non-negative, so the one-multiply forms are exact mod 2^64). */
static inline uint64_t digits8(uint64_t z) {
  uint64_t q = ((z * 10486) >> 20) & 0x0000007f0000007full;
  z = (z << 16) - q * (100 * 65536 - 1);
  q = ((z * 103) >> 10) & 0x000f000f000f000full;
  return (z << 8) - q * (10 * 256 - 1);
}

/* The word digits8 wants for r < 10^8 given h = r / 10^4:
 * (r / 10^4) | (r % 10^4) << 32. */
static inline uint64_t halves(uint64_t r, uint64_t h) {
  return h + ((r - h * 10000) << 32);
}

/* Digits kept of one digits8 word (digit values, not characters): 8
 * minus its trailing zero digits (the zero bytes at the top), so 0 for a
 * word of zeros.  Without a branch: the top set bit of (z << 1) | 1 (bit
 * 63 of z is always clear) is bit 8j + 1..8j + 4 when byte j is the last
 * non-zero byte, and bit 0 when none is. */
static inline long digits8_len(uint64_t z) {
  return ((63 ^ __builtin_clzll((z << 1) | 1)) + 7) >> 3;
}

/* The two characters of each p < 100 as a 16-bit value, the first in the
 * low byte (digit_pairs as 16-bit words, which index without arithmetic). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define PAIR(a, b) (uint16_t)(('0' + (a)) << 8 | ('0' + (b)))
#else
#define PAIR(a, b) (uint16_t)(('0' + (a)) | ('0' + (b)) << 8)
#endif
#define PAIR_ROW(a) PAIR(a, 0), PAIR(a, 1), PAIR(a, 2), PAIR(a, 3), \
    PAIR(a, 4), PAIR(a, 5), PAIR(a, 6), PAIR(a, 7), PAIR(a, 8), PAIR(a, 9)
static const uint16_t pair_chars[100] = {
    PAIR_ROW(0), PAIR_ROW(1), PAIR_ROW(2), PAIR_ROW(3), PAIR_ROW(4),
    PAIR_ROW(5), PAIR_ROW(6), PAIR_ROW(7), PAIR_ROW(8), PAIR_ROW(9)};
#undef PAIR_ROW
#undef PAIR

/* Stores the 8 bytes of z lowest first (digits8 order) at dst. */
static inline void put8(char *dst, uint64_t z) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  z = __builtin_bswap64(z);
#endif
  memcpy(dst, &z, 8);
}

#define ASCII_ZEROS 0x3030303030303030ull

/* Writes 'e', the exponent's sign and its digits (at least two, like
 * printf) at o; returns the bytes written (4 or 5). */
static inline size_t put_exponent(char *o, int k) {
  unsigned ax = k < 0 ? (unsigned)-k : (unsigned)k;
  o[0] = 'e';
  o[1] = k < 0 ? '-' : '+';
  if (ax >= 100) {
    o[2] = (char)('0' + ax / 100);
    memcpy(o + 3, digit_pairs + 2 * (ax % 100), 2);
    return 5;
  }
  memcpy(o + 2, digit_pairs + 2 * ax, 2);
  return 4;
}

/* Writes [-]u (9 digits, in [10^8, 10^9)) at decade k the way "%.9g" does
 * (what layout_g writes for the same digits) and returns its length.  The
 * digits are one 8-byte word after the first (pairs from pair_chars),
 * stored whole; fixed-size stores that follow put the point in place and
 * whatever must not show (trailing zeros, a point with nothing after it)
 * lies past the length returned:
 *
 *     0 <= k < 9     ddd.dddddd   the digits, then digits k+1.. again one
 *                                  byte further, the point before them
 *     -4 <= k < 0    0.000ddddd   "0.000000", the digits over it
 *     otherwise      d.ddde-05    first digit, point, the rest, exponent
 *
 * So it may write up to 19 bytes at o whatever the length it returns. */
static inline __attribute__((always_inline)) size_t
layout9(char *o, bool neg, uint32_t u, long k) {
  /* Four independent divisions of u give the four pairs of the last 8
   * digits: pair i is q_(2i) - 100 q_(2i+2), q_j = u / 10^j. */
  uint32_t d0 = u / 100000000u, q6 = u / 1000000u, q4 = u / 10000u,
           q2 = u / 100u;
  uint64_t z = (uint64_t)pair_chars[q6 - d0 * 100] |
               (uint64_t)pair_chars[q4 - q6 * 100] << 16 |
               (uint64_t)pair_chars[q2 - q4 * 100] << 32 |
               (uint64_t)pair_chars[u - q2 * 100] << 48;
  long nd = 1 + digits8_len(z - ASCII_ZEROS); /* significant digits */
  char c0 = (char)('0' + d0);
  *o = '-';
  char *b = o + neg; /* what follows the sign */
  if (k >= 0 && k < 9) {
    /* k + 1 digits before the point; those after it are z shifted by k
     * bytes (digit k + 1 of the 9 is byte k of z), stored one further. */
    b[0] = c0;
    put8(b + 1, z);
    put8(b + k + 2, z >> ((8 * k) & 63)); /* k == 8: nothing after */
    b[k + 1] = '.';
    return (size_t)(neg + (nd > k + 1 ? nd + 1 : k + 1));
  }
  if (k < 0 && k >= -4) {
    memcpy(b, "0.000000", 8); /* "0." and -k-1 zeros, then the digits */
    b[1 - k] = c0;
    put8(b + 2 - k, z);
    return (size_t)(neg + 1 - k + nd);
  }
  b[0] = c0;
  b[1] = '.';
  put8(b + 2, z);
  long m = nd > 1 ? nd + 1 : 1; /* no point without digits after it */
  return (size_t)(neg + m) + put_exponent(b + m, (int)k);
}

/* As layout9 for 17 digits (u in [10^16, 10^17)) and "%.17g", the digits
 * as two digits8 words; may write up to 27 bytes at o. */
static inline __attribute__((always_inline)) size_t
layout17(char *o, bool neg, uint64_t u, long k) {
  uint32_t d0 = (uint32_t)(u / 10000000000000000ull);
  uint64_t r = u - d0 * 10000000000000000ull;
  uint64_t m = r / 100000000u; /* r = m * 10^8 + (r - m * 10^8) */
  uint64_t h1 = r / 1000000000000ull, h2 = r / 10000u;
  uint64_t z1 = digits8(halves(m, h1));
  uint64_t z2 = digits8(halves(r, h2) - m * 10000u);
  int nd = z2 ? 9 + digits8_len(z2) : 1 + digits8_len(z1);
  char c0 = (char)('0' + d0);
  z1 += ASCII_ZEROS;
  z2 += ASCII_ZEROS;
  char *s = o;
  *o = '-';
  o += neg;
  if (k >= 0 && k < 17) {
    o[0] = c0;
    put8(o + 1, z1);
    put8(o + 9, z2);
    /* The digits after the point: z2:z1 shifted by k bytes. */
    __extension__ unsigned __int128 zz =
        ((unsigned __int128)z2 << 64 | z1) >> ((8 * k) & 127);
    put8(o + k + 2, (uint64_t)zz);
    if (nd - (k + 1) > 8) put8(o + k + 10, (uint64_t)(zz >> 64));
    o[k + 1] = '.';
    o += nd > k + 1 ? nd + 1 : k + 1;
  } else if (k < 0 && k >= -4) {
    memcpy(o, "0.000000", 8);
    o[1 - k] = c0;
    put8(o + 2 - k, z1);
    put8(o + 10 - k, z2);
    o += 1 - k + nd;
  } else {
    o[0] = c0;
    o[1] = '.';
    put8(o + 2, z1);
    put8(o + 10, z2);
    o += nd > 1 ? nd + 1 : 1;
    o += put_exponent(o, (int)k);
  }
  return (size_t)(o - s);
}

/* Everything the fast paths leave: zeros, non-finite values, doubles
 * outside [1e-280, 1e280) (snprintf), float32 values that are not floats
 * already (rounded here) and those within a hair of a rounding tie
 * (digits_dd decides).  Out of line, so the fast paths need no stack
 * frame for it. */
static __attribute__((noinline)) size_t write_slow(char *dst, double v,
                                                   bool f32) {
  if (f32) v = (float)v;
  uint64_t bits;
  memcpy(&bits, &v, sizeof(bits));
  bool neg = bits >> 63;
  bits &= ~(1ull << 63);
  if (bits - 1 >= 0x7ff0000000000000ull - 1) { /* zero, inf or nan */
    if (bits != 0) {
      memcpy(dst, "null", 4);
      return 4;
    }
    if (neg) {
      memcpy(dst, "-0", 2);
      return 2;
    }
    dst[0] = '0';
    return 1;
  }
  double a;
  memcpy(&a, &bits, sizeof(a));
  uint64_t u;
  int k;
  if (f32) {
    uint32_t u32;
    long k32;
    if (digits_f32(a, bits >> 52, &u32, &k32))
      return layout9(dst, neg, u32, k32);
    if (digits_dd(a, 9, &u, &k)) return layout9(dst, neg, (uint32_t)u, k);
  } else if (a >= 1e-280 && a < 1e280 && digits_dd(a, 17, &u, &k)) {
    return layout17(dst, neg, u, k);
  }
  char tmp[CIRCLE_JSON_NUMBER_MAX + 1];
  int n = snprintf(tmp, sizeof(tmp), "%.*g", f32 ? 9 : 17, v);
  memcpy(dst, tmp, (size_t)n);
  return (size_t)n;
}

/* The float64 path, out of line so that its registers are not saved on
 * the float32 path. */
static __attribute__((noinline)) size_t write_f64(char *dst, double v) {
  uint64_t bits;
  memcpy(&bits, &v, sizeof(bits));
  double a = fabs(v);
  uint64_t u;
  long k;
  if (a >= 1e-280 && a < 1e280 && digits_f64(a, &u, &k))
    return layout17(dst, bits >> 63, u, k);
  return write_slow(dst, v, false);
}

size_t circle__json_number_write(char *dst, double v, circle_dtype dtype) {
  if (dtype != CIRCLE_DTYPE_FLOAT32) return write_f64(dst, v);
  uint64_t bits;
  memcpy(&bits, &v, sizeof(bits));
  uint64_t abits = bits & ~(1ull << 63);
  double a;
  memcpy(&a, &abits, sizeof(a));
  long k;
  double fd = (float)v;
  uint64_t fbits;
  memcpy(&fbits, &fd, sizeof(fbits));
  /* The fast path takes v that is a float already (what encoders pass),
   * so that none of its arithmetic waits for the rounding to float, which
   * only confirms it; zeros, non-finite values and other doubles go to
   * write_slow. */
  uint32_t u32;
  if ((bits == fbits) & (abits - 1 < 0x7ff0000000000000ull - 1) &&
      digits_f32(a, abits >> 52, &u32, &k))
    return layout9(dst, bits >> 63, u32, k);
  return write_slow(dst, v, true);
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
