/* pool.c -- the engine: a fixed set of compute threads, bounded FIFOs of
 * jobs, and parallel loops over row blocks with dynamic chunking.
 *
 * Scheduling: jobs come in two classes, short (circle_job_opts.short_job:
 * the submitter knows it is small) and ordinary. A compute thread takes
 * helper items first (loops in progress finish first), then short jobs,
 * then ordinary ones. One more thread, the short lane, takes short jobs
 * only and never helps a loop of another job: however long the ordinary
 * jobs, a short job waits only for the short jobs ahead of it. A short job
 * run on the lane still asks the compute threads for help; whichever are
 * busy do not come, and the lane runs those blocks itself.
 *
 * Cancellation: a job may carry a cancelled() hook. Every parallel loop a
 * job's thread starts asks it before each block (from whichever thread
 * runs the block); once it says yes, that loop and every later one of the
 * job run no more blocks, and circle_loss_compute returns
 * CIRCLE_ECANCELED (circle__cancelled tells it). The job's identity is a
 * thread-local of the thread running it, set by the worker loop.
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
#include <string.h>
#include <unistd.h>

#include "circle/circle.h"
#include "pool_impl.h"

extern void openblas_set_num_threads(int num_threads);

typedef struct job {
  void (*fn)(void *arg);
  void *arg;
  bool (*cancelled)(void *arg);
  struct job *next;
} job;

/* The job the calling thread runs (NULL outside a job) and whether a loop
 * of it was cancelled. Set by run_job only. */
static _Thread_local const job *tl_job;
static _Thread_local bool tl_cancelled;

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
  bool (*cancelled)(void *arg); /* the job's hook, or NULL */
  void *arg;
  atomic_bool stop;             /* the hook said yes */
  atomic_size_t next_block;
  atomic_uint next_ith;
  unsigned active;       /* helpers running; guarded by e->mu */
  pthread_cond_t idle;   /* signalled when active drops to 0 */
} loop;

struct circle_engine {
  circle_engine_opts opts;
  bool c_loops; /* CIRCLE_KERNELS=c: no hand-written SIMD kernels */
  pthread_t *threads;
  unsigned nthreads;
  pthread_t lane;   /* the short lane's thread */
  bool lane_started;
  pthread_mutex_t mu;
  pthread_cond_t work;      /* compute threads wait here */
  pthread_cond_t lane_work; /* the short lane waits here */
  job *head, *tail;         /* ordinary jobs */
  job *shead, *stail;       /* short jobs */
  size_t queued;            /* both queues */
  unsigned idle_workers;    /* compute threads waiting on `work` */
  bool lane_idle;           /* the short lane waits on `lane_work` */
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

/* Runs blocks of l until none is left or the loop is cancelled. Called with
 * e->mu released: blocks are claimed through l->next_block alone. */
static void run_blocks(loop *l, unsigned ith) {
  for (;;) {
    if (l->cancelled &&
        (atomic_load(&l->stop) || l->cancelled(l->arg))) {
      atomic_store(&l->stop, true);
      break;
    }
    size_t b = atomic_fetch_add(&l->next_block, 1);
    if (b >= l->nblocks) break;
    l->body(l->ctx, b, ith);
  }
}

/* Unlinks h from e->helpers and marks it no longer queued. Called with
 * e->mu held. */
static void unlink_helper(circle_engine *e, helper *h) {
  if (h->prev) h->prev->next = h->next; else e->helpers = h->next;
  if (h->next) h->next->prev = h->prev;
  h->next = h->prev = NULL;
  h->queued = false;
}

/* Unlinks the first job of *head / *tail; NULL when empty. Called with
 * e->mu held. */
static job *pop_job(circle_engine *e, job **head, job **tail) {
  job *j = *head;
  if (j == NULL) return NULL;
  *head = j->next;
  if (*head == NULL) *tail = NULL;
  e->queued--;
  return j;
}

/* Runs j with e->mu released, frees it. Called with e->mu held, and
 * returns with it held again. */
static void run_job(circle_engine *e, job *j) {
  pthread_mutex_unlock(&e->mu);
  tl_job = j;
  tl_cancelled = false;
  j->fn(j->arg);
  tl_job = NULL;
  free(j);
  pthread_mutex_lock(&e->mu);
}

/* The short lane: short jobs only, never a helper item. */
static void *lane_main(void *arg) {
  circle_engine *e = arg;
  pthread_mutex_lock(&e->mu);
  for (;;) {
    job *j = pop_job(e, &e->shead, &e->stail);
    if (j != NULL) {
      run_job(e, j);
      continue;
    }
    if (e->stopping) break;
    e->lane_idle = true;
    pthread_cond_wait(&e->lane_work, &e->mu);
    e->lane_idle = false;
  }
  pthread_mutex_unlock(&e->mu);
  return NULL;
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
    job *j = pop_job(e, &e->shead, &e->stail);
    if (j == NULL) j = pop_job(e, &e->head, &e->tail);
    if (j != NULL) {
      run_job(e, j);
      continue;
    }
    if (e->stopping) break;
    e->idle_workers++;
    pthread_cond_wait(&e->work, &e->mu);
    e->idle_workers--;
  }
  pthread_mutex_unlock(&e->mu);
  return NULL;
}

void circle__parallel(circle_engine *e, size_t nblocks, circle__block_fn body,
                      void *ctx) {
  if (nblocks == 0 || tl_cancelled) return;
  loop l = {.body = body, .ctx = ctx, .nblocks = nblocks, .active = 0};
  if (tl_job != NULL && tl_job->cancelled != NULL) {
    l.cancelled = tl_job->cancelled;
    l.arg = tl_job->arg;
  }
  atomic_init(&l.stop, false);
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
  if (atomic_load(&l.stop)) tl_cancelled = true;
}

bool circle__cancelled(void) { return tl_cancelled; }

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
  const char *kern = getenv("CIRCLE_KERNELS");
  e->c_loops = kern != NULL && strcmp(kern, "c") == 0;
  e->threads = calloc(o.threads, sizeof *e->threads);
  if (e->threads == NULL) {
    free(e);
    return CIRCLE_ENOMEM;
  }
  /* Parallelism comes from our pool; OpenBLAS runs one thread per call. */
  openblas_set_num_threads(1);
  pthread_mutex_init(&e->mu, NULL);
  pthread_cond_init(&e->work, NULL);
  pthread_cond_init(&e->lane_work, NULL);
  for (unsigned k = 0; k < o.threads; k++) {
    if (pthread_create(&e->threads[k], NULL, worker_main, e) != 0) {
      e->nthreads = k;
      circle_engine_free(e);
      return CIRCLE_ENOMEM;
    }
    e->nthreads = k + 1;
  }
  e->lane_started = pthread_create(&e->lane, NULL, lane_main, e) == 0;
  if (!e->lane_started) {
    circle_engine_free(e);
    return CIRCLE_ENOMEM;
  }
  *out = e;
  return CIRCLE_OK;
}

void circle_engine_free(circle_engine *e) {
  if (e == NULL) return;
  pthread_mutex_lock(&e->mu);
  e->stopping = true;
  pthread_cond_broadcast(&e->work);
  pthread_cond_broadcast(&e->lane_work);
  pthread_mutex_unlock(&e->mu);
  for (unsigned k = 0; k < e->nthreads; k++) pthread_join(e->threads[k], NULL);
  if (e->lane_started) pthread_join(e->lane, NULL);
  /* With no threads (a failed init) nothing could run queued jobs. */
  pthread_mutex_lock(&e->mu);
  for (;;) {
    job *j = pop_job(e, &e->shead, &e->stail);
    if (j == NULL) j = pop_job(e, &e->head, &e->tail);
    if (j == NULL) break;
    run_job(e, j);
  }
  pthread_mutex_unlock(&e->mu);
  free(e->cache);
  pthread_cond_destroy(&e->lane_work);
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

size_t circle_engine_queue_capacity(const circle_engine *e) {
  return e != NULL ? e->opts.max_queue : 0;
}

int circle_engine_submit(circle_engine *e, void (*fn)(void *arg), void *arg) {
  return circle_engine_submit_job(e, fn, arg, NULL);
}

int circle_engine_submit_job(circle_engine *e, void (*fn)(void *arg),
                             void *arg, const circle_job_opts *opts) {
  if (e == NULL || fn == NULL) return CIRCLE_EINVAL;
  job *j = malloc(sizeof *j);
  if (j == NULL) return CIRCLE_ENOMEM;
  bool short_job = opts != NULL && opts->short_job;
  *j = (job){.fn = fn,
             .arg = arg,
             .cancelled = opts != NULL ? opts->cancelled : NULL,
             .next = NULL};
  pthread_mutex_lock(&e->mu);
  int rc = CIRCLE_OK;
  if (e->stopping) {
    rc = CIRCLE_ESHUTDOWN;
  } else if (e->queued >= e->opts.max_queue) {
    rc = CIRCLE_EBUSY;
  } else {
    job **head = short_job ? &e->shead : &e->head;
    job **tail = short_job ? &e->stail : &e->tail;
    if (*tail) (*tail)->next = j; else *head = j;
    *tail = j;
    e->queued++;
    /* Wake one thread that can take it: a short job the lane when it is
     * idle (it is there for them), else a compute thread. */
    if (short_job && (e->lane_idle || e->idle_workers == 0))
      pthread_cond_signal(&e->lane_work);
    else
      pthread_cond_signal(&e->work);
  }
  pthread_mutex_unlock(&e->mu);
  if (rc != CIRCLE_OK) free(j);
  return rc;
}

/* The largest buffer kept between calls: CIRCLE__SCRATCH_CACHE_MAX, or
 * materialize_bytes and an eighth more (the rest of a call's scratch) when
 * that is larger, so a call whose similarity matrix is kept whole does not
 * map and fault it in again on every call. Its callers hold e->mu; it
 * needs none (e->opts is fixed at init). */
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

bool circle__engine_simd(const circle_engine *e) { return !e->c_loops; }
