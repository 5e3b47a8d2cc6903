/* loss_impl.h -- the circle loss kernels for one element type, included by
 * loss.c twice (T = float, then T = double). Not a public header.
 *
 * Before including, loss.c defines:
 *   T       the element type            F(name)  name with a type suffix
 *   GEMM    cblas_sgemm / cblas_dgemm   EXPT     exp for T (vectorizable)
 *   SYRK    cblas_ssyrk / cblas_dsyrk
 *   LOG1PT, LOGT, EXPLIB  libm functions for T (per row, not per pair)
 *   TMIN    the smallest normal T (FLT_MIN / DBL_MIN)
 *
 * For one query row i and reference row j (Keras' circle(), losses.py):
 *
 *   c   = max(1 - s_ij, 0)
 *   pos: z = (-gamma * max(m + c, 0))     * (m - c)        dz/dc = 2 gamma c
 *   neg: z = ( gamma * max(1 + m - c, 0)) * (1 - m - c)    dz/dc = -2 gamma (1 - c)
 *   lse_p = logsumexp over positives (-inf when there are none), lse_n alike
 *   v_i = softplus(lse_p + lse_n),  sig_i = sigmoid(lse_p + lse_n)
 *         (both 0 where exp(lse_p + lse_n) is subnormal, as XLA gives)
 *
 * 1 + m and 1 - m are the dtype's rounding of the double sums (opn, dln),
 * as in Keras, not sums of the rounded margin.
 *   G'_ij = d v_i / d s_ij = sig_i * softmax_ij * dz/dc * dc/ds
 *
 * where dc/ds is -1 for s < 1, 0 for s > 1 and -1/2 at s == 1 (JAX splits a
 * tie of max() evenly), and an inactive max(., 0) contributes no slope.
 * Pairs that are neither positive nor negative (i == j with
 * remove_diagonal) are -inf in both sums and get no gradient.
 */

/* Pair classes are stored per row as T (0 neither, 1 positive, 2
 * negative) so every hot loop works on one element width and vectorizes. */
#define CLS_POS(c) ((c) == (T)1)
#define CLS_NEG(c) ((c) == (T)2)
#define CLS_SAME(c) ((c) < (T)1.5) /* positive, or (i,i) removed */

/* Fills cls[0..cnt) for query row i against the reference labels. */
CIRCLE__HOT static void F(row_classes)(const struct F(ctx) *x, size_t i,
                                       T *cls, size_t cnt) {
  const int32_t li = x->lx[i];
  const int32_t *lr = x->lr;
  for (size_t j = 0; j < cnt; j++) cls[j] = lr[j] == li ? (T)1 : (T)2;
  /* remove_diagonal drops (i, i) from the positives only: with a reference
   * set a differently labelled (i, i) stays a negative, as in Keras. */
  if (x->rd && i < cnt && CLS_POS(cls[i])) cls[i] = 0;
}

/* Fills cls[0..n) for reference row j against the query labels. */
CIRCLE__HOT static void F(col_classes)(const struct F(ctx) *x, size_t j,
                                       T *cls) {
  const int32_t lj = x->lr[j];
  const int32_t *lx = x->lx;
  for (size_t i = 0; i < x->n; i++) cls[i] = lx[i] == lj ? (T)1 : (T)2;
  if (x->rd && j < x->n && CLS_POS(cls[j])) cls[j] = 0;
}

/* z for a pair at similarity s: positive side when same, else negative. */
static inline T F(pair_z)(T s, int same, T gam, T mg, T opn, T dln) {
  T c = (T)1 - s;
  c = c > 0 ? c : 0;
  T zp_w = mg + c;
  zp_w = zp_w > 0 ? zp_w : 0;
  T zn_w = opn - c;
  zn_w = zn_w > 0 ? zn_w : 0;
  T zp = (-gam * zp_w) * (mg - c);
  T zn = (gam * zn_w) * (dln - c);
  return same ? zp : zn;
}

/* z of a pair at similarity s and dz/ds = dz/dc dc/ds, where dc/ds is -1
 * for s < 1, 0 for s > 1 and -1/2 at s == 1; the side is the positive one
 * when same. Branch-free (selects only) so the loops that call it
 * vectorize. */
static inline T F(pair_zds)(T s, int same, T gam, T mg, T opn, T dln,
                             T *dzds) {
  T one_minus = (T)1 - s;
  T c = one_minus > 0 ? one_minus : 0;
  T dcds = one_minus > 0 ? (T)-1 : (one_minus == 0 ? (T)-0.5 : (T)0);
  T wp = mg + c, wn = opn - c;
  T zp = (-gam * (wp > 0 ? wp : 0)) * (mg - c);
  T zn = (gam * (wn > 0 ? wn : 0)) * (dln - c);
  T dzp = wp > 0 ? (T)2 * gam * c : 0;
  T dzn = wn > 0 ? (T)-2 * gam * ((T)1 - c) : 0;
  *dzds = (same ? dzp : dzn) * dcds;
  return same ? zp : zn;
}

/* d v_i / d s for one pair of class cls, given row i's scalars. The exp
 * of an unused side may be garbage and is never selected. */
static inline T F(pair_grad)(T s, T cls, T gam, T mg, T opn, T dln,
                             T lse_p, T lse_n, T sig) {
  int same = CLS_SAME(cls);
  T dz, z = F(pair_zds)(s, same, gam, mg, opn, dln, &dz);
  T g = sig * EXPT(z - (same ? lse_p : lse_n)) * dz;
  return cls > (T)0.5 ? g : 0;
}

/* Row i's contribution to the embedding-quality statistics. */
CIRCLE__HOT static void F(row_stats)(struct F(ctx) *x, size_t i, const T *s,
                                     const T *cls) {
  const size_t m = x->m;
  const size_t self_j = x->self ? i : (size_t)-1;
  T ps[LANES], ns[LANES], mnp[LANES], mxn[LANES], pc[LANES], nc[LANES],
      top[LANES];
  for (int l = 0; l < LANES; l++) {
    ps[l] = ns[l] = pc[l] = nc[l] = 0;
    mnp[l] = INFINITY;
    mxn[l] = top[l] = -INFINITY;
  }
  size_t jv = m - m % LANES;
  for (size_t j0 = 0; j0 < jv; j0 += LANES)
    for (int l = 0; l < LANES; l++) {
      size_t j = j0 + (size_t)l;
      /* Selects of values, then plain adds and min/max: written so the
       * compiler emits blends, not masked stores behind branches. */
      T sj = s[j], c = cls[j];
      T pm = CLS_POS(c) ? (T)1 : (T)0, nm = CLS_NEG(c) ? (T)1 : (T)0;
      T sp_ = CLS_POS(c) ? sj : (T)INFINITY, sn_ = CLS_NEG(c) ? sj : (T)-INFINITY;
      T so_ = j != self_j ? sj : (T)-INFINITY;
      ps[l] += sj * pm;
      pc[l] += pm;
      mnp[l] = sp_ < mnp[l] ? sp_ : mnp[l];
      ns[l] += sj * nm;
      nc[l] += nm;
      mxn[l] = sn_ > mxn[l] ? sn_ : mxn[l];
      top[l] = so_ > top[l] ? so_ : top[l];
    }
  row_stats *st = &x->stats[i];
  *st = (row_stats){.min_pos = INFINITY, .max_neg = -INFINITY,
                    .nn_sim = -INFINITY};
  /* The input's norm here, on the row's thread, not in the serial
   * reduction: one pass over the embeddings split across the threads. */
  st->norm_dev = fabs(sqrt(circle__row_norm2(
                          x->raw, i, x->d,
                          sizeof(T) == 4 ? CIRCLE_DTYPE_FLOAT32 : CIRCLE_DTYPE_FLOAT64)) -
                      1.0);
  for (int l = 0; l < LANES; l++) {
    st->pos_sum += ps[l];
    st->neg_sum += ns[l];
    st->pos_cnt += (uint64_t)pc[l];
    st->neg_cnt += (uint64_t)nc[l];
    if (mnp[l] < st->min_pos) st->min_pos = mnp[l];
    if (mxn[l] > st->max_neg) st->max_neg = mxn[l];
  }
  for (size_t j = jv; j < m; j++) {
    T sj = s[j], c = cls[j];
    if (CLS_POS(c)) {
      st->pos_sum += sj;
      st->pos_cnt++;
      if (sj < st->min_pos) st->min_pos = sj;
    } else if (CLS_NEG(c)) {
      st->neg_sum += sj;
      st->neg_cnt++;
      if (sj > st->max_neg) st->max_neg = sj;
    }
  }
  /* Nearest neighbour: the first index of the largest similarity (other
   * than the row itself). The lanes found the largest value; one scan
   * that stops at its first occurrence finds the index, skipping whole
   * blocks of LANES that do not hold it (the row's own pair may, and is
   * then passed over one by one). Similarities are
   * finite, so nothing equals -inf and no neighbour leaves nn at -1. */
  T best = -INFINITY;
  for (int l = 0; l < LANES; l++) best = top[l] > best ? top[l] : best;
  for (size_t j = jv; j < m; j++)
    if (j != self_j && s[j] > best) best = s[j];
  size_t nn = (size_t)-1;
  size_t j1 = 0; /* no block before j1 holds best */
  if (best > -INFINITY)
    for (; j1 < jv; j1 += LANES) {
      int hit = 0; /* one vector compare a block, not one branch a pair */
      for (int l = 0; l < LANES; l++) hit |= s[j1 + (size_t)l] == best;
      if (hit) break;
    }
  for (size_t j = j1; j < m && best > -INFINITY; j++)
    if (j != self_j && s[j] == best) {
      nn = j;
      break;
    }
  st->nn_sim = best;
  st->nn_same = nn != (size_t)-1 && CLS_SAME(cls[nn]);
  if (x->self && nn != (size_t)-1) st->nn_same = x->lr[nn] == x->lx[i];
  if (st->pos_cnt > 0) {
    T minp = (T)st->min_pos, hard[LANES];
    for (int l = 0; l < LANES; l++) hard[l] = 0;
    for (size_t j0 = 0; j0 < jv; j0 += LANES)
      for (int l = 0; l < LANES; l++) {
        size_t j = j0 + (size_t)l;
        /* `&`, not `&&`: GCC 12 at -O3 for x86-64-v3 vectorizes the
         * short-circuit form of this count wrongly (it counted 20 where 18
         * was right; test loss_should_compute_stats_as_their_definitions_say
         * caught it). */
        hard[l] += (CLS_NEG(cls[j]) & (s[j] > minp)) ? (T)1 : (T)0;
      }
    for (int l = 0; l < LANES; l++) st->hard_neg += (uint64_t)hard[l];
    for (size_t j = jv; j < m; j++)
      st->hard_neg += CLS_NEG(cls[j]) && s[j] > minp;
  }
}

/* ---- retrieval ----------------------------------------------------------
 * Row i's precision@1, R-precision and AP@R (pytorch-metric-learning's
 * AccuracyCalculator) from its similarities s[0..m) and classes. The
 * gallery is every column but the row's own (self-reference); an item is
 * relevant when it shares the row's label; R_i counts them. Items rank by
 * similarity descending, then index ascending: a strict order, so what
 * follows picks the same R_i items whatever the path or thread.
 *
 * The R_i nearest items are found without sorting the row. A threshold t
 * with at least R_i gallery items >= t starts at the relevant items'
 * smallest similarity (all R_i of them pass it) and is raised by bisection
 * between t and the gallery's largest similarity, each step one
 * vectorized count over the row, until at most R_i + R_i / 4 + 8 items
 * pass; only those are gathered (in index order, skipping 16 columns at a
 * time where none passes) and stably sorted by similarity. When ties stop
 * the bisection first (t and the upper end adjacent values), fewer than
 * R_i items lie strictly above t and the rest are ties at t, taken in
 * index order. */

/* A gathered candidate: its similarity and gallery index. */
struct F(cand) {
  T v;
  uint32_t j;
};

/* An unsigned key in which a larger similarity is a smaller key, for
 * finite values (-0 is made +0 first: the two are equal similarities). */
static inline uint64_t F(rank_key)(T v) {
  uint64_t u;
  v = v + (T)0; /* -0 + 0 is +0 */
  if (sizeof(T) == 4) {
    uint32_t b;
    memcpy(&b, &v, 4);
    b = (b >> 31) ? ~b : (b | 0x80000000u); /* ascending order */
    u = (uint32_t)~b;                        /* descending */
  } else {
    memcpy(&u, &v, 8);
    u = (u >> 63) ? ~u : (u | 0x8000000000000000ull);
    u = ~u;
  }
  return u;
}

/* Sorts c[0..k) by similarity descending, stably (gathered in index
 * order, ties stay in index order): an LSD radix sort, a byte a pass, on
 * the similarity's bits mapped so that unsigned order is descending
 * similarity; a pass where every key has the same byte is skipped (the
 * top bytes, as similarities near each other share sign and exponent).
 * Branch-free apart from the loops; 32 or fewer by insertion. tmp: k
 * entries (k < 2^32). */
static void F(rank_sort)(struct F(cand) *restrict c,
                         struct F(cand) *restrict tmp, size_t k) {
  if (k <= 32) { /* few: a stable insertion sort beats the histograms */
    for (size_t q = 1; q < k; q++) {
      struct F(cand) key = c[q];
      size_t r = q;
      for (; r > 0 && c[r - 1].v < key.v; r--) c[r] = c[r - 1];
      c[r] = key;
    }
    return;
  }
  struct F(cand) *src = c, *dst = tmp;
  uint32_t cnt[256];
  for (unsigned shift = 0; shift < 8 * sizeof(T); shift += 8) {
    memset(cnt, 0, sizeof cnt);
    for (size_t q = 0; q < k; q++) cnt[F(rank_key)(src[q].v) >> shift & 255]++;
    if (cnt[F(rank_key)(src[0].v) >> shift & 255] == k) continue;
    uint32_t sum = 0;
    for (int b = 0; b < 256; b++) {
      uint32_t n = cnt[b];
      cnt[b] = sum;
      sum += n;
    }
    for (size_t q = 0; q < k; q++)
      dst[cnt[F(rank_key)(src[q].v) >> shift & 255]++] = src[q];
    struct F(cand) *t = src;
    src = dst;
    dst = t;
  }
  if (src != c) memcpy(c, src, k * sizeof *c);
}

/* Gallery items of the row (self_j excluded) with s >= t. */
CIRCLE__HOT static size_t F(count_ge)(const T *restrict s, size_t m, T t,
                                      size_t self_j) {
  uint32_t c[LANES];
  for (int l = 0; l < LANES; l++) c[l] = 0;
  size_t mv = m - m % LANES, total = 0;
  for (size_t j0 = 0; j0 < mv; j0 += LANES)
    for (int l = 0; l < LANES; l++) c[l] += s[j0 + (size_t)l] >= t;
  for (int l = 0; l < LANES; l++) total += c[l];
  for (size_t j = mv; j < m; j++) total += s[j] >= t;
  if (self_j < m && s[self_j] >= t) total--;
  return total;
}

/* Appends to c[k..) the gallery items with s >= t (strict: s > t), in
 * index order; returns the new count. Each 16 columns give one bit mask
 * (a vector compare into bytes, packed by a multiply), and only its set
 * bits are visited. */
__attribute__((always_inline)) static inline size_t F(gather)(
    const T *restrict s, size_t m, T t, bool strict, size_t self_j,
    struct F(cand) *restrict c, size_t k) {
  size_t j0 = 0;
  for (; j0 + 16 <= m; j0 += 16) {
    uint8_t f[16];
    if (strict)
      for (int l = 0; l < 16; l++) f[l] = s[j0 + (size_t)l] > t;
    else
      for (int l = 0; l < 16; l++) f[l] = s[j0 + (size_t)l] >= t;
    uint64_t f0, f1;
    memcpy(&f0, f, 8);
    memcpy(&f1, f + 8, 8);
    if ((f0 | f1) == 0) continue;
    /* eight 0/1 bytes to eight bits: byte i lands on bit 56 + i */
    uint32_t mask = (uint32_t)((f0 * 0x0102040810204080ull) >> 56) |
                    (uint32_t)((f1 * 0x0102040810204080ull) >> 56) << 8;
    if (self_j - j0 < 16) mask &= ~(1u << (self_j - j0));
    while (mask) {
      size_t j = j0 + (size_t)__builtin_ctz(mask);
      c[k++] = (struct F(cand)){s[j], (uint32_t)j};
      mask &= mask - 1;
    }
  }
  for (size_t j = j0; j < m; j++)
    if (j != self_j && (strict ? s[j] > t : s[j] >= t))
      c[k++] = (struct F(cand)){s[j], (uint32_t)j};
  return k;
}

/* Thread ith's candidate buffers. */
static inline void *F(cand_of)(const struct F(ctx) *x, unsigned ith) {
  return (struct F(cand) *)x->cand + (size_t)ith * 2 * (x->m + 1);
}

/* Row i's retrieval figures into x->ret[i]. cand: 2 (m + 1) candidates. */
CIRCLE__HOT static void F(row_retrieval)(struct F(ctx) *x, size_t i,
                                         const T *restrict s,
                                         const T *restrict cls,
                                         void *cand_buf) {
  const size_t m = x->m, self_j = x->self ? i : (size_t)-1;
  struct F(cand) *restrict cand = cand_buf, *restrict tmp = cand + m + 1;
  uint32_t rc[LANES];
  T mnr[LANES], mxg[LANES];
  for (int l = 0; l < LANES; l++) {
    rc[l] = 0;
    mnr[l] = INFINITY;
    mxg[l] = -INFINITY;
  }
  size_t mv = m - m % LANES;
  for (size_t j0 = 0; j0 < mv; j0 += LANES)
    for (int l = 0; l < LANES; l++) {
      size_t j = j0 + (size_t)l;
      int g = j != self_j, rel = CLS_SAME(cls[j]) & g;
      T sr = rel ? s[j] : (T)INFINITY, sg = g ? s[j] : (T)-INFINITY;
      rc[l] += (uint32_t)rel;
      mnr[l] = sr < mnr[l] ? sr : mnr[l];
      mxg[l] = sg > mxg[l] ? sg : mxg[l];
    }
  size_t r = 0;
  T lo = INFINITY, hi = -INFINITY;
  for (int l = 0; l < LANES; l++) {
    r += rc[l];
    lo = mnr[l] < lo ? mnr[l] : lo;
    hi = mxg[l] > hi ? mxg[l] : hi;
  }
  for (size_t j = mv; j < m; j++) {
    if (j == self_j) continue;
    if (CLS_SAME(cls[j])) {
      r++;
      lo = s[j] < lo ? s[j] : lo;
    }
    hi = s[j] > hi ? s[j] : hi;
  }
  row_retrieval *out = &x->ret[i];
  *out = (row_retrieval){0};
  if (r == 0) return; /* a lone query */
  const size_t cap = r + r / 4 + 8;
  size_t cnt = F(count_ge)(s, m, lo, self_j); /* >= r */
  for (int it = 0; cnt > cap && it < 2200; it++) {
    T mid = lo / 2 + hi / 2;
    if (!(mid > lo && mid < hi)) break; /* adjacent: ties at lo */
    size_t c = F(count_ge)(s, m, mid, self_j);
    if (c >= r) {
      lo = mid;
      cnt = c;
    } else {
      hi = mid;
    }
  }
  size_t k;
  if (cnt <= cap) {
    k = F(gather)(s, m, lo, false, self_j, cand, 0);
    F(rank_sort)(cand, tmp, k);
  } else {
    /* Items above lo, sorted, then ties at lo in index order. */
    k = F(gather)(s, m, lo, true, self_j, cand, 0);
    F(rank_sort)(cand, tmp, k);
    for (size_t j = 0; j < m && k < r; j++)
      if (j != self_j && s[j] == lo) cand[k++] = (struct F(cand)){s[j], (uint32_t)j};
  }
  size_t hits = 0;
  double ap = 0;
  for (size_t q = 0; q < r; q++)
    if (CLS_SAME(cls[cand[q].j])) {
      hits++;
      ap += (double)hits / (double)(q + 1);
    }
  out->p1 = CLS_SAME(cls[cand[0].j]) ? 1.0 : 0.0;
  out->rp = (double)hits / (double)r;
  out->ap = ap / (double)r;
  out->query = 1;
}

/* Row i's lse_p, lse_n, v and sig from the maxima of its positive and
 * negative z and the sums of exp(z - max) (max -inf: no such pairs). */
static inline void F(row_finish)(struct F(ctx) *x, size_t i, T max_p, T sum_p,
                                 T max_n, T sum_n) {
  T base_p = max_p > -INFINITY ? max_p : 0;
  T base_n = max_n > -INFINITY ? max_n : 0;
  T lse_p = max_p > -INFINITY ? base_p + LOGT(sum_p) : -INFINITY;
  T lse_n = max_n > -INFINITY ? base_n + LOGT(sum_n) : -INFINITY;
  T L = lse_p + lse_n;
  /* softplus(L) = logaddexp(L, 0) and sigmoid(L), without overflow. For
   * L < ln(TMIN) (about -87.34 in float32, -708.40 in float64) exp(L) is
   * subnormal; XLA on CPU flushes it to 0, so Keras' row value and its
   * gradient are exactly 0 and the `loss > 0` mask drops the row. libm
   * keeps the subnormal, so it is flushed here: the row then gets v = 0
   * and sig = 0 as in Keras. (Measured against jax: the first L that Keras
   * keeps is exactly the first whose correctly rounded exp is >= TMIN.) */
  T v, sig;
  if (L > 0) {
    T e = EXPLIB(-L);
    v = L + LOG1PT(e);
    sig = (T)1 / ((T)1 + e);
  } else {
    T e = EXPLIB(L); /* 0 for L == -inf */
    e = e >= TMIN ? e : 0;
    v = LOG1PT(e);
    sig = e / ((T)1 + e);
  }
  x->lse_p[i] = lse_p;
  x->lse_n[i] = lse_n;
  x->v[i] = v;
  x->sig[i] = sig;
}

/* Row scalars for row i from its similarities s[0..m) and classes: fills
 * lse_p, lse_n, v, sig and, when asked, the row's statistics; leaves
 * ebuf[j] = exp(z_ij - max) for row_grad. Two sweeps, one z and one exp per
 * pair. Reductions run in LANES independent lanes combined in a fixed
 * order: the compiler vectorizes them without reassociating, and the result
 * does not depend on the thread. (loss.o is built with FMA contraction, so
 * the AVX2/AVX-512 clones and the baseline clone may differ in the last
 * bits; one machine always runs the same clone.) */
CIRCLE__HOT static void F(row_scalars)(struct F(ctx) *x, size_t i,
                                       const T *restrict s,
                                       const T *restrict cls,
                                       T *restrict ebuf, T *inv_sums) {
  const T gam = x->k.gam, mg = x->k.mg, opn = x->k.opn, dln = x->k.dln;
  const size_t m = x->m;
  T mp[LANES], mn[LANES], sp[LANES], sn[LANES];
  for (int l = 0; l < LANES; l++) mp[l] = mn[l] = -INFINITY;
  size_t jv = m - m % LANES;
  /* Sweep 1 keeps z in ebuf for sweep 2, which overwrites it with e. */
  for (size_t j0 = 0; j0 < jv; j0 += LANES)
    for (int l = 0; l < LANES; l++) {
      size_t j = j0 + (size_t)l;
      T c = cls[j];
      T z = F(pair_z)(s[j], CLS_SAME(c), gam, mg, opn, dln);
      ebuf[j] = z;
      T zp = CLS_POS(c) ? z : -INFINITY;
      T zn = CLS_NEG(c) ? z : -INFINITY;
      mp[l] = zp > mp[l] ? zp : mp[l];
      mn[l] = zn > mn[l] ? zn : mn[l];
    }
  T max_p = -INFINITY, max_n = -INFINITY;
  for (int l = 0; l < LANES; l++) {
    max_p = mp[l] > max_p ? mp[l] : max_p;
    max_n = mn[l] > max_n ? mn[l] : max_n;
  }
  for (size_t j = jv; j < m; j++) {
    T c = cls[j];
    T z = F(pair_z)(s[j], CLS_SAME(c), gam, mg, opn, dln);
    ebuf[j] = z;
    if (CLS_POS(c) && z > max_p) max_p = z;
    if (CLS_NEG(c) && z > max_n) max_n = z;
  }
  T base_p = max_p > -INFINITY ? max_p : 0;
  T base_n = max_n > -INFINITY ? max_n : 0;
  for (int l = 0; l < LANES; l++) sp[l] = sn[l] = 0;
  for (size_t j0 = 0; j0 < jv; j0 += LANES)
    for (int l = 0; l < LANES; l++) {
      size_t j = j0 + (size_t)l;
      T c = cls[j];
      T e = EXPT(ebuf[j] - (CLS_SAME(c) ? base_p : base_n));
      ebuf[j] = e;
      sp[l] += CLS_POS(c) ? e : 0;
      sn[l] += CLS_NEG(c) ? e : 0;
    }
  T sum_p = 0, sum_n = 0;
  for (int l = 0; l < LANES; l++) {
    sum_p += sp[l];
    sum_n += sn[l];
  }
  for (size_t j = jv; j < m; j++) {
    T c = cls[j];
    T e = EXPT(ebuf[j] - (CLS_SAME(c) ? base_p : base_n));
    ebuf[j] = e;
    sum_p += CLS_POS(c) ? e : 0;
    sum_n += CLS_NEG(c) ? e : 0;
  }
  if (inv_sums) {
    inv_sums[0] = sum_p > 0 ? (T)1 / sum_p : 0;
    inv_sums[1] = sum_n > 0 ? (T)1 / sum_n : 0;
  }
  F(row_finish)(x, i, max_p, sum_p, max_n, sum_n);
  if (x->want & CIRCLE_OUT_STATS) F(row_stats)(x, i, s, cls);
}

/* Overwrites s[0..m) (row i's similarities) with G'_ij = d v_i / d s_ij,
 * reusing e[j] = exp(z_ij - max) from row_scalars: softmax = e * 1/sum. */
CIRCLE__HOT static void F(row_grad)(struct F(ctx) *x, size_t i,
                                    T *restrict s, const T *restrict cls,
                                    const T *restrict e, const T *inv_sums) {
  const T gam = x->k.gam, mg = x->k.mg, opn = x->k.opn, sig = x->sig[i];
  const T isp = inv_sums[0], isn = inv_sums[1];
  const size_t m = x->m;
  if (sig == 0) {
    memset(s, 0, m * sizeof(T));
    return;
  }
  for (size_t j = 0; j < m; j++) {
    T c = cls[j];
    int same = CLS_SAME(c);
    T one_minus = (T)1 - s[j];
    T cc = one_minus > 0 ? one_minus : 0;
    T dcds = one_minus > 0 ? (T)-1 : (one_minus == 0 ? (T)-0.5 : (T)0);
    T wp = mg + cc, wn = opn - cc;
    T dzp = wp > 0 ? (T)2 * gam * cc : 0;
    T dzn = wn > 0 ? (T)-2 * gam * ((T)1 - cc) : 0;
    T g = sig * (e[j] * (same ? isp : isn)) * (same ? dzp : dzn) * dcds;
    s[j] = c > (T)0.5 ? g : 0;
  }
}

/* Self-reference: overwrites s[0..cnt) (row i's similarities) with
 * H_ij = c_i G'_ij + c_j G'_ji. Both terms share the pair's z and
 * dz/dc dc/ds: H_ij = dz dc/ds (c_i sig_i exp(z - lse_i) + c_j sig_j
 * exp(z - lse_j)), each lse of the pair's side. H is symmetric: H_ji sums
 * the same two products in the other order. */
CIRCLE__HOT static void F(row_h)(const struct F(ctx) *x, size_t i,
                                 T *restrict s, const T *restrict cls,
                                 size_t cnt) {
  const T gam = x->k.gam, mg = x->k.mg, opn = x->k.opn, dln = x->k.dln;
  const T ai = x->csig[i], lpi = x->lse_p[i], lni = x->lse_n[i];
  const T *restrict aj = x->csig, *restrict lp = x->lse_p,
                    *restrict ln = x->lse_n;
  for (size_t j = 0; j < cnt; j++) {
    T cl = cls[j];
    int same = CLS_SAME(cl);
    T dz, z = F(pair_zds)(s[j], same, gam, mg, opn, dln, &dz);
    T ei = EXPT(z - (same ? lpi : lni)), ej = EXPT(z - (same ? lp[j] : ln[j]));
    T h = dz * (ai * ei + aj[j] * ej);
    s[j] = cl > (T)0.5 ? h : 0;
  }
}

/* The per-row factors of row_h_split: for each side, lse = (k + f) ln 2
 * with k an integer and f in [0, 1), hk = k and hf = csig 2^-f, so that
 * csig e^(z - lse) = hf p 2^(kz - k) for e^z = p 2^kz. x->split says
 * whether it applies: every finite lse and the smallest z, -gamma m^2,
 * within SPLIT_MAX (z <= lse on its side, so every pair's z is then in
 * range). A side without pairs (lse -inf) gets hf = 0 and a k so large
 * that 2^(kz - k) is 0. */
static void F(split_rows)(struct F(ctx) *x) {
  const double big = 4 * SPLIT_MAX / M_LN2;
  bool ok = (double)x->k.gam * (double)x->k.mg * (double)x->k.mg <= SPLIT_MAX;
  for (size_t i = 0; i < x->n && ok; i++)
    ok = !(fabs((double)x->lse_p[i]) > SPLIT_MAX && isfinite(x->lse_p[i])) &&
         !(fabs((double)x->lse_n[i]) > SPLIT_MAX && isfinite(x->lse_n[i]));
  x->split = ok;
  if (!ok) return;
  for (size_t i = 0; i < x->n; i++)
    for (int side = 0; side < 2; side++) {
      double l = side ? x->lse_n[i] : x->lse_p[i];
      T *hf = side ? x->hf_n : x->hf_p;
      IT *hk = side ? x->hk_n : x->hk_p;
      if (!isfinite(l)) {
        hf[i] = 0;
        hk[i] = (IT)big;
        continue;
      }
      double t = l / M_LN2, k = floor(t);
      hf[i] = (T)((double)x->csig[i] * exp2(k - t));
      hk[i] = (IT)k;
    }
}

/* row_h with one polynomial per pair (x->split): e^z = p 2^kz once, then
 * H_ij = dz p (hf_i 2^(kz - k_i) + hf_j 2^(kz - k_j)), each factor of
 * the pair's side. */
CIRCLE__HOT static void F(row_h_split)(const struct F(ctx) *x, size_t i,
                                       T *restrict s, const T *restrict cls,
                                       size_t cnt) {
  const T gam = x->k.gam, mg = x->k.mg, opn = x->k.opn, dln = x->k.dln;
  const T fpi = x->hf_p[i], fni = x->hf_n[i];
  const IT kpi = x->hk_p[i], kni = x->hk_n[i];
  const T *restrict fp = x->hf_p, *restrict fn = x->hf_n;
  const IT *restrict kp = x->hk_p, *restrict kn = x->hk_n;
  for (size_t j = 0; j < cnt; j++) {
    T cl = cls[j];
    int same = CLS_SAME(cl);
    T dz, z = F(pair_zds)(s[j], same, gam, mg, opn, dln, &dz);
    IT kz;
    T p = EXPSPLIT(z, &kz);
    T ti = (same ? fpi : fni) * POW2I(kz - (same ? kpi : kni));
    T tj = (same ? fp[j] : fn[j]) * POW2I(kz - (same ? kp[j] : kn[j]));
    T h = dz * p * (ti + tj);
    s[j] = cl > (T)0.5 ? h : 0;
  }
}

/* ---- the lower triangle, tile by tile (self-reference) -----------------
 * S is symmetric, so a self-referenced batch computes only the tiles
 * (I, J), J <= I, of bs x bs. An off-diagonal tile serves both its rows
 * (row i's pairs j in J) and its columns (row j's pairs i in I). Each
 * row's log-sum-exps are merged online from per-tile partials (max, sum
 * of exp(z - max)), always in the same order: the row's own strip J = 0..I
 * first, then the column partials of the tiles below it, I + 1 .. nb - 1.
 * Column partials are kept per tile (4 bs values), so no thread ever
 * writes a row another thread owns and the bits never depend on the
 * thread count. */

/* (M, S) <- (M, S) merged with (m2, s2): S relative to the larger max.
 * Branch-free, so loops of merges vectorize: EXPT gives 0 for -inf and
 * NaN, so an empty side (max -inf, sum 0) adds nothing and two empty sides
 * stay (-inf, 0). */
static inline void F(lse_merge)(T *M, T *S, T m2, T s2) {
  T m1 = *M, mx = m1 > m2 ? m1 : m2;
  *S = *S * EXPT(m1 - mx) + s2 * EXPT(m2 - mx);
  *M = mx;
}

/* Index of the column-partial slot of tile (bi, bj), bj < bi. */
static inline size_t F(tri_slot)(size_t bi, size_t bj) {
  return bi * (bi - 1) / 2 + bj;
}

/* Sweep 1 of tile_lse for one pair: z, kept; the maxima of its row's
 * lane and of its column. */
static inline void F(tile_z)(T sv, int same, int pos, T gam, T mg, T opn,
                             T dln, T *z, T *mp, T *mn, T *cmp, T *cmn) {
  T zz = F(pair_z)(sv, same, gam, mg, opn, dln);
  *z = zz;
  T zp = pos ? zz : -INFINITY, zn = same ? -INFINITY : zz;
  *mp = zp > *mp ? zp : *mp;
  *mn = zn > *mn ? zn : *mn;
  *cmp = zp > *cmp ? zp : *cmp;
  *cmn = zn > *cmn ? zn : *cmn;
}

/* Sweep 2 of tile_lse for one pair of class c (as in row_classes):
 * exp(z - max) added to its sums. */
static inline void F(tile_e)(T z, T c, T bp, T bn, T *sp, T *sn) {
  T e = EXPT(z - (CLS_SAME(c) ? bp : bn));
  *sp += CLS_POS(c) ? e : 0;
  *sn += CLS_NEG(c) ? e : 0;
}

/* Sums of exp(z[c] - max) over c < w for one row of classes cls, in
 * LANES lanes (the tail in lane 0) combined in a fixed order; z[c] is
 * overwritten with the exp. Not inlined: inlined into tile_lse, GCC 12
 * no longer vectorizes it ("control flow in loop"). */
__attribute__((noinline)) CIRCLE__HOT static void F(row_sums)(
    T *restrict z, const T *restrict cls, size_t w, T bp, T bn, T *sum_p,
    T *sum_n) {
  const size_t wv = w - w % LANES;
  T sp[LANES], sn[LANES];
  for (int l = 0; l < LANES; l++) sp[l] = sn[l] = 0;
  for (size_t c0 = 0; c0 < wv; c0 += LANES)
    for (int l = 0; l < LANES; l++) {
      size_t c = c0 + (size_t)l;
      T e = EXPT(z[c] - (CLS_SAME(cls[c]) ? bp : bn));
      z[c] = e;
      sp[l] += CLS_POS(cls[c]) ? e : 0;
      sn[l] += CLS_NEG(cls[c]) ? e : 0;
    }
  for (size_t c = wv; c < w; c++)
    F(tile_e)(z[c], cls[c], bp, bn, &sp[0], &sn[0]);
  T p = 0, q = 0;
  for (int l = 0; l < LANES; l++) {
    p += sp[l];
    q += sn[l];
  }
  *sum_p = p;
  *sum_n = q;
}

/* Merges a tile's row partials (tmp, tmn, tsp, tsn in its scratch zt,
 * see tile_lse) into the running row states x->rst of rows [lo, hi). */
CIRCLE__HOT static void F(tile_rows_merge)(const struct F(ctx) *x, size_t lo,
                                           size_t hi, const T *restrict zt) {
  const size_t bs = x->bs, n = x->n;
  const T *restrict tmp = zt + bs * bs, *restrict tmn = tmp + bs,
                    *restrict tsp = tmn + bs, *restrict tsn = tsp + bs;
  T *restrict rmp = x->rst, *restrict rsp = rmp + n, *restrict rmn = rsp + n,
             *restrict rsn = rmn + n;
  const size_t w = hi - lo;
  rmp += lo, rsp += lo, rmn += lo, rsn += lo;
  for (size_t r = 0; r < w; r++) { /* lse_merge, written out to vectorize */
    T a = rmp[r], b = tmp[r], mx = a > b ? a : b;
    rsp[r] = rsp[r] * EXPT(a - mx) + tsp[r] * EXPT(b - mx);
    rmp[r] = mx;
    a = rmn[r], b = tmn[r], mx = a > b ? a : b;
    rsn[r] = rsn[r] * EXPT(a - mx) + tsn[r] * EXPT(b - mx);
    rmn[r] = mx;
  }
}

/* One tile's row and column partials. st: the tile, rows [lo, hi) and
 * columns [jlo, jhi), row stride ld. The row partials are merged into the
 * running row states x->rst (4 arrays of n: max_p, sum_p, max_n, sum_n)
 * for rows [lo, hi); col (4 arrays of bs: the same for the tile's columns)
 * is overwritten. zt: scratch for bs x bs values of z and 7 bs more. Row
 * sums run in LANES lanes (a row's tail in lane 0), column sums in row
 * order: a fixed order for a given n and bs. Two exps per pair: one
 * relative to its row's maximum, one to its column's. */
CIRCLE__HOT static void F(tile_lse)(const struct F(ctx) *x, size_t lo,
                                    size_t hi, size_t jlo, size_t jhi,
                                    const T *restrict st, size_t ld,
                                    T *restrict zt, T *restrict col) {
  const T gam = x->k.gam, mg = x->k.mg, opn = x->k.opn, dln = x->k.dln;
  const size_t w = jhi - jlo, wv = w - w % LANES, bs = x->bs;
  const int32_t *restrict lj = x->lx + jlo;
  T *restrict cmp = col, *restrict csp = col + bs, *restrict cmn = col + 2 * bs,
             *restrict csn = col + 3 * bs;
  T *restrict tmp = zt + bs * bs, *restrict tmn = tmp + bs,
             *restrict tsp = tmn + bs, *restrict tsn = tsp + bs,
             *restrict cbp = tsn + bs, *restrict cbn = cbp + bs,
             *restrict cr = cbn + bs;
  /* With remove_diagonal, column i - jlo is the pair (i, i), neither
   * positive nor negative (for i < jlo it wraps past every column). */
  const bool rd = x->rd;
  for (size_t c = 0; c < w; c++) {
    cmp[c] = cmn[c] = -INFINITY;
    csp[c] = csn[c] = 0;
  }
  for (size_t i = lo; i < hi; i++) {
    const T *restrict s = st + (i - lo) * ld;
    T *restrict z = zt + (i - lo) * w;
    const int32_t li = x->lx[i];
    const size_t self_c = rd ? i - jlo : (size_t)-1;
    T mp[LANES], mn[LANES];
    for (int l = 0; l < LANES; l++) mp[l] = mn[l] = -INFINITY;
    for (size_t c0 = 0; c0 < wv; c0 += LANES)
      for (int l = 0; l < LANES; l++) {
        size_t c = c0 + (size_t)l;
        int same = lj[c] == li;
        F(tile_z)(s[c], same, same & (c != self_c), gam, mg, opn, dln, &z[c],
                  &mp[l], &mn[l], &cmp[c], &cmn[c]);
      }
    for (size_t c = wv; c < w; c++) {
      int same = lj[c] == li;
      F(tile_z)(s[c], same, same & (c != self_c), gam, mg, opn, dln, &z[c],
                &mp[0], &mn[0], &cmp[c], &cmn[c]);
    }
    T mxp = -INFINITY, mxn = -INFINITY;
    for (int l = 0; l < LANES; l++) {
      mxp = mp[l] > mxp ? mp[l] : mxp;
      mxn = mn[l] > mxn ? mn[l] : mxn;
    }
    tmp[i - lo] = mxp;
    tmn[i - lo] = mxn;
  }
  for (size_t c = 0; c < w; c++) { /* an empty side sums relative to 0 */
    cbp[c] = cmp[c] > -INFINITY ? cmp[c] : 0;
    cbn[c] = cmn[c] > -INFINITY ? cmn[c] : 0;
  }
  for (size_t i = lo; i < hi; i++) {
    T *restrict z = zt + (i - lo) * w;
    const int32_t li = x->lx[i];
    const size_t self_c = rd ? i - jlo : (size_t)-1;
    T bp = tmp[i - lo] > -INFINITY ? tmp[i - lo] : 0;
    T bn = tmn[i - lo] > -INFINITY ? tmn[i - lo] : 0;
    for (size_t c = 0; c < w; c++) cr[c] = lj[c] == li ? (T)1 : (T)2;
    if (self_c < w && CLS_POS(cr[self_c])) cr[self_c] = 0;
    for (size_t c = 0; c < w; c++)
      F(tile_e)(z[c], cr[c], cbp[c], cbn[c], &csp[c], &csn[c]);
    F(row_sums)(z, cr, w, bp, bn, &tsp[i - lo], &tsn[i - lo]);
  }
  F(tile_rows_merge)(x, lo, hi, zt);
}

/* ---- blocks ------------------------------------------------------------ */

static inline size_t F(block_end)(const struct F(ctx) *x, size_t b, size_t n) {
  size_t end = (b + 1) * x->bs;
  return end < n ? end : n;
}

/* L2-normalizes rows of block b: xn = x * min(rsqrt(sum x^2), 1e12), as
 * keras.ops.normalize(order=2, epsilon=1e-12) does. */
static void F(blk_normalize)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  const struct F(norm_job) *nj = x->norm_job;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, nj->rows);
  for (size_t i = lo; i < hi; i++) {
    const T *src = nj->src + i * x->d;
    T *dst = nj->dst + i * x->d;
    T ss = 0;
    for (size_t k = 0; k < x->d; k++) ss += src[k] * src[k];
    T inv = (T)1 / SQRTT(ss);
    if (!(inv < (T)1e12)) inv = (T)1e12;
    nj->inv[i] = inv;
    for (size_t k = 0; k < x->d; k++) dst[k] = src[k] * inv;
  }
}

/* Backprop through normalize for block b: g <- inv * (g - xn (xn . g)) when
 * the norm was above epsilon, g * 1e12 otherwise. */
static void F(blk_unnormalize)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  const struct F(norm_job) *nj = x->norm_job;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, nj->rows);
  for (size_t i = lo; i < hi; i++) {
    const T *xn = nj->dst + i * x->d;
    T *g = nj->grad + i * x->d;
    T inv = nj->inv[i];
    if (inv >= (T)1e12) {
      for (size_t k = 0; k < x->d; k++) g[k] *= inv;
      continue;
    }
    T dot = 0;
    for (size_t k = 0; k < x->d; k++) dot += xn[k] * g[k];
    for (size_t k = 0; k < x->d; k++) g[k] = inv * (g[k] - xn[k] * dot);
  }
}

/* Materialized, reference set: similarities of row block b. */
static void F(blk_sim_full)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->n);
  GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(hi - lo), (int)x->m,
       (int)x->d, 1, x->X + lo * x->d, (int)x->d, x->R, (int)x->d, 0,
       x->S + lo * x->ld, (int)x->ld);
}

/* Materialized: row scalars, then G' in place when gradients are wanted. */
static void F(blk_rows_full)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->n);
  T *cls = x->cls + (size_t)ith * x->wide;
  T *ebuf = x->ebuf + (size_t)ith * x->wide;
  for (size_t i = lo; i < hi; i++) {
    T *s = x->S + i * x->ld, inv_sums[2];
    F(row_classes)(x, i, cls, x->m);
    F(row_scalars)(x, i, s, cls, ebuf, inv_sums);
    if (x->want & CIRCLE_OUT_RETRIEVAL)
      F(row_retrieval)(x, i, s, cls, F(cand_of)(x, ith));
    if (x->need_g) F(row_grad)(x, i, s, cls, ebuf, inv_sums);
  }
}

/* Materialized, reference set: dX for row block b = diag(c) (G'_b R). */
static void F(blk_dx_full)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->n);
  T *dx = x->dX + lo * x->d;
  GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(hi - lo), (int)x->d,
       (int)x->m, 1, x->S + lo * x->ld, (int)x->ld, x->R, (int)x->d, 0, dx,
       (int)x->d);
  for (size_t i = lo; i < hi; i++) {
    T ci = x->cf[i];
    for (size_t k = 0; k < x->d; k++) dx[(i - lo) * x->d + k] *= ci;
  }
}

/* Reference set: dR for reference block b = G'[:, b]^T (diag(c) X). */
static void F(blk_dr_full)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->m);
  GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(hi - lo), (int)x->d,
       (int)x->n, 1, x->S + lo, (int)x->ld, x->Xc, (int)x->d, 0,
       x->dR + lo * x->d, (int)x->d);
}

/* Streamed self-reference: strip b (b >= keep_from) where pass 1 keeps it
 * for pass 2, packed after strips keep_from..b-1 (each bs rows, except the
 * last, of its own width hi); *ld gets its width. */
static inline T *F(kept_strip)(const struct F(ctx) *x, size_t b, size_t *ld) {
  size_t bs = x->bs, kf = x->keep_from;
  /* strips kf..b-1 are whole: bs rows of width (b' + 1) bs */
  size_t off = bs * bs * ((b * (b + 1) - kf * (kf + 1)) / 2);
  *ld = F(block_end)(x, b, x->n);
  return x->keep + off;
}

/* Streamed pass 1: similarities of row block b into this thread's buffer
 * (full rows: self-referenced batches come here only with row extras, their
 * gradients then take the lower triangle's pass 2), then row scalars. */
static void F(blk_rows_stream)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->n);
  T *buf = x->S + (size_t)ith * x->bs * x->m;
  GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(hi - lo), (int)x->m,
       (int)x->d, 1, x->X + lo * x->d, (int)x->d, x->R, (int)x->d, 0, buf,
       (int)x->m);
  if (x->self && b >= x->keep_from) {
    /* the strip pass 2 would compute: columns [0, hi), diagonal tile
     * mirrored from its lower half, as tri_strip makes it */
    size_t l;
    T *k = F(kept_strip)(x, b, &l);
    for (size_t i = lo; i < hi; i++)
      memcpy(k + (i - lo) * l, buf + (i - lo) * x->m, hi * sizeof(T));
    for (size_t i = lo; i < hi; i++)
      for (size_t j = i + 1; j < hi; j++)
        k[(i - lo) * l + j] = k[(j - lo) * l + i];
  }
  T *cls = x->cls + (size_t)ith * x->wide;
  T *ebuf = x->ebuf + (size_t)ith * x->wide;
  for (size_t i = lo; i < hi; i++) {
    F(row_classes)(x, i, cls, x->m);
    F(row_scalars)(x, i, buf + (i - lo) * x->m, cls, ebuf, NULL);
    if (x->want & CIRCLE_OUT_RETRIEVAL)
      F(row_retrieval)(x, i, buf + (i - lo) * x->m, cls, F(cand_of)(x, ith));
  }
}

/* Streamed pass 2, reference set: recompute the block's similarities, turn
 * them into gradient coefficients c_i G'_ij and multiply by the reference
 * rows. */
CIRCLE__HOT static void F(blk_dx_stream)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->n);
  T *buf = x->S + (size_t)ith * x->bs * x->m;
  const T gam = x->k.gam, mg = x->k.mg, opn = x->k.opn, dln = x->k.dln;
  GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(hi - lo), (int)x->m,
       (int)x->d, 1, x->X + lo * x->d, (int)x->d, x->R, (int)x->d, 0, buf,
       (int)x->m);
  T *cls = x->cls + (size_t)ith * x->wide;
  for (size_t i = lo; i < hi; i++) {
    T *s = buf + (i - lo) * x->m;
    T ci = x->cf[i];
    T lpi = x->lse_p[i], lni = x->lse_n[i], sgi = x->sig[i];
    F(row_classes)(x, i, cls, x->m);
    for (size_t j = 0; j < x->m; j++)
      s[j] = ci * F(pair_grad)(s[j], cls[j], gam, mg, opn, dln, lpi, lni, sgi);
  }
  GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(hi - lo), (int)x->d,
       (int)x->m, 1, buf, (int)x->m, x->R, (int)x->d, 0, x->dX + lo * x->d,
       (int)x->d);
}

/* Streamed, reference set: dR for reference block b. Recomputes
 * S[:, b]^T = R_b X^T and the coefficients c_i G'_ij column-wise. */
CIRCLE__HOT static void F(blk_dr_stream)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->m);
  T *buf = x->S + (size_t)ith * x->bs * x->n;
  const T gam = x->k.gam, mg = x->k.mg, opn = x->k.opn, dln = x->k.dln;
  GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(hi - lo), (int)x->n,
       (int)x->d, 1, x->R + lo * x->d, (int)x->d, x->X, (int)x->d, 0, buf,
       (int)x->n);
  T *cls = x->cls + (size_t)ith * x->wide;
  for (size_t j = lo; j < hi; j++) {
    T *s = buf + (j - lo) * x->n;
    F(col_classes)(x, j, cls);
    for (size_t i = 0; i < x->n; i++)
      s[i] = x->cf[i] * F(pair_grad)(s[i], cls[i], gam, mg, opn, dln,
                                     x->lse_p[i], x->lse_n[i], x->sig[i]);
  }
  GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(hi - lo), (int)x->d,
       (int)x->n, 1, buf, (int)x->n, x->X, (int)x->d, 0, x->dR + lo * x->d,
       (int)x->d);
}

/* Scales rows of block b of X by coef into Xc (for dR = G'^T diag(c) X). */
static void F(blk_scale_x)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->n);
  for (size_t i = lo; i < hi; i++) {
    T ci = x->cf[i];
    for (size_t k = 0; k < x->d; k++)
      x->Xc[i * x->d + k] = ci * x->X[i * x->d + k];
  }
}

/* Self-reference, lower triangle: the strip S[b, 0:hi) of row block b
 * (into S when materialized, else this thread's buffer; *ld its row
 * stride) with its diagonal tile mirrored, so that tile is exactly
 * symmetric. Returns the strip's first row. */
static T *F(tri_strip)(struct F(ctx) *x, size_t b, unsigned ith, size_t *ld) {
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->n);
  size_t l = x->mat ? x->ld : x->m;
  T *buf = x->mat ? x->S + lo * l : x->S + (size_t)ith * x->bs * x->m;
  if (b >= x->keep_from) buf = F(kept_strip)(x, b, &l);
  GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(hi - lo), (int)hi,
       (int)x->d, 1, x->X + lo * x->d, (int)x->d, x->X, (int)x->d, 0, buf,
       (int)l);
  for (size_t i = lo; i < hi; i++)
    for (size_t j = i + 1; j < hi; j++)
      buf[(i - lo) * l + j] = buf[(j - lo) * l + i];
  *ld = l;
  return buf;
}

/* Self-reference, lower triangle, pass 1 over the strip of row block b at
 * buf (row stride ld): tile_lse over tiles J = 0..b. */
static void F(strip_lse)(struct F(ctx) *x, size_t b, unsigned ith, T *buf,
                         size_t ld) {
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->n), bs = x->bs;
  T *rmp = x->rst, *rsp = rmp + x->n, *rmn = rsp + x->n, *rsn = rmn + x->n;
  for (size_t i = lo; i < hi; i++) {
    rmp[i] = rmn[i] = -INFINITY;
    rsp[i] = rsn[i] = 0;
  }
  T *zt = x->zt + (size_t)ith * (bs * bs + 8 * bs);
  /* The diagonal tile's column partials are not needed: a spare slot. */
  T *spare = x->part + (F(tri_slot)(x->nb, 0) + ith) * 4 * bs;
  for (size_t bj = 0; bj <= b; bj++) {
    size_t jlo = bj * bs, jhi = bj == b ? hi : jlo + bs;
    T *col = bj < b ? x->part + F(tri_slot)(b, bj) * 4 * bs : spare;
    if (x->v16 && F(tile_lse_v16)(x, lo, hi, jlo, jhi, buf + jlo, ld, zt, col))
      F(tile_rows_merge)(x, lo, hi, zt);
    else
      F(tile_lse)(x, lo, hi, jlo, jhi, buf + jlo, ld, zt, col);
  }
}

/* Streamed self-reference, pass 1 for row block b: its strip, then
 * strip_lse. */
CIRCLE__HOT static void F(blk_tri_lse)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  b = x->nb - 1 - b; /* largest strips first */
  size_t ld;
  T *buf = F(tri_strip)(x, b, ith, &ld);
  F(strip_lse)(x, b, ith, buf, ld);
}

/* Materialized self-reference, pass 1 for chunk c (x->cb blocks, rows
 * [lo, hi)): the chunk's strips in two products, S[c, 0:lo) by a gemm and
 * the lower triangle of S[c, c] by a syrk (half the flops of the square;
 * the square's upper part stays unwritten, no strip reads it), each
 * diagonal tile mirrored from its lower half; then strip_lse for each
 * block. The chunks depend on n alone. */
CIRCLE__HOT static void F(blk_tri_lse_chunk)(void *ctx, size_t c,
                                             unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t nc = (x->nb + x->cb - 1) / x->cb;
  c = nc - 1 - c; /* largest chunks first */
  size_t bs = x->bs, b0 = c * x->cb, b1 = b0 + x->cb < x->nb ? b0 + x->cb : x->nb;
  size_t lo = b0 * bs, hi = F(block_end)(x, b1 - 1, x->n), ld = x->ld;
  T *S = x->S;
  if (lo > 0)
    GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(hi - lo), (int)lo,
         (int)x->d, 1, x->X + lo * x->d, (int)x->d, x->X, (int)x->d, 0,
         S + lo * ld, (int)ld);
  SYRK(CblasRowMajor, CblasLower, CblasNoTrans, (int)(hi - lo), (int)x->d, 1,
       x->X + lo * x->d, (int)x->d, 0, S + lo * ld + lo, (int)ld);
  for (size_t b = b0; b < b1; b++) {
    size_t tlo = b * bs, thi = F(block_end)(x, b, x->n);
    for (size_t i = tlo; i < thi; i++)
      for (size_t j = i + 1; j < thi; j++) S[i * ld + j] = S[j * ld + i];
  }
  for (size_t b = b1; b-- > b0;) F(strip_lse)(x, b, ith, S + b * bs * ld, ld);
}

/* Self-reference, lower triangle: rows of block b merge the column
 * partials of the tiles below them, in block order, and get their row
 * scalars. */
CIRCLE__HOT static void F(blk_tri_finish)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->n), bs = x->bs;
  T *restrict rmp = x->rst, *restrict rsp = rmp + x->n,
             *restrict rmn = rsp + x->n, *restrict rsn = rmn + x->n;
  for (size_t bi = b + 1; bi < x->nb; bi++) {
    const T *restrict col = x->part + F(tri_slot)(bi, b) * 4 * bs;
    for (size_t i = lo; i < hi; i++) {
      size_t c = i - lo;
      F(lse_merge)(&rmp[i], &rsp[i], col[c], col[bs + c]);
      F(lse_merge)(&rmn[i], &rsn[i], col[2 * bs + c], col[3 * bs + c]);
    }
  }
  for (size_t i = lo; i < hi; i++)
    F(row_finish)(x, i, rmp[i], rsp[i], rmn[i], rsn[i]);
}

/* Materialized self-reference with row extras (stats, retrieval): the full
 * rows of block b gathered into this thread's buffer, from the block's own
 * strip (columns [0, hi)) and the strips below it (column i of rows
 * j >= hi, read 16 rows at a time), then each row's extras. */
CIRCLE__HOT static void F(blk_tri_extras)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->n), n = x->n, ld = x->ld;
  T *restrict buf = x->rowbuf + (size_t)ith * x->bs * n;
  const T *restrict S = x->S;
  for (size_t i = lo; i < hi; i++)
    memcpy(buf + (i - lo) * n, S + i * ld, hi * sizeof(T));
  for (size_t j0 = hi; j0 < n; j0 += 16) {
    size_t j1 = j0 + 16 < n ? j0 + 16 : n;
    for (size_t i = lo; i < hi; i++) {
      T *restrict dst = buf + (i - lo) * n;
      for (size_t j = j0; j < j1; j++) dst[j] = S[j * ld + i];
    }
  }
  T *cls = x->cls + (size_t)ith * x->wide;
  for (size_t i = lo; i < hi; i++) {
    const T *s = buf + (i - lo) * n;
    F(row_classes)(x, i, cls, n);
    if (x->want & CIRCLE_OUT_STATS) F(row_stats)(x, i, s, cls);
    if (x->want & CIRCLE_OUT_RETRIEVAL)
      F(row_retrieval)(x, i, s, cls, F(cand_of)(x, ith));
  }
}

/* H over the strip of block b (rows [lo, hi), columns [0, hi)) at st,
 * row stride ld, in place. */
static void F(strip_h)(struct F(ctx) *x, size_t b, unsigned ith, T *st,
                       size_t ld) {
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->n);
  T *cls = x->cls + (size_t)ith * x->wide;
  for (size_t i = lo; i < hi; i++) {
    if (x->split && x->v16) { /* classes from the labels */
      F(row_h_v16)(x, i, st + (i - lo) * ld, hi);
      continue;
    }
    F(row_classes)(x, i, cls, hi);
    if (x->split)
      F(row_h_split)(x, i, st + (i - lo) * ld, cls, hi);
    else
      F(row_h)(x, i, st + (i - lo) * ld, cls, hi);
  }
}

/* Materialized self-reference: H over the strip of block b, in place
 * (the diagonal tile is whole and symmetric, so H is too). */
static void F(blk_tri_h)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  b = x->nb - 1 - b; /* largest strips first */
  F(strip_h)(x, b, ith, x->S + b * x->bs * x->ld, x->ld);
}

/* Materialized self-reference: dX for chunk c (x->cb blocks, rows
 * [lo, hi)) from the lower triangle of the symmetric H: the chunk's own
 * square above its diagonal tiles is filled from below it (memory no strip
 * uses), then dX_c = H[c, 0:hi) X[0:hi) + H[hi:n, c]^T X[hi:n): two
 * products with chunk-sized M, so X is packed once a chunk, not once a
 * block. The chunks depend on n alone, as the blocks do. */
static void F(blk_tri_dx)(void *ctx, size_t c, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t bs = x->bs, b0 = c * x->cb, b1 = b0 + x->cb < x->nb ? b0 + x->cb : x->nb;
  size_t lo = b0 * bs, hi = F(block_end)(x, b1 - 1, x->n), d = x->d, ld = x->ld;
  T *restrict S = x->S;
  enum { TB = 32 }; /* transposed in TB x TB squares */
  for (size_t b = b0; b + 1 < b1; b++) {
    size_t ilo = b * bs, ihi = ilo + bs;
    for (size_t j0 = ihi; j0 < hi; j0 += TB)
      for (size_t i0 = ilo; i0 < ihi; i0 += TB) {
        size_t j1 = j0 + TB < hi ? j0 + TB : hi;
        size_t i1 = i0 + TB < ihi ? i0 + TB : ihi;
        for (size_t i = i0; i < i1; i++)
          for (size_t j = j0; j < j1; j++) S[i * ld + j] = S[j * ld + i];
      }
  }
  GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(hi - lo), (int)d,
       (int)hi, 1, S + lo * ld, (int)ld, x->X, (int)d, 0, x->dX + lo * d,
       (int)d);
  if (hi < x->n)
    GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(hi - lo), (int)d,
         (int)(x->n - hi), 1, S + hi * ld + lo, (int)ld, x->X + hi * d,
         (int)d, 1, x->dX + lo * d, (int)d);
}

/* Streamed self-reference, pass 2 for row block b: the strip again, H on
 * it, then its gradient contributions: dX_b = H[b, 0:hi) X[0:hi) and, for
 * each block j < b, dX_j += (H[b, 0:lo)^T X_b)_j, formed x->ybb blocks
 * (yb_blocks) at a time in this thread's buffer. Every dX_j sums its
 * contributions in strip order j, j + 1, ..., nb - 1, whatever thread runs
 * which strip: x->next[j] says whose turn it is. Strips are claimed in
 * increasing order and each waits only for smaller ones, which are done or
 * running, so the smallest strip in flight never waits. */
static void F(blk_tri_dx_stream)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->n), d = x->d, ld;
  /* a strip kept from pass 1 is used as it is; the others come again */
  T *buf = b >= x->keep_from ? F(kept_strip)(x, b, &ld)
                             : F(tri_strip)(x, b, ith, &ld);
  F(strip_h)(x, b, ith, buf, ld);
  /* dX_b's own strip comes first: x->next[b] is still b. */
  GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(hi - lo), (int)d,
       (int)hi, 1, buf, (int)ld, x->X, (int)d, 0, x->dX + lo * d, (int)d);
  atomic_store_explicit(&x->next[b], b + 1, memory_order_release);
  const size_t per = x->ybb; /* blocks a product: at most x->ybn rows */
  T *y = x->yb + (size_t)ith * x->ybn * d;
  for (size_t c0 = 0; c0 < b; c0 += per) {
    size_t c1 = c0 + per < b ? c0 + per : b;
    GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, (int)((c1 - c0) * x->bs),
         (int)d, (int)(hi - lo), 1, buf + c0 * x->bs, (int)ld, x->X + lo * d,
         (int)d, 0, y, (int)d);
    for (size_t bj = c0; bj < c1; bj++) {
      while (atomic_load_explicit(&x->next[bj], memory_order_acquire) != b)
        sched_yield();
      T *restrict dx = x->dX + bj * x->bs * d;
      const T *restrict yj = y + (bj - c0) * x->bs * d;
      for (size_t q = 0; q < x->bs * d; q++) dx[q] += yj[q];
      atomic_store_explicit(&x->next[bj], b + 1, memory_order_release);
    }
  }
}
