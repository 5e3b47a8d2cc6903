/* http_job.c -- the compute job, on an engine worker: inflate, decode,
 * check, admit (bytes in flight), compute, encode, and resume the
 * connection. It keeps true: a job resumes its connection exactly once
 * (under srv->mu, with ex->done), a request holds of the in-flight budget
 * only what it still uses, and a client that has gone gets no
 * computation.
 *
 * A request with a small identity-encoded body is submitted as a short
 * job (circle_job_opts): it runs before ordinary jobs, on an idle compute
 * thread or the engine's short lane, which no ordinary job ever holds.
 * Stage one (job_decode) decodes it; when its work turns out not to be
 * short (SHORT_PAIRS, SHORT_WORK), stage two is submitted again as an
 * ordinary job, so a 4 KB body that asks for 4 billion pairs waits with
 * the large ones. Each stage first peeks at the socket (client_gone): a
 * client that has closed or reset the connection gets no computation,
 * and the engine asks the same question between row blocks, so a
 * computation whose client leaves stops within a block. Such a request is
 * closed without an answer and counted with status none.
 */
#include "http_impl.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/socket.h>

#include <zlib.h>

#include "codec_json.h"
#include "codec_oip.h"
#include "engine_server.h"
#include "inflate.h"

/* ======================================================================== */
/* The in-flight budget                                                     */
/* ======================================================================== */

/* Reserves bytes of the in-flight budget for ex. False when the budget
 * would be exceeded; nothing is reserved then. */
bool circle__http_reserve(circle_http *srv, atomic_size_t *held,
                          size_t bytes) {
  size_t cur = atomic_load(&srv->inflight);
  do {
    if (bytes > srv->opts.max_inflight || cur > srv->opts.max_inflight - bytes)
      return false;
  } while (!atomic_compare_exchange_weak(&srv->inflight, &cur, cur + bytes));
  atomic_fetch_add(held, bytes);
  return true;
}

void circle__http_release(circle_http *srv, atomic_size_t *held,
                          size_t bytes) {
  size_t h = atomic_load(held);
  if (bytes > h) bytes = h;
  atomic_fetch_sub(held, bytes);
  atomic_fetch_sub(&srv->inflight, bytes);
}

/* ======================================================================== */
/* The compute job (engine worker)                                          */
/* ======================================================================== */

/* Ends the phase that started at *mark (now the next one starts). */
static void phase_end(struct exchange *ex, int ph, struct timespec *mark) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  ex->phase_ms[ph] = ms_between(mark, &now);
  *mark = now;
}

/* Compresses b in place (gzip or zlib-wrapped deflate, as HTTP's "deflate"
 * means). Leaves b untouched and returns false when compression fails or
 * does not make the body smaller. */
static bool compress_buf(circle_buf *b, encoding enc) {
  z_stream zs;
  memset(&zs, 0, sizeof zs);
  if (deflateInit2(&zs, Z_BEST_SPEED, Z_DEFLATED, enc == ENC_GZIP ? 31 : 15,
                   8, Z_DEFAULT_STRATEGY) != Z_OK)
    return false;
  if (b->len > UINT_MAX) {
    deflateEnd(&zs);
    return false;
  }
  uLong bound = deflateBound(&zs, (uLong)b->len);
  char *out = malloc(bound);
  if (!out) {
    deflateEnd(&zs);
    return false;
  }
  zs.next_in = (Bytef *)b->data;
  zs.avail_in = (uInt)b->len;
  zs.next_out = (Bytef *)out;
  zs.avail_out = (uInt)bound;
  int rc = deflate(&zs, Z_FINISH);
  size_t olen = (size_t)zs.total_out;
  deflateEnd(&zs);
  if (rc != Z_STREAM_END || olen >= b->len) {
    free(out);
    return false;
  }
  circle_buf nb;
  circle_buf_init(&nb);
  circle_buf_append(&nb, out, olen);
  free(out);
  if (nb.failed) {
    circle_buf_free(&nb);
    return false;
  }
  circle_buf_free(b);
  *b = nb;
  return true;
}

/* a * b + c with overflow saturating at SIZE_MAX. */
static size_t mul_add(size_t a, size_t b, size_t c) {
  size_t r;
  if (__builtin_mul_overflow(a, b, &r) || __builtin_add_overflow(r, c, &r))
    return SIZE_MAX;
  return r;
}

/* Bytes this request will hold while it computes: its arrays, the outputs,
 * the engine's scratch and the response. SIZE_MAX on overflow. */
static size_t estimate_bytes(const circle_http *srv, const circle_request *req,
                             const circle_input *in, bool binary) {
  size_t elt = circle_dtype_size(req->cfg.dtype);
  size_t n = req->n, m = req->has_ref ? req->m : 0, d = req->d;
  size_t total = 0;
  size_t nd = mul_add(n, d, 0), md = mul_add(m, d, 0);
  if (nd == SIZE_MAX || md == SIZE_MAX) return SIZE_MAX;
  /* Inputs: x, r, sample weights, labels. */
  total = mul_add(elt, nd, total);
  total = mul_add(elt, md, total);
  total = mul_add(elt, n, total);
  total = mul_add(8, n + m, total);
  /* Outputs and the response text for them (at most ~32 bytes a number in
   * JSON). */
  size_t out_numbers = 0;
  if (req->want & CIRCLE_OUT_LOSS) out_numbers = mul_add(1, n, out_numbers);
  if ((req->want & CIRCLE_OUT_PER_SAMPLE) || req->cfg.half != CIRCLE_HALF_NONE)
    out_numbers = mul_add(1, n, out_numbers);
  if (req->want & CIRCLE_OUT_GRAD) out_numbers = mul_add(1, nd, out_numbers);
  if (req->want & CIRCLE_OUT_REF_GRAD) out_numbers = mul_add(1, md, out_numbers);
  total = mul_add(elt, out_numbers, total);
  total = mul_add(binary ? elt : 32, out_numbers, total);
  total = mul_add(1, 4096, total);
  /* The scratch size is 0 on overflow too, but the codec's limits (N x M
   * pairs, D) keep it far from size_t's range. */
  size_t scratch = circle_loss_scratch_bytes(srv->engine, &req->cfg, in,
                                             req->want);
  return mul_add(1, scratch, total);
}

static void *alloc_array(size_t count, size_t elt) {
  size_t bytes;
  if (__builtin_mul_overflow(count, elt, &bytes)) return NULL;
  return malloc(bytes ? bytes : 1);
}

/* What a job stage did. */
typedef enum {
  JOB_OK,     /* ex->resp holds the answer */
  JOB_FAILED, /* ex->err holds it */
  JOB_GONE,   /* the client went away: no answer, the connection closes */
  JOB_MOVED   /* decoded as a short job and too big for one: moved */
} job_result;

/* Fills ex->err and returns JOB_FAILED, for the job's error paths. */
static job_result fail(struct exchange *ex, int status, const char *what) {
  circle__http_error_from_status(status, what, &ex->err);
  return JOB_FAILED;
}

/* The engine's view of a request. */
static circle_input input_of(const circle_request *req) {
  circle_input in = {
      .n = req->n,
      .m = req->has_ref ? req->m : 0,
      .d = req->d,
      .labels = req->labels,
      .embeddings = req->x,
      .sample_weight = req->sw,
      .ref_labels = req->has_ref ? req->ref_labels : NULL,
      .ref_embeddings = req->has_ref ? req->r : NULL,
  };
  return in;
}

int circle__http_check(circle_request *req, circle_input *in,
                       circle_error *err) {
  if (!req->has_ref) req->want &= ~(unsigned)CIRCLE_OUT_REF_GRAD;
  *in = input_of(req);
  char where[256] = "";
  int rc = circle__input_check_decoded(&req->cfg, in, where, sizeof where);
  if (rc != 0) circle__http_error_from_status(rc, where, err);
  return rc;
}

int circle__http_compute(circle_http *srv, circle_request *req,
                         const circle_input *in, circle_output *out,
                         bool binary_out, atomic_size_t *held,
                         circle_error *err) {
  const circle_http_opts *o = &srv->opts;
  memset(out, 0, sizeof *out);
  out->want = req->want;

  /* 4. Admission: bytes in flight. */
  size_t need = estimate_bytes(srv, req, in, binary_out);
  if (need > o->max_inflight) {
    char msg[256];
    snprintf(msg, sizeof msg,
             "this request needs about %zu MiB to compute (n=%zu, m=%zu, "
             "d=%zu); this server commits at most %zu MiB to requests "
             "(--max-inflight-mb): send a smaller batch",
             need == SIZE_MAX ? SIZE_MAX / 1048576 : need / 1048576 + 1,
             req->n, in->m, req->d, o->max_inflight / 1048576);
    circle__http_error_from_status(CIRCLE_ELIMIT, msg, err);
    return CIRCLE_ELIMIT;
  }
  if (!circle__http_reserve(srv, held, need)) {
    circle__http_error_from_status(
        CIRCLE_EBUSY,
        "the server has too many requests in flight; retry "
        "after a second",
        err);
    return CIRCLE_EBUSY;
  }

  /* 5. Outputs, in the request's dtype. */
  size_t elt = circle_dtype_size(req->cfg.dtype);
  bool alloc_ok = true;
  if ((req->want & CIRCLE_OUT_LOSS) &&
      circle_reduction_is_elementwise(req->cfg.reduction))
    alloc_ok &= (out->loss_values = alloc_array(req->n, elt)) != NULL;
  /* A half format needs the per-sample values to mask rows as Keras does
   * (circle_output_round); they are returned only when asked for. */
  if (req->cfg.half != CIRCLE_HALF_NONE) out->want |= CIRCLE_OUT_PER_SAMPLE;
  if (out->want & CIRCLE_OUT_PER_SAMPLE)
    alloc_ok &= (out->per_sample = alloc_array(req->n, elt)) != NULL;
  if (req->want & CIRCLE_OUT_GRAD)
    alloc_ok &= (out->grad = alloc_array(req->n * req->d, elt)) != NULL;
  if (req->want & CIRCLE_OUT_REF_GRAD)
    alloc_ok &= (out->ref_grad = alloc_array(in->m * req->d, elt)) != NULL;
  if (!alloc_ok) {
    circle__http_error_from_status(
        CIRCLE_ENOMEM,
        "the server is out of memory for this request; retry "
        "later or send a smaller batch",
        err);
    return CIRCLE_ENOMEM;
  }

  /* 6. Compute. A job whose client has gone comes back CIRCLE_ECANCELED,
   * with *err untouched: there is no one to answer. */
  int rc = circle__loss_compute_checked(srv->engine, &req->cfg, in, out);
  if (rc == CIRCLE_ECANCELED) return rc;
  if (rc != 0) {
    circle__http_error_from_status(rc, NULL, err);
    return rc;
  }
  /* A half-precision dtype: the float32 results rounded to the format. */
  char where[256] = "";
  rc = circle_output_round(&req->cfg, in, out, where, sizeof where);
  if (rc != 0) {
    circle__http_error_from_status(rc, where, err);
    return rc;
  }
  circle_metrics_observe_compute(srv->metrics, req->tag, &req->cfg, in, out);
  return 0;
}

void circle__http_output_free(circle_output *out) {
  if (!out) return;
  free(out->loss_values);
  free(out->per_sample);
  free(out->grad);
  free(out->ref_grad);
  memset(out, 0, sizeof *out);
}

/* True when the request's computation is small enough for the short lane:
 * at most SHORT_PAIRS pairs (each counted SHORT_RETRIEVAL_WEIGHT times when
 * the retrieval figures are asked for) and SHORT_WORK pair-dimensions (a
 * few milliseconds on one core). */
static bool work_is_short(const circle_request *req) {
  size_t m = req->has_ref ? req->m : req->n, pairs, work, weighed;
  if (__builtin_mul_overflow(req->n, m, &pairs) ||
      __builtin_mul_overflow(pairs, req->d, &work) ||
      __builtin_mul_overflow(pairs,
                             (req->want & CIRCLE_OUT_RETRIEVAL)
                                 ? (size_t)SHORT_RETRIEVAL_WEIGHT
                                 : (size_t)1,
                             &weighed))
    return false;
  return weighed <= SHORT_PAIRS && work <= SHORT_WORK;
}

/* True once the client of ex has closed its end or reset the connection
 * (a peek reads end-of-stream or an error; data already sent, say a
 * pipelined request, is left where it is). Sticky. Thread-safe: the
 * engine asks it from any of its threads while the connection is
 * suspended, when libmicrohttpd does not touch the socket. */
static bool client_gone(struct exchange *ex) {
  if (atomic_load(&ex->gone)) return true;
  if (ex->fd == MHD_INVALID_SOCKET) return false;
  char c;
  ssize_t r = recv(ex->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  bool gone = r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
                         errno != EINTR);
  if (gone) atomic_store(&ex->gone, true);
  return gone;
}

/* The engine's cancellation hook for a request's job (circle_job_opts):
 * asked before every row block, it peeks at most once per
 * CANCEL_PEEK_MS, so a computation stops within that of its client
 * leaving and a small one costs no syscall at all. */
bool circle__http_job_cancelled(void *arg) {
  struct exchange *ex = arg;
  if (atomic_load(&ex->gone)) return true;
  long long now = now_ms(), last = atomic_load(&ex->peeked_ms);
  if (now - last < CANCEL_PEEK_MS ||
      !atomic_compare_exchange_strong(&ex->peeked_ms, &last, now))
    return false;
  return client_gone(ex);
}

/* True once the drain's deadline has passed: queued work is refused. Takes
 * srv->mu: called without it. */
static bool srv_stopping(circle_http *srv) {
  pthread_mutex_lock(&srv->mu);
  bool stopping = srv->stopping;
  pthread_mutex_unlock(&srv->mu);
  return stopping;
}

/* Stage one: inflates, decodes and checks into ex->req. Runs on an engine
 * thread. JOB_MOVED when it ran as a short job and the work is not short:
 * the caller moves it to the ordinary queue for stage two. */
static job_result job_decode(struct exchange *ex, struct timespec *mark) {
  circle_http *srv = ex->srv;
  const circle_http_opts *o = &srv->opts;
  circle_request *req = &ex->req;

  /* 1. Content-Encoding. */
  if (ex->content_encoding[0]) {
    char *plain = NULL;
    size_t plain_len = 0;
    if (circle_inflate(ex->content_encoding, ex->body, ex->len,
                       o->limits.max_inflated, &plain, &plain_len,
                       &ex->err) != 0)
      return JOB_FAILED;
    size_t compressed = atomic_load(&ex->reserved);
    if (!reserve(ex, plain_len)) {
      free(plain);
      return fail(ex, CIRCLE_EBUSY,
                  "the server has too many requests in flight; retry after "
                  "a second");
    }
    release(ex, compressed);
    free(ex->body);
    ex->body = plain;
    ex->len = ex->cap = plain_len;
  }

  /* 2. Decode into a request of its own, seeded from the server defaults. */
  int rc;
  if (ex->route->compute == COMPUTE_V1) {
    rc = circle_json_decode(ex->body ? ex->body : "", ex->len, &o->defaults,
                            o->name, &o->limits, req, &ex->err);
  } else {
    size_t header_len = ex->has_ihcl ? ex->ihcl : ex->len;
    if (header_len > ex->len) {
      circle_error_set(&ex->err, CIRCLE_ERR_BAD_ENCODING,
                       "Inference-Header-Content-Length is %zu but the body "
                       "has only %zu bytes",
                       header_len, ex->len);
      return JOB_FAILED;
    }
    rc = circle_oip_decode(ex->body ? ex->body : "", ex->len, header_len,
                           &o->defaults, &o->limits, req, &ex->err);
  }
  /* The body is gone: so is everything this request held so far. */
  free(ex->body);
  ex->body = NULL;
  ex->len = ex->cap = 0;
  release(ex, atomic_load(&ex->reserved));
  if (rc != 0) {
    if (ex->err.kind == CIRCLE_ERR_NONE)
      circle__http_error_from_status(rc, NULL, &ex->err);
    return JOB_FAILED;
  }

  /* 3. Check the input the way the engine will, for a precise message. */
  circle_input in;
  if (circle__http_check(req, &in, &ex->err) != 0) return JOB_FAILED;
  phase_end(ex, PH_DECODE, mark);
  return ex->short_job && !work_is_short(req) ? JOB_MOVED : JOB_OK;
}

/* Stage two: admits, computes and encodes ex->req into ex->resp. */
static job_result job_compute(struct exchange *ex, struct timespec *mark) {
  circle_http *srv = ex->srv;
  circle_request *req = &ex->req;
  circle_input in = input_of(req);
  bool ok = false, gone = false;
  circle_output out;

  /* 4.-6. Admission, outputs, compute (the engine parallelises inside). */
  /* Binary out: every tensor asked for goes as binary data (the figures,
   * stats and retrieval, are response parameters, never tensors). */
  bool binary_out = ex->route->compute == COMPUTE_OIP &&
                    (req->want & ~req->binary_outputs & ~CIRCLE__OUT_FIGURES) == 0;
  int rc = circle__http_compute(srv, req, &in, &out, binary_out, &ex->reserved,
                                &ex->err);
  if (rc == CIRCLE_ECANCELED) {
    gone = true; /* the client went away mid-computation */
    goto done;
  }
  if (rc != 0) goto done;
  phase_end(ex, PH_COMPUTE, mark);

  /* 7. Encode straight into the response buffer. */
  if (ex->route->compute == COMPUTE_V1) {
    rc = circle_json_encode(req, &out, &ex->resp);
    ex->binary = false;
  } else {
    size_t header_len = 0;
    rc = circle_oip_encode(req, &out, &ex->resp, &header_len);
    ex->header_len = header_len;
    ex->binary = header_len < ex->resp.len;
  }
  if (rc != 0 || ex->resp.failed) {
    circle_buf_free(&ex->resp);
    fail(ex, CIRCLE_ENOMEM,
         "the server ran out of memory writing the response; retry later");
    goto done;
  }
  if (ex->accept != ENC_NONE && ex->resp.len >= COMPRESS_MIN_BYTES &&
      compress_buf(&ex->resp, ex->accept))
    ex->resp_encoding = ex->accept;
  phase_end(ex, PH_ENCODE, mark);
  ok = true;

done:
  circle__http_output_free(&out);
  circle_request_free(req);
  /* From here on only the response is held. */
  size_t held = atomic_load(&ex->reserved);
  if (ok && held > ex->resp.len) release(ex, held - ex->resp.len);
  if (!ok) release(ex, held);
  return ok ? JOB_OK : gone ? JOB_GONE : JOB_FAILED;
}

/* Runs the stages still to run: drops the request if its client has gone
 * or the drain's deadline has passed, and moves it to the ordinary queue
 * when stage one finds it too big for the short lane. */
static job_result job_process(struct exchange *ex) {
  circle_http *srv = ex->srv;
  struct timespec mark;
  clock_gettime(CLOCK_MONOTONIC, &mark);
  /* Waiting in a queue, once or twice, is the queue phase. */
  double waited = ms_between(ex->decoded ? &ex->t_moved : &ex->t_body, &mark);
  ex->phase_ms[PH_QUEUE] = (ex->decoded ? ex->phase_ms[PH_QUEUE] : 0) + waited;
  if (client_gone(ex)) return JOB_GONE;
  atomic_store(&ex->peeked_ms, now_ms());
  if (srv_stopping(srv)) {
    fail(ex, CIRCLE_ESHUTDOWN, NULL);
    return JOB_FAILED;
  }
  if (!ex->decoded) {
    job_result r = job_decode(ex, &mark);
    ex->decoded = true;
    if (r != JOB_OK) {
      if (r == JOB_MOVED) ex->t_moved = mark;
      else release(ex, atomic_load(&ex->reserved));
      return r;
    }
  }
  return job_compute(ex, &mark);
}

/* Engine job: fn owns arg only in the sense that it must hand it back to
 * the network thread by resuming the connection; the completed callback
 * frees it. A request moved off the short lane is submitted again as an
 * ordinary job and stays suspended. */
void circle__http_job_run(void *arg) {
  struct exchange *ex = arg;
  circle_http *srv = ex->srv;
  job_result r = job_process(ex);
  if (r == JOB_MOVED) {
    ex->short_job = false;
    circle_job_opts jo = {.cancelled = circle__http_job_cancelled};
    int rc =
        circle_engine_submit_job(srv->engine, circle__http_job_run, ex, &jo);
    if (rc == CIRCLE_OK) return;
    fail(ex, rc,
         rc == CIRCLE_EBUSY ? "the compute queue is full; retry after a second"
                            : NULL);
    release(ex, atomic_load(&ex->reserved));
    r = JOB_FAILED;
  }
  ex->ok = r == JOB_OK;
  ex->dropped = r == JOB_GONE;
  pthread_mutex_lock(&srv->mu);
  ex->done = true;
  MHD_resume_connection(ex->conn);
  srv->jobs--;
  pthread_cond_broadcast(&srv->cv);
  pthread_mutex_unlock(&srv->mu);
}
