/* http.c -- the circled HTTP server: routing, the request lifecycle, limits
 * and the one place where errors become HTTP statuses. It must keep true:
 * network threads never compute, every request gets its own config, every
 * suspended connection is resumed exactly once, and nothing a request owns
 * outlives it.
 *
 * Request flow
 * ------------
 *
 *   network thread (MHD epoll pool)            engine worker
 *   -------------------------------            -------------
 *   first call: route, auth, method,
 *     Content-Length vs --max-body-mb (413),
 *     reserve the body's bytes (503 if full)
 *   upload calls: append to ex->body,
 *     counting chunked bodies (413)
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
 * srv->inflight counts bytes committed to requests: bodies as they arrive
 * (Content-Length up front), inflated bodies, then decoded arrays + outputs
 * + circle_loss_scratch_bytes + the response estimate, finally the response
 * itself until it is sent. A request that would push it past
 * --max-inflight-mb gets 503 "overloaded" with Retry-After; one that could
 * never fit gets 413. Transient codec memory (a cJSON tree while decoding)
 * is not counted; it is bounded by the number of engine workers.
 *
 * Slow clients
 * ------------
 * libmicrohttpd's --timeout counts inactivity only, so a client that
 * trickles a byte now and then keeps its connection (and a body's
 * reservation) for ever. Every connection therefore has a watch (its
 * socket context, made and freed by on_connection): since_ms is when it
 * became ready for its next request (opened, or its previous request
 * completed) and 0 while nothing is owed (the request is computing or its
 * answer is going out). A reaper thread shuts down, once, the socket of
 * every connection that has owed a request for more than
 * --request-timeout; libmicrohttpd then sees the hang-up and closes it as
 * usual. srv->watch_mu guards the list; on_connection unlinks a watch
 * under it before libmicrohttpd closes the socket, so the reaper never
 * touches a descriptor that has been reused.
 */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <zlib.h>

#include "codec_json.h"
#include "codec_oip.h"
#include "dashboard.h"
#include "inflate.h"
#include "metrics.h"

/* Responses smaller than this are sent uncompressed even when the client
 * accepts gzip: the header overhead would outweigh the saving. */
#define COMPRESS_MIN_BYTES 1024
/* A chunked body past the limit is read and dropped so the 413 can be sent;
 * past this many dropped bytes the connection is simply closed. */
#define DISCARD_FACTOR 2
/* Longest URL kept for the log line. */
#define LOG_URL_MAX 200
/* libmicrohttpd's memory pool per connection (headers and read buffer). */
#define CONN_POOL_BYTES ((size_t)128 << 10)

/* ======================================================================== */
/* Types                                                                    */
/* ======================================================================== */

struct circle_http {
  struct MHD_Daemon *mhd;
  circle_engine *engine;
  circle_metrics *metrics;
  circle_http_opts opts; /* opts.api_key points at api_key below */
  char *api_key;         /* NULL: no auth */
  size_t api_key_len;
  uint16_t port;
  bool drained;

  atomic_bool draining;     /* readyz 503, Connection: close */
  atomic_size_t inflight;   /* bytes committed, see the essay */
  atomic_size_t active;     /* requests begun and not yet completed */

  pthread_mutex_t mu; /* guards what follows and every exchange's done */
  pthread_cond_t cv;  /* signalled when jobs drops */
  size_t jobs;        /* submitted jobs that have not resumed yet */
  bool stopping;      /* no more submissions */

  /* Slow clients (see the essay). */
  pthread_mutex_t watch_mu;  /* guards the list and reaper_stop */
  pthread_cond_t watch_cv;   /* wakes the reaper to stop */
  struct watch *watches;     /* every open connection */
  bool reaper_stop;
  bool reaper_started;
  pthread_t reaper;
};

/* One connection's request deadline (its socket context). */
struct watch {
  struct watch *prev, *next; /* under srv->watch_mu */
  MHD_socket fd;
  atomic_llong since_ms; /* monotonic ms when a request became owed; 0: none */
  bool cut;              /* shut down by the reaper (under watch_mu) */
};

typedef enum {
  ROUTE_NOT_FOUND = 0,
  ROUTE_UNKNOWN_MODEL, /* /v2/models/<other>...: Triton's 404 */
  ROUTE_HEALTHZ,
  ROUTE_READYZ,
  ROUTE_CONFIG,
  ROUTE_METRICS,
  ROUTE_DASHBOARD,
  ROUTE_V1_LOSS,
  ROUTE_V2_SERVER,
  ROUTE_V2_LIVE,
  ROUTE_V2_READY,
  ROUTE_V2_MODEL,
  ROUTE_V2_MODEL_READY,
  ROUTE_V2_MODEL_CONFIG,
  ROUTE_V2_INFER
} route_id;

/* Error bodies come in two shapes: /v1 and everything outside /v2 use
 * {"error": {"code", "message"}}; /v2 uses Triton's {"error": "message"}. */
typedef enum { FAMILY_V1 = 0, FAMILY_OIP = 1 } family;

typedef enum { ENC_NONE = 0, ENC_GZIP, ENC_DEFLATE } encoding;

/* A computed request's phases, in order, as Server-Timing names them:
 * receiving the body (from the first handler call), waiting for a worker,
 * decoding and checking the input (and inflating it), the engine, and
 * writing (and compressing) the response. Sending it is not among them: the
 * header goes out first; the log line's total includes it. */
enum { PH_RECV = 0, PH_QUEUE, PH_DECODE, PH_COMPUTE, PH_ENCODE, PHASES };
static const char *const phase_name[PHASES] = {"recv", "queue", "decode",
                                               "compute", "encode"};

/* One HTTP request, from its first handler call to the completed callback
 * (which alone frees it). Fields after "job" are written by the job while
 * the connection is suspended and read by the handler after resume. */
struct exchange {
  circle_http *srv;
  struct MHD_Connection *conn;
  struct timespec t0;
  char method[16];
  char url[LOG_URL_MAX + 1];
  route_id route;
  family fam;
  char model_msg[256]; /* ROUTE_UNKNOWN_MODEL's message */

  /* An answer decided at the first call but sent at the final one, so the
   * connection stays open for the next request: libmicrohttpd closes a
   * connection whose response was queued before the request was read. */
  enum { PENDING_NONE = 0, PENDING_GET, PENDING_ERROR } pending;
  bool answered;  /* a response is queued */
  unsigned status;
  size_t bytes;

  /* Upload. */
  char *body;
  size_t len, cap;
  size_t expect;    /* Content-Length, or SIZE_MAX when chunked */
  size_t received;  /* body bytes that arrived, kept or not (metrics) */
  size_t discarded; /* bytes dropped after too_large / overloaded */
  bool too_large;
  bool overloaded;
  char content_encoding[16]; /* "" for identity */
  bool has_ihcl;
  size_t ihcl; /* Inference-Header-Content-Length */
  encoding accept;

  atomic_size_t reserved; /* bytes of srv->inflight held by this request */

  /* Job. */
  bool submitted;
  bool done; /* under srv->mu */
  bool ok;
  circle_error err;
  circle_buf resp;
  size_t header_len; /* OIP binary responses: JSON part length */
  bool binary;
  encoding resp_encoding;

  /* Where the time went (Server-Timing, the log line): the body arrived
   * t_body; then ms for each phase the job reached, < 0 for one it did not. */
  struct timespec t_body;
  double phase_ms[PHASES];
};

/* ======================================================================== */
/* Small helpers                                                            */
/* ======================================================================== */

static double ms_between(const struct timespec *t0, const struct timespec *t1) {
  return (double)(t1->tv_sec - t0->tv_sec) * 1e3 +
         (double)(t1->tv_nsec - t0->tv_nsec) / 1e6;
}

static double ms_since(const struct timespec *t0) {
  struct timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return ms_between(t0, &t1);
}

/* Ends the phase that started at *mark (now the next one starts). */
static void phase_end(struct exchange *ex, int ph, struct timespec *mark) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  ex->phase_ms[ph] = ms_between(mark, &now);
  *mark = now;
}

/* The phases reached, "recv<eq>1.234<sep>queue<eq>0.010...", into dst;
 * false when there are none. */
static bool phases_format(const struct exchange *ex, char *dst, size_t n,
                          const char *sep, const char *eq) {
  size_t o = 0;
  dst[0] = '\0';
  for (int i = 0; i < PHASES && o < n; i++) {
    if (ex->phase_ms[i] < 0) continue;
    int w = snprintf(dst + o, n - o, "%s%s%s%.3f", o ? sep : "", phase_name[i],
                     eq, ex->phase_ms[i]);
    if (w < 0) break;
    o += (size_t)w;
  }
  return o > 0 && o < n;
}

/* Copies s into dst (size n) with every byte outside printable ASCII
 * replaced by '?', so a client cannot forge log lines. */
static void copy_printable(char *dst, size_t n, const char *s) {
  size_t i = 0;
  for (; s && s[i] && i + 1 < n; i++) {
    unsigned char c = (unsigned char)s[i];
    dst[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
  }
  dst[i] = '\0';
}

/* Compares the presented token with the key in time that depends only on
 * the key's length, never on where the first difference is. */
static bool token_equal(const char *key, size_t key_len, const char *tok,
                        size_t tok_len) {
  volatile unsigned char diff = (unsigned char)(key_len != tok_len);
  for (size_t i = 0; i < key_len; i++) {
    unsigned char t = tok_len ? (unsigned char)tok[i % tok_len] : 0;
    diff |= (unsigned char)(key[i] ^ t);
  }
  return diff == 0;
}

/* Reserves bytes of the in-flight budget for ex. False when the budget
 * would be exceeded; nothing is reserved then. */
static bool reserve(struct exchange *ex, size_t bytes) {
  circle_http *srv = ex->srv;
  size_t cur = atomic_load(&srv->inflight);
  do {
    if (bytes > srv->opts.max_inflight || cur > srv->opts.max_inflight - bytes)
      return false;
  } while (!atomic_compare_exchange_weak(&srv->inflight, &cur, cur + bytes));
  atomic_fetch_add(&ex->reserved, bytes);
  return true;
}

static void release(struct exchange *ex, size_t bytes) {
  size_t held = atomic_load(&ex->reserved);
  if (bytes > held) bytes = held;
  atomic_fetch_sub(&ex->reserved, bytes);
  atomic_fetch_sub(&ex->srv->inflight, bytes);
}

/* Parses a decimal size with nothing else around it but blanks. */
static bool parse_size(const char *s, size_t *out) {
  while (*s == ' ' || *s == '\t') s++;
  if (*s < '0' || *s > '9') return false;
  size_t v = 0;
  for (; *s >= '0' && *s <= '9'; s++) {
    size_t digit = (size_t)(*s - '0');
    if (v > (SIZE_MAX - digit) / 10) return false;
    v = v * 10 + digit;
  }
  while (*s == ' ' || *s == '\t') s++;
  if (*s) return false;
  *out = v;
  return true;
}

/* Picks the response encoding from Accept-Encoding: gzip preferred, then
 * deflate; a coding with q=0 is refused. */
static encoding pick_accept(const char *h) {
  bool gzip = false, deflate = false;
  while (h && *h) {
    while (*h == ' ' || *h == '\t' || *h == ',') h++;
    const char *tok = h;
    while (*h && *h != ',' && *h != ';' && *h != ' ' && *h != '\t') h++;
    size_t tl = (size_t)(h - tok);
    bool q0 = false;
    while (*h && *h != ',') {
      if (*h == ';') {
        const char *p = h + 1;
        while (*p == ' ') p++;
        if ((p[0] == 'q' || p[0] == 'Q') && p[1] == '=') {
          double q = strtod(p + 2, NULL);
          q0 = q <= 0.0;
        }
      }
      h++;
    }
    if (q0) continue;
    if ((tl == 4 && !strncasecmp(tok, "gzip", 4)) ||
        (tl == 6 && !strncasecmp(tok, "x-gzip", 6)))
      gzip = true;
    else if (tl == 7 && !strncasecmp(tok, "deflate", 7))
      deflate = true;
  }
  return gzip ? ENC_GZIP : deflate ? ENC_DEFLATE : ENC_NONE;
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

/* ======================================================================== */
/* Errors: the one place statuses become HTTP                               */
/* ======================================================================== */

/* Fills *err for an engine or server status. what, when not empty, says
 * which field or row (circle_input_check's sentence). */
static void error_from_status(int status, const char *what, circle_error *err) {
  const char *w = (what && *what) ? what : NULL;
  switch (status) {
  case CIRCLE_EEMPTY:
    circle_error_set(err, 400, "empty_batch", "%s",
                     w ? w : "the batch is empty: send at least one row");
    break;
  case CIRCLE_ENONFINITE:
    circle_error_set(err, 400, "non_finite", "%s",
                     w ? w : "an input holds NaN or Infinity; send finite "
                             "numbers only");
    break;
  case CIRCLE_ERANGE:
    circle_error_set(err, 400, "out_of_range", "%s",
                     w ? w : "embeddings are too large for the dtype; scale "
                             "them down, set normalize, or use float64");
    break;
  case CIRCLE_EINVAL:
    circle_error_set(err, 400, "invalid_input", "%s",
                     w ? w : "the input is invalid");
    break;
  case CIRCLE_EOVERFLOW:
  case CIRCLE_ELIMIT:
    circle_error_set(err, 413, "limit_exceeded", "%s",
                     w ? w : "the request exceeds a size limit of this "
                             "server; send a smaller batch");
    break;
  case CIRCLE_ENOMEM:
  case CIRCLE_EBUSY:
    circle_error_set(err, 503, "overloaded", "%s",
                     w ? w : "the server is busy; retry after a second");
    break;
  case CIRCLE_ESHUTDOWN:
    circle_error_set(err, 503, "shutting_down",
                     "the server is shutting down; retry on another "
                     "instance");
    break;
  default:
    circle_error_set(err, 500, "internal", "internal error (%s): %s",
                     circle_status_name(status), circle_status_str(status));
    break;
  }
}

/* ======================================================================== */
/* Responses                                                                */
/* ======================================================================== */

static const char *route_allow(route_id r) {
  switch (r) {
  case ROUTE_V1_LOSS:
  case ROUTE_V2_INFER:
    return "POST";
  default:
    return "GET, HEAD";
  }
}

static void free_buf_cb(void *cls) {
  circle_buf *b = cls;
  circle_buf_free(b);
  free(b);
}

/* Queues status + body (taken: *body is reset), with the headers that
 * follow from the status and the exchange (Allow, WWW-Authenticate,
 * Retry-After, Inference-Header-Content-Length, Content-Encoding). This is
 * the only function that queues a response, so logging and metrics see
 * every request. A body whose writing ran out of memory is never sent:
 * MHD_NO closes the connection instead of sending part of an answer. */
static enum MHD_Result respond(struct exchange *ex, unsigned status,
                               circle_buf *body, const char *content_type) {
  struct MHD_Response *resp;
  size_t len = body->len;
  if (body->failed) {
    circle_buf_free(body);
    return MHD_NO;
  }
  if (len == 0 || !body->data) {
    circle_buf_free(body);
    resp = MHD_create_response_from_buffer(0, (void *)"",
                                           MHD_RESPMEM_PERSISTENT);
  } else {
    circle_buf *held = malloc(sizeof *held);
    if (!held) {
      circle_buf_free(body);
      return MHD_NO;
    }
    *held = *body;
    circle_buf_init(body);
    resp = MHD_create_response_from_buffer_with_free_callback_cls(
        len, held->data, free_buf_cb, held);
    if (!resp) free_buf_cb(held);
  }
  if (!resp) return MHD_NO;

  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
  if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, route_allow(ex->route));
  if (status == MHD_HTTP_UNAUTHORIZED)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                            "Bearer realm=\"circled\"");
  if (status == MHD_HTTP_SERVICE_UNAVAILABLE)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
  if (ex->submitted && ex->ok) {
    if (ex->binary) {
      char n[32];
      snprintf(n, sizeof n, "%zu", ex->header_len);
      MHD_add_response_header(resp, "Inference-Header-Content-Length", n);
    }
    if (ex->resp_encoding != ENC_NONE)
      MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_ENCODING,
                              ex->resp_encoding == ENC_GZIP ? "gzip"
                                                            : "deflate");
  }
  if (ex->submitted) {
    char timing[256];
    if (phases_format(ex, timing, sizeof timing, ", ", ";dur="))
      MHD_add_response_header(resp, "Server-Timing", timing);
  }
  if (ex->route == ROUTE_V1_LOSS || ex->route == ROUTE_V2_INFER)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_VARY, "Accept-Encoding");
  if (atomic_load(&ex->srv->draining))
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");

  enum MHD_Result rc = MHD_queue_response(ex->conn, status, resp);
  MHD_destroy_response(resp);
  if (rc == MHD_YES) {
    ex->answered = true;
    ex->status = status;
    ex->bytes = len;
  }
  return rc;
}

/* Sends err in the shape of the request's family. */
static enum MHD_Result respond_error(struct exchange *ex,
                                     const circle_error *err) {
  circle_buf b;
  circle_buf_init(&b);
  if (ex->fam == FAMILY_OIP)
    circle_oip_error(err, &b);
  else
    circle_json_error(err, &b);
  int status = err->http_status >= 400 && err->http_status < 600
                   ? err->http_status
                   : 500;
  return respond(ex, (unsigned)status, &b, "application/json");
}

static enum MHD_Result respond_text(struct exchange *ex, unsigned status,
                                    const char *json) {
  circle_buf b;
  circle_buf_init(&b);
  circle_buf_puts(&b, json);
  return respond(ex, status, &b, "application/json");
}

/* ======================================================================== */
/* Metrics hook                                                             */
/* ======================================================================== */

/* Records a finished request in srv->metrics (src/metrics.h; GET /metrics
 * renders it in handle_get, and job_process records each computation's
 * loss and stats). Called exactly once per finished request, on a network
 * thread, from the completed callback, with the route, the status sent (0
 * when none was), the body bytes both ways and the wall time since the
 * request's first byte was handled. Lock-free: never blocks. */
static void metrics_observe(const struct exchange *ex, double ms,
                            enum MHD_RequestTerminationCode toe) {
  (void)toe;
  circle_endpoint ep;
  switch (ex->route) {
  case ROUTE_V1_LOSS:
    ep = CIRCLE_ENDPOINT_V1_LOSS;
    break;
  case ROUTE_V2_INFER:
    ep = CIRCLE_ENDPOINT_V2_INFER;
    break;
  case ROUTE_V2_MODEL:
  case ROUTE_V2_MODEL_READY:
  case ROUTE_V2_MODEL_CONFIG:
    ep = CIRCLE_ENDPOINT_V2_MODEL;
    break;
  case ROUTE_V2_SERVER:
    ep = CIRCLE_ENDPOINT_V2_SERVER;
    break;
  case ROUTE_V2_LIVE:
  case ROUTE_V2_READY:
    ep = CIRCLE_ENDPOINT_V2_HEALTH;
    break;
  case ROUTE_CONFIG:
    ep = CIRCLE_ENDPOINT_CONFIG;
    break;
  case ROUTE_HEALTHZ:
    ep = CIRCLE_ENDPOINT_HEALTHZ;
    break;
  case ROUTE_READYZ:
    ep = CIRCLE_ENDPOINT_READYZ;
    break;
  case ROUTE_METRICS:
    ep = CIRCLE_ENDPOINT_METRICS;
    break;
  case ROUTE_DASHBOARD:
    ep = CIRCLE_ENDPOINT_DASHBOARD;
    break;
  default: /* not found, unknown model */
    ep = CIRCLE_ENDPOINT_OTHER;
    break;
  }
  circle_metrics_observe_request(ex->srv->metrics, ep,
                                 ex->answered ? ex->status : 0, ms / 1e3,
                                 ex->received, ex->answered ? ex->bytes : 0);
}

/* ======================================================================== */
/* Routing                                                                  */
/* ======================================================================== */

static bool match_model_tail(const char *p, route_id *out) {
  if (*p == '\0')
    *out = ROUTE_V2_MODEL;
  else if (!strcmp(p, "/ready"))
    *out = ROUTE_V2_MODEL_READY;
  else if (!strcmp(p, "/infer"))
    *out = ROUTE_V2_INFER;
  else if (!strcmp(p, "/config"))
    *out = ROUTE_V2_MODEL_CONFIG;
  else
    return false;
  return true;
}

/* Sets ex->route and ex->fam from the path (query string already removed
 * by libmicrohttpd). */
static void route(struct exchange *ex, const char *url) {
  static const struct {
    const char *path;
    route_id id;
  } fixed[] = {
      {"/healthz", ROUTE_HEALTHZ},      {"/readyz", ROUTE_READYZ},
      {"/config", ROUTE_CONFIG},        {"/metrics", ROUTE_METRICS},
      {"/dashboard", ROUTE_DASHBOARD},
      {"/v1/loss", ROUTE_V1_LOSS},      {"/v2", ROUTE_V2_SERVER},
      {"/v2/health/live", ROUTE_V2_LIVE}, {"/v2/health/ready", ROUTE_V2_READY},
  };
  ex->fam = (!strncmp(url, "/v2", 3) && (url[3] == '\0' || url[3] == '/'))
                ? FAMILY_OIP
                : FAMILY_V1;
  ex->route = ROUTE_NOT_FOUND;
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
    if (!strcmp(url, fixed[i].path)) {
      ex->route = fixed[i].id;
      return;
    }

  static const char models[] = "/v2/models/";
  if (strncmp(url, models, sizeof models - 1)) return;
  const char *name = url + sizeof models - 1;
  size_t name_len = strcspn(name, "/");
  if (name_len == 0) return;
  const char *p = name + name_len;
  const char *ver = NULL;
  size_t ver_len = 0;
  if (!strncmp(p, "/versions/", 10)) {
    ver = p + 10;
    ver_len = strcspn(ver, "/");
    if (ver_len == 0) return;
    p = ver + ver_len;
  }
  route_id tail;
  if (!match_model_tail(p, &tail)) return;
  if (name_len != 6 || strncmp(name, "circle", 6)) {
    ex->route = ROUTE_UNKNOWN_MODEL;
    snprintf(ex->model_msg, sizeof ex->model_msg,
             "Request for unknown model: '%.*s' is not found",
             (int)(name_len > 100 ? 100 : name_len), name);
  } else if (ver && (ver_len != 1 || ver[0] != '1')) {
    ex->route = ROUTE_UNKNOWN_MODEL;
    snprintf(ex->model_msg, sizeof ex->model_msg,
             "Request for unknown model: 'circle' version %.*s is not found",
             (int)(ver_len > 40 ? 40 : ver_len), ver);
  } else {
    ex->route = tail;
  }
}

static bool route_is_open(route_id r) {
  return r == ROUTE_HEALTHZ || r == ROUTE_READYZ || r == ROUTE_V2_LIVE ||
         r == ROUTE_V2_READY;
}

static bool route_is_compute(route_id r) {
  return r == ROUTE_V1_LOSS || r == ROUTE_V2_INFER;
}

static bool method_allowed(route_id r, const char *method) {
  if (route_is_compute(r)) return !strcmp(method, MHD_HTTP_METHOD_POST);
  return !strcmp(method, MHD_HTTP_METHOD_GET) ||
         !strcmp(method, MHD_HTTP_METHOD_HEAD);
}

/* True when auth is off or the request carries the right bearer token. */
static bool authorized(struct exchange *ex) {
  circle_http *srv = ex->srv;
  if (!srv->api_key) return true;
  const char *h = MHD_lookup_connection_value(ex->conn, MHD_HEADER_KIND,
                                              MHD_HTTP_HEADER_AUTHORIZATION);
  if (!h || strncasecmp(h, "Bearer ", 7)) return false;
  h += 7;
  while (*h == ' ') h++;
  size_t n = strlen(h);
  while (n && (h[n - 1] == ' ' || h[n - 1] == '\t')) n--;
  return token_equal(srv->api_key, srv->api_key_len, h, n);
}

/* ======================================================================== */
/* GET endpoints (answered on the network thread)                           */
/* ======================================================================== */

/* Readiness answers: 200 with ready, or 503 with not_ready while draining. */
static enum MHD_Result respond_ready(struct exchange *ex, const char *ready,
                                     const char *not_ready) {
  if (atomic_load(&ex->srv->draining)) return respond_text(ex, 503, not_ready);
  return respond_text(ex, 200, ready);
}

static enum MHD_Result handle_get(struct exchange *ex) {
  circle_http *srv = ex->srv;
  circle_buf b;
  circle_error err;
  switch (ex->route) {
  case ROUTE_HEALTHZ:
    return respond_text(ex, 200, "{\"status\": \"ok\"}");
  case ROUTE_READYZ:
    return respond_ready(ex, "{\"status\": \"ready\"}",
                         "{\"status\": \"draining\"}");
  case ROUTE_CONFIG:
    circle_buf_init(&b);
    circle_json_config_write(&b, &srv->opts.defaults, srv->opts.name);
    return respond(ex, 200, &b, "application/json");
  case ROUTE_METRICS: {
    circle_metrics_live live = {
        .requests_in_flight = atomic_load(&srv->active),
        .queue_depth = circle_engine_queue_depth(srv->engine),
        .inflight_bytes = atomic_load(&srv->inflight),
        .inflight_bytes_max = srv->opts.max_inflight,
        .engine_threads = circle_engine_threads(srv->engine),
        .draining = atomic_load(&srv->draining),
    };
    circle_buf_init(&b);
    circle_metrics_render(srv->metrics, &live, &b);
    return respond(ex, 200, &b, CIRCLE_METRICS_CONTENT_TYPE);
  }
  case ROUTE_DASHBOARD: {
    size_t len;
    const char *page = circle_dashboard_html(&len);
    circle_buf_init(&b);
    circle_buf_append(&b, page, len);
    return respond(ex, 200, &b, CIRCLE_DASHBOARD_CONTENT_TYPE);
  }
  case ROUTE_V2_SERVER:
    circle_buf_init(&b);
    circle_oip_server_metadata(&b, CIRCLE_HTTP_VERSION);
    return respond(ex, 200, &b, "application/json");
  case ROUTE_V2_LIVE:
    return respond_text(ex, 200, "{\"live\": true}");
  case ROUTE_V2_READY:
    return respond_ready(ex, "{\"ready\": true}", "{\"ready\": false}");
  case ROUTE_V2_MODEL:
    circle_buf_init(&b);
    circle_oip_model_metadata(&b);
    return respond(ex, 200, &b, "application/json");
  case ROUTE_V2_MODEL_CONFIG:
    circle_buf_init(&b);
    circle_oip_model_config(&b, &srv->opts.defaults);
    return respond(ex, 200, &b, "application/json");
  case ROUTE_V2_MODEL_READY:
    return respond_ready(ex, "{\"name\": \"circle\", \"ready\": true}",
                         "{\"name\": \"circle\", \"ready\": false}");
  default:
    circle_error_set(&err, 500, "internal", "route has no GET handler");
    return respond_error(ex, &err);
  }
}

/* ======================================================================== */
/* The compute job (engine worker)                                          */
/* ======================================================================== */

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

/* Fills ex->err and returns false, for the job's error paths. */
static bool fail(struct exchange *ex, int status, const char *what) {
  error_from_status(status, what, &ex->err);
  return false;
}

/* Inflates, decodes, admits, computes and encodes; on any failure fills
 * ex->err and returns false. Runs on an engine worker. */
static bool job_process(struct exchange *ex) {
  circle_http *srv = ex->srv;
  const circle_http_opts *o = &srv->opts;
  struct timespec mark = ex->t_body;
  phase_end(ex, PH_QUEUE, &mark);

  /* 1. Content-Encoding. */
  if (ex->content_encoding[0]) {
    char *plain = NULL;
    size_t plain_len = 0;
    if (circle_inflate(ex->content_encoding, ex->body, ex->len,
                       o->limits.max_inflated, &plain, &plain_len,
                       &ex->err) != 0)
      return false;
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
  circle_request req;
  circle_request_init(&req);
  int rc;
  if (ex->route == ROUTE_V1_LOSS) {
    rc = circle_json_decode(ex->body ? ex->body : "", ex->len, &o->defaults,
                            o->name, &o->limits, &req, &ex->err);
  } else {
    size_t header_len = ex->has_ihcl ? ex->ihcl : ex->len;
    if (header_len > ex->len) {
      circle_error_set(&ex->err, 400, "bad_encoding",
                       "Inference-Header-Content-Length is %zu but the body "
                       "has only %zu bytes",
                       header_len, ex->len);
      return false;
    }
    rc = circle_oip_decode(ex->body ? ex->body : "", ex->len, header_len,
                           &o->defaults, &o->limits, &req, &ex->err);
  }
  /* The body is gone: so is everything this request held so far. */
  free(ex->body);
  ex->body = NULL;
  ex->len = ex->cap = 0;
  release(ex, atomic_load(&ex->reserved));
  if (rc != 0) {
    circle_request_free(&req);
    if (ex->err.http_status < 400) error_from_status(rc, NULL, &ex->err);
    return false;
  }

  circle_input in = {
      .n = req.n,
      .m = req.has_ref ? req.m : 0,
      .d = req.d,
      .labels = req.labels,
      .embeddings = req.x,
      .sample_weight = req.sw,
      .ref_labels = req.has_ref ? req.ref_labels : NULL,
      .ref_embeddings = req.has_ref ? req.r : NULL,
  };
  if (!req.has_ref) req.want &= ~(unsigned)CIRCLE_OUT_REF_GRAD;
  bool ok = false;
  circle_output out;
  memset(&out, 0, sizeof out);
  out.want = req.want;

  /* 3. Check the input the way the engine will, for a precise message. */
  char where[256] = "";
  rc = circle_input_check(&req.cfg, &in, where, sizeof where);
  if (rc != 0) {
    fail(ex, rc, where);
    goto done;
  }
  phase_end(ex, PH_DECODE, &mark);

  /* 4. Admission: bytes in flight. */
  bool binary_out = ex->route == ROUTE_V2_INFER &&
                    (req.want & ~req.binary_outputs & ~(unsigned)CIRCLE_OUT_STATS) == 0;
  size_t need = estimate_bytes(srv, &req, &in, binary_out);
  if (need > o->max_inflight) {
    char msg[256];
    snprintf(msg, sizeof msg,
             "this request needs about %zu MiB to compute (n=%zu, m=%zu, "
             "d=%zu); this server commits at most %zu MiB to requests "
             "(--max-inflight-mb): send a smaller batch",
             need == SIZE_MAX ? SIZE_MAX / 1048576 : need / 1048576 + 1,
             req.n, in.m, req.d, o->max_inflight / 1048576);
    fail(ex, CIRCLE_ELIMIT, msg);
    goto done;
  }
  if (!reserve(ex, need)) {
    fail(ex, CIRCLE_EBUSY,
         "the server has too many requests in flight; retry after a second");
    goto done;
  }

  /* 5. Outputs, in the request's dtype. */
  size_t elt = circle_dtype_size(req.cfg.dtype);
  bool alloc_ok = true;
  if ((req.want & CIRCLE_OUT_LOSS) &&
      circle_reduction_is_elementwise(req.cfg.reduction))
    alloc_ok &= (out.loss_values = alloc_array(req.n, elt)) != NULL;
  /* A half format needs the per-sample values to mask rows as Keras does
   * (circle_output_round); they are returned only when asked for. */
  if (req.cfg.half != CIRCLE_HALF_NONE) out.want |= CIRCLE_OUT_PER_SAMPLE;
  if (out.want & CIRCLE_OUT_PER_SAMPLE)
    alloc_ok &= (out.per_sample = alloc_array(req.n, elt)) != NULL;
  if (req.want & CIRCLE_OUT_GRAD)
    alloc_ok &= (out.grad = alloc_array(req.n * req.d, elt)) != NULL;
  if (req.want & CIRCLE_OUT_REF_GRAD)
    alloc_ok &= (out.ref_grad = alloc_array(in.m * req.d, elt)) != NULL;
  if (!alloc_ok) {
    fail(ex, CIRCLE_ENOMEM,
         "the server is out of memory for this request; retry later or "
         "send a smaller batch");
    goto done;
  }

  /* 6. Compute (the engine parallelises inside this call). */
  rc = circle_loss_compute(srv->engine, &req.cfg, &in, &out);
  if (rc != 0) {
    fail(ex, rc, NULL);
    goto done;
  }
  /* A half-precision dtype: the float32 results rounded to the format. */
  rc = circle_output_round(&req.cfg, &in, &out, where, sizeof where);
  if (rc != 0) {
    fail(ex, rc, where);
    goto done;
  }
  circle_metrics_observe_compute(srv->metrics, req.tag, &req.cfg, &in, &out);
  phase_end(ex, PH_COMPUTE, &mark);

  /* 7. Encode straight into the response buffer. */
  if (ex->route == ROUTE_V1_LOSS) {
    rc = circle_json_encode(&req, &out, &ex->resp);
    ex->binary = false;
  } else {
    size_t header_len = 0;
    rc = circle_oip_encode(&req, &out, &ex->resp, &header_len);
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
  phase_end(ex, PH_ENCODE, &mark);
  ok = true;

done:
  free(out.loss_values);
  free(out.per_sample);
  free(out.grad);
  free(out.ref_grad);
  circle_request_free(&req);
  /* From here on only the response is held. */
  size_t held = atomic_load(&ex->reserved);
  if (ok && held > ex->resp.len) release(ex, held - ex->resp.len);
  if (!ok) release(ex, held);
  return ok;
}

/* Engine job: fn owns arg only in the sense that it must hand it back to
 * the network thread by resuming the connection; the completed callback
 * frees it. */
static void job_run(void *arg) {
  struct exchange *ex = arg;
  circle_http *srv = ex->srv;
  ex->ok = job_process(ex);
  pthread_mutex_lock(&srv->mu);
  ex->done = true;
  MHD_resume_connection(ex->conn);
  srv->jobs--;
  pthread_cond_broadcast(&srv->cv);
  pthread_mutex_unlock(&srv->mu);
}

/* ======================================================================== */
/* The access handler                                                       */
/* ======================================================================== */

/* True when the request announces a body (Content-Length > 0 or chunked). */
static bool has_body(struct MHD_Connection *c) {
  const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                               MHD_HTTP_HEADER_CONTENT_LENGTH);
  size_t v;
  if (MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                  MHD_HTTP_HEADER_TRANSFER_ENCODING))
    return true;
  return cl && (!parse_size(cl, &v) || v > 0);
}

/* Answers err now when the request has a body still to come (it is then
 * never read, and the connection closes), else at the final call. */
static enum MHD_Result refuse(struct exchange *ex, const circle_error *err) {
  if (has_body(ex->conn)) return respond_error(ex, err);
  ex->err = *err;
  ex->pending = PENDING_ERROR;
  return MHD_YES;
}

/* First call: everything decided from the request line and headers. Returns
 * MHD_YES with or without a queued response. */
static enum MHD_Result first_call(struct exchange *ex, const char *url) {
  circle_http *srv = ex->srv;
  circle_error err;
  route(ex, url);

  /* Auth comes before 404 and 405 so that the routes are not revealed. */
  if (!route_is_open(ex->route) && !authorized(ex)) {
    circle_error_set(&err, 401, "unauthorized",
                     "missing or wrong bearer token: send the header "
                     "'Authorization: Bearer <key>'");
    return refuse(ex, &err);
  }
  if (ex->route == ROUTE_NOT_FOUND) {
    circle_error_set(&err, 404, "not_found",
                     "no endpoint at %.100s; see GET /v2 and POST /v1/loss",
                     ex->url);
    return refuse(ex, &err);
  }
  if (ex->route == ROUTE_UNKNOWN_MODEL) {
    circle_error_set(&err, 404, "not_found", "%s", ex->model_msg);
    return refuse(ex, &err);
  }
  if (!method_allowed(ex->route, ex->method)) {
    circle_error_set(&err, 405, "method_not_allowed",
                     "%.16s is not allowed on %.100s; use %s", ex->method,
                     ex->url, route_allow(ex->route));
    return refuse(ex, &err);
  }
  if (!route_is_compute(ex->route)) {
    ex->pending = PENDING_GET;
    return MHD_YES;
  }

  /* A compute route: check the body's declared size before reading it. */
  struct MHD_Connection *c = ex->conn;
  const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                               MHD_HTTP_HEADER_CONTENT_LENGTH);
  const char *te = MHD_lookup_connection_value(
      c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
  size_t max_body = srv->opts.max_body;
  ex->expect = SIZE_MAX;
  if (cl && !te) {
    size_t v;
    if (!parse_size(cl, &v)) {
      circle_error_set(&err, 400, "bad_encoding",
                       "Content-Length is not a number");
      return refuse(ex, &err);
    }
    if (v > max_body) {
      circle_error_set(&err, 413, "body_too_large",
                       "the body is %zu bytes; this server accepts at most "
                       "%zu bytes (--max-body-mb %zu): send a smaller batch "
                       "or compress it",
                       v, max_body, max_body / 1048576);
      return refuse(ex, &err);
    }
    ex->expect = v;
    if (!reserve(ex, v)) {
      error_from_status(CIRCLE_EBUSY,
                        "the server has too many requests in flight; retry "
                        "after a second",
                        &err);
      return refuse(ex, &err);
    }
  }

  const char *ce = MHD_lookup_connection_value(
      c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_ENCODING);
  if (ce) {
    while (*ce == ' ') ce++;
    size_t n = strcspn(ce, " \t,");
    if (n == 0 || (n == 8 && !strncasecmp(ce, "identity", 8))) {
      ex->content_encoding[0] = '\0';
    } else if ((n == 4 && !strncasecmp(ce, "gzip", 4)) ||
               (n == 6 && !strncasecmp(ce, "x-gzip", 6))) {
      strcpy(ex->content_encoding, "gzip");
    } else if (n == 7 && !strncasecmp(ce, "deflate", 7)) {
      strcpy(ex->content_encoding, "deflate");
    } else {
      circle_error_set(&err, 415, "bad_encoding",
                       "Content-Encoding %.32s is not supported; send gzip, "
                       "deflate or identity",
                       ce);
      return refuse(ex, &err);
    }
    if (ce[n] != '\0' && strspn(ce + n, " \t") != strlen(ce + n)) {
      circle_error_set(&err, 415, "bad_encoding",
                       "only one Content-Encoding is supported");
      return refuse(ex, &err);
    }
  }

  if (ex->route == ROUTE_V2_INFER) {
    const char *ih = MHD_lookup_connection_value(
        c, MHD_HEADER_KIND, "Inference-Header-Content-Length");
    if (ih) {
      if (!parse_size(ih, &ex->ihcl)) {
        circle_error_set(&err, 400, "bad_encoding",
                         "Inference-Header-Content-Length is not a number");
        return refuse(ex, &err);
      }
      ex->has_ihcl = true;
    }
  }
  ex->accept = pick_accept(MHD_lookup_connection_value(
      c, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT_ENCODING));
  return MHD_YES;
}

/* An upload call: appends the chunk, or drops it once the body is refused.
 * MHD_NO closes the connection (a refused body that keeps coming). */
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
    /* A Content-Length body (checked and reserved at the first call) is
     * taken whole, once: doubling from 64 KiB copied an 8 MiB binary
     * tensor body seven times. Chunked bodies grow by doubling. */
    size_t cap = ex->cap ? ex->cap : 65536;
    while (cap < ex->len + size) cap = cap > max_body / 2 ? max_body : cap * 2;
    if (ex->expect != SIZE_MAX) cap = ex->expect;
    /* Content-Length bytes were reserved up front; chunked bodies reserve
     * as they grow. */
    if (ex->expect == SIZE_MAX && !reserve(ex, cap - ex->cap)) {
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
    circle_error_set(&err, 413, "body_too_large",
                     "the body is over %zu bytes; this server accepts at "
                     "most %zu bytes (--max-body-mb %zu): send a smaller "
                     "batch or compress it",
                     srv->opts.max_body, srv->opts.max_body,
                     srv->opts.max_body / 1048576);
    return respond_error(ex, &err);
  }
  if (ex->overloaded) {
    error_from_status(CIRCLE_EBUSY,
                      "the server has too many requests in flight; retry "
                      "after a second",
                      &err);
    return respond_error(ex, &err);
  }
  pthread_mutex_lock(&srv->mu);
  int rc = srv->stopping ? CIRCLE_ESHUTDOWN : CIRCLE_OK;
  if (rc == CIRCLE_OK) {
    ex->submitted = true;
    clock_gettime(CLOCK_MONOTONIC, &ex->t_body);
    ex->phase_ms[PH_RECV] = ms_between(&ex->t0, &ex->t_body);
    rc = circle_engine_submit(srv->engine, job_run, ex);
  }
  if (rc == CIRCLE_OK) {
    srv->jobs++;
    MHD_suspend_connection(ex->conn);
  } else {
    ex->submitted = false;
  }
  pthread_mutex_unlock(&srv->mu);
  if (rc == CIRCLE_OK) return MHD_YES;
  error_from_status(rc,
                    rc == CIRCLE_EBUSY
                        ? "the compute queue is full; retry after a second"
                        : NULL,
                    &err);
  return respond_error(ex, &err);
}

/* ======================================================================== */
/* Slow clients: the request deadline                                       */
/* ======================================================================== */

static long long now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Starts (owed) or stops the clock of the connection's next request. */
static void request_owed(struct MHD_Connection *conn, bool owed) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  struct watch *w = ci ? ci->socket_context : NULL;
  if (w) atomic_store(&w->since_ms, owed ? now_ms() : 0);
}

/* MHD_OPTION_NOTIFY_CONNECTION: links a watch into srv->watches when a
 * connection opens and unlinks and frees it when it closes (libmicrohttpd
 * closes the socket only after this returns). */
static void on_connection(void *cls, struct MHD_Connection *conn,
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
 * shutting down the connections whose request is overdue. */
static void *reaper_main(void *arg) {
  circle_http *srv = arg;
  long long limit = (long long)srv->opts.request_timeout_s * 1000;
  long long period = limit / 4 < 1000 ? limit / 4 : 1000;
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
    size_t cut = 0;
    for (struct watch *w = srv->watches; w; w = w->next) {
      long long since = atomic_load(&w->since_ms);
      if (w->cut || since == 0 || now - since <= limit) continue;
      shutdown(w->fd, SHUT_RDWR);
      w->cut = true;
      cut++;
    }
    if (cut && !srv->opts.quiet)
      fprintf(stderr,
              "circled: closed %zu connection%s that had not sent a whole "
              "request within %us (--request-timeout)\n",
              cut, cut == 1 ? "" : "s", srv->opts.request_timeout_s);
  }
  pthread_mutex_unlock(&srv->watch_mu);
  return NULL;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls) {
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
    circle_buf_init(&ex->resp);
    *req_cls = ex;
    atomic_fetch_add(&srv->active, 1);
    return first_call(ex, url);
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
  if (ex->pending == PENDING_GET) return handle_get(ex);
  if (ex->pending == PENDING_ERROR) return respond_error(ex, &ex->err);

  if (ex->submitted) {
    pthread_mutex_lock(&srv->mu);
    bool done = ex->done;
    if (!done) MHD_suspend_connection(conn); /* not expected: wait again */
    pthread_mutex_unlock(&srv->mu);
    if (!done) return MHD_YES;
    if (!ex->ok) return respond_error(ex, &ex->err);
    return respond(ex, 200, &ex->resp,
                   ex->binary ? "application/octet-stream"
                              : "application/json");
  }
  return final_call(ex);
}

/* The completed callback: the one place an exchange is freed. */
static void on_completed(void *cls, struct MHD_Connection *conn,
                         void **req_cls, enum MHD_RequestTerminationCode toe) {
  circle_http *srv = cls;
  struct exchange *ex = *req_cls;
  /* Keep-alive: the next request's deadline starts now. */
  request_owed(conn, true);
  if (!ex) return;
  *req_cls = NULL;
  double ms = ms_since(&ex->t0);
  if (!srv->opts.quiet) {
    char phases[160] = "";
    if (ex->submitted && phases_format(ex, phases + 1, sizeof phases - 1, " ", "="))
      phases[0] = ' ';
    if (ex->answered)
      fprintf(stderr, "circled: %s %s %u %zu %.3fms%s\n", ex->method, ex->url,
              ex->status, ex->bytes, ms, phases);
    else
      fprintf(stderr, "circled: %s %s - 0 %.3fms (%s)\n", ex->method,
              ex->url, ms,
              toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ? "timed out"
              : toe == MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN
                  ? "server shutdown"
                  : "client went away");
  }
  metrics_observe(ex, ms, toe);
  release(ex, atomic_load(&ex->reserved));
  free(ex->body);
  circle_buf_free(&ex->resp);
  free(ex);
  atomic_fetch_sub(&srv->active, 1);
}

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
  opts->max_connections = 1024;
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

  errno = 0;
  srv->mhd = MHD_start_daemon(
      flags, opts->port, NULL, NULL, on_request, srv,
      MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, srv, /* first, as MHD asks */
      MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
      MHD_OPTION_THREAD_POOL_SIZE, (unsigned int)opts->net_threads,
      MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)opts->timeout_s,
      MHD_OPTION_CONNECTION_LIMIT, (unsigned int)opts->max_connections,
      /* libmicrohttpd reads a body in chunks of about half this pool (and
       * it bounds the request head: 431). Its default, 32 KiB, made an
       * 8 MiB OIP body 512 reads and callbacks: 128 KiB cut the end-to-end
       * time of a 4096 x 512 tritonclient request from 373 to 332 ms
       * (medians of three interleaved rounds of 8). Small requests showed
       * no difference (libmicrohttpd zeroes the pool after each request).
       * Pages are touched only as used (the pool is mmap'd). */
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, CONN_POOL_BYTES,
      MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
      MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv, MHD_OPTION_END);
  if (!srv->mhd) {
    int e = errno;
    set_why(why, why_len, "cannot listen on %s port %u: %s", opts->bind,
            (unsigned)opts->port,
            e ? strerror(e) : "libmicrohttpd refused to start");
    pthread_cond_destroy(&srv->watch_cv);
    pthread_mutex_destroy(&srv->watch_mu);
    pthread_cond_destroy(&srv->cv);
    pthread_mutex_destroy(&srv->mu);
    circle_metrics_free(srv->metrics);
    free(srv->api_key);
    free(srv);
    return CIRCLE_EINVAL;
  }
  /* Without the reaper (0, or no thread) --timeout alone guards. */
  if (opts->request_timeout_s > 0)
    srv->reaper_started =
        pthread_create(&srv->reaper, NULL, reaper_main, srv) == 0;
  const union MHD_DaemonInfo *info =
      MHD_get_daemon_info(srv->mhd, MHD_DAEMON_INFO_BIND_PORT);
  srv->port = info ? info->port : opts->port;
  *out = srv;
  return CIRCLE_OK;
}

uint16_t circle_http_port(const circle_http *srv) { return srv ? srv->port : 0; }

/* Waits on srv->cv until pred holds or the deadline passes (NULL: never). */
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
  /* Requests still uploading get until the deadline; after it, no new job
   * is taken, and the ones taken are always waited for: a suspended
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
  /* Closing the connections frees their watches (on_connection). */
  MHD_stop_daemon(srv->mhd);
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
