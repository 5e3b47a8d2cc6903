/* loss_impl.h -- the circle loss kernels for one element type, included by
 * loss.c twice (T = float, then T = double). Not a public header.
 *
 * Before including, loss.c defines:
 *   T       the element type            F(name)  name with a type suffix
 *   GEMM    cblas_sgemm / cblas_dgemm   EXPT     exp for T (vectorizable)
 *   LOG1PT, LOGT, EXPLIB  libm functions for T (per row, not per pair)
 *
 * For one query row i and reference row j (Keras' circle(), losses.py):
 *
 *   c   = max(1 - s_ij, 0)
 *   pos: z = (-gamma * max(m + c, 0))     * (m - c)        dz/dc = 2 gamma c
 *   neg: z = ( gamma * max(1 + m - c, 0)) * (1 - m - c)    dz/dc = -2 gamma (1 - c)
 *   lse_p = logsumexp over positives (-inf when there are none), lse_n alike
 *   v_i = softplus(lse_p + lse_n),  sig_i = sigmoid(lse_p + lse_n)
 *   G'_ij = d v_i / d s_ij = sig_i * softmax_ij * dz/dc * dc/ds
 *
 * where dc/ds is -1 for s < 1, 0 for s > 1 and -1/2 at s == 1 (JAX splits a
 * tie of max() evenly), and an inactive max(., 0) contributes no slope.
 * Pairs that are neither positive nor negative (i == j with
 * remove_diagonal) are -inf in both sums and get no gradient.
 */

/* Pair class: 1 positive, 2 negative, 0 neither. */
static inline int F(pair_class)(const struct F(ctx) *x, size_t i, size_t j) {
  bool same = x->lx[i] == x->lr[j];
  if (!same) return 2;
  return (x->rd && i == j) ? 0 : 1;
}

/* z for a pair of class cls (cls != 0) at similarity s. */
static inline T F(pair_z)(T s, int cls, T gam, T mg) {
  T c = (T)1 - s;
  c = c > 0 ? c : 0;
  T zp_w = mg + c;
  zp_w = zp_w > 0 ? zp_w : 0;
  T zn_w = (T)1 + mg - c;
  zn_w = zn_w > 0 ? zn_w : 0;
  T zp = (-gam * zp_w) * (mg - c);
  T zn = (gam * zn_w) * ((T)1 - mg - c);
  return cls == 1 ? zp : zn;
}

/* d v_i / d s for one pair, given row i's scalars (lse of the pair's class
 * and sig_i). cls 0 gives 0. */
static inline T F(pair_grad)(T s, int cls, T gam, T mg, T lse_p, T lse_n,
                             T sig) {
  if (cls == 0) return 0;
  T one_minus = (T)1 - s;
  T c = one_minus > 0 ? one_minus : 0;
  T dcds = one_minus > 0 ? (T)-1 : (one_minus == 0 ? (T)-0.5 : (T)0);
  T z, dz, lse;
  if (cls == 1) {
    T w = mg + c;
    z = (-gam * (w > 0 ? w : 0)) * (mg - c);
    dz = w > 0 ? (T)2 * gam * c : 0;
    lse = lse_p;
  } else {
    T w = (T)1 + mg - c;
    z = (gam * (w > 0 ? w : 0)) * ((T)1 - mg - c);
    dz = w > 0 ? (T)-2 * gam * ((T)1 - c) : 0;
    lse = lse_n;
  }
  return sig * EXPT(z - lse) * dz * dcds;
}

/* Row scalars for row i from its similarities s[0..m): fills lse_p, lse_n,
 * v, sig and, when asked, the row's statistics. Two sweeps, one exp per
 * pair. */
static void F(row_scalars)(struct F(ctx) *x, size_t i, const T *s) {
  const T gam = x->gamma, mg = x->margin;
  const size_t m = x->m;
  const int64_t li = x->lx[i];
  const int64_t *lr = x->lr;
  const size_t diag = x->rd ? i : (size_t)-1;
  T max_p = -INFINITY, max_n = -INFINITY;
  for (size_t j = 0; j < m; j++) {
    bool same = lr[j] == li;
    bool pos = same && j != diag;
    T z = F(pair_z)(s[j], same ? 1 : 2, gam, mg);
    T zp = pos ? z : -INFINITY;
    T zn = same ? -INFINITY : z;
    max_p = zp > max_p ? zp : max_p;
    max_n = zn > max_n ? zn : max_n;
  }
  T base_p = max_p > -INFINITY ? max_p : 0;
  T base_n = max_n > -INFINITY ? max_n : 0;
  T sum_p = 0, sum_n = 0;
  for (size_t j = 0; j < m; j++) {
    bool same = lr[j] == li;
    bool pos = same && j != diag;
    T z = F(pair_z)(s[j], same ? 1 : 2, gam, mg);
    T e = EXPT(z - (same ? base_p : base_n));
    sum_p += pos ? e : 0;
    sum_n += same ? 0 : e;
  }
  T lse_p = max_p > -INFINITY ? base_p + LOGT(sum_p) : -INFINITY;
  T lse_n = max_n > -INFINITY ? base_n + LOGT(sum_n) : -INFINITY;
  T L = lse_p + lse_n;
  /* softplus(L) = logaddexp(L, 0) and sigmoid(L), without overflow. */
  T v, sig;
  if (L > 0) {
    T e = EXPLIB(-L);
    v = L + LOG1PT(e);
    sig = (T)1 / ((T)1 + e);
  } else {
    T e = EXPLIB(L); /* 0 for L == -inf */
    v = LOG1PT(e);
    sig = e / ((T)1 + e);
  }
  x->lse_p[i] = lse_p;
  x->lse_n[i] = lse_n;
  x->v[i] = v;
  x->sig[i] = sig;
  if (x->want & CIRCLE_OUT_STATS) {
    row_stats *st = &x->stats[i];
    *st = (row_stats){.min_pos = INFINITY, .max_neg = -INFINITY,
                      .nn_sim = -INFINITY, .nn_same = 0};
    size_t self_j = x->self ? i : (size_t)-1;
    size_t nn = (size_t)-1;
    for (size_t j = 0; j < m; j++) {
      T sj = s[j];
      bool same = lr[j] == li;
      if (same && j != diag) {
        st->pos_sum += sj;
        st->pos_cnt++;
        if (sj < st->min_pos) st->min_pos = sj;
      } else if (!same) {
        st->neg_sum += sj;
        st->neg_cnt++;
        if (sj > st->max_neg) st->max_neg = sj;
      }
      if (j != self_j && (double)sj > st->nn_sim) {
        st->nn_sim = sj;
        nn = j;
      }
    }
    if (st->pos_cnt > 0) {
      T minp = (T)st->min_pos;
      uint64_t hard = 0;
      for (size_t j = 0; j < m; j++) hard += (lr[j] != li) && s[j] > minp;
      st->hard_neg = hard;
    }
    st->nn_same = nn != (size_t)-1 && lr[nn] == li;
  }
}

/* Overwrites s[0..m) (row i's similarities) with G'_ij = d v_i / d s_ij. */
static void F(row_grad)(struct F(ctx) *x, size_t i, T *s) {
  const T gam = x->gamma, mg = x->margin;
  const T lp = x->lse_p[i], ln = x->lse_n[i], sig = x->sig[i];
  const size_t m = x->m;
  if (sig == 0) {
    memset(s, 0, m * sizeof(T));
    return;
  }
  for (size_t j = 0; j < m; j++)
    s[j] = F(pair_grad)(s[j], F(pair_class)(x, i, j), gam, mg, lp, ln, sig);
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

/* Materialized: similarities of row block b. Self-referenced batches fill
 * only columns [0, hi) (the lower triangle and the diagonal tile); the
 * mirror step copies them up. */
static void F(blk_sim_full)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->n);
  size_t cols = x->self ? hi : x->m;
  GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(hi - lo), (int)cols,
       (int)x->d, 1, x->X + lo * x->d, (int)x->d, x->R, (int)x->d, 0,
       x->S + lo * x->m, (int)x->m);
}

/* Materialized self-reference: S[i][j] = S[j][i] for j > i, tile by tile. */
static void F(blk_mirror)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->n);
  T *S = x->S;
  size_t n = x->n;
  for (size_t jlo = lo; jlo < n; jlo += x->bs) {
    size_t jhi = jlo + x->bs < n ? jlo + x->bs : n;
    for (size_t i = lo; i < hi; i++)
      for (size_t j = jlo > i + 1 ? jlo : i + 1; j < jhi; j++)
        S[i * n + j] = S[j * n + i];
  }
}

/* Materialized: row scalars, then G' in place when gradients are wanted. */
static void F(blk_rows_full)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->n);
  for (size_t i = lo; i < hi; i++) {
    T *s = x->S + i * x->m;
    F(row_scalars)(x, i, s);
    if (x->need_g) F(row_grad)(x, i, s);
  }
}

/* Materialized self-reference: H = diag(c) G' + G'^T diag(c), symmetric, in
 * place. The owner of row i writes S[i][j] and S[j][i] for j <= i only. */
static void F(blk_symmetrize)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->n);
  T *S = x->S;
  size_t n = x->n;
  for (size_t jlo = 0; jlo < hi; jlo += x->bs) {
    size_t jhi = jlo + x->bs < n ? jlo + x->bs : n;
    for (size_t i = lo; i < hi; i++) {
      T ci = (T)x->coef[i];
      size_t jend = jhi < i + 1 ? jhi : i + 1;
      for (size_t j = jlo; j < jend; j++) {
        T h = ci * S[i * n + j] + (T)x->coef[j] * S[j * n + i];
        S[i * n + j] = h;
        S[j * n + i] = h;
      }
    }
  }
}

/* dX for row block b: self: H_b X; reference set: diag(c) (G'_b R). */
static void F(blk_dx_full)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->n);
  T *dx = x->dX + lo * x->d;
  GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(hi - lo), (int)x->d,
       (int)x->m, 1, x->S + lo * x->m, (int)x->m, x->R, (int)x->d, 0, dx,
       (int)x->d);
  if (!x->self)
    for (size_t i = lo; i < hi; i++) {
      T ci = (T)x->coef[i];
      for (size_t k = 0; k < x->d; k++) dx[(i - lo) * x->d + k] *= ci;
    }
}

/* Reference set: dR for reference block b = G'[:, b]^T (diag(c) X). */
static void F(blk_dr_full)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->m);
  GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(hi - lo), (int)x->d,
       (int)x->n, 1, x->S + lo, (int)x->m, x->Xc, (int)x->d, 0,
       x->dR + lo * x->d, (int)x->d);
}

/* Streamed pass 1: similarities of row block b into this thread's buffer,
 * then row scalars. */
static void F(blk_rows_stream)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->n);
  T *buf = x->S + (size_t)ith * x->bs * x->m;
  GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(hi - lo), (int)x->m,
       (int)x->d, 1, x->X + lo * x->d, (int)x->d, x->R, (int)x->d, 0, buf,
       (int)x->m);
  for (size_t i = lo; i < hi; i++) F(row_scalars)(x, i, buf + (i - lo) * x->m);
}

/* Streamed pass 2: recompute the block's similarities, turn them into
 * gradient coefficients (self: H = c_i G'_ij + c_j G'_ji; reference set:
 * c_i G'_ij) and multiply by the reference rows. */
static void F(blk_dx_stream)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->n);
  T *buf = x->S + (size_t)ith * x->bs * x->m;
  const T gam = x->gamma, mg = x->margin;
  GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(hi - lo), (int)x->m,
       (int)x->d, 1, x->X + lo * x->d, (int)x->d, x->R, (int)x->d, 0, buf,
       (int)x->m);
  for (size_t i = lo; i < hi; i++) {
    T *s = buf + (i - lo) * x->m;
    T ci = (T)x->coef[i];
    T lpi = x->lse_p[i], lni = x->lse_n[i], sgi = x->sig[i];
    for (size_t j = 0; j < x->m; j++) {
      int cls = F(pair_class)(x, i, j);
      T h = ci == 0 ? 0 : ci * F(pair_grad)(s[j], cls, gam, mg, lpi, lni, sgi);
      if (x->self) {
        T cj = (T)x->coef[j];
        if (cj != 0)
          h += cj * F(pair_grad)(s[j], cls, gam, mg, x->lse_p[j], x->lse_n[j],
                                 x->sig[j]);
      }
      s[j] = h;
    }
  }
  GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(hi - lo), (int)x->d,
       (int)x->m, 1, buf, (int)x->m, x->R, (int)x->d, 0, x->dX + lo * x->d,
       (int)x->d);
}

/* Streamed, reference set: dR for reference block b. Recomputes
 * S[:, b]^T = R_b X^T and the coefficients c_i G'_ij column-wise. */
static void F(blk_dr_stream)(void *ctx, size_t b, unsigned ith) {
  struct F(ctx) *x = ctx;
  size_t lo = b * x->bs, hi = F(block_end)(x, b, x->m);
  T *buf = x->S + (size_t)ith * x->bs * x->n;
  const T gam = x->gamma, mg = x->margin;
  GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(hi - lo), (int)x->n,
       (int)x->d, 1, x->R + lo * x->d, (int)x->d, x->X, (int)x->d, 0, buf,
       (int)x->n);
  for (size_t j = lo; j < hi; j++) {
    T *s = buf + (j - lo) * x->n;
    for (size_t i = 0; i < x->n; i++) {
      T ci = (T)x->coef[i];
      s[i] = ci == 0 ? 0
                     : ci * F(pair_grad)(s[i], F(pair_class)(x, i, j), gam, mg,
                                         x->lse_p[i], x->lse_n[i], x->sig[i]);
    }
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
    T ci = (T)x->coef[i];
    for (size_t k = 0; k < x->d; k++)
      x->Xc[i * x->d + k] = ci * x->X[i * x->d + k];
  }
}
