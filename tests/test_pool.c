/* test_pool.c -- the engine's thread pool and scratch cache (src/pool.c):
 * bad arguments to the engine's entry points, jobs and their options
 * (cancellation between row blocks, short jobs ahead of ordinary ones), and
 * the scratch buffer kept between calls. Threads meet here, so this suite
 * also runs under ThreadSanitizer (`make tsan`).
 */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "circle/circle.h"
#include "pool_impl.h"
#include "util_engine_new.h"

static void set_flag(void *arg) { *(volatile int *)arg = 1; }

START_TEST(loss_should_reject_bad_arguments_to_the_engine) {
  ck_assert_int_eq(circle_engine_init(NULL, NULL), CIRCLE_EINVAL);
  circle_engine_free(NULL); /* a no-op */
  ck_assert_uint_eq(circle_engine_threads(NULL), 0);
  ck_assert_uint_eq(circle_engine_queue_depth(NULL), 0);
  circle_engine *e = NULL;
  ck_assert_int_eq(circle_engine_init(&e, NULL), CIRCLE_OK);
  ck_assert_uint_ge(circle_engine_threads(e), 1);
  static volatile int flag;
  ck_assert_int_eq(circle_engine_submit(NULL, set_flag, (void *)&flag),
                   CIRCLE_EINVAL);
  ck_assert_int_eq(circle_engine_submit(e, NULL, NULL), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_engine_submit(e, set_flag, (void *)&flag),
                   CIRCLE_OK);
  circle_engine_free(e); /* runs the job first */
  ck_assert_int_eq(flag, 1);
  e = engine_new(3, 0, 0);
  ck_assert_uint_eq(circle_engine_threads(e), 3);
  ck_assert_uint_eq(circle_engine_queue_capacity(e), 1024);
  ck_assert_uint_eq(circle_engine_queue_capacity(NULL), 0);
  circle_job_opts quick = {.short_job = true};
  ck_assert_int_eq(circle_engine_submit_job(NULL, set_flag, NULL, &quick),
                   CIRCLE_EINVAL);
  ck_assert_int_eq(circle_engine_submit_job(e, NULL, NULL, &quick),
                   CIRCLE_EINVAL);
  flag = 0;
  ck_assert_int_eq(circle_engine_submit_job(e, set_flag, (void *)&flag, NULL),
                   CIRCLE_OK);
  circle_engine_free(e);
  ck_assert_int_eq(flag, 1);
}
END_TEST

/* A computation run as a job: n rows of dimension 8 in float32, 16 rows a
 * block, so it has n / 16 row blocks per loop. */
typedef struct {
  circle_engine *e;
  size_t n;
  unsigned stop_after; /* the hook says yes from its call number this on;
                          0: never */
  atomic_uint calls;
  int rc;
  double loss;
} cancel_job;

static bool cancel_hook(void *arg) {
  cancel_job *j = arg;
  unsigned k = atomic_fetch_add(&j->calls, 1) + 1;
  return j->stop_after && k >= j->stop_after;
}

static void cancel_run(void *arg) {
  cancel_job *j = arg;
  float *x = malloc(j->n * 8 * sizeof *x);
  int64_t *y = malloc(j->n * sizeof *y);
  for (size_t i = 0; i < j->n * 8; i++) x[i] = (float)((i * 37) % 11) / 20.0f;
  for (size_t i = 0; i < j->n; i++) y[i] = (int64_t)(i % 5);
  circle_config cfg;
  circle_config_init(&cfg);
  circle_input in = {.n = j->n, .d = 8, .labels = y, .embeddings = x};
  float *g = malloc(j->n * 8 * sizeof *g);
  circle_output out = {.want = CIRCLE_OUT_LOSS | CIRCLE_OUT_GRAD, .grad = g};
  j->rc = circle_loss_compute(j->e, &cfg, &in, &out);
  j->loss = out.loss;
  free(g);
  free(x);
  free(y);
}

START_TEST(loss_should_stop_a_cancelled_job_between_row_blocks) {
  const size_t n = 1024; /* 64 blocks a loop, at least two loops */
  circle_engine *e = engine_new(2, 16, 0);
  circle_job_opts stop = {.cancelled = cancel_hook};
  cancel_job never = {.e = e, .n = n}, soon = {.e = e, .n = n, .stop_after = 3};
  cancel_job plain = {.e = e, .n = n};
  atomic_init(&never.calls, 0);
  atomic_init(&soon.calls, 0);
  atomic_init(&plain.calls, 0);
  ck_assert_int_eq(circle_engine_submit_job(e, cancel_run, &never, &stop),
                   CIRCLE_OK);
  ck_assert_int_eq(circle_engine_submit_job(e, cancel_run, &soon, &stop),
                   CIRCLE_OK);
  ck_assert_int_eq(circle_engine_submit(e, cancel_run, &plain), CIRCLE_OK);
  circle_engine_free(e); /* runs the three jobs first */
  /* A hook that never says yes changes nothing, and is asked at least
   * once a block. */
  ck_assert_int_eq(never.rc, CIRCLE_OK);
  ck_assert_int_eq(plain.rc, CIRCLE_OK);
  ck_assert(never.loss == plain.loss);
  ck_assert_uint_ge(atomic_load(&never.calls), n / 16);
  /* Stopped at its third question: at most one more question per thread
   * (each asks before its next block), then nothing. */
  ck_assert_int_eq(soon.rc, CIRCLE_ECANCELED);
  ck_assert_uint_le(atomic_load(&soon.calls), 3 + 2);
}
END_TEST

/* An ordinary job that holds the engine's only compute thread until a
 * short job releases it (or 30 s pass). */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool released, timed_out;
} gate;

static void gate_hold(void *arg) {
  gate *g = arg;
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 30;
  pthread_mutex_lock(&g->mu);
  while (!g->released && !g->timed_out)
    g->timed_out = pthread_cond_timedwait(&g->cv, &g->mu, &until) != 0;
  pthread_mutex_unlock(&g->mu);
}

static void gate_release(void *arg) {
  gate *g = arg;
  pthread_mutex_lock(&g->mu);
  g->released = true;
  pthread_cond_broadcast(&g->cv);
  pthread_mutex_unlock(&g->mu);
}

START_TEST(loss_should_run_a_short_job_while_ordinary_jobs_hold_every_thread) {
  circle_engine *e = engine_new(1, 0, 0);
  gate g = {.released = false};
  pthread_mutex_init(&g.mu, NULL);
  pthread_cond_init(&g.cv, NULL);
  /* The compute thread waits for the short job, and an ordinary job waits
   * behind it: the short one must run anyway. */
  ck_assert_int_eq(circle_engine_submit(e, gate_hold, &g), CIRCLE_OK);
  ck_assert_int_eq(circle_engine_submit(e, gate_hold, &g), CIRCLE_OK);
  circle_job_opts quick = {.short_job = true};
  ck_assert_int_eq(circle_engine_submit_job(e, gate_release, &g, &quick),
                   CIRCLE_OK);
  circle_engine_free(e);
  ck_assert_msg(g.released && !g.timed_out,
                "the short job waited behind the ordinary ones");
  pthread_cond_destroy(&g.cv);
  pthread_mutex_destroy(&g.mu);
}
END_TEST

/* The scratch cache keeps one buffer between calls. Calls of two sizes
 * taking turns (a /v2 request computes stats, a /v1 one may not) must both
 * reuse it: before, the smaller call gave it back as its own size, the
 * cache then thought it too small for the larger one, and every other call
 * mapped and faulted in a fresh buffer. */
START_TEST(loss_should_reuse_the_scratch_buffer_for_calls_of_two_sizes) {
  circle_engine *e = engine_new(1, 0, 0);
  const size_t big = (size_t)8 << 20, less = big - 4096;
  void *first = circle__scratch_take(e, big);
  ck_assert_ptr_nonnull(first);
  circle__scratch_give(e, first, big);
  for (int round = 0; round < 3; round++) {
    void *p = circle__scratch_take(e, less);
    ck_assert_ptr_eq(p, first);
    circle__scratch_give(e, p, less);
    p = circle__scratch_take(e, big);
    ck_assert_ptr_eq(p, first);
    circle__scratch_give(e, p, big);
  }
  /* Less than half of it: a fresh buffer, and the larger one stays. */
  void *tiny = circle__scratch_take(e, big / 4);
  ck_assert_ptr_ne(tiny, first);
  circle__scratch_give(e, tiny, big / 4);
  void *again = circle__scratch_take(e, big);
  ck_assert_ptr_eq(again, first);
  /* While it is lent, another call gets its own buffer. */
  void *other = circle__scratch_take(e, big);
  ck_assert_ptr_nonnull(other);
  ck_assert_ptr_ne(other, first);
  circle__scratch_give(e, other, big);
  circle__scratch_give(e, again, big);
  circle_engine_free(e);
}
END_TEST

/* A buffer above 128 MiB is kept when the engine's materialize limit (and
 * an eighth more) covers it: a materialized call near the limit (about 256
 * MiB of similarities by default) then reuses its scratch instead of
 * mapping and faulting it in again. */
START_TEST(loss_should_keep_scratch_above_128_mib_within_the_materialize_limit) {
  const size_t big = (size_t)200 << 20;
  circle_engine *e = engine_new(1, 0, 0); /* 256 MiB: keeps up to 288 */
  void *p = circle__scratch_take(e, big);
  ck_assert_ptr_nonnull(p);
  circle__scratch_give(e, p, big);
  for (int round = 0; round < 3; round++) {
    /* Were p freed, this mapping would most likely take its place. */
    void *blocker = malloc(big);
    ck_assert_ptr_nonnull(blocker);
    void *q = circle__scratch_take(e, big);
    free(blocker);
    ck_assert_ptr_eq(q, p);
    /* While it is lent, another call gets its own buffer. */
    void *other = circle__scratch_take(e, big);
    ck_assert_ptr_nonnull(other);
    ck_assert_ptr_ne(other, p);
    circle__scratch_give(e, q, big);
    circle__scratch_give(e, other, big); /* the cache is full: freed */
  }
  circle_engine_free(e);
}
END_TEST

/* ------------------------------------------------------------------------ */

static Suite *pool_suite(void) {
  Suite *s = suite_create("pool");
  TCase *jobs = tcase_create("jobs");
  tcase_add_test(jobs, loss_should_reject_bad_arguments_to_the_engine);
  tcase_add_test(jobs, loss_should_stop_a_cancelled_job_between_row_blocks);
  tcase_add_test(jobs, loss_should_run_a_short_job_while_ordinary_jobs_hold_every_thread);
  suite_add_tcase(s, jobs);

  TCase *scratch = tcase_create("scratch");
  tcase_add_test(scratch, loss_should_reuse_the_scratch_buffer_for_calls_of_two_sizes);
  tcase_add_test(scratch, loss_should_keep_scratch_above_128_mib_within_the_materialize_limit);
  suite_add_tcase(s, scratch);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(pool_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
