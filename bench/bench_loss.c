/* bench_loss.c -- `make bench`: times the engine's loss + gradients against
 * one plain cblas gemm of the same n x n x d in the same run.
 *
 * For each n, d, dtype and thread count it prints the median wall time of
 * circle_loss_compute (self-referenced batch, loss + per-sample + grad +
 * optionally --stats) and the median of ONE cblas_sgemm (n x n x d, C = X X^T) run with
 * the same number of threads, and the median of their ratios: the figure
 * of merit. Each round runs the gemm, then the engine, so a ratio compares
 * two runs moments apart on a machine whose speed drifts. The float64 rows
 * also show the ratio against cblas_dgemm (timed in the same rounds).
 *
 * --block-rows B and --materialize-mb MB set the engine's options of those
 * names (0 or absent: the defaults).
 *
 * With --extras it prints instead, per n and d (float32, each thread
 * count), the median of loss + gradients alone and with the retrieval
 * figures and with the stats asked for too, timed in interleaved rounds,
 * and what each adds in per cent.
 *
 * --threads T runs only that thread count, --float32 only that dtype; --cpu times with the process'
 * CPU clock instead of the wall clock (meaningful with --threads 1 on a
 * machine other work shares).
 *
 * Usage: bench_loss [--quick] [--stats] [--extras] [--no-baseline] [--cpu]
 *                   [--threads T] [--float32] [--block-rows B]
 *                   [--materialize-mb MB] [--n N,...] [--d D,...] [--reps R]
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "circle/circle.h"

extern void openblas_set_num_threads(int);

static uint64_t rng = 0x1234567ull;
static double unif(void) { return unif_from(&rng); }

/* OpenBLAS' own threads spin for about 0.1 s after they start and after a
 * call they served (measured here: 0.22 s of CPU for start-up and one
 * 2-thread sgemm), taking a core from the engine's threads and, with
 * --cpu, adding to the process' clock: waits until they are asleep. */
static void openblas_idle(void) {
  nanosleep(&(struct timespec){0, 200000000L}, NULL);
}

/* Embeddings near one of 64 class directions, labels the classes. */
static void make_batch(size_t n, size_t d, float *xf, double *xd, int64_t *lab) {
  for (size_t i = 0; i < n; i++) {
    double ss = 0;
    lab[i] = (int64_t)(unif() * 64);
    for (size_t k = 0; k < d; k++) {
      xd[i * d + k] = unif() - 0.5 + (k == (size_t)lab[i] % d ? 1.0 : 0);
      ss += xd[i * d + k] * xd[i * d + k];
    }
    for (size_t k = 0; k < d; k++) {
      xd[i * d + k] /= __builtin_sqrt(ss);
      if (xf) xf[i * d + k] = (float)xd[i * d + k];
    }
  }
}

/* --extras: loss + gradients alone, with retrieval, with retrieval and
 * stats; rounds interleave the three so drift on a shared machine hits
 * all alike. */
static int bench_extras(const size_t *ns, size_t nn, const size_t *ds,
                        size_t nd, int reps, unsigned all, unsigned only,
                        size_t block_rows, size_t mat_bytes) {
  printf("| n | d | threads | loss+grad ms | + retrieval ms | extra | "
         "+ retrieval + stats ms | extra |\n");
  printf("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (size_t in = 0; in < nn; in++)
    for (size_t id = 0; id < nd; id++) {
      size_t n = ns[in], d = ds[id];
      float *xf = malloc(n * d * sizeof *xf), *ps = malloc(n * sizeof *ps),
            *g = malloc(n * d * sizeof *g);
      double *xd = malloc(n * d * sizeof *xd);
      int64_t *lab = malloc(n * sizeof *lab);
      if (!xf || !ps || !g || !xd || !lab) return 1;
      make_batch(n, d, xf, xd, lab);
      unsigned tlist[2] = {only ? only : 1, all};
      for (int ti = 0; ti < (only ? 1 : all > 1 ? 2 : 1); ti++) {
        circle_engine_opts o = {.threads = tlist[ti], .block_rows = block_rows,
                                .materialize_bytes = mat_bytes};
        circle_engine *e;
        if (circle_engine_init(&e, &o) != CIRCLE_OK) return 1;
        circle_config cfg;
        circle_config_init(&cfg);
        circle_input inp = {.n = n, .d = d, .labels = lab, .embeddings = xf};
        unsigned base = CIRCLE_OUT_LOSS | CIRCLE_OUT_PER_SAMPLE | CIRCLE_OUT_GRAD;
        unsigned want[3] = {base, base | CIRCLE_OUT_RETRIEVAL,
                            base | CIRCLE_OUT_RETRIEVAL | CIRCLE_OUT_STATS};
        double t[3][100];
        for (int r = -1; r < reps; r++)
          for (int k = 0; k < 3; k++) {
            circle_output out = {.want = want[k], .per_sample = ps, .grad = g};
            double t0 = now();
            int rc = circle_loss_compute(e, &cfg, &inp, &out);
            if (rc != CIRCLE_OK) {
              fprintf(stderr, "compute failed: %s\n", circle_status_str(rc));
              return 1;
            }
            if (r >= 0) t[k][r] = now() - t0;
          }
        double m0 = median(t[0], reps), m1 = median(t[1], reps),
               m2 = median(t[2], reps);
        printf("| %zu | %zu | %u | %.1f | %.1f | %+.1f%% | %.1f | %+.1f%% |\n",
               n, d, tlist[ti], m0 * 1e3, m1 * 1e3, (m1 / m0 - 1) * 100,
               m2 * 1e3, (m2 / m0 - 1) * 100);
        fflush(stdout);
        circle_engine_free(e);
      }
      free(xf);
      free(ps);
      free(g);
      free(xd);
      free(lab);
    }
  return 0;
}

int main(int argc, char **argv) {
  circle_blas_ensure_kernel(argc, argv);
  size_t ns[8] = {1024, 4096, 16384}, ds[8] = {128, 512};
  size_t nn = 3, nd = 2;
  int reps = 5;
  bool stats = false, baseline = true, extras = false;
  unsigned only_threads = 0;
  bool f32_only = false;
  size_t block_rows = 0, mat_bytes = 0; /* 0: the engine's defaults */
  for (int a = 1; a < argc; a++) {
    if (!strcmp(argv[a], "--stats")) {
      stats = true;
    } else if (!strcmp(argv[a], "--extras")) {
      extras = true;
    } else if (!strcmp(argv[a], "--float32")) {
      f32_only = true;
    } else if (!strcmp(argv[a], "--cpu")) {
      bench_clock = CLOCK_PROCESS_CPUTIME_ID; /* use with --threads 1 */
    } else if (!strcmp(argv[a], "--threads") && a + 1 < argc) {
      only_threads = (unsigned)atoi(argv[++a]);
    } else if (!strcmp(argv[a], "--no-baseline")) {
      baseline = false; /* engine only: for peak-RSS measurements */
    } else if (!strcmp(argv[a], "--block-rows") && a + 1 < argc) {
      block_rows = strtoul(argv[++a], NULL, 10);
    } else if (!strcmp(argv[a], "--materialize-mb") && a + 1 < argc) {
      mat_bytes = strtoul(argv[++a], NULL, 10) << 20;
    } else if (!strcmp(argv[a], "--quick")) {
      ns[0] = 1024, ns[1] = 4096, nn = 2;
      reps = 3;
    } else if (!strcmp(argv[a], "--n") && a + 1 < argc) {
      nn = parse_list(argv[++a], ns, 8);
    } else if (!strcmp(argv[a], "--d") && a + 1 < argc) {
      nd = parse_list(argv[++a], ds, 8);
    } else if (!strcmp(argv[a], "--reps") && a + 1 < argc) {
      reps = atoi(argv[++a]);
    } else {
      fprintf(stderr, "usage: %s [--quick] [--stats] [--extras] [--no-baseline] [--cpu] "
                      "[--threads T] [--float32] [--block-rows B] [--materialize-mb MB] "
                      "[--n N,..] [--d D,..] [--reps R]\n",
              argv[0]);
      return 2;
    }
  }
  if (reps < 1 || reps > 100) reps = 5;
  unsigned all = (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
  printf("# circle engine bench: OpenBLAS core %s, %u cores, median of %d\n",
         circle_blas_corename(), all, reps);
  if (extras) return bench_extras(ns, nn, ds, nd, reps, all, only_threads,
                                    block_rows, mat_bytes);
  printf("| n | d | dtype | threads | loss+grad ms | sgemm ms | ratio vs sgemm"
         " | dgemm ms | ratio vs dgemm |\n");
  printf("|---:|---:|---|---:|---:|---:|---:|---:|---:|\n");
  fflush(stdout);
  for (size_t in = 0; in < nn; in++)
    for (size_t id = 0; id < nd; id++) {
      size_t n = ns[in], d = ds[id];
      float *xf = malloc(n * d * sizeof *xf);
      float *cf = baseline ? malloc(n * n * sizeof *cf) : malloc(sizeof *cf);
      double *xd = malloc(n * d * sizeof *xd);
      int64_t *lab = malloc(n * sizeof *lab);
      if (!xf || !cf || !xd || !lab) {
        fprintf(stderr, "out of memory at n=%zu d=%zu\n", n, d);
        return 1;
      }
      make_batch(n, d, xf, xd, lab);
      unsigned tlist[2] = {1, all};
      int nt = all > 1 ? 2 : 1;
      if (!baseline) tlist[0] = all, nt = 1;
      if (only_threads) tlist[0] = only_threads, nt = 1;
      for (int ti = 0; ti < nt; ti++) {
        unsigned th = tlist[ti];
        circle_engine_opts o = {.threads = th, .block_rows = block_rows,
                                .materialize_bytes = mat_bytes};
        circle_engine *e;
        if (circle_engine_init(&e, &o) != CIRCLE_OK) return 1;
        double *cd = baseline && !f32_only ? malloc(n * n * sizeof *cd) : NULL;
        if (baseline && !f32_only && cd == NULL) {
          fprintf(stderr, "out of memory at n=%zu d=%zu\n", n, d);
          return 1;
        }
        for (int dt = 0; dt < (baseline && !f32_only ? 2 : 1); dt++) {
          circle_config cfg;
          circle_config_init(&cfg);
          cfg.dtype = dt ? CIRCLE_DTYPE_FLOAT64 : CIRCLE_DTYPE_FLOAT32;
          size_t es = dt ? 8 : 4;
          void *ps = malloc(n * es), *g = malloc(n * d * es);
          circle_input inp = {.n = n, .d = d, .labels = lab,
                              .embeddings = dt ? (void *)xd : (void *)xf};
          circle_output out = {.want = CIRCLE_OUT_LOSS | CIRCLE_OUT_PER_SAMPLE |
                                       CIRCLE_OUT_GRAD | (stats ? CIRCLE_OUT_STATS : 0),
                               .per_sample = ps, .grad = g};
          int lreps = (n >= 16384) ? (reps < 3 ? reps : 3) : reps;
          /* Rounds: one plain gemm of the same shape with the same threads
           * (float32: sgemm; float64: sgemm and dgemm), then the engine.
           * Each round's ratio compares two runs seconds apart, so drift
           * in what else the machine runs hits both alike; the medians of
           * the rounds' ratios are printed. */
          double ts[100], tg[100], td[100], rg[100], rd[100];
          openblas_idle(); /* its threads' start-up spin */
          for (int r = -1; r < lreps; r++) {
            double t0;
            if (baseline) {
              openblas_set_num_threads((int)th);
              t0 = now();
              cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n,
                          (int)n, (int)d, 1, xf, (int)d, xf, (int)d, 0, cf,
                          (int)n);
              if (r >= 0) tg[r] = now() - t0;
              if (cd && dt) {
                t0 = now();
                cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n,
                            (int)n, (int)d, 1, xd, (int)d, xd, (int)d, 0, cd,
                            (int)n);
                if (r >= 0) td[r] = now() - t0;
              }
              openblas_set_num_threads(1);
              if (th > 1) openblas_idle();
            }
            t0 = now();
            int rc = circle_loss_compute(e, &cfg, &inp, &out);
            if (rc != CIRCLE_OK) {
              fprintf(stderr, "compute failed: %s\n", circle_status_str(rc));
              return 1;
            }
            if (r < 0) continue;
            ts[r] = now() - t0;
            rg[r] = baseline ? ts[r] / tg[r] : 0;
            rd[r] = cd && dt ? ts[r] / td[r] : 0;
          }
          double lt = median(ts, lreps);
          double sg = baseline ? median(tg, lreps) : 0;
          char dcols[64] = "- | -";
          if (cd && dt)
            snprintf(dcols, sizeof dcols, "%.1f | %.2f",
                     median(td, lreps) * 1e3, median(rd, lreps));
          printf("| %zu | %zu | %s | %u | %.1f | %.1f | %.2f | %s |\n", n, d,
                 dt ? "float64" : "float32", th, lt * 1e3, sg * 1e3,
                 baseline ? median(rg, lreps) : 0, dcols);
          fflush(stdout);
          free(ps);
          free(g);
        }
        free(cd);
        circle_engine_free(e);
      }
      free(xf);
      free(cf);
      free(xd);
      free(lab);
    }
  return 0;
}
