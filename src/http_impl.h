/* http_impl.h -- what the files of the HTTP server share and nobody else
 * sees: the server and exchange structs, the constants that bound a
 * request, the clock and budget helpers, and the circle__http_ functions
 * one file of the server calls in another.
 *
 *   http.c          life cycle: init, drain, free, options; the gRPC accessors
 *   http_route.c    the route table; routing, auth, methods, the request head
 *   http_frame.c    framing checks: what libmicrohttpd 0.9.75 lets through
 *   http_respond.c  errors -> HTTP statuses, the one function that queues
 *   http_get.c      GET endpoints and the /metrics renderer thread
 *   http_job.c      the compute job (engine worker), admission, cancellation
 *   http_conn.c     the access handler: upload, submit, completion, reaper
 *
 * It keeps true: only the server's own files include it (main.c and
 * grpc_server.c see http.h alone), and a field here is written only where
 * its comment says (srv->mu, srv->watch_mu, the network thread or the job),
 * as the locking rules in http.c lay down. Comments name the functions
 * declared below without their circle__http_ prefix (respond, job_run,
 * on_connection), as they are named in the design in http.c.
 */
#ifndef CIRCLE_HTTP_IMPL_H
#define CIRCLE_HTTP_IMPL_H

#include "http.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <microhttpd.h>

#include "metrics.h"

/* Responses smaller than this are sent uncompressed even when the client
 * accepts gzip: the header overhead would outweigh the saving. */
#define COMPRESS_MIN_BYTES 1024
/* A chunked body past the limit is read and dropped so the 413 can be sent;
 * past this many dropped bytes the connection is simply closed. */
#define DISCARD_FACTOR 2
/* A request is a short job (circle_job_opts.short_job: it never waits
 * behind an ordinary one) when its body is at most SHORT_BODY_BYTES, not
 * compressed, and its work is at most SHORT_PAIRS pairs and SHORT_WORK
 * pair-dimensions: a few milliseconds on one core, so the short lane
 * stays short. The body bound keeps decoding short too. */
#define SHORT_BODY_BYTES ((size_t)256 << 10)
#define SHORT_PAIRS ((size_t)1 << 20)
#define SHORT_WORK ((size_t)1 << 26)
/* The retrieval figures rank every row's neighbours: at SHORT_PAIRS pairs
 * (d 8 and 64, one worker, medians of the compute phase) a request asking
 * for them took about 2.5 to 3 times as long as one asking for the loss
 * alone, so its pairs count this many times against SHORT_PAIRS. */
#define SHORT_RETRIEVAL_WEIGHT 3
/* Between row blocks, how often a computation peeks at its client's
 * socket (job_cancelled). */
#define CANCEL_PEEK_MS 5
/* A body's first buffer (and its first reservation); it doubles from here. */
#define BODY_FIRST_BYTES ((size_t)64 << 10)
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
  atomic_size_t inflight;   /* bytes committed, see http.c */
  atomic_size_t active;     /* requests begun and not yet completed */

  pthread_mutex_t mu; /* guards what follows and every exchange's done */
  pthread_cond_t cv;  /* signalled when jobs drops */
  size_t jobs;        /* submitted jobs that have not resumed yet */
  bool stopping;      /* no more submissions */

  /* GET /metrics (see http_get.c): requests waiting for the renderer, a
   * list through ex->next_render, under mu. */
  pthread_cond_t render_cv; /* wakes the renderer */
  struct exchange *render_head;
  bool render_stop;
  bool renderer_started;
  pthread_t renderer;

  /* Slow clients (see http_conn.c). */
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
  atomic_bool head_in;   /* the owed request's head has arrived */
  bool cut;              /* shut down by the reaper (under watch_mu) */
  bool nul_in_path;      /* the current request's raw path holds %00 (set by
                            on_uri, read by first_call: the same network
                            thread) */
  const char *uri_end;   /* where the raw URI's string ends (on_uri) */
};

struct exchange;

/* How a route's request is answered: a GET handler on the network thread,
 * or a computation on an engine worker with the codec of its protocol. */
typedef enum {
  COMPUTE_NONE = 0, /* a GET: answered by the route's handler */
  COMPUTE_V1,       /* /v1 JSON (codec_json.c) */
  COMPUTE_OIP       /* Open Inference Protocol, JSON or binary (codec_oip.c) */
} route_compute;

/* One endpoint: a row of the route table in http_route.c, which the
 * router, the auth check, the method check (405 and its Allow header),
 * metrics labelling, Vary and the GET dispatch all read. Adding an
 * endpoint is adding a row (and, for a GET, its handler in http_get.c). */
typedef struct route {
  /* The path, exact; under MODEL_PATH ("/v2/models/{model}") it matches
   * /v2/models/<name>[/versions/<version>] followed by the rest, and a
   * model other than circle gets Triton's 404. NULL: the rows that stand
   * for no endpoint (not found, unknown model), matched by no path. */
  const char *path;
  /* The methods allowed, as the Allow header lists them. */
  const char *methods;
  /* Needs no bearer token even with --api-key-file (health checks). */
  bool open;
  /* Computed on an engine worker; its answers carry Vary: Accept-Encoding
   * since they may be compressed. */
  route_compute compute;
  /* The endpoint label of its requests in /metrics. */
  circle_endpoint ep;
  /* Answers a GET route on the network thread (NULL for compute routes). */
  enum MHD_Result (*get)(struct exchange *ex);
} route;

/* The path prefix of the model routes in the route table. */
#define MODEL_PATH "/v2/models/{model}"

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

/* One HTTP request, from its first handler call to the completed callback
 * (which alone frees it). Fields after "job" are written by the job while
 * the connection is suspended and read by the handler after resume. */
struct exchange {
  circle_http *srv;
  struct MHD_Connection *conn;
  struct timespec t0;
  char method[16];
  char url[LOG_URL_MAX + 1];
  const route *route; /* its row of the route table; never NULL */
  family fam;
  char model_msg[256]; /* an unknown model's 404 message */

  /* An answer decided at the first call but sent at the final one, so the
   * connection stays open for the next request: libmicrohttpd closes a
   * connection whose response was queued before the request was read. */
  enum { PENDING_NONE = 0, PENDING_GET, PENDING_ERROR } pending;
  bool answered;  /* a response is queued */
  bool close;     /* the answer ends the connection (broken framing) */
  unsigned status;
  size_t bytes;   /* the answer's body length */
  size_t sent;    /* of it, bytes written to the socket so far (body_read) */

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
  MHD_socket fd;    /* the connection's socket, for client_gone */
  atomic_bool gone; /* the client closed or reset it (client_gone) */
  atomic_llong peeked_ms; /* when job_cancelled last peeked */
  bool short_job;   /* submitted as a short job (is_short) */
  bool decoded;     /* stage one ran: ex->req holds the request */
  struct timespec t_moved; /* when it was moved off the short lane */
  circle_request req;
  bool submitted;
  bool done; /* under srv->mu */
  bool ok;
  bool dropped; /* its client went away: no answer */
  struct exchange *next_render; /* waiting for the metrics renderer */
  bool rendered; /* ex->resp holds the /metrics exposition */
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
/* Small helpers (every file of the server)                                 */
/* ======================================================================== */

/* The connection's watch (its socket context); NULL when it has none. */
static inline struct watch *watch_of(struct MHD_Connection *conn) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  return ci ? ci->socket_context : NULL;
}

static inline double ms_between(const struct timespec *t0,
                                const struct timespec *t1) {
  return (double)(t1->tv_sec - t0->tv_sec) * 1e3 +
         (double)(t1->tv_nsec - t0->tv_nsec) / 1e6;
}

/* Milliseconds on a monotonic clock. */
static inline long long now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static inline double ms_since(const struct timespec *t0) {
  struct timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return ms_between(t0, &t1);
}

/* Copies s into dst (size n) with every byte outside printable ASCII
 * replaced by '?', so a client cannot forge log lines. */
static inline void copy_printable(char *dst, size_t n, const char *s) {
  size_t i = 0;
  for (; s && s[i] && i + 1 < n; i++) {
    unsigned char c = (unsigned char)s[i];
    dst[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
  }
  dst[i] = '\0';
}

static inline bool reserve(struct exchange *ex, size_t bytes) {
  return circle__http_reserve(ex->srv, &ex->reserved, bytes);
}

static inline void release(struct exchange *ex, size_t bytes) {
  circle__http_release(ex->srv, &ex->reserved, bytes);
}

/* ======================================================================== */
/* Shared between the server's files                                        */
/* ======================================================================== */

/* http_respond.c: errors and responses. */

/* Fills *err for an engine or server status: the one place statuses
 * become HTTP. what, when not empty, says which field or row. */
void circle__http_error_from_status(int status, const char *what,
                                    circle_error *err);
/* Queues status + body (taken: *body is reset) with the headers that
 * follow; the only function that queues a response. */
enum MHD_Result circle__http_respond(struct exchange *ex, unsigned status,
                                     circle_buf *body,
                                     const char *content_type);
/* Sends err in the shape of the request's family. */
enum MHD_Result circle__http_respond_error(struct exchange *ex,
                                           const circle_error *err);
/* The phases reached, "recv<eq>1.234<sep>queue<eq>0.010...", into dst;
 * false when there are none. */
bool circle__http_phases_format(const struct exchange *ex, char *dst,
                                size_t n, const char *sep, const char *eq);

/* http_route.c: routing and the request head. */

/* The Allow header of a route ("POST", or "GET, HEAD"): its methods. */
const char *circle__http_route_allow(const route *r);
/* The access handler's first call: route, framing, auth, method and the
 * body's declared size. MHD_YES with or without a queued response. */
enum MHD_Result circle__http_first_call(struct exchange *ex, const char *url,
                                        const char *version);
/* The one body_too_large error, for a body of `bytes` (declared), or
 * SIZE_MAX for one that went past --max-body-mb as it arrived. */
void circle__http_body_too_large(const circle_http *srv, size_t bytes,
                                 circle_error *err);

/* http_frame.c: framing checks. */

/* Fills *err and returns false when the request head is one circled must
 * not answer as if it were well framed. */
bool circle__http_framing_ok(struct exchange *ex, const char *version,
                             circle_error *err);
/* MHD_OPTION_URI_LOG_CALLBACK: notes the raw path on the watch. */
void *circle__http_on_uri(void *cls, const char *uri,
                          struct MHD_Connection *conn);

/* http_get.c: GET endpoints. */

/* The GET handlers of the route table: each answers its route (the
 * /metrics one may suspend the request for the renderer instead). */
enum MHD_Result circle__http_get_healthz(struct exchange *ex);
enum MHD_Result circle__http_get_readyz(struct exchange *ex);
enum MHD_Result circle__http_get_config(struct exchange *ex);
enum MHD_Result circle__http_get_metrics(struct exchange *ex);
enum MHD_Result circle__http_get_dashboard(struct exchange *ex);
enum MHD_Result circle__http_get_v2_server(struct exchange *ex);
enum MHD_Result circle__http_get_v2_live(struct exchange *ex);
enum MHD_Result circle__http_get_v2_ready(struct exchange *ex);
enum MHD_Result circle__http_get_v2_model(struct exchange *ex);
enum MHD_Result circle__http_get_v2_model_config(struct exchange *ex);
enum MHD_Result circle__http_get_v2_model_ready(struct exchange *ex);
/* The /metrics renderer thread (arg: the server). */
void *circle__http_renderer_main(void *arg);

/* http_job.c: the compute job. */

/* Engine job for a submitted exchange; resumes its connection. */
void circle__http_job_run(void *arg);
/* The engine's cancellation hook for a request's job (circle_job_opts). */
bool circle__http_job_cancelled(void *arg);

/* http_conn.c: the access handler and slow clients. */

enum MHD_Result circle__http_on_request(void *cls, struct MHD_Connection *conn,
                                        const char *url, const char *method,
                                        const char *version,
                                        const char *upload_data,
                                        size_t *upload_data_size,
                                        void **req_cls);
void circle__http_on_completed(void *cls, struct MHD_Connection *conn,
                               void **req_cls,
                               enum MHD_RequestTerminationCode toe);
void circle__http_on_connection(void *cls, struct MHD_Connection *conn,
                                void **socket_context,
                                enum MHD_ConnectionNotificationCode code);
/* The reaper thread (arg: the server). */
void *circle__http_reaper_main(void *arg);

#endif /* CIRCLE_HTTP_IMPL_H */
