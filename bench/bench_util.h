/* bench_util.h -- timing and random-number helpers shared by the benchmark
 * programs (header-only, static functions: each bench is one translation
 * unit). */
#ifndef CIRCLE_BENCH_UTIL_H
#define CIRCLE_BENCH_UTIL_H

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

/* The clock now() reads: wall time, or with a bench's --cpu the process'
 * CPU time (for one-thread runs on a shared machine: time other processes
 * take the core from it is not counted). */
static clockid_t bench_clock = CLOCK_MONOTONIC;

/* Seconds on bench_clock. */
static double now(void) {
  struct timespec ts;
  clock_gettime(bench_clock, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Median of v[0..k), k >= 1; sorts v in place. */
static double median(double *v, int k) {
  qsort(v, (size_t)k, sizeof *v, cmp_double);
  return k % 2 ? v[k / 2] : 0.5 * (v[k / 2 - 1] + v[k / 2]);
}

/* Uniform [0, 1) from a 64-bit LCG seeded with *state (deterministic). */
static double unif_from(uint64_t *state) {
  *state = *state * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(*state >> 11) / 9007199254740992.0;
}

/* Parses "a,b,c" into out[0..cap); returns how many numbers were read. */
static size_t parse_list(const char *s, size_t *out, size_t cap) {
  size_t k = 0;
  while (*s && k < cap) {
    out[k++] = strtoul(s, (char **)&s, 10);
    if (*s == ',') s++;
  }
  return k;
}

#endif /* CIRCLE_BENCH_UTIL_H */
