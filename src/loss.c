/* loss.c -- keras.losses.Circle: loss, per-sample values, gradients,
 * embedding-quality statistics and retrieval figures, in blocks of query
 * rows over OpenBLAS.
 *
 * Request flow inside the engine (each step a parallel loop over row
 * blocks, blocks claimed dynamically; see pool.c):
 *
 *   normalize?  X <- X * min(rsqrt(|X|^2), 1e12)         (and R alike)
 *   similarities and row scalars:
 *     self-reference:            the lower triangle only, strip by strip
 *                                (S_b = X_b X[0:hi)^T), tile by tile; each
 *                                off-diagonal tile serves its rows and its
 *                                columns, log-sum-exps merged online in a
 *                                fixed order (loss_impl.h); materialized,
 *                                the strips are kept, computed a chunk of
 *                                n / 8 rows (256 to 1024) at a time (one
 *                                gemm left of the chunk's square, one syrk
 *                                in it)
 *     reference set:             materialized (n*m small): S = X R^T kept,
 *                                rows: lse_p, lse_n, v, sig; G' in place;
 *                                streamed: per block S_b = X_b R^T in a
 *                                thread buffer, rows: lse_p, lse_n, v, sig
 *   row extras (stats, retrieval) over whole rows: materialized
 *     self-reference gathers them from the kept strips; streamed
 *     self-reference takes a full-row pass 1 instead of the triangle
 *   reduction (serial, row order): mask v > 0, Keras' divisors -> coef_i
 *   gradients:
 *     self:  dX = H X, H = diag(c) G' + G'^T diag(c) symmetric, on the
 *            lower strips: dX_c = H[c, 0:hi) X[0:hi) + H[hi:n, c]^T X[hi:n)
 *            (materialized: H in place, c a chunk whose square is filled
 *            from below; streamed: c a block, and the strips pass 1 had no
 *            room to keep come again)
 *     ref:   dX = diag(c) G' R,   dR = G'^T diag(c) X
 *            (streamed: S_b recomputed, full rows)
 *   normalize?  backprop through the normalization.
 *
 * Invariants: every block writes only its own rows (or reference rows; a
 * lower-triangle tile's column partials go to that tile's own slot), and
 * every reduction across rows or tiles runs in a fixed order, so
 * results are bitwise identical whatever the number of threads. The block
 * size depends on n alone, never on the thread count (which strips a
 * streamed call keeps does, and changes no bit). Scratch memory is
 * taken once per call (circle_loss_scratch_bytes says how much); the hot
 * loops do not allocate.
 *
 * Kernels: the element-wise loops are C (loss_impl.h, vectorized by the
 * compiler for three ISA levels); with AVX-512F a self-referenced float32
 * batch runs tile_lse_v16 and row_h_v16 below in place of tile_lse and
 * row_h (one exp polynomial per pair for both of its shifts; see
 * exp_split_f). CIRCLE_KERNELS=c keeps the C loops (pool.c).
 */
#include <cblas.h>
#include <float.h>
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "circle/circle.h"
#include "engine_server.h"
#include "pool_impl.h"

/* Per-row statistics, reduced serially after the row loop. */
typedef struct {
  double pos_sum, neg_sum, min_pos, max_neg, nn_sim;
  double norm_dev; /* |‖x_i‖ - 1| of the query row as given */
  uint64_t pos_cnt, neg_cnt, hard_neg;
  int nn_same;
} row_stats;

/* Per-row retrieval figures, reduced serially after the row loop. */
typedef struct {
  double p1, rp, ap; /* precision@1, R-precision, AP@R of the row */
  int query;         /* 1 when the row has a relevant item (R_i > 0) */
} row_retrieval;

/* ---- vectorizable exp ---------------------------------------------------
 * e^x = p 2^k: classic range reduction x = k ln2 + r, |r| <= ln2/2, then a
 * Taylor polynomial p = e^r (relative error about 1 ulp); 2^k is built in
 * the exponent bits. Written without branches or libm calls so the
 * compiler can vectorize the loops that call it.
 *
 * Split in two because a pair's weights need e^(z - a) and e^(z - b) for one
 * z and two shifts (its row's and its column's): e^z e^-a = p 2^k * 2^-ka
 * e^-fa, so p is computed once per pair, e^-fa (fa = a - ka ln 2 in
 * [0, ln 2)) goes into a factor of the row or column and 2^(k - ka) is
 * built in the bits. The float32 reduction x - k (C1 + C2) is exact in its
 * first product for |k| < 2^15 (C1 has 9 bits), also without FMA; callers
 * of the split keep |x| <= SPLIT_MAX. */
#define SPLIT_MAX 1024.0
static inline float exp_split_f(float x, int32_t *k) {
  const float shift = 0x1.8p23f;
  float t = x * 1.44269504f + shift;
  float kd = t - shift;
  int32_t ki, sbits;
  memcpy(&ki, &t, sizeof ki);
  memcpy(&sbits, &shift, sizeof sbits);
  *k = ki - sbits;
  float r = x - kd * 0.693359375f;
  r = r - kd * -2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p;
}

/* 2^e for e <= 127; 0 below the normal range (e < -126), as exp_f. */
static inline float pow2i_f(int32_t e) {
  uint32_t bits = (uint32_t)(e + 127) << 23;
  float s;
  memcpy(&s, &bits, sizeof s);
  return e > -127 ? s : 0.0f;
}

static inline double exp_split_d(double x, int64_t *k) {
  const double shift = 0x1.8p52;
  double t = x * 1.4426950408889634 + shift;
  double kd = t - shift;
  int64_t ki, sbits;
  memcpy(&ki, &t, sizeof ki);
  memcpy(&sbits, &shift, sizeof sbits);
  *k = ki - sbits;
  double r = x - kd * 0x1.62e42fefa39efp-1;
  r = r - kd * 0x1.abc9e3b39803fp-56;
  double p = 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  return p;
}

static inline double pow2i_d(int64_t e) {
  uint64_t bits = (uint64_t)(e + 1023) << 52;
  double s;
  memcpy(&s, &bits, sizeof s);
  return e > -1023 ? s : 0.0;
}

/* exp(x) for x <= 0 (larger x is fine up to the overflow point); results
 * below the smallest normal number are flushed to 0, as XLA does on CPU. */
static inline double exp_d(double x) {
  double xc = x > -708.0 ? x : -708.0;
  int64_t k;
  double p = exp_split_d(xc, &k);
  return x > -708.0 ? p * pow2i_d(k) : 0.0;
}

static inline float exp_f(float x) {
  float xc = x > -87.0f ? x : -87.0f;
  int32_t k;
  float p = exp_split_f(xc, &k);
  return x > -87.0f ? p * pow2i_f(k) : 0.0f;
}

/* The element-wise loops are compiled for AVX-512, AVX2+FMA and baseline
 * x86-64 and picked at load time, so one binary runs fast everywhere. */
#if defined(__x86_64__) && !defined(__clang__) && !defined(CIRCLE_NO_CLONES)
#define CIRCLE__HOT \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CIRCLE__HOT
#endif

/* ---- the kernels, once per element type --------------------------------- */

#define CIRCLE__CAT2(a, b) a##_##b
#define CIRCLE__CAT(a, b) CIRCLE__CAT2(a, b)

#define DEFINE_CTX(T, SUF, IT)                                                    \
  struct CIRCLE__CAT(norm_job, SUF) {                                         \
    size_t rows;                                                              \
    const T *src;                                                             \
    T *dst, *inv, *grad;                                                      \
  };                                                                          \
  /* Keras' constants, each rounded to T from the double config as JAX    \
   * rounds a Python float meeting a T tensor: gamma, optim_pos = delta_pos \
   * = margin, optim_neg = 1 + margin, delta_neg = 1 - margin (the sums in  \
   * double first, so 1 + margin is not (T)1 + (T)margin). */              \
  struct CIRCLE__CAT(consts, SUF) {                                           \
    T gam, mg, opn, dln;                                                      \
  };                                                                          \
  struct CIRCLE__CAT(ctx, SUF) {                                              \
    struct CIRCLE__CAT(consts, SUF) k;                                        \
    bool rd, self, need_g, mat;                                               \
    unsigned want;                                                            \
    size_t n, m, d, bs, ld; /* ld: row stride of the materialized S */       \
    const int32_t *lx, *lr; /* dense label ids: only equality matters */       \
    T *cls;                 /* per-thread pair classes, wide each */          \
    T *ebuf;                /* per-thread exp(z - max) of one row */          \
    size_t wide;                                                              \
    size_t nb;              /* row blocks */                                  \
    size_t cb;              /* blocks a gradient chunk (blk_tri_dx) */        \
    T *rst, *part, *zt;     /* lower triangle: row states, column partials,   \
                               per-thread tile scratch (see loss_impl.h) */   \
    atomic_size_t *next;    /* streamed lower triangle: dX_b's next strip */  \
    T *yb;                  /* ... and each thread's H[b, J]^T X_b, */        \
    size_t ybb, ybn;        /* ... ybb blocks at a time, ybn rows a thread */ \
    T *keep;                /* ... and strips keep_from.. kept from pass 1 */ \
    size_t keep_from;                                                         \
    const T *X, *R;                                                           \
    const T *raw;           /* the query embeddings as given (norm_dev) */    \
    T *S, *Xc, *dX, *dR;                                                      \
    T *lse_p, *lse_n, *v, *sig, *cf, *csig; /* csig: cf * sig */              \
    bool split;             /* row_h_split applies (every |lse| in range) */  \
    bool v16;               /* the AVX-512 kernels run (float32) */           \
    T *hf_p, *hf_n;         /* ... csig e^-(lse - k ln2) per side, and */     \
    IT *hk_p, *hk_n;        /* ... k = floor(lse / ln2) (split_rows) */       \
    double *coef;                                                             \
    row_stats *stats;                                                         \
    row_retrieval *ret;                                                       \
    void *cand;             /* per-thread retrieval candidates, 2 (m + 1) */  \
    T *rowbuf;              /* per-thread full rows of a block (lower        \
                               triangle, materialized, with row extras) */    \
    struct CIRCLE__CAT(norm_job, SUF) *norm_job;                              \
  };

DEFINE_CTX(float, f, int32_t)
DEFINE_CTX(double, d, int64_t)

/* ---- float32 gradient weights in AVX-512 ------------------------------
 * row_h_split for float32 written with AVX-512 intrinsics: GCC's
 * if-conversion of row_h_split's selects spends about half the loop on
 * mask moves; here each side's constants are blended once and the loop is
 * about 60 instructions for 16 pairs. Same formulas in the same order
 * (pair_zds, exp_split_f, pow2i_f): z, dz, the polynomial and the scales
 * are those of the C loop; only where GCC contracts differently may a last
 * bit differ. Picked at run time on CPUs with AVX-512F. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(CIRCLE_NO_CLONES)
#include <immintrin.h>
#ifndef PF_ROWS
#define PF_ROWS 2
#endif
/* The side's constants of row_h_v16, broadcast once a row. */
struct h16 {
  __m512 one, zero, gam, mg, opn, dln, ngam, g2, ng2, pt5, m1, mhalf, log2e,
      shift, c1, c2, q7, q6, q5, q4, q3, fpi, fni;
  __m512i b127, lo, kpi, kni, li;
};

/* 16 pairs of row_h_v16 at column j; full: all 16 are in the row (plain
 * loads and stores), else the lanes of t. */
__attribute__((target("avx512f"), always_inline)) static inline void h_chunk(
    const struct h16 *c_, const struct ctx_f *x, float *restrict s, size_t j,
    bool full, __mmask16 t) {
  const struct h16 k = *c_;
#define LD_PS(p) (full ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(t, p))
#define LD_EPI(p) (full ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi32(t, p))
  __m512 sv = LD_PS(s + j);
  /* 4 KiB ahead (past the row's end: the next row's start, which comes
   * next): the hardware prefetcher alone leaves the pass waiting on
   * memory once the strips outgrow the caches (N = 4096: 12.3 -> 7.7 ms
   * on a Zen 5) */
  _mm_prefetch((const char *)(s + j + 1024), _MM_HINT_T0);
  __mmask16 same = _mm512_cmpeq_epi32_mask(LD_EPI(x->lx + j), k.li);
  __m512 om = _mm512_sub_ps(k.one, sv);
  __m512 c = _mm512_max_ps(om, k.zero);
  __mmask16 gt = _mm512_cmp_ps_mask(om, k.zero, _CMP_GT_OQ);
  __mmask16 eq = _mm512_cmp_ps_mask(om, k.zero, _CMP_EQ_OQ);
  __m512 dcds = _mm512_mask_mov_ps(_mm512_maskz_mov_ps(gt, k.m1), eq, k.mhalf);
  /* the side's constants: w = A + B c, z = (G max(w, 0)) (Q - c),
   * dz/dc = K (U + B c) where w > 0 */
  __m512 A = _mm512_mask_blend_ps(same, k.opn, k.mg);
  __m512 B = _mm512_mask_blend_ps(same, k.m1, k.one);
  __m512 G = _mm512_mask_blend_ps(same, k.gam, k.ngam);
  __m512 Q = _mm512_mask_blend_ps(same, k.dln, k.mg);
  __m512 K = _mm512_mask_blend_ps(same, k.ng2, k.g2);
  __m512 U = _mm512_maskz_mov_ps((__mmask16)~same, k.one);
  __m512 w = _mm512_fmadd_ps(B, c, A);
  __mmask16 act = _mm512_cmp_ps_mask(w, k.zero, _CMP_GT_OQ);
  __m512 z = _mm512_mul_ps(_mm512_mul_ps(G, _mm512_max_ps(w, k.zero)),
                           _mm512_sub_ps(Q, c));
  __m512 dz = _mm512_maskz_mul_ps(act, K, _mm512_fmadd_ps(B, c, U));
  dz = _mm512_mul_ps(dz, dcds);
  /* e^z = p 2^kz */
  __m512 tt = _mm512_fmadd_ps(z, k.log2e, k.shift);
  __m512 kd = _mm512_sub_ps(tt, k.shift);
  __m512i kz = _mm512_sub_epi32(_mm512_castps_si512(tt),
                                _mm512_castps_si512(k.shift));
  __m512 r = _mm512_fnmadd_ps(kd, k.c1, z);
  r = _mm512_fnmadd_ps(kd, k.c2, r);
  __m512 p = _mm512_fmadd_ps(k.q7, r, k.q6);
  p = _mm512_fmadd_ps(p, r, k.q5);
  p = _mm512_fmadd_ps(p, r, k.q4);
  p = _mm512_fmadd_ps(p, r, k.q3);
  p = _mm512_fmadd_ps(p, r, k.pt5);
  p = _mm512_fmadd_ps(p, r, k.one);
  p = _mm512_fmadd_ps(p, r, k.one);
  /* the row's and the column's factors and scales */
  __m512i ei = _mm512_sub_epi32(kz, _mm512_mask_blend_epi32(same, k.kni, k.kpi));
  __m512i kj = _mm512_mask_blend_epi32(same, LD_EPI(x->hk_n + j),
                                       LD_EPI(x->hk_p + j));
  __m512i ej = _mm512_sub_epi32(kz, kj);
  __mmask16 oki = _mm512_cmpgt_epi32_mask(ei, k.lo);
  __mmask16 okj = _mm512_cmpgt_epi32_mask(ej, k.lo);
  __m512 si = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(ei, k.b127), 23));
  __m512 sj = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(ej, k.b127), 23));
  __m512 fj = _mm512_mask_blend_ps(same, LD_PS(x->hf_n + j), LD_PS(x->hf_p + j));
  __m512 ti = _mm512_maskz_mul_ps(oki, _mm512_mask_blend_ps(same, k.fni, k.fpi), si);
  __m512 tj = _mm512_maskz_mul_ps(okj, fj, sj);
  __m512 h = _mm512_mul_ps(_mm512_mul_ps(dz, p), _mm512_add_ps(ti, tj));
  if (full)
    _mm512_storeu_ps(s + j, h);
  else
    _mm512_mask_storeu_ps(s + j, t, h);
#undef LD_PS
#undef LD_EPI
}

__attribute__((target("avx512f"))) static void row_h_v16(
    const struct ctx_f *x, size_t i, float *restrict s, size_t cnt) {
  struct h16 k = {
      .one = _mm512_set1_ps(1.0f), .zero = _mm512_setzero_ps(),
      .gam = _mm512_set1_ps(x->k.gam), .mg = _mm512_set1_ps(x->k.mg),
      .opn = _mm512_set1_ps(x->k.opn), .dln = _mm512_set1_ps(x->k.dln),
      .ngam = _mm512_set1_ps(-x->k.gam), .g2 = _mm512_set1_ps(2.0f * x->k.gam),
      .ng2 = _mm512_set1_ps(-2.0f * x->k.gam), .pt5 = _mm512_set1_ps(0.5f),
      .m1 = _mm512_set1_ps(-1.0f), .mhalf = _mm512_set1_ps(-0.5f),
      .log2e = _mm512_set1_ps(1.44269504f), .shift = _mm512_set1_ps(0x1.8p23f),
      .c1 = _mm512_set1_ps(0.693359375f), .c2 = _mm512_set1_ps(-2.12194440e-4f),
      .q7 = _mm512_set1_ps(1.0f / 5040.0f), .q6 = _mm512_set1_ps(1.0f / 720.0f),
      .q5 = _mm512_set1_ps(1.0f / 120.0f), .q4 = _mm512_set1_ps(1.0f / 24.0f),
      .q3 = _mm512_set1_ps(1.0f / 6.0f), .fpi = _mm512_set1_ps(x->hf_p[i]),
      .fni = _mm512_set1_ps(x->hf_n[i]), .b127 = _mm512_set1_epi32(127),
      .lo = _mm512_set1_epi32(-127), .kpi = _mm512_set1_epi32(x->hk_p[i]),
      .kni = _mm512_set1_epi32(x->hk_n[i]), .li = _mm512_set1_epi32(x->lx[i])};
  size_t j = 0;
  for (; j + 16 <= cnt; j += 16) h_chunk(&k, x, s, j, true, 0xffff);
  if (j < cnt)
    h_chunk(&k, x, s, j, false, (__mmask16)((1u << (cnt - j)) - 1));
  /* with remove_diagonal (i, i) is neither positive nor negative */
  if (x->rd && i < cnt) s[i] = 0;
}

/* z of 16 pairs at similarities sv, positive side where same (pair_z with
 * each side's constants blended: w = A + B c, z = (G max(w, 0)) (Q - c),
 * the same operations in the same order as either side's formula). */
__attribute__((target("avx512f"))) static inline __m512 pair_z_v16(
    const struct ctx_f *x, __m512 sv, __mmask16 same) {
  const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
  __m512 c = _mm512_max_ps(_mm512_sub_ps(one, sv), zero);
  __m512 A = _mm512_mask_blend_ps(same, _mm512_set1_ps(x->k.opn),
                                  _mm512_set1_ps(x->k.mg));
  __m512 B = _mm512_mask_blend_ps(same, _mm512_set1_ps(-1.0f), one);
  __m512 G = _mm512_mask_blend_ps(same, _mm512_set1_ps(x->k.gam),
                                  _mm512_set1_ps(-x->k.gam));
  __m512 Q = _mm512_mask_blend_ps(same, _mm512_set1_ps(x->k.dln),
                                  _mm512_set1_ps(x->k.mg));
  __m512 w = _mm512_fmadd_ps(B, c, A);
  return _mm512_mul_ps(_mm512_mul_ps(G, _mm512_max_ps(w, zero)),
                       _mm512_sub_ps(Q, c));
}

/* exp_split_f on 16 lanes: e^z = p 2^k. */
__attribute__((target("avx512f"))) static inline __m512 exp_split_v16(
    __m512 z, __m512i *k) {
  const __m512 shift = _mm512_set1_ps(0x1.8p23f), one = _mm512_set1_ps(1.0f);
  __m512 tt = _mm512_fmadd_ps(z, _mm512_set1_ps(1.44269504f), shift);
  __m512 kd = _mm512_sub_ps(tt, shift);
  *k = _mm512_sub_epi32(_mm512_castps_si512(tt), _mm512_castps_si512(shift));
  __m512 r = _mm512_fnmadd_ps(kd, _mm512_set1_ps(0.693359375f), z);
  r = _mm512_fnmadd_ps(kd, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.0f / 5040.0f), r,
                             _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, one);
  return _mm512_fmadd_ps(p, r, one);
}

/* f 2^e where e > lim, else 0 (e <= 127). */
__attribute__((target("avx512f"))) static inline __m512 scale_v16(
    __m512 f, __m512i e, int lim) {
  __mmask16 ok = _mm512_cmpgt_epi32_mask(e, _mm512_set1_epi32(lim));
  __m512 s = _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_add_epi32(e, _mm512_set1_epi32(127)), 23));
  return _mm512_maskz_mul_ps(ok, f, s);
}

/* tile_lse for float32 in AVX-512 (loss_impl.h says what a tile's partials
 * are). Sweep 2 takes one polynomial per pair: e^(z - base) =
 * (p f) 2^(k - kb) for e^z = p 2^k and e^-base = f 2^-kb, the row's and
 * the column's base alike. Row sums run in 16 lanes, the tail chunk
 * masked, reduced by _mm512_reduce_add_ps; column sums in row order. Leaves
 * the row partials in the scratch's tmp, tmn, tsp, tsn for tile_rows_merge.
 * Returns false, having computed nothing that counts, when a maximum or
 * gamma m^2 is past SPLIT_MAX: the caller then runs tile_lse. */
/* The lanes of chunk c0 that are pairs, and of those the positives
 * (same label, (i, i) removed where diag says the self pair may be here)
 * and the negatives. */
__attribute__((target("avx512f"), always_inline)) static inline __mmask16
pair_sides(const int32_t *restrict lj, __m512i li, size_t self_c, size_t c0,
           bool full, bool diag, __mmask16 t, __mmask16 *pos, __mmask16 *neg) {
  __m512i lab = full ? _mm512_loadu_si512(lj + c0)
                     : _mm512_maskz_loadu_epi32(t, lj + c0);
  __mmask16 same = full ? _mm512_cmpeq_epi32_mask(lab, li)
                        : _mm512_mask_cmpeq_epi32_mask(t, lab, li);
  __mmask16 self = diag && self_c - c0 < 16 ? (__mmask16)(1u << (self_c - c0)) : 0;
  *pos = same & (__mmask16)~self;
  *neg = (full ? (__mmask16)0xffff : t) & (__mmask16)~same;
  return same;
}

/* Sweep 1 of tile_lse_v16 on chunk c0 of a row: z stored, the row's
 * maxima in mp, mn, the columns' in cmp, cmn. */
__attribute__((target("avx512f"), always_inline)) static inline void lse_sweep1(
    const struct ctx_f *x, const float *restrict s, float *restrict z,
    const int32_t *restrict lj, __m512i li, size_t self_c, size_t c0,
    bool full, bool diag, __mmask16 t, __m512 *mp, __m512 *mn,
    float *restrict cmp, float *restrict cmn) {
  __mmask16 pos, neg;
  __mmask16 same = pair_sides(lj, li, self_c, c0, full, diag, t, &pos, &neg);
  __m512 sv = full ? _mm512_loadu_ps(s + c0) : _mm512_maskz_loadu_ps(t, s + c0);
  __m512 zv = pair_z_v16(x, sv, same);
  __m512 cp = full ? _mm512_loadu_ps(cmp + c0) : _mm512_maskz_loadu_ps(t, cmp + c0);
  __m512 cn = full ? _mm512_loadu_ps(cmn + c0) : _mm512_maskz_loadu_ps(t, cmn + c0);
  *mp = _mm512_mask_max_ps(*mp, pos, *mp, zv);
  *mn = _mm512_mask_max_ps(*mn, neg, *mn, zv);
  cp = _mm512_mask_max_ps(cp, pos, cp, zv);
  cn = _mm512_mask_max_ps(cn, neg, cn, zv);
  if (full) {
    _mm512_storeu_ps(z + c0, zv);
    _mm512_storeu_ps(cmp + c0, cp);
    _mm512_storeu_ps(cmn + c0, cn);
  } else {
    _mm512_mask_storeu_ps(z + c0, t, zv);
    _mm512_mask_storeu_ps(cmp + c0, t, cp);
    _mm512_mask_storeu_ps(cmn + c0, t, cn);
  }
}

/* Sweep 2 of tile_lse_v16 on chunk c0 of a row: e^(z - base) summed into
 * the row's sp, sn (row bases rf 2^-rk) and the columns' csp, csn (column
 * bases cfp/cfn 2^-ckp/ckn). */
__attribute__((target("avx512f"), always_inline)) static inline void lse_sweep2(
    const float *restrict z, const int32_t *restrict lj, __m512i li,
    size_t self_c, size_t c0, bool full, bool diag, __mmask16 t, __m512 rfp,
    __m512 rfn, __m512i rkp, __m512i rkn, const float *restrict cfp,
    const float *restrict cfn, const int32_t *restrict ckp,
    const int32_t *restrict ckn, __m512 *sp, __m512 *sn, float *restrict csp,
    float *restrict csn) {
#define LD_PS(p) (full ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(t, p))
#define LD_EPI(p) (full ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi32(t, p))
  __mmask16 pos, neg;
  __mmask16 same = pair_sides(lj, li, self_c, c0, full, diag, t, &pos, &neg);
  __m512 zv = LD_PS(z + c0);
  __m512i kz;
  __m512 p = exp_split_v16(zv, &kz);
  __m512 er = scale_v16(_mm512_mul_ps(p, _mm512_mask_blend_ps(same, rfn, rfp)),
                        _mm512_sub_epi32(kz, _mm512_mask_blend_epi32(same, rkn, rkp)),
                        -125);
  *sp = _mm512_mask_add_ps(*sp, pos, *sp, er);
  *sn = _mm512_mask_add_ps(*sn, neg, *sn, er);
  __m512 cf = _mm512_mask_blend_ps(same, LD_PS(cfn + c0), LD_PS(cfp + c0));
  __m512i ck = _mm512_mask_blend_epi32(same, LD_EPI(ckn + c0), LD_EPI(ckp + c0));
  __m512 ec = scale_v16(_mm512_mul_ps(p, cf), _mm512_sub_epi32(kz, ck), -125);
  __m512 cs = LD_PS(csp + c0), cn = LD_PS(csn + c0);
  cs = _mm512_mask_add_ps(cs, pos, cs, ec);
  cn = _mm512_mask_add_ps(cn, neg, cn, ec);
  if (full) {
    _mm512_storeu_ps(csp + c0, cs);
    _mm512_storeu_ps(csn + c0, cn);
  } else {
    _mm512_mask_storeu_ps(csp + c0, t, cs);
    _mm512_mask_storeu_ps(csn + c0, t, cn);
  }
#undef LD_PS
#undef LD_EPI
}

/* tile_lse for float32 in AVX-512 (loss_impl.h says what a tile's partials
 * are). Sweep 2 takes one polynomial per pair: e^(z - base) =
 * (p f) 2^(k - kb) for e^z = p 2^k and e^-base = f 2^-kb, the row's and
 * the column's base alike. Row sums run in 16 lanes, reduced by
 * _mm512_reduce_add_ps; column sums in row order. Whole chunks of 16 run
 * unmasked, the tail chunk masked; only the diagonal tile looks for the
 * self pair. Leaves the row partials in the scratch's tmp, tmn, tsp, tsn
 * for tile_rows_merge. Returns false, having computed nothing that counts,
 * when a maximum or gamma m^2 is past SPLIT_MAX: the caller then runs
 * tile_lse. */
__attribute__((target("avx512f"))) static bool tile_lse_v16(
    const struct ctx_f *x, size_t lo, size_t hi, size_t jlo, size_t jhi,
    const float *restrict st, size_t ld, float *restrict zt,
    float *restrict col) {
  const size_t w = jhi - jlo, bs = x->bs, wf = w & ~(size_t)15;
  const __mmask16 tail = (__mmask16)((1u << (w - wf)) - 1);
  const int32_t *restrict lj = x->lx + jlo;
  float *restrict cmp = col, *restrict csp = col + bs,
                  *restrict cmn = col + 2 * bs, *restrict csn = col + 3 * bs;
  float *restrict tmp = zt + bs * bs, *restrict tmn = tmp + bs,
                  *restrict tsp = tmn + bs, *restrict tsn = tsp + bs,
                  *restrict cfp = tsn + bs, *restrict cfn = cfp + bs;
  int32_t *restrict ckp = (int32_t *)(cfn + bs), *restrict ckn = ckp + bs;
  const __m512 ninf = _mm512_set1_ps(-INFINITY), zero = _mm512_setzero_ps();
  const float lim = (float)SPLIT_MAX;
  const bool diag = x->rd && jlo == lo; /* the self pairs are in this tile */
  if (!((double)x->k.gam * x->k.mg * x->k.mg <= SPLIT_MAX)) return false;
  for (size_t c = 0; c < w; c++) {
    cmp[c] = cmn[c] = -INFINITY;
    csp[c] = csn[c] = 0;
  }
  for (size_t i = lo; i < hi; i++) {
    const float *restrict s = st + (i - lo) * ld;
    float *restrict z = zt + (i - lo) * w;
    const __m512i li = _mm512_set1_epi32(x->lx[i]);
    const size_t self_c = i - jlo;
    __m512 mp = ninf, mn = ninf;
    if (i + PF_ROWS < hi) /* the tile's rows are a strip's stride apart */
      for (size_t c0 = 0; c0 < w; c0 += 16)
        _mm_prefetch((const char *)(s + PF_ROWS * ld + c0), _MM_HINT_T0);
    if (diag)
      for (size_t c0 = 0; c0 < wf; c0 += 16)
        lse_sweep1(x, s, z, lj, li, self_c, c0, true, true, 0xffff, &mp, &mn,
                   cmp, cmn);
    else
      for (size_t c0 = 0; c0 < wf; c0 += 16)
        lse_sweep1(x, s, z, lj, li, self_c, c0, true, false, 0xffff, &mp, &mn,
                   cmp, cmn);
    if (wf < w)
      lse_sweep1(x, s, z, lj, li, self_c, wf, false, diag, tail, &mp, &mn,
                 cmp, cmn);
    tmp[i - lo] = _mm512_reduce_max_ps(mp);
    tmn[i - lo] = _mm512_reduce_max_ps(mn);
    if (tmp[i - lo] > lim || tmn[i - lo] > lim) return false;
  }
  for (size_t c = 0; c < w; c++)
    if (cmp[c] > lim || cmn[c] > lim) return false;
  /* the columns' bases: e^-base = f 2^-kb (an empty side's base is 0) */
  for (size_t c0 = 0; c0 < w; c0 += 16) {
    __mmask16 t = w - c0 >= 16 ? (__mmask16)0xffff
                               : (__mmask16)((1u << (w - c0)) - 1);
    for (int side = 0; side < 2; side++) {
      __m512 m = _mm512_maskz_loadu_ps(t, (side ? cmn : cmp) + c0);
      __m512 base = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(m, ninf, _CMP_GT_OQ),
                                         zero, m);
      __m512i k;
      __m512 f = exp_split_v16(_mm512_sub_ps(zero, base), &k);
      _mm512_mask_storeu_ps((side ? cfn : cfp) + c0, t, f);
      _mm512_mask_storeu_epi32((side ? ckn : ckp) + c0, t,
                               _mm512_sub_epi32(_mm512_setzero_si512(), k));
    }
  }
  for (size_t i = lo; i < hi; i++) {
    const float *restrict z = zt + (i - lo) * w;
    const __m512i li = _mm512_set1_epi32(x->lx[i]);
    const size_t self_c = i - jlo;
    float bp = tmp[i - lo] > -INFINITY ? tmp[i - lo] : 0;
    float bn = tmn[i - lo] > -INFINITY ? tmn[i - lo] : 0;
    int32_t kp, kn;
    float fp = exp_split_f(-bp, &kp), fn = exp_split_f(-bn, &kn);
    const __m512 rfp = _mm512_set1_ps(fp), rfn = _mm512_set1_ps(fn);
    const __m512i rkp = _mm512_set1_epi32(-kp), rkn = _mm512_set1_epi32(-kn);
    __m512 sp = zero, sn = zero;
    if (diag)
      for (size_t c0 = 0; c0 < wf; c0 += 16)
        lse_sweep2(z, lj, li, self_c, c0, true, true, 0xffff, rfp, rfn, rkp,
                   rkn, cfp, cfn, ckp, ckn, &sp, &sn, csp, csn);
    else
      for (size_t c0 = 0; c0 < wf; c0 += 16)
        lse_sweep2(z, lj, li, self_c, c0, true, false, 0xffff, rfp, rfn, rkp,
                   rkn, cfp, cfn, ckp, ckn, &sp, &sn, csp, csn);
    if (wf < w)
      lse_sweep2(z, lj, li, self_c, wf, false, diag, tail, rfp, rfn, rkp, rkn,
                 cfp, cfn, ckp, ckn, &sp, &sn, csp, csn);
    tsp[i - lo] = _mm512_reduce_add_ps(sp);
    tsn[i - lo] = _mm512_reduce_add_ps(sn);
  }
  return true;
}

static inline bool use_v16_f(void) {
  return __builtin_cpu_supports("avx512f");
}
#define row_h_v16_f row_h_v16
#define tile_lse_v16_f tile_lse_v16
#else
static inline bool use_v16_f(void) { return false; }
#define row_h_v16_f(x, i, s, cnt) (void)0
#define tile_lse_v16_f(x, lo, hi, jlo, jhi, st, ld, zt, col) false
#endif
/* float64 keeps the C loops. */
static inline bool use_v16_d(void) { return false; }
#define row_h_v16_d(x, i, s, cnt) (void)0
#define tile_lse_v16_d(x, lo, hi, jlo, jhi, st, ld, zt, col) false

#define T float
#define LANES 16
#define F(name) CIRCLE__CAT(name, f)
#define GEMM cblas_sgemm
#define SYRK cblas_ssyrk
#define EXPT exp_f
#define IT int32_t
#define EXPSPLIT exp_split_f
#define POW2I pow2i_f
#define EXPLIB expf
#define LOGT logf
#define LOG1PT log1pf
#define SQRTT sqrtf
#define TMIN FLT_MIN
#include "loss_impl.h"
#undef T
#undef LANES
#undef F
#undef GEMM
#undef SYRK
#undef EXPT
#undef IT
#undef EXPSPLIT
#undef POW2I
#undef EXPLIB
#undef LOGT
#undef LOG1PT
#undef SQRTT
#undef TMIN

#define T double
#define LANES 8
#define F(name) CIRCLE__CAT(name, d)
#define GEMM cblas_dgemm
#define SYRK cblas_dsyrk
#define EXPT exp_d
#define IT int64_t
#define EXPSPLIT exp_split_d
#define POW2I pow2i_d
#define EXPLIB exp
#define LOGT log
#define LOG1PT log1p
#define SQRTT sqrt
#define TMIN DBL_MIN
#include "loss_impl.h"
#undef T
#undef LANES
#undef F
#undef GEMM
#undef SYRK
#undef EXPT
#undef IT
#undef EXPSPLIT
#undef POW2I
#undef EXPLIB
#undef LOGT
#undef LOG1PT
#undef SQRTT
#undef TMIN

/* ---- planning ----------------------------------------------------------- */

typedef struct {
  bool self, materialize, normalize;
  bool extras; /* stats or retrieval: per-row work over whole rows */
  bool tri;    /* self-reference, pass 1 over the lower triangle (always,
                  but streamed with extras: their whole rows come from a
                  full-row pass 1 then) */
  size_t n, m, d, bs, esz, nth;
  /* byte offsets of each scratch array in one allocation */
  size_t wide, ld, off_ids, off_sort, off_cls, off_ebuf, off_rows, off_hrow, off_vd,
      off_coef, off_stats, off_ret, off_cand, off_xn, off_rn, off_inv_x,
      off_inv_r, off_s, off_xc, off_rst, off_part, off_zt, off_rowbuf,
      off_next, off_yb, ybb, ybn, off_keep, keep_from, total;
  size_t cb; /* materialized self-reference: blocks a gradient chunk */
} plan;

/* Blocks of H[b, J]^T X_b a streamed gradient pass forms at a time (about
 * 2048 rows): one product serves several blocks' turns, and each thread's
 * buffer stays a few MiB where all of n x d would take room the kept
 * strips could use. A product has at most min(blocks x bs, n - 1) rows. */
static size_t yb_blocks(size_t bs) { return bs < 2048 ? 2048 / bs : 1; }

static bool add_bytes(size_t *total, size_t *off, size_t count, size_t size) {
  size_t bytes;
  if (__builtin_mul_overflow(count, size, &bytes)) return false;
  bytes = (bytes + 63) & ~(size_t)63;
  *off = *total;
  return !__builtin_add_overflow(*total, bytes, total);
}

static bool plan_for(const circle_engine *e, const circle_config *cfg,
                     const circle_input *in, unsigned want, unsigned nth,
                     bool keep, plan *p);

/* Works out the layout of the scratch memory. False on overflow. */
static bool make_plan(const circle_engine *e, const circle_config *cfg,
                      const circle_input *in, unsigned want, plan *p) {
  return plan_for(e, cfg, in, want, circle_engine_threads(e), true, p);
}

/* make_plan for nth threads; without keep, no strips are kept. */
static bool plan_for(const circle_engine *e, const circle_config *cfg,
                     const circle_input *in, unsigned want, unsigned nth,
                     bool keep, plan *p) {
  const circle_engine_opts *o = circle__engine_opts(e);
  *p = (plan){0};
  p->self = in->ref_embeddings == NULL;
  p->n = in->n;
  p->m = p->self ? in->n : in->m;
  p->d = in->d;
  p->esz = circle_dtype_size(cfg->dtype);
  p->nth = nth;
  p->normalize = cfg->normalize;
  p->bs = o->block_rows ? o->block_rows
                      : (p->n <= 512 ? 32 : p->n <= 2048 ? 128 : 256);
  size_t nm, n4;
  if (__builtin_mul_overflow(p->n, p->m, &nm)) return false;
  p->keep_from = SIZE_MAX; /* no kept strips unless streamed, see below */
  if (__builtin_mul_overflow(p->n, (size_t)4, &n4)) return false;
  p->materialize = nm <= o->materialize_bytes / p->esz;
  bool need_grad = want & (CIRCLE_OUT_GRAD | CIRCLE_OUT_REF_GRAD);
  size_t t = 0, nd, md;
  if (__builtin_mul_overflow(p->n, p->d, &nd)) return false;
  if (__builtin_mul_overflow(p->m, p->d, &md)) return false;
  size_t nm_rows;
  if (__builtin_add_overflow(p->n, p->self ? 0 : p->m, &nm_rows)) return false;
  p->wide = p->m > p->n ? p->m : p->n;
  size_t cls_all, cand_all = 0;
  if (__builtin_mul_overflow(p->wide, p->nth, &cls_all)) return false;
  if ((want & CIRCLE_OUT_RETRIEVAL) &&
      (__builtin_mul_overflow(p->m + 1, 2 * p->nth, &cand_all)))
    return false;
  bool ok = add_bytes(&t, &p->off_ids, nm_rows, sizeof(int32_t)) &&
            add_bytes(&t, &p->off_sort, nm_rows, sizeof(int64_t)) &&
            add_bytes(&t, &p->off_cls, cls_all, p->esz) &&
            add_bytes(&t, &p->off_ebuf, cls_all, p->esz) &&
            add_bytes(&t, &p->off_rows, n4 + 2 * p->n, p->esz) &&
            add_bytes(&t, &p->off_hrow, n4, p->esz) &&
            add_bytes(&t, &p->off_vd, p->n * 2, sizeof(double)) &&
            add_bytes(&t, &p->off_coef, p->n, sizeof(double)) &&
            add_bytes(&t, &p->off_stats,
                      (want & CIRCLE_OUT_STATS) ? p->n : 0, sizeof(row_stats)) &&
            add_bytes(&t, &p->off_ret,
                      (want & CIRCLE_OUT_RETRIEVAL) ? p->n : 0,
                      sizeof(row_retrieval)) &&
            /* a candidate: a T and a uint32_t, padded to 2 T */
            add_bytes(&t, &p->off_cand, cand_all, 2 * p->esz) &&
            add_bytes(&t, &p->off_xn, p->normalize ? nd : 0, p->esz) &&
            add_bytes(&t, &p->off_rn, p->normalize && !p->self ? md : 0,
                      p->esz) &&
            add_bytes(&t, &p->off_inv_x, p->normalize ? p->n : 0, p->esz) &&
            add_bytes(&t, &p->off_inv_r, p->normalize && !p->self ? p->m : 0,
                      p->esz);
  if (!ok) return false;
  /* The lower triangle's scratch: 4 row states per row, 4 column partials
   * per column of each tile below the diagonal (and one spare tile a
   * thread), a tile of z and 7 bs values a thread. */
  p->extras = (want & (CIRCLE_OUT_STATS | CIRCLE_OUT_RETRIEVAL)) != 0;
  p->tri = p->self && (p->materialize || !p->extras);
  if (p->tri) {
    size_t nb = (p->n + p->bs - 1) / p->bs, tiles, part, zt;
    if (__builtin_mul_overflow(nb, nb - 1, &tiles) ||
        __builtin_add_overflow(tiles / 2, p->nth, &tiles) ||
        __builtin_mul_overflow(tiles, p->bs, &part) ||
        __builtin_mul_overflow(part, (size_t)4, &part) ||
        __builtin_mul_overflow(p->bs, p->bs + 8, &zt) ||
        __builtin_mul_overflow(zt, p->nth, &zt))
      return false;
    ok = add_bytes(&t, &p->off_rst, n4, p->esz) &&
         add_bytes(&t, &p->off_part, part, p->esz) &&
         add_bytes(&t, &p->off_zt, zt, p->esz);
    if (!ok) return false;
  }
  if (p->materialize) {
    /* Pass 1 and the gradient's products run over chunks of n / 8 rows,
     * at least 256 and at most 1024 (blk_tri_lse_chunk, blk_tri_dx): a
     * product a block re-packed X for every block of bs rows, 10-20% of a
     * gemm's time at d = 512. Larger chunks pack less but leave fewer
     * tasks to share among threads: n / 8 keeps at least 8 from n = 2048
     * (4 at n = 1024). The chunks depend on n alone, never on the thread
     * count, so they change no bit between thread counts. */
    size_t nbk = (p->n + p->bs - 1) / p->bs, rows = p->n / 8;
    if (rows < 256) rows = 256;
    if (rows > 1024) rows = 1024;
    p->cb = rows / p->bs ? rows / p->bs : 1;
    if (p->cb > nbk) p->cb = nbk;
    /* A row stride that is a multiple of 4 KiB makes the column walks of
     * mirror and symmetrize hit one cache set; pad it by a cache line. */
    p->ld = (p->m * p->esz) % 4096 == 0 ? p->m + 64 / p->esz : p->m;
    size_t nld;
    if (__builtin_mul_overflow(p->n, p->ld, &nld)) return false;
    /* Row extras over the lower triangle: a block of whole rows a thread. */
    size_t rowbuf = 0;
    if (p->tri && p->extras &&
        (__builtin_mul_overflow(p->bs, p->n, &rowbuf) ||
         __builtin_mul_overflow(rowbuf, p->nth, &rowbuf)))
      return false;
    ok = add_bytes(&t, &p->off_s, nld, p->esz) &&
         add_bytes(&t, &p->off_xc,
                   (!p->self && (want & CIRCLE_OUT_REF_GRAD)) ? nd : 0,
                   p->esz) &&
         add_bytes(&t, &p->off_rowbuf, rowbuf, p->esz);
  } else {
    size_t wide = p->m;
    if (need_grad && !p->self && p->n > wide) wide = p->n;
    size_t per, all;
    if (__builtin_mul_overflow(p->bs, wide, &per) ||
        __builtin_mul_overflow(per, p->nth, &all))
      return false;
    ok = add_bytes(&t, &p->off_s, all, p->esz) &&
         add_bytes(&t, &p->off_xc, 0, p->esz);
    /* Streamed self-reference with gradients (pass 2 is always the lower
     * triangle's): a turn counter a block and a buffer of ybb blocks
     * (at most n rows) x d a thread for the strip's column contributions. */
    if (ok && p->self && need_grad) {
      size_t nb = (p->n + p->bs - 1) / p->bs, yb;
      p->ybb = yb_blocks(p->bs);
      p->ybn = p->bs < p->n / p->ybb ? p->ybb * p->bs : p->n;
      if (__builtin_mul_overflow(p->ybn, p->d, &yb) ||
          __builtin_mul_overflow(yb, p->nth, &yb))
        return false;
      ok = add_bytes(&t, &p->off_next, nb, sizeof(atomic_size_t)) &&
           add_bytes(&t, &p->off_yb, yb, p->esz);
      /* Strips kept from pass 1 for pass 2, the last (largest) first, as
       * many as fit in what the materialize limit and an eighth more
       * leave beside the rest of this call's scratch, so the whole buffer
       * stays cached between calls (pool.c; a buffer past that limit is
       * mapped and faulted in again on every call): pass 2 computes only
       * the others again. Keeping a strip changes no bit of the results,
       * so the kept set may depend on the thread count. Packed, each
       * strip its own width. */
      plan one;
      if (ok && keep && plan_for(e, cfg, in, want, nth, false, &one)) {
        size_t mb = o->materialize_bytes, t1 = one.total;
        size_t cap = mb > SIZE_MAX / 9 * 8 ? SIZE_MAX : mb + mb / 8;
        size_t room = cap > t1 ? (cap - t1) / p->esz : 0, used = 0;
        p->keep_from = nb;
        while (p->keep_from > 0) {
          size_t b = p->keep_from - 1, lo = b * p->bs;
          size_t hi = lo + p->bs < p->n ? lo + p->bs : p->n;
          size_t add = (hi - lo) * hi; /* no overflow: hi <= n, n*n fits */
          if (used + add > room) break;
          used += add;
          p->keep_from = b;
        }
        ok = add_bytes(&t, &p->off_keep, used, p->esz);
      }
    }
  }
  if (!ok) return false;
  p->total = t;
  return true;
}

size_t circle_loss_scratch_bytes(const circle_engine *engine,
                                 const circle_config *cfg,
                                 const circle_input *in, unsigned want) {
  if (engine == NULL || cfg == NULL || in == NULL) return 0;
  if (circle_dtype_size(cfg->dtype) == 0) return 0;
  plan p;
  if (!make_plan(engine, cfg, in, want, &p)) return 0;
  return p.total;
}

/* ---- labels --------------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* Maps labels (and ref labels, if any) to dense int32 ids, equal exactly
 * when the int64 labels are equal: ids[0..n) for labels, ids[n..n+m) for
 * ref labels. sorted is scratch for n + m values. */
static void label_ids(const int64_t *labels, size_t n, const int64_t *ref,
                      size_t m, int32_t *ids, int64_t *sorted) {
  size_t total = n + (ref ? m : 0), u = 0;
  memcpy(sorted, labels, n * sizeof *sorted);
  if (ref) memcpy(sorted + n, ref, m * sizeof *sorted);
  qsort(sorted, total, sizeof *sorted, cmp_i64);
  for (size_t k = 0; k < total; k++)
    if (u == 0 || sorted[k] != sorted[u - 1]) sorted[u++] = sorted[k];
  for (size_t k = 0; k < total; k++) {
    int64_t key = k < n ? labels[k] : ref[k - n];
    size_t lo = 0, hi = u;
    while (lo < hi) {
      size_t mid = lo + (hi - lo) / 2;
      if (sorted[mid] < key) lo = mid + 1; else hi = mid;
    }
    ids[k] = (int32_t)lo;
  }
}

/* ---- reduction (serial, row order) -------------------------------------- */

/* Keras' Loss.__call__ for the class form: mask = v > 0 merged into the
 * sample weights (apply_mask), then reduce_values. Fills coef[i] =
 * d loss / d v_i and returns the scalar loss (unused for elementwise). */
static double reduce_rows(const circle_config *cfg, size_t n,
                          const double *v, const double *w, double *coef) {
  size_t valid = 0;
  for (size_t i = 0; i < n; i++) valid += v[i] > 0;
  double mask_weight = 1.0, divisor = 1.0;
  switch (cfg->reduction) {
    case CIRCLE_REDUCTION_SUM_OVER_BATCH_SIZE:
    case CIRCLE_REDUCTION_MEAN:
      /* divide_no_nan(total, valid), then sum / total */
      mask_weight = valid > 0 ? (double)n / (double)valid : 0.0;
      divisor = (double)n;
      break;
    case CIRCLE_REDUCTION_MEAN_WITH_SAMPLE_WEIGHT: {
      double sw = 0;
      for (size_t i = 0; i < n; i++) sw += v[i] > 0 ? (w ? w[i] : 1.0) : 0.0;
      divisor = sw; /* divide_no_nan: 0 when no weight remains */
      break;
    }
    default:
      break;
  }
  double loss = 0;
  for (size_t i = 0; i < n; i++) {
    double sw = v[i] > 0 ? (w ? w[i] : 1.0) * mask_weight : 0.0;
    coef[i] = divisor != 0 ? sw / divisor : 0.0;
    loss += v[i] * sw;
  }
  return divisor != 0 ? loss / divisor : 0.0;
}

static void reduce_stats(const row_stats *rs, size_t n, const double *v,
                         circle_stats *st) {
  *st = (circle_stats){0};
  double pos_sum = 0, neg_sum = 0, min_pos = INFINITY, max_neg = -INFINITY;
  uint64_t pos_cnt = 0, neg_cnt = 0, hard = 0, hard_den = 0, nn_same = 0,
           nn_rows = 0, pos_rows = 0;
  double dev_sum = 0, dev_max = 0;
  for (size_t i = 0; i < n; i++) {
    const row_stats *r = &rs[i];
    pos_rows += v[i] > 0;
    pos_sum += r->pos_sum;
    neg_sum += r->neg_sum;
    pos_cnt += r->pos_cnt;
    neg_cnt += r->neg_cnt;
    if (r->pos_cnt && r->min_pos < min_pos) min_pos = r->min_pos;
    if (r->neg_cnt && r->max_neg > max_neg) max_neg = r->max_neg;
    if (r->pos_cnt) {
      hard += r->hard_neg;
      hard_den += r->neg_cnt;
    }
    if (r->nn_sim > -INFINITY) {
      nn_rows++;
      nn_same += r->nn_same;
    }
    double dev = r->norm_dev;
    dev_sum += dev;
    if (dev > dev_max) dev_max = dev;
  }
  st->pos_row_frac = (double)pos_rows / (double)n;
  st->pos_pairs = pos_cnt;
  st->neg_pairs = neg_cnt;
  st->mean_pos_sim = pos_cnt ? pos_sum / (double)pos_cnt : 0;
  st->mean_neg_sim = neg_cnt ? neg_sum / (double)neg_cnt : 0;
  st->min_pos_sim = pos_cnt ? min_pos : 0;
  st->max_neg_sim = neg_cnt ? max_neg : 0;
  st->sim_gap = (pos_cnt && neg_cnt) ? st->mean_pos_sim - st->mean_neg_sim : 0;
  st->hard_neg_frac = hard_den ? (double)hard / (double)hard_den : 0;
  st->hard_neg_base = hard_den;
  st->nn_rows = nn_rows;
  st->recall_at_1 = nn_rows ? (double)nn_same / (double)nn_rows : 0;
  st->norm_dev_mean = dev_sum / (double)n;
  st->norm_dev_max = dev_max;
}

/* Mean of the per-row retrieval figures over the rows that are queries, in
 * row order. */
static void reduce_retrieval(const row_retrieval *rr, size_t n,
                             circle_retrieval *out) {
  double p1 = 0, rp = 0, ap = 0;
  uint64_t q = 0;
  for (size_t i = 0; i < n; i++) {
    if (!rr[i].query) continue;
    q++;
    p1 += rr[i].p1;
    rp += rr[i].rp;
    ap += rr[i].ap;
  }
  *out = (circle_retrieval){0};
  out->queries = q;
  if (q == 0) return;
  out->precision_at_1 = p1 / (double)q;
  out->r_precision = rp / (double)q;
  out->map_at_r = ap / (double)q;
}

/* ---- the driver ---------------------------------------------------------- */

#define DEFINE_COMPUTE(T, SUF)                                                 \
  static void CIRCLE__CAT(compute, SUF)(circle_engine * e,                     \
                                        const circle_config *cfg,              \
                                        const circle_input *in,                \
                                        circle_output *out, const plan *p,     \
                                        char *mem) {                           \
    struct CIRCLE__CAT(ctx, SUF) x = {0};                                      \
    struct CIRCLE__CAT(norm_job, SUF) nj = {0};                                \
    unsigned want = out->want;                                                 \
    x.k.gam = (T)cfg->gamma;                                                   \
    x.k.mg = (T)cfg->margin;                                                   \
    x.k.opn = (T)(1.0 + cfg->margin);                                          \
    x.k.dln = (T)(1.0 - cfg->margin);                                          \
    x.rd = cfg->remove_diagonal;                                               \
    x.self = p->self;                                                          \
    x.want = want;                                                             \
    x.n = p->n, x.m = p->m, x.d = p->d, x.bs = p->bs, x.ld = p->ld;            \
    x.lx = (int32_t *)(mem + p->off_ids);                                      \
    x.lr = p->self ? x.lx : x.lx + p->n;                                       \
    x.cls = (T *)(mem + p->off_cls);                                           \
    x.ebuf = (T *)(mem + p->off_ebuf);                                         \
    x.wide = p->wide;                                                          \
    label_ids(in->labels, p->n, p->self ? NULL : in->ref_labels, p->m,         \
              (int32_t *)(mem + p->off_ids), (int64_t *)(mem + p->off_sort));  \
    x.X = x.raw = in->embeddings;                                              \
    x.R = p->self ? in->embeddings : in->ref_embeddings;                       \
    x.lse_p = (T *)(mem + p->off_rows);                                        \
    x.lse_n = x.lse_p + p->n;                                                  \
    x.v = x.lse_n + p->n;                                                      \
    x.sig = x.v + p->n;                                                        \
    x.cf = x.sig + p->n;                                                       \
    x.csig = x.cf + p->n;                                                      \
    x.v16 = CIRCLE__CAT(use_v16, SUF)() && circle__engine_simd(e);             \
    x.hf_p = (T *)(mem + p->off_hrow);                                         \
    x.hf_n = x.hf_p + p->n;                                                    \
    x.hk_p = (void *)(x.hf_n + p->n);                                          \
    x.hk_n = x.hk_p + p->n;                                                    \
    x.coef = (double *)(mem + p->off_coef);                                    \
    x.stats = (row_stats *)(mem + p->off_stats);                               \
    x.ret = (row_retrieval *)(mem + p->off_ret);                               \
    x.cand = mem + p->off_cand;                                                \
    x.rowbuf = (T *)(mem + p->off_rowbuf);                                     \
    x.S = (T *)(mem + p->off_s);                                               \
    x.Xc = (T *)(mem + p->off_xc);                                             \
    x.dX = out->grad;                                                          \
    x.dR = out->ref_grad;                                                      \
    x.norm_job = &nj;                                                          \
    size_t nb = (p->n + p->bs - 1) / p->bs;                                    \
    x.nb = nb;                                                                 \
    x.cb = p->cb;                                                              \
    x.mat = p->materialize;                                                    \
    x.rst = (T *)(mem + p->off_rst);                                           \
    x.part = (T *)(mem + p->off_part);                                         \
    x.zt = (T *)(mem + p->off_zt);                                             \
    x.next = (atomic_size_t *)(mem + p->off_next);                             \
    x.yb = (T *)(mem + p->off_yb);                                             \
    x.ybb = p->ybb, x.ybn = p->ybn;                                            \
    x.keep = (T *)(mem + p->off_keep);                                         \
    x.keep_from = p->keep_from;                                                \
    size_t mb = (p->m + p->bs - 1) / p->bs;                                    \
    bool want_g = want & CIRCLE_OUT_GRAD;                                      \
    bool want_r = !p->self && (want & CIRCLE_OUT_REF_GRAD);                    \
    x.need_g = want_g || want_r;                                               \
    if (p->normalize) {                                                        \
      nj = (struct CIRCLE__CAT(norm_job, SUF)){                                \
          p->n, in->embeddings, (T *)(mem + p->off_xn),                        \
          (T *)(mem + p->off_inv_x), NULL};                                    \
      circle__parallel(e, nb, CIRCLE__CAT(blk_normalize, SUF), &x);            \
      x.X = nj.dst;                                                            \
      x.R = x.X;                                                               \
      if (!p->self) {                                                          \
        nj = (struct CIRCLE__CAT(norm_job, SUF)){                              \
            p->m, in->ref_embeddings, (T *)(mem + p->off_rn),                  \
            (T *)(mem + p->off_inv_r), NULL};                                  \
        circle__parallel(e, mb, CIRCLE__CAT(blk_normalize, SUF), &x);          \
        x.R = nj.dst;                                                          \
      }                                                                        \
    }                                                                          \
    if (p->tri) {                                                              \
      if (p->materialize)                                                      \
        circle__parallel(e, (nb + p->cb - 1) / p->cb,                          \
                         CIRCLE__CAT(blk_tri_lse_chunk, SUF), &x);             \
      else                                                                     \
        circle__parallel(e, nb, CIRCLE__CAT(blk_tri_lse, SUF), &x);            \
      circle__parallel(e, nb, CIRCLE__CAT(blk_tri_finish, SUF), &x);           \
      if (p->extras)                                                           \
        circle__parallel(e, nb, CIRCLE__CAT(blk_tri_extras, SUF), &x);         \
    } else if (p->materialize) {                                               \
      circle__parallel(e, nb, CIRCLE__CAT(blk_sim_full, SUF), &x);             \
      circle__parallel(e, nb, CIRCLE__CAT(blk_rows_full, SUF), &x);            \
    } else {                                                                   \
      circle__parallel(e, nb, CIRCLE__CAT(blk_rows_stream, SUF), &x);          \
    }                                                                          \
    if (circle__cancelled()) return; /* rows not all done: stop here */       \
    /* Serial reduction in row order, in double. */                            \
    double *vd = (double *)(mem + p->off_vd);                                  \
    double *wd = vd + p->n;                                                    \
    for (size_t i = 0; i < p->n; i++) {                                        \
      vd[i] = (double)x.v[i];                                                  \
      wd[i] = in->sample_weight ? (double)((const T *)in->sample_weight)[i]    \
                                : 1.0;                                         \
    }                                                                          \
    double loss = reduce_rows(cfg, p->n, vd, in->sample_weight ? wd : NULL,    \
                              x.coef);                                         \
    for (size_t i = 0; i < p->n; i++) {                                        \
      x.cf[i] = (T)x.coef[i];                                                  \
      x.csig[i] = x.cf[i] * x.sig[i];                                          \
    }                                                                          \
    if (x.need_g && p->self) CIRCLE__CAT(split_rows, SUF)(&x);                 \
    if (want & CIRCLE_OUT_STATS)                                               \
      reduce_stats(x.stats, p->n, vd, &out->stats);                            \
    if (want & CIRCLE_OUT_RETRIEVAL)                                           \
      reduce_retrieval(x.ret, p->n, &out->retrieval);                          \
    if (x.need_g) {                                                            \
      if (p->materialize) {                                                    \
        if (p->self) {                                                         \
          circle__parallel(e, nb, CIRCLE__CAT(blk_tri_h, SUF), &x);            \
          circle__parallel(e, (nb + p->cb - 1) / p->cb,                        \
                           CIRCLE__CAT(blk_tri_dx, SUF), &x);                  \
        } else {                                                               \
          if (want_g) circle__parallel(e, nb, CIRCLE__CAT(blk_dx_full, SUF), &x); \
          if (want_r) {                                                        \
            circle__parallel(e, nb, CIRCLE__CAT(blk_scale_x, SUF), &x);        \
            circle__parallel(e, mb, CIRCLE__CAT(blk_dr_full, SUF), &x);        \
          }                                                                    \
        }                                                                      \
      } else if (p->self) {                                                    \
        for (size_t b = 0; b < nb; b++) atomic_init(&x.next[b], b);            \
        circle__parallel(e, nb, CIRCLE__CAT(blk_tri_dx_stream, SUF), &x);      \
      } else {                                                                 \
        if (want_g) circle__parallel(e, nb, CIRCLE__CAT(blk_dx_stream, SUF), &x); \
        if (want_r) circle__parallel(e, mb, CIRCLE__CAT(blk_dr_stream, SUF), &x); \
      }                                                                        \
      if (p->normalize) {                                                      \
        if (want_g) {                                                          \
          nj = (struct CIRCLE__CAT(norm_job, SUF)){                            \
              p->n, NULL, (T *)(mem + p->off_xn), (T *)(mem + p->off_inv_x),   \
              out->grad};                                                      \
          circle__parallel(e, nb, CIRCLE__CAT(blk_unnormalize, SUF), &x);      \
        }                                                                      \
        if (want_r) {                                                          \
          nj = (struct CIRCLE__CAT(norm_job, SUF)){                            \
              p->m, NULL, (T *)(mem + p->off_rn), (T *)(mem + p->off_inv_r),   \
              out->ref_grad};                                                  \
          circle__parallel(e, mb, CIRCLE__CAT(blk_unnormalize, SUF), &x);      \
        }                                                                      \
      }                                                                        \
    }                                                                          \
    if (want & CIRCLE_OUT_PER_SAMPLE) {                                        \
      T *ps = out->per_sample;                                                 \
      for (size_t i = 0; i < p->n; i++) ps[i] = x.v[i];                        \
    }                                                                          \
    if (want & CIRCLE_OUT_LOSS) {                                              \
      if (circle_reduction_is_elementwise(cfg->reduction)) {                   \
        T *lv = out->loss_values;                                              \
        for (size_t i = 0; i < p->n; i++)                                      \
          lv[i] = x.v[i] * (x.v[i] > 0 ? (T)wd[i] : (T)0);                     \
      } else {                                                                 \
        out->loss = (double)(T)loss;                                           \
      }                                                                        \
    }                                                                          \
  }

DEFINE_COMPUTE(float, f)
DEFINE_COMPUTE(double, d)

int circle_loss_compute(circle_engine *engine, const circle_config *cfg,
                        const circle_input *in, circle_output *out) {
  if (engine == NULL || out == NULL) return CIRCLE_EINVAL;
  int rc = circle_input_check(cfg, in, NULL, 0);
  if (rc != CIRCLE_OK) return rc;
  return circle__loss_compute_checked(engine, cfg, in, out);
}

int circle__loss_compute_checked(circle_engine *engine,
                                 const circle_config *cfg,
                                 const circle_input *in, circle_output *out) {
  if (engine == NULL || out == NULL) return CIRCLE_EINVAL;
  unsigned want = out->want;
  if (want & ~(unsigned)CIRCLE_OUT_ALL) return CIRCLE_EINVAL;
  if ((want & CIRCLE_OUT_REF_GRAD) && in->ref_embeddings == NULL)
    return CIRCLE_EINVAL;
  if ((want & CIRCLE_OUT_GRAD) && out->grad == NULL) return CIRCLE_EINVAL;
  if ((want & CIRCLE_OUT_REF_GRAD) && out->ref_grad == NULL)
    return CIRCLE_EINVAL;
  if ((want & CIRCLE_OUT_PER_SAMPLE) && out->per_sample == NULL)
    return CIRCLE_EINVAL;
  if ((want & CIRCLE_OUT_LOSS) &&
      circle_reduction_is_elementwise(cfg->reduction) &&
      out->loss_values == NULL)
    return CIRCLE_EINVAL;
  plan p;
  if (!make_plan(engine, cfg, in, want, &p)) return CIRCLE_EOVERFLOW;
  if (p.n > (size_t)INT32_MAX || p.m > (size_t)INT32_MAX ||
      p.d > (size_t)INT32_MAX)
    return CIRCLE_EOVERFLOW; /* cblas takes int dimensions */
  char *mem = circle__scratch_take(engine, p.total);
  if (mem == NULL) return CIRCLE_ENOMEM;
  if (cfg->dtype == CIRCLE_DTYPE_FLOAT32)
    compute_f(engine, cfg, in, out, &p, mem);
  else
    compute_d(engine, cfg, in, out, &p, mem);
  circle__scratch_give(engine, mem, p.total);
  return circle__cancelled() ? CIRCLE_ECANCELED : CIRCLE_OK;
}
