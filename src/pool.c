/* pool.c -- the engine: a fixed set of compute threads, a bounded FIFO of
 * jobs, and parallel loops over row blocks with dynamic chunking.
 *
 * Locking rules:
 *  - e->mu guards every queue, e->stopping and each helper's `queued` flag.
 *  - A worker takes helper items before jobs (loops in progress finish
 *    first), and runs every item with e->mu released.
 *  - A parallel loop's state (struct loop) lives on its caller's stack. The
 *    caller, once blocks run out, withdraws helper items still queued (under
 *    e->mu) and waits until loop->active == 0, so no helper ever touches the
 *    stack frame after the call returns.
 *  - Blocks are claimed with an atomic counter; results never depend on who
 *    ran a block, so they are identical whatever the thread count.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "circle/circle.h"
#include "pool_impl.h"

extern void openblas_set_num_threads(int num_threads);

typedef struct job {
  void (*fn)(void *arg);
  void *arg;
  struct job *next;
} job;

struct loop;

typedef struct helper {
  struct loop *loop;
  struct helper *next; /* in e->helpers while queued */
  struct helper *prev;
  bool queued;
} helper;

typedef struct loop {
  circle__block_fn body;
  void *ctx;
  size_t nblocks;
  atomic_size_t next_block;
  atomic_uint next_ith;
  unsigned active;       /* helpers running; guarded by e->mu */
  pthread_cond_t idle;   /* signalled when active drops to 0 */
} loop;

struct circle_engine {
  circle_engine_opts opts;
  pthread_t *threads;
  unsigned nthreads;
  pthread_mutex_t mu;
  pthread_cond_t work;
  job *head, *tail;
  size_t queued;
  helper *helpers; /* doubly linked, LIFO is fine: all belong to live loops */
  bool stopping;
  /* One scratch buffer kept between calls (guarded by mu; at most
   * scratch_keep_max bytes): a fresh large allocation is mmap'd and
   * page-faulted in on every call otherwise. */
  void *cache;
  size_t cache_bytes;
  /* The cached buffer while a call has it, and its real size: a call that
   * needed less gives it back by its own size, which alone would shrink
   * what the cache remembers (and calls of two sizes, taking turns, would
   * then map a fresh buffer every other time). */
  void *lent;
  size_t lent_bytes;
};

static void run_blocks(loop *l, unsigned ith) {
  for (;;) {
    size_t b = atomic_fetch_add(&l->next_block, 1);
    if (b >= l->nblocks) break;
    l->body(l->ctx, b, ith);
  }
}

static void unlink_helper(circle_engine *e, helper *h) {
  if (h->prev) h->prev->next = h->next; else e->helpers = h->next;
  if (h->next) h->next->prev = h->prev;
  h->next = h->prev = NULL;
  h->queued = false;
}

static void *worker_main(void *arg) {
  circle_engine *e = arg;
  pthread_mutex_lock(&e->mu);
  for (;;) {
    if (e->helpers != NULL) {
      helper *h = e->helpers;
      unlink_helper(e, h);
      loop *l = h->loop;
      l->active++;
      pthread_mutex_unlock(&e->mu);
      run_blocks(l, atomic_fetch_add(&l->next_ith, 1));
      pthread_mutex_lock(&e->mu);
      if (--l->active == 0) pthread_cond_broadcast(&l->idle);
      continue;
    }
    if (e->head != NULL) {
      job *j = e->head;
      e->head = j->next;
      if (e->head == NULL) e->tail = NULL;
      e->queued--;
      pthread_mutex_unlock(&e->mu);
      j->fn(j->arg);
      free(j);
      pthread_mutex_lock(&e->mu);
      continue;
    }
    if (e->stopping) break;
    pthread_cond_wait(&e->work, &e->mu);
  }
  pthread_mutex_unlock(&e->mu);
  return NULL;
}

void circle__parallel(circle_engine *e, size_t nblocks, circle__block_fn body,
                      void *ctx) {
  if (nblocks == 0) return;
  loop l = {.body = body, .ctx = ctx, .nblocks = nblocks, .active = 0};
  atomic_init(&l.next_block, 0);
  atomic_init(&l.next_ith, 1);
  unsigned want = e->nthreads - 1;
  if (want > nblocks - 1) want = (unsigned)(nblocks - 1);
  helper hs[want > 0 ? want : 1];
  if (want > 0) {
    pthread_cond_init(&l.idle, NULL);
    pthread_mutex_lock(&e->mu);
    for (unsigned k = 0; k < want; k++) {
      hs[k] = (helper){.loop = &l, .queued = true, .prev = NULL};
      hs[k].next = e->helpers;
      if (e->helpers) e->helpers->prev = &hs[k];
      e->helpers = &hs[k];
    }
    pthread_cond_broadcast(&e->work);
    pthread_mutex_unlock(&e->mu);
  }
  run_blocks(&l, 0);
  if (want > 0) {
    pthread_mutex_lock(&e->mu);
    for (unsigned k = 0; k < want; k++)
      if (hs[k].queued) unlink_helper(e, &hs[k]);
    while (l.active > 0) pthread_cond_wait(&l.idle, &e->mu);
    pthread_mutex_unlock(&e->mu);
    pthread_cond_destroy(&l.idle);
  }
}

int circle_engine_init(circle_engine **out, const circle_engine_opts *opts) {
  if (out == NULL) return CIRCLE_EINVAL;
  circle_engine_opts o = {0};
  if (opts != NULL) o = *opts;
  if (o.threads == 0) {
    long nc = sysconf(_SC_NPROCESSORS_ONLN);
    o.threads = nc > 0 ? (unsigned)nc : 1;
  }
  if (o.threads > 1024) return CIRCLE_EINVAL;
  if (o.max_queue == 0) o.max_queue = 1024;
  if (o.materialize_bytes == 0) o.materialize_bytes = (size_t)256 << 20;
  circle_engine *e = calloc(1, sizeof *e);
  if (e == NULL) return CIRCLE_ENOMEM;
  e->opts = o;
  e->threads = calloc(o.threads, sizeof *e->threads);
  if (e->threads == NULL) {
    free(e);
    return CIRCLE_ENOMEM;
  }
  /* Parallelism comes from our pool; OpenBLAS runs one thread per call. */
  openblas_set_num_threads(1);
  pthread_mutex_init(&e->mu, NULL);
  pthread_cond_init(&e->work, NULL);
  for (unsigned k = 0; k < o.threads; k++) {
    if (pthread_create(&e->threads[k], NULL, worker_main, e) != 0) {
      e->nthreads = k;
      circle_engine_free(e);
      return CIRCLE_ENOMEM;
    }
    e->nthreads = k + 1;
  }
  *out = e;
  return CIRCLE_OK;
}

void circle_engine_free(circle_engine *e) {
  if (e == NULL) return;
  pthread_mutex_lock(&e->mu);
  e->stopping = true;
  pthread_cond_broadcast(&e->work);
  pthread_mutex_unlock(&e->mu);
  for (unsigned k = 0; k < e->nthreads; k++) pthread_join(e->threads[k], NULL);
  /* With no threads (a failed init) nothing could run queued jobs. */
  while (e->head != NULL) {
    job *j = e->head;
    e->head = j->next;
    j->fn(j->arg);
    free(j);
  }
  free(e->cache);
  pthread_cond_destroy(&e->work);
  pthread_mutex_destroy(&e->mu);
  free(e->threads);
  free(e);
}

unsigned circle_engine_threads(const circle_engine *e) {
  return e != NULL ? e->nthreads : 0;
}

size_t circle_engine_queue_depth(circle_engine *e) {
  if (e == NULL) return 0;
  pthread_mutex_lock(&e->mu);
  size_t q = e->queued;
  pthread_mutex_unlock(&e->mu);
  return q;
}

int circle_engine_submit(circle_engine *e, void (*fn)(void *arg), void *arg) {
  if (e == NULL || fn == NULL) return CIRCLE_EINVAL;
  job *j = malloc(sizeof *j);
  if (j == NULL) return CIRCLE_ENOMEM;
  *j = (job){.fn = fn, .arg = arg, .next = NULL};
  pthread_mutex_lock(&e->mu);
  int rc = CIRCLE_OK;
  if (e->stopping) {
    rc = CIRCLE_ESHUTDOWN;
  } else if (e->queued >= e->opts.max_queue) {
    rc = CIRCLE_EBUSY;
  } else {
    if (e->tail) e->tail->next = j; else e->head = j;
    e->tail = j;
    e->queued++;
    pthread_cond_signal(&e->work);
  }
  pthread_mutex_unlock(&e->mu);
  if (rc != CIRCLE_OK) free(j);
  return rc;
}

/* The largest buffer kept between calls: CIRCLE__SCRATCH_CACHE_MAX, or
 * materialize_bytes and an eighth more (the rest of a call's scratch) when
 * that is larger, so a call whose similarity matrix is kept whole does not
 * map and fault it in again on every call. */
static size_t scratch_keep_max(const circle_engine *e) {
  size_t mb = e->opts.materialize_bytes;
  size_t keep = mb > SIZE_MAX / 9 * 8 ? SIZE_MAX : mb + mb / 8;
  return keep > CIRCLE__SCRATCH_CACHE_MAX ? keep : CIRCLE__SCRATCH_CACHE_MAX;
}

void *circle__scratch_take(circle_engine *e, size_t bytes) {
  if (bytes == 0) bytes = 64;
  bytes = (bytes + 63) & ~(size_t)63;
  pthread_mutex_lock(&e->mu);
  void *p = NULL;
  /* Reuse the cached buffer when it fits without wasting more than half. */
  if (e->cache != NULL && e->cache_bytes >= bytes && e->cache_bytes / 2 <= bytes) {
    p = e->lent = e->cache;
    e->lent_bytes = e->cache_bytes;
    e->cache = NULL;
    e->cache_bytes = 0;
  }
  pthread_mutex_unlock(&e->mu);
  return p != NULL ? p : aligned_alloc(64, bytes);
}

void circle__scratch_give(circle_engine *e, void *p, size_t bytes) {
  if (p == NULL) return;
  if (bytes == 0) bytes = 64;
  bytes = (bytes + 63) & ~(size_t)63;
  void *drop = p;
  pthread_mutex_lock(&e->mu);
  if (p == e->lent) { /* the cached buffer: its own size, not the call's */
    bytes = e->lent_bytes;
    e->lent = NULL;
  }
  if (bytes <= scratch_keep_max(e) &&
      (e->cache == NULL || e->cache_bytes < bytes)) {
    drop = e->cache; /* keep the larger of the two */
    e->cache = p;
    e->cache_bytes = bytes;
  }
  pthread_mutex_unlock(&e->mu);
  free(drop);
}

const circle_engine_opts *circle__engine_opts(const circle_engine *e) {
  return &e->opts;
}
