/* http_conn.c -- the access handler and the connection's life: the body's
 * upload (reserved as it grows), the final call that submits the job and
 * suspends, the answer after resume, the completed callback (log line,
 * metrics hook, release, free) and the request deadline's reaper. It keeps
 * true: per-request state lives in *req_cls and is freed only in the
 * completed callback, a connection is suspended only under srv->mu with
 * its job submitted, and the reaper never touches a socket whose watch has
 * been unlinked.
 *
 * libmicrohttpd's --timeout counts inactivity only, so a client that
 * trickles a byte now and then keeps its connection (and a body's
 * reservation) for ever. Every connection therefore has a watch (its
 * socket context, made and freed by on_connection): since_ms is when it
 * became ready for its next request (opened, or its previous request
 * completed) and 0 while nothing is owed (the request is computing or its
 * answer is going out); head_in says whether the owed request's head has
 * arrived (the first handler call). A reaper thread shuts down, once, the
 * socket of every connection that has owed a request for more than
 * --request-timeout, or a request head for more than --header-timeout;
 * libmicrohttpd then sees the hang-up and closes it as usual. One client
 * address holds at most --max-connections-per-ip connections
 * (libmicrohttpd closes the others at once). srv->watch_mu guards the
 * list; on_connection unlinks a watch under it before libmicrohttpd closes
 * the socket, so the reaper never touches a descriptor that has been
 * reused.
 */
#include "http_impl.h"

#include <stdlib.h>
#include <sys/socket.h>

/* ======================================================================== */
/* Metrics hook                                                             */
/* ======================================================================== */

/* Records a finished request in srv->metrics (src/metrics.h; GET /metrics
 * renders it in get_metrics, and job_process records each computation's
 * loss and stats). Called exactly once per finished request, on a network
 * thread, from the completed callback, with the route, the status sent (0
 * when none was, or when the connection ended before all of it was sent),
 * the body bytes both ways (sent: those written to the socket) and the
 * wall time since the request's first byte was handled. Lock-free: never
 * blocks. */
static void metrics_observe(const struct exchange *ex, double ms,
                            enum MHD_RequestTerminationCode toe) {
  bool delivered = ex->answered && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK;
  circle_metrics_observe_request(ex->srv->metrics, ex->route->ep,
                                 delivered ? ex->status : 0, ms / 1e3,
                                 ex->received,
                                 delivered ? ex->bytes : ex->sent);
}

/* ======================================================================== */
/* The access handler                                                       */
/* ======================================================================== */

/* Gives up on a body (over the limit, or no memory for it): frees what was
 * buffered, releases its reservation and counts the rest as discarded so
 * the error can still be answered once the upload ends. */
static void drop_body(struct exchange *ex, size_t size) {
  ex->discarded = ex->len + size;
  release(ex, atomic_load(&ex->reserved));
  free(ex->body);
  ex->body = NULL;
  ex->len = ex->cap = 0;
}

/* An upload call: appends the chunk, or drops it once the body is refused.
 * MHD_NO closes the connection (a refused body that keeps coming). */
static enum MHD_Result upload_call(struct exchange *ex, const char *data,
                                   size_t size) {
  circle_http *srv = ex->srv;
  size_t max_body = srv->opts.max_body;
  if (ex->answered || ex->pending || ex->too_large || ex->overloaded) {
    ex->discarded += size;
    return ex->discarded > DISCARD_FACTOR * max_body ? MHD_NO : MHD_YES;
  }
  if (size > max_body - ex->len || size > ex->expect - ex->len) {
    ex->too_large = true;
    drop_body(ex, size);
    return MHD_YES;
  }
  if (ex->len + size > ex->cap) {
    /* The buffer grows by doubling from 64 KiB (never past the declared
     * Content-Length), and each growth is reserved before it is made: what
     * a request holds of the in-flight budget is what it has sent, to
     * within a factor of two, never what it merely announced. */
    size_t cap = ex->cap ? ex->cap : BODY_FIRST_BYTES;
    while (cap < ex->len + size) cap = cap > max_body / 2 ? max_body : cap * 2;
    if (cap > ex->expect) cap = ex->expect;
    if (!reserve(ex, cap - ex->cap)) {
      ex->overloaded = true;
      drop_body(ex, size);
      return MHD_YES;
    }
    char *nb = realloc(ex->body, cap);
    if (!nb) {
      ex->overloaded = true;
      drop_body(ex, size);
      return MHD_YES;
    }
    ex->body = nb;
    ex->cap = cap;
  }
  memcpy(ex->body + ex->len, data, size);
  ex->len += size;
  return MHD_YES;
}

/* The final call of a compute request: hand it to the engine and suspend,
 * or answer at once when it cannot be taken. */
static enum MHD_Result final_call(struct exchange *ex) {
  circle_http *srv = ex->srv;
  circle_error err;
  if (ex->too_large) {
    circle__http_body_too_large(srv, SIZE_MAX, &err);
    return circle__http_respond_error(ex, &err);
  }
  if (ex->overloaded) {
    circle__http_error_from_status(
        CIRCLE_EBUSY,
        "the server has too many requests in flight; retry "
        "after a second",
        &err);
    return circle__http_respond_error(ex, &err);
  }
  pthread_mutex_lock(&srv->mu);
  int rc = srv->stopping ? CIRCLE_ESHUTDOWN : CIRCLE_OK;
  if (rc == CIRCLE_OK) {
    ex->submitted = true;
    clock_gettime(CLOCK_MONOTONIC, &ex->t_body);
    ex->phase_ms[PH_RECV] = ms_between(&ex->t0, &ex->t_body);
    /* Short: a small identity-encoded body (a compressed one may inflate
     * to anything); stage one moves it on if its work is not short. */
    ex->short_job = ex->len <= SHORT_BODY_BYTES && !ex->content_encoding[0];
    circle_job_opts jo = {.short_job = ex->short_job,
                          .cancelled = circle__http_job_cancelled};
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(
        ex->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci) ex->fd = ci->connect_fd;
    rc = circle_engine_submit_job(srv->engine, circle__http_job_run, ex, &jo);
  }
  if (rc == CIRCLE_OK) {
    srv->jobs++;
    MHD_suspend_connection(ex->conn);
  } else {
    ex->submitted = false;
  }
  pthread_mutex_unlock(&srv->mu);
  if (rc == CIRCLE_OK) return MHD_YES;
  circle__http_error_from_status(
      rc,
      rc == CIRCLE_EBUSY ? "the compute queue is full; retry after a second"
                         : NULL,
      &err);
  return circle__http_respond_error(ex, &err);
}

/* ======================================================================== */
/* Slow clients: the request deadline                                       */
/* ======================================================================== */

/* Starts (owed) or stops the clock of the connection's next request. */
static void request_owed(struct MHD_Connection *conn, bool owed) {
  struct watch *w = watch_of(conn);
  if (!w) return;
  if (owed) atomic_store(&w->head_in, false);
  atomic_store(&w->since_ms, owed ? now_ms() : 0);
}

/* The owed request's head is in: --header-timeout no longer applies. */
static void request_head_in(struct MHD_Connection *conn) {
  struct watch *w = watch_of(conn);
  if (w) atomic_store(&w->head_in, true);
}

/* MHD_OPTION_NOTIFY_CONNECTION: links a watch into srv->watches when a
 * connection opens and unlinks and frees it when it closes (libmicrohttpd
 * closes the socket only after this returns). */
void circle__http_on_connection(void *cls, struct MHD_Connection *conn,
                                void **socket_context,
                                enum MHD_ConnectionNotificationCode code) {
  circle_http *srv = cls;
  struct watch *w = *socket_context;
  if (code == MHD_CONNECTION_NOTIFY_STARTED) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    w = ci ? calloc(1, sizeof *w) : NULL;
    if (!w) return; /* no deadline for this one; --timeout still applies */
    w->fd = ci->connect_fd;
    atomic_init(&w->since_ms, now_ms());
    atomic_init(&w->head_in, false);
    pthread_mutex_lock(&srv->watch_mu);
    w->next = srv->watches;
    if (srv->watches) srv->watches->prev = w;
    srv->watches = w;
    pthread_mutex_unlock(&srv->watch_mu);
    *socket_context = w;
  } else if (w) {
    pthread_mutex_lock(&srv->watch_mu);
    if (w->prev) w->prev->next = w->next;
    else srv->watches = w->next;
    if (w->next) w->next->prev = w->prev;
    pthread_mutex_unlock(&srv->watch_mu);
    *socket_context = NULL;
    free(w);
  }
}

/* The reaper: four sweeps per deadline (at most one a second), each
 * shutting down the connections whose request, or its head, is overdue. */
void *circle__http_reaper_main(void *arg) {
  circle_http *srv = arg;
  long long limit = (long long)srv->opts.request_timeout_s * 1000;
  long long head_limit = (long long)srv->opts.header_timeout_s * 1000;
  long long shortest = !limit                ? head_limit
                       : !head_limit           ? limit
                       : limit < head_limit    ? limit
                                               : head_limit;
  long long period = shortest / 4 < 1000 ? shortest / 4 : 1000;
  if (period < 50) period = 50;
  pthread_mutex_lock(&srv->watch_mu);
  while (!srv->reaper_stop) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += period / 1000;
    until.tv_nsec += (period % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
      until.tv_sec++;
      until.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&srv->watch_cv, &srv->watch_mu, &until);
    if (srv->reaper_stop) break;
    long long now = now_ms();
    size_t cut = 0, cut_head = 0;
    for (struct watch *w = srv->watches; w; w = w->next) {
      long long since = atomic_load(&w->since_ms);
      if (w->cut || since == 0) continue;
      bool head = head_limit && !atomic_load(&w->head_in) &&
                  now - since > head_limit;
      if (!head && (!limit || now - since <= limit)) continue;
      shutdown(w->fd, SHUT_RDWR);
      w->cut = true;
      if (head) cut_head++;
      else cut++;
    }
    if (cut_head && !srv->opts.quiet)
      fprintf(stderr,
              "circled: closed %zu connection%s that had not sent a request "
              "head within %us (--header-timeout)\n",
              cut_head, cut_head == 1 ? "" : "s", srv->opts.header_timeout_s);
    if (cut && !srv->opts.quiet)
      fprintf(stderr,
              "circled: closed %zu connection%s that had not sent a whole "
              "request within %us (--request-timeout)\n",
              cut, cut == 1 ? "" : "s", srv->opts.request_timeout_s);
  }
  pthread_mutex_unlock(&srv->watch_mu);
  return NULL;
}

/* ======================================================================== */
/* The libmicrohttpd callbacks                                              */
/* ======================================================================== */

enum MHD_Result circle__http_on_request(void *cls, struct MHD_Connection *conn,
                                        const char *url, const char *method,
                                        const char *version,
                                        const char *upload_data,
                                        size_t *upload_data_size,
                                        void **req_cls) {
  circle_http *srv = cls;
  struct exchange *ex = *req_cls;

  if (!ex) {
    ex = calloc(1, sizeof *ex);
    if (!ex) return MHD_NO;
    ex->srv = srv;
    ex->conn = conn;
    clock_gettime(CLOCK_MONOTONIC, &ex->t0);
    for (int i = 0; i < PHASES; i++) ex->phase_ms[i] = -1;
    copy_printable(ex->method, sizeof ex->method, method);
    copy_printable(ex->url, sizeof ex->url, url);
    atomic_init(&ex->reserved, 0);
    atomic_init(&ex->gone, false);
    atomic_init(&ex->peeked_ms, 0);
    ex->fd = MHD_INVALID_SOCKET;
    circle_request_init(&ex->req);
    circle_buf_init(&ex->resp);
    *req_cls = ex;
    atomic_fetch_add(&srv->active, 1);
    request_head_in(conn);
    return circle__http_first_call(ex, url, version);
  }

  if (*upload_data_size != 0) {
    size_t size = *upload_data_size;
    *upload_data_size = 0;
    ex->received += size;
    return upload_call(ex, upload_data, size);
  }

  /* The whole request is in: its deadline no longer runs. */
  request_owed(conn, false);
  if (ex->answered) return MHD_YES;
  if (ex->pending == PENDING_GET) return ex->route->get(ex);
  if (ex->pending == PENDING_ERROR)
    return circle__http_respond_error(ex, &ex->err);

  if (ex->submitted) {
    pthread_mutex_lock(&srv->mu);
    bool done = ex->done;
    if (!done) MHD_suspend_connection(conn); /* not expected: wait again */
    pthread_mutex_unlock(&srv->mu);
    if (!done) return MHD_YES;
    if (ex->dropped) return MHD_NO; /* nobody to answer: close */
    if (!ex->ok) return circle__http_respond_error(ex, &ex->err);
    return circle__http_respond(ex, 200, &ex->resp,
                                ex->binary ? "application/octet-stream"
                                           : "application/json");
  }
  return final_call(ex);
}

/* The completed callback: the one place an exchange is freed. */
void circle__http_on_completed(void *cls, struct MHD_Connection *conn,
                               void **req_cls,
                               enum MHD_RequestTerminationCode toe) {
  circle_http *srv = cls;
  struct exchange *ex = *req_cls;
  /* Keep-alive: the next request's deadline starts now. */
  request_owed(conn, true);
  if (!ex) return;
  *req_cls = NULL;
  double ms = ms_since(&ex->t0);
  if (!srv->opts.quiet) {
    char phases[160] = "";
    if (ex->submitted &&
        circle__http_phases_format(ex, phases + 1, sizeof phases - 1, " ", "="))
      phases[0] = ' ';
    const char *why = toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED
                          ? "timed out"
                      : toe == MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN
                          ? "server shutdown"
                      : ex->answered && toe == MHD_REQUEST_TERMINATED_WITH_ERROR
                          ? "send failed"
                          : "client went away";
    if (ex->answered && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
      fprintf(stderr, "circled: %s %s %u %zu %.3fms%s\n", ex->method, ex->url,
              ex->status, ex->bytes, ms, phases);
    else if (ex->answered)
      fprintf(stderr,
              "circled: %s %s - %zu %.3fms%s (%s: %u cut off after %zu of "
              "%zu bytes)\n",
              ex->method, ex->url, ex->sent, ms, phases, why, ex->status,
              ex->sent, ex->bytes);
    else
      fprintf(stderr, "circled: %s %s - 0 %.3fms (%s)\n", ex->method,
              ex->url, ms, why);
  }
  metrics_observe(ex, ms, toe);
  release(ex, atomic_load(&ex->reserved));
  free(ex->body);
  circle_request_free(&ex->req);
  circle_buf_free(&ex->resp);
  free(ex);
  atomic_fetch_sub(&srv->active, 1);
}
