/* http.c -- the circled HTTP server's life cycle (init, drain, free, its
 * options) and what it shares with the gRPC listener. The server's design,
 * across its files (listed in http_impl.h), is set down here. It must keep
 * true: network threads never compute, every request gets its own config,
 * every suspended connection is resumed exactly once, and nothing a
 * request owns outlives it.
 *
 * Request flow
 * ------------
 *
 *   network thread (MHD epoll pool)            engine worker
 *   -------------------------------            -------------
 *   first call: route, auth, method,
 *     Content-Length vs --max-body-mb (413)
 *   upload calls: append to ex->body,
 *     reserving it as it grows (503 if
 *     full), counting chunked bodies (413)
 *   final call: lock mu; submit job; ------->  job_run: inflate, decode
 *     MHD_suspend_connection; unlock             (codec), admission (bytes
 *                                                in flight), compute, encode
 *                                                lock mu; ex->done = true;
 *   handler called again  <----------------      MHD_resume_connection;
 *     queue ex->resp                             jobs--; unlock
 *   completed callback: log line, metrics hook, release the reservation, free
 *
 * GETs (health, /config, OIP metadata) are answered on the first call, on
 * the network thread: they never wait behind a computation.
 *
 * Locking rules
 * -------------
 * srv->mu guards srv->jobs, srv->stopping and every ex->done. It is held
 * across circle_engine_submit + MHD_suspend_connection in the handler and
 * across ex->done = true + MHD_resume_connection in the job, so a job can
 * never resume a connection that is not yet suspended. libmicrohttpd calls
 * neither the handler nor the completed callback with a lock of its own held
 * that we then wait on, and the completed callback takes no lock of ours
 * (it uses atomics), so there is no lock-order cycle.
 *
 * Memory in flight
 * ----------------
 * srv->inflight counts bytes committed to requests: body buffers as they
 * grow with the bytes that arrive (a declared Content-Length reserves
 * nothing by itself: 32 connections announcing 64 MiB and sending a byte
 * now and then hold 64 KiB each, not 2 GiB), inflated bodies, then decoded
 * arrays + outputs + circle_loss_scratch_bytes + the response estimate,
 * finally the response itself until it is sent. A request that would push
 * it past --max-inflight-mb gets 503 "overloaded" with Retry-After; one that
 * could never fit gets 413. Transient codec memory while decoding is not
 * counted: the codecs bound it by the body (at most 6 times it plus 24 MiB,
 * docs/hardening.md), and only the engine workers decode.
 *
 * Scheduling, GET /metrics and slow clients are described where they are
 * done: http_job.c, http_get.c and http_conn.c.
 */
#include "http_impl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
  (void)cls;
  char msg[512];
  vsnprintf(msg, sizeof msg, fmt, ap);
  size_t n = strlen(msg);
  while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
  fprintf(stderr, "circled: libmicrohttpd: %s\n", msg);
}

/* ======================================================================== */
/* Life cycle                                                               */
/* ======================================================================== */

void circle_http_opts_init(circle_http_opts *opts) {
  memset(opts, 0, sizeof *opts);
  opts->bind = "127.0.0.1";
  opts->port = 8080;
  opts->net_threads = 2;
  opts->timeout_s = 30;
  opts->request_timeout_s = 120;
  opts->header_timeout_s = 10;
  opts->max_connections = 1024;
  opts->max_connections_per_ip = 256;
  opts->max_body = (size_t)64 << 20;
  opts->max_inflight = (size_t)2048 << 20;
  circle_limits_init(&opts->limits);
  circle_config_init(&opts->defaults);
  snprintf(opts->name, sizeof opts->name, "circle");
  opts->api_key = NULL;
  opts->quiet = false;
  opts->max_tags = CIRCLE_METRICS_DEFAULT_TAGS;
}

static void set_why(char *why, size_t why_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_why(char *why, size_t why_len, const char *fmt, ...) {
  if (!why || !why_len) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, why_len, fmt, ap);
  va_end(ap);
}

int circle_http_init(circle_http **out, const circle_http_opts *opts,
                     circle_engine *engine, char *why, size_t why_len) {
  if (!out || !opts || !engine || !opts->bind) {
    set_why(why, why_len, "missing argument");
    return CIRCLE_EINVAL;
  }
  if (opts->net_threads < 1 || opts->net_threads > 1024 ||
      opts->timeout_s < 1 || opts->max_connections < 1 ||
      opts->max_body < 1 || opts->max_inflight < opts->max_body) {
    set_why(why, why_len,
            "need net-threads 1..1024, timeout >= 1, max-connections >= 1, "
            "max-body >= 1 and max-inflight >= max-body");
    return CIRCLE_EINVAL;
  }
  if (circle_config_validate(&opts->defaults) != CIRCLE_OK) {
    set_why(why, why_len, "the default loss config is invalid (gamma must be "
                          "> 0 and finite, margin finite)");
    return CIRCLE_EINVAL;
  }
  if (opts->max_tags > CIRCLE_METRICS_MAX_TAGS) {
    set_why(why, why_len, "max-tags must be at most %d",
            CIRCLE_METRICS_MAX_TAGS);
    return CIRCLE_EINVAL;
  }

  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME |
                   MHD_USE_ERROR_LOG;
  struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, opts->bind, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(opts->port);
  } else if (inet_pton(AF_INET6, opts->bind, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(opts->port);
    flags |= MHD_USE_IPv6;
  } else {
    set_why(why, why_len, "bind address '%.64s' is not an IPv4 or IPv6 "
                          "literal",
            opts->bind);
    return CIRCLE_EINVAL;
  }

  circle_http *srv = calloc(1, sizeof *srv);
  if (!srv) return CIRCLE_ENOMEM;
  srv->engine = engine;
  srv->opts = *opts;
  srv->opts.api_key = NULL;
  if (circle_metrics_init(&srv->metrics, opts->max_tags,
                          CIRCLE_HTTP_VERSION) != CIRCLE_OK) {
    free(srv);
    return CIRCLE_ENOMEM;
  }
  if (opts->api_key && opts->api_key[0]) {
    srv->api_key = strdup(opts->api_key);
    if (!srv->api_key) {
      circle_metrics_free(srv->metrics);
      free(srv);
      return CIRCLE_ENOMEM;
    }
    srv->api_key_len = strlen(srv->api_key);
  }
  atomic_init(&srv->draining, false);
  atomic_init(&srv->inflight, 0);
  atomic_init(&srv->active, 0);
  pthread_mutex_init(&srv->mu, NULL);
  pthread_cond_init(&srv->cv, NULL);
  pthread_mutex_init(&srv->watch_mu, NULL);
  pthread_cond_init(&srv->watch_cv, NULL);
  pthread_cond_init(&srv->render_cv, NULL);

  errno = 0;
  srv->mhd = MHD_start_daemon(
      flags, opts->port, NULL, NULL, circle__http_on_request, srv,
      MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, srv, /* first, as MHD asks */
      MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
      MHD_OPTION_THREAD_POOL_SIZE, (unsigned int)opts->net_threads,
      MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)opts->timeout_s,
      MHD_OPTION_CONNECTION_LIMIT, (unsigned int)opts->max_connections,
      /* 0 is libmicrohttpd's "no limit" too. */
      MHD_OPTION_PER_IP_CONNECTION_LIMIT,
      (unsigned int)opts->max_connections_per_ip,
      /* libmicrohttpd reads a body in chunks of about half this pool (and
       * it bounds the request head: 431). Its default, 32 KiB, made an
       * 8 MiB OIP body 512 reads and callbacks: 128 KiB cut the end-to-end
       * time of a 4096 x 512 tritonclient request from 373 to 332 ms
       * (medians of three interleaved rounds of 8). Small requests showed
       * no difference (libmicrohttpd zeroes the pool after each request).
       * Pages are touched only as used (the pool is mmap'd). */
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, CONN_POOL_BYTES,
      MHD_OPTION_NOTIFY_COMPLETED, circle__http_on_completed, srv,
      MHD_OPTION_NOTIFY_CONNECTION, circle__http_on_connection, srv,
      MHD_OPTION_URI_LOG_CALLBACK, circle__http_on_uri, srv, MHD_OPTION_END);
  if (!srv->mhd) {
    int e = errno;
    set_why(why, why_len, "cannot listen on %s port %u: %s", opts->bind,
            (unsigned)opts->port,
            e ? strerror(e) : "libmicrohttpd refused to start");
    pthread_cond_destroy(&srv->render_cv);
    pthread_cond_destroy(&srv->watch_cv);
    pthread_mutex_destroy(&srv->watch_mu);
    pthread_cond_destroy(&srv->cv);
    pthread_mutex_destroy(&srv->mu);
    circle_metrics_free(srv->metrics);
    free(srv->api_key);
    free(srv);
    return CIRCLE_EINVAL;
  }
  /* Without the renderer (no thread) /metrics renders on the network
   * thread, as metrics_queue's callers do. */
  srv->renderer_started = pthread_create(&srv->renderer, NULL,
                                         circle__http_renderer_main, srv) == 0;
  /* Without the reaper (both 0, or no thread) --timeout alone guards. */
  if (opts->request_timeout_s > 0 || opts->header_timeout_s > 0)
    srv->reaper_started =
        pthread_create(&srv->reaper, NULL, circle__http_reaper_main, srv) == 0;
  const union MHD_DaemonInfo *info =
      MHD_get_daemon_info(srv->mhd, MHD_DAEMON_INFO_BIND_PORT);
  srv->port = info ? info->port : opts->port;
  *out = srv;
  return CIRCLE_OK;
}

uint16_t circle_http_port(const circle_http *srv) { return srv ? srv->port : 0; }

/* Waits on srv->cv until no job is left (jobs_only) or no job and no
 * request, or the deadline passes (NULL: never). Takes srv->mu: called
 * without it. */
static void wait_until_idle(circle_http *srv, const struct timespec *deadline,
                            bool jobs_only) {
  pthread_mutex_lock(&srv->mu);
  for (;;) {
    bool idle = jobs_only ? srv->jobs == 0
                          : srv->jobs == 0 && atomic_load(&srv->active) == 0;
    if (idle) break;
    struct timespec now, until;
    clock_gettime(CLOCK_REALTIME, &now);
    if (deadline && (now.tv_sec > deadline->tv_sec ||
                     (now.tv_sec == deadline->tv_sec &&
                      now.tv_nsec >= deadline->tv_nsec)))
      break;
    /* active drops in the completed callback, which signals nothing:
     * poll it every 10 ms. */
    until = now;
    until.tv_nsec += 10 * 1000 * 1000;
    if (until.tv_nsec >= 1000000000L) {
      until.tv_sec++;
      until.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&srv->cv, &srv->mu, &until);
  }
  pthread_mutex_unlock(&srv->mu);
}

void circle_http_drain(circle_http *srv, double timeout_s) {
  if (!srv || srv->drained) return;
  srv->drained = true;
  atomic_store(&srv->draining, true);
  MHD_socket ls = MHD_quiesce_daemon(srv->mhd);
  if (ls != MHD_INVALID_SOCKET) close(ls);

  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  if (timeout_s < 0) timeout_s = 0;
  if (timeout_s > 86400) timeout_s = 86400;
  deadline.tv_sec += (time_t)timeout_s;
  deadline.tv_nsec += (long)((timeout_s - (double)(time_t)timeout_s) * 1e9);
  if (deadline.tv_nsec >= 1000000000L) {
    deadline.tv_sec++;
    deadline.tv_nsec -= 1000000000L;
  }
  /* Requests still uploading or queued get until the deadline; after it,
   * no new job is taken, queued ones answer 503 when their turn comes
   * (job_process), and the ones computing are waited for: a suspended
   * connection must be resumed before the daemon stops. */
  wait_until_idle(srv, &deadline, false);
  pthread_mutex_lock(&srv->mu);
  srv->stopping = true;
  pthread_mutex_unlock(&srv->mu);
  wait_until_idle(srv, NULL, true);
  /* Let resumed connections send what they were given: until the
   * deadline, and at least one more second. */
  struct timespec grace;
  clock_gettime(CLOCK_REALTIME, &grace);
  grace.tv_sec += 1;
  if (deadline.tv_sec > grace.tv_sec) grace = deadline;
  wait_until_idle(srv, &grace, false);
}

void circle_http_free(circle_http *srv) {
  if (!srv) return;
  circle_http_drain(srv, 0);
  if (srv->reaper_started) {
    pthread_mutex_lock(&srv->watch_mu);
    srv->reaper_stop = true;
    pthread_cond_signal(&srv->watch_cv);
    pthread_mutex_unlock(&srv->watch_mu);
    pthread_join(srv->reaper, NULL);
  }
  if (srv->renderer_started) {
    pthread_mutex_lock(&srv->mu);
    srv->render_stop = true;
    pthread_cond_signal(&srv->render_cv);
    pthread_mutex_unlock(&srv->mu);
    pthread_join(srv->renderer, NULL);
  }
  /* Closing the connections frees their watches (on_connection). */
  MHD_stop_daemon(srv->mhd);
  pthread_cond_destroy(&srv->render_cv);
  pthread_cond_destroy(&srv->watch_cv);
  pthread_mutex_destroy(&srv->watch_mu);
  circle_metrics_free(srv->metrics);
  pthread_cond_destroy(&srv->cv);
  pthread_mutex_destroy(&srv->mu);
  if (srv->api_key) {
    /* The key is a secret: do not leave it in freed memory. */
    volatile char *p = srv->api_key;
    for (size_t i = 0; i < srv->api_key_len; i++) p[i] = 0;
    free(srv->api_key);
  }
  free(srv);
}

/* ======================================================================== */
/* What the gRPC listener shares (see http.h)                               */
/* ======================================================================== */

circle_engine *circle__http_engine(circle_http *srv) { return srv->engine; }

const circle_http_opts *circle__http_opts(const circle_http *srv) {
  return &srv->opts;
}

circle_metrics *circle__http_metrics(circle_http *srv) { return srv->metrics; }

bool circle__http_draining(circle_http *srv) {
  return atomic_load(&srv->draining);
}

void circle__http_set_draining(circle_http *srv) {
  atomic_store(&srv->draining, true);
}

void circle__http_active_add(circle_http *srv, int delta) {
  if (delta > 0)
    atomic_fetch_add(&srv->active, (size_t)delta);
  else
    atomic_fetch_sub(&srv->active, (size_t)-delta);
}
