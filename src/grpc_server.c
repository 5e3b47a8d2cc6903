/* grpc_server.c -- circled's gRPC listener on gRPC's C core (libgrpc):
 * the network side of the Open Inference Protocol over gRPC. It must keep
 * true what the HTTP server keeps true: network threads never compute,
 * every call gets its own config, every call is answered exactly once, and
 * nothing a call owns outlives it.
 *
 * Call flow
 * ---------
 *
 *   completion-queue thread (network)          engine worker
 *   ---------------------------------          -------------
 *   CALL_NEW: a pre-posted request_call
 *     matched; post another; start a
 *     batch receiving the message
 *   CALL_READ: the message is here:
 *     auth (authorization: Bearer),
 *     small RPCs answered at once;
 *     ModelInfer: reserve its bytes,
 *     circle_engine_submit  ------------->   infer_job: decode (codec_grpc),
 *                                              check, admission, compute,
 *                                              encode; start the final batch
 *   CALL_DONE  <--------------------------     (initial metadata, message,
 *     metrics, log line, release, free          status; grpc_call_start_batch
 *                                               is thread-safe)
 *
 * One thread serves the completion queue; gRPC core runs its own I/O
 * threads beneath it. A call's state is handed from the queue thread to a
 * worker by circle_engine_submit and back by the batch's completion event,
 * so only one thread touches it at a time. The calls in progress (each one
 * from its request_call to its final completion) are counted in live under
 * mu; a drain waits for live to reach zero before destroying anything, so
 * a job the engine is still running always finds its call.
 *
 * Limits: gRPC core refuses a message over --max-body-mb with
 * RESOURCE_EXHAUSTED before handing it over. The message's bytes and then
 * the computation's (circle__http_compute) are taken from the HTTP
 * server's in-flight budget; the response's bytes stay reserved until
 * the final batch completes.
 */
#include "grpc_server.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "codec_grpc.h"
#include "metrics.h"

/* request_calls kept posted: how many new calls can be matched before the
 * queue thread posts again. */
#define PREPOSTED 16

/* A small RPC's answer, written into b from its request message (msg,
 * len) on the queue thread: 0, or a status with *err filled. ready: the
 * server is not draining. */
typedef int (*rpc_answer)(circle_http *http, const uint8_t *msg, size_t len,
                          bool ready, circle_buf *b, circle_error *err);

static int answer_live(circle_http *http, const uint8_t *msg, size_t len,
                       bool ready, circle_buf *b, circle_error *err) {
  (void)http, (void)msg, (void)len, (void)ready, (void)err;
  circle_grpc_bool_response(true, b);
  return 0;
}

static int answer_ready(circle_http *http, const uint8_t *msg, size_t len,
                        bool ready, circle_buf *b, circle_error *err) {
  (void)http, (void)msg, (void)len, (void)err;
  circle_grpc_bool_response(ready, b);
  return 0;
}

static int answer_model_ready(circle_http *http, const uint8_t *msg,
                              size_t len, bool ready, circle_buf *b,
                              circle_error *err) {
  (void)http;
  int rc = circle_grpc_model_request_check(msg, len, err);
  if (rc == 0) circle_grpc_bool_response(ready, b);
  return rc;
}

static int answer_server_metadata(circle_http *http, const uint8_t *msg,
                                  size_t len, bool ready, circle_buf *b,
                                  circle_error *err) {
  (void)http, (void)msg, (void)len, (void)ready, (void)err;
  circle_grpc_server_metadata(CIRCLE_HTTP_VERSION, b);
  return 0;
}

static int answer_model_metadata(circle_http *http, const uint8_t *msg,
                                 size_t len, bool ready, circle_buf *b,
                                 circle_error *err) {
  (void)http, (void)ready;
  int rc = circle_grpc_model_request_check(msg, len, err);
  if (rc == 0) circle_grpc_model_metadata(b);
  return rc;
}

static int answer_model_config(circle_http *http, const uint8_t *msg,
                               size_t len, bool ready, circle_buf *b,
                               circle_error *err) {
  (void)ready;
  int rc = circle_grpc_model_request_check(msg, len, err);
  if (rc == 0) circle_grpc_model_config(&circle__http_opts(http)->defaults, b);
  return rc;
}

static int answer_health_check(circle_http *http, const uint8_t *msg,
                               size_t len, bool ready, circle_buf *b,
                               circle_error *err) {
  (void)http;
  return circle_grpc_health_check(msg, len, ready, b, err);
}

/* The RPCs, one row each: method path, open (needs no bearer token, as
 * the HTTP health endpoints), the endpoint label in /metrics, and the
 * answer of a small RPC, given on the queue thread; NULL for ModelInfer
 * alone, which is computed on the pool (submit_infer). */
typedef struct {
  const char *path;
  bool open;
  circle_endpoint ep;
  rpc_answer answer;
} rpc;

static const rpc rpcs[] = {
    {"/inference.GRPCInferenceService/ServerLive", true,
     CIRCLE_ENDPOINT_GRPC_HEALTH, answer_live},
    {"/inference.GRPCInferenceService/ServerReady", true,
     CIRCLE_ENDPOINT_GRPC_HEALTH, answer_ready},
    {"/inference.GRPCInferenceService/ModelReady", false,
     CIRCLE_ENDPOINT_GRPC_HEALTH, answer_model_ready},
    {"/inference.GRPCInferenceService/ServerMetadata", false,
     CIRCLE_ENDPOINT_GRPC_METADATA, answer_server_metadata},
    {"/inference.GRPCInferenceService/ModelMetadata", false,
     CIRCLE_ENDPOINT_GRPC_METADATA, answer_model_metadata},
    {"/inference.GRPCInferenceService/ModelConfig", false,
     CIRCLE_ENDPOINT_GRPC_METADATA, answer_model_config},
    {"/inference.GRPCInferenceService/ModelInfer", false,
     CIRCLE_ENDPOINT_GRPC_INFER, NULL},
    {"/grpc.health.v1.Health/Check", true, CIRCLE_ENDPOINT_GRPC_HEALTH,
     answer_health_check},
};
#define N_RPCS (sizeof rpcs / sizeof rpcs[0])

struct circle_grpc {
  circle_http *http;
  circle_grpc_opts opts;
  grpc_server *server;
  grpc_completion_queue *cq;
  pthread_t thread;
  bool thread_started;
  uint16_t port;
  int shutdown_tag; /* its address tags the server's shutdown event */

  pthread_mutex_t mu; /* guards what follows */
  pthread_cond_t cv;  /* signalled when live drops or shutdown_done */
  size_t live;        /* calls posted or in progress */
  size_t active;      /* calls matched and not yet over */
  bool shutting;      /* shutdown begun: post no more request_calls */
  bool shutdown_done; /* the server's shutdown event arrived */
  bool drained;
};

typedef enum { CALL_NEW, CALL_READ, CALL_DONE } call_state;

/* One call, from its request_call to its final completion event (which
 * alone frees it). */
typedef struct {
  circle_grpc *g;
  /* Written last before every batch is started, read first when its event
   * arrives: the hand-over between the thread that started the batch (a
   * worker, for ModelInfer's answer) and the queue thread, made visible to
   * ThreadSanitizer, which does not see gRPC core's own synchronization. */
  _Atomic int state; /* call_state */
  grpc_call *call;
  grpc_call_details details;
  grpc_metadata_array md;
  grpc_byte_buffer *recv;
  grpc_byte_buffer *send;
  grpc_slice status_details;
  bool has_details;
  int cancelled;
  const rpc *rpc;   /* its row of rpcs; NULL when unknown */
  bool late;        /* began after a drain had begun: refused */
  struct timespec t0;
  size_t bytes_in, bytes_out;
  unsigned http_status; /* what HTTP would have said: the metrics label */
  grpc_status_code code;
  grpc_slice msg;       /* ModelInfer's message, contiguous */
  bool has_msg;
  atomic_size_t held;   /* bytes of the in-flight budget this call holds */
} gcall;

/* ======================================================================== */
/* Helpers                                                                  */
/* ======================================================================== */

static double ms_since(const struct timespec *t0) {
  struct timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return (double)(t1.tv_sec - t0->tv_sec) * 1e3 +
         (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

/* The bearer token of the call's authorization metadata: true with
 * *tok / *len set when there is one. */
static bool bearer_token(const gcall *c, const char **tok, size_t *len) {
  for (size_t i = 0; i < c->md.count; i++) {
    const grpc_metadata *m = &c->md.metadata[i];
    if (grpc_slice_str_cmp(m->key, "authorization") != 0) continue;
    const char *v = (const char *)GRPC_SLICE_START_PTR(m->value);
    size_t n = GRPC_SLICE_LENGTH(m->value);
    if (n < 7 || strncasecmp(v, "Bearer ", 7) != 0) return false;
    v += 7;
    n -= 7;
    while (n && *v == ' ') v++, n--;
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
    *tok = v;
    *len = n;
    return true;
  }
  return false;
}

/* Takes the response bytes in b (any length) as the message to send; b is
 * emptied. False when memory ran out (b->failed). */
static bool take_response(gcall *c, circle_buf *b) {
  if (b->failed) {
    circle_buf_free(b);
    return false;
  }
  grpc_slice s = b->len ? grpc_slice_new(b->data, b->len, free)
                        : grpc_empty_slice();
  if (!b->len) circle_buf_free(b);
  b->data = NULL;
  b->len = b->cap = 0;
  c->send = grpc_raw_byte_buffer_create(&s, 1);
  c->bytes_out = GRPC_SLICE_LENGTH(s);
  grpc_slice_unref(s);
  return true;
}

/* Starts the final batch: initial metadata, the response (when c->send),
 * the status and the close. On error, err's message is the status
 * details and err's HTTP status the metrics label. Thread-safe (runs on
 * the queue thread or a worker); c is not touched after it. */
static void finish(gcall *c, const circle_error *err) {
  if (err) {
    c->code = (grpc_status_code)circle_grpc_status_of(err);
    c->http_status = (unsigned)circle_error_http(err->kind);
    c->status_details = grpc_slice_from_copied_string(err->message);
    if (c->send) {
      grpc_byte_buffer_destroy(c->send);
      c->send = NULL;
    }
    c->bytes_out = 0;
  } else {
    c->code = GRPC_STATUS_OK;
    c->http_status = 200;
    c->status_details = grpc_empty_slice();
  }
  c->has_details = true;
  grpc_op ops[4];
  memset(ops, 0, sizeof ops);
  size_t n = 0;
  ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[n].data.send_initial_metadata.count = 0;
  n++;
  if (c->send) {
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = c->send;
    n++;
  }
  ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[n].data.send_status_from_server.trailing_metadata_count = 0;
  ops[n].data.send_status_from_server.status = c->code;
  ops[n].data.send_status_from_server.status_details = &c->status_details;
  n++;
  ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  ops[n].data.recv_close_on_server.cancelled = &c->cancelled;
  n++;
  /* From the store on, the queue thread may free c: nothing of c is read
   * after it. */
  grpc_call *call = c->call;
  atomic_store(&c->state, CALL_DONE);
  grpc_call_error e = grpc_call_start_batch(call, ops, n, c, NULL);
  if (e != GRPC_CALL_OK) {
    /* Cannot happen with a well-formed batch; without a completion event
     * the call would leak, so cancel it and let the event come. */
    grpc_call_cancel(call, NULL);
  }
}

static void finish_error(gcall *c, circle_error_kind kind, const char *msg) {
  circle_error err;
  circle_error_set(&err, kind, "%s", msg);
  finish(c, &err);
}

/* ======================================================================== */
/* The compute job (engine worker)                                          */
/* ======================================================================== */

static void infer_job(void *arg) {
  gcall *c = arg;
  circle_http *http = c->g->http;
  const circle_http_opts *o = circle__http_opts(http);
  circle_error err;
  circle_request req;
  circle_request_init(&req);
  circle_output out;
  memset(&out, 0, sizeof out);
  circle_buf b;
  circle_buf_init(&b);
  bool ok = false;

  int rc = circle_grpc_infer_decode(GRPC_SLICE_START_PTR(c->msg),
                                    GRPC_SLICE_LENGTH(c->msg), &o->defaults,
                                    &o->limits, &req, &err);
  /* The message is gone: so is everything this call held so far. */
  grpc_slice_unref(c->msg);
  c->has_msg = false;
  circle__http_release(http, &c->held, atomic_load(&c->held));
  if (rc != 0) goto done;

  circle_input in;
  if (circle__http_check(&req, &in, &err) != 0) goto done;
  /* Every output travels as bytes. */
  if (circle__http_compute(http, &req, &in, &out, true, &c->held, &err) != 0)
    goto done;
  if (circle_grpc_infer_encode(&req, &out, &b) != 0 || b.failed) {
    circle_error_set(&err, CIRCLE_ERR_OVERLOADED,
                     "the server ran out of memory writing the response; "
                     "retry later");
    goto done;
  }
  ok = true;
done:
  circle__http_output_free(&out);
  circle_request_free(&req);
  /* From here on only the response is held (until it is sent). */
  size_t held = atomic_load(&c->held);
  if (ok && held > b.len) circle__http_release(http, &c->held, held - b.len);
  if (!ok) circle__http_release(http, &c->held, held);
  if (ok && take_response(c, &b)) {
    finish(c, NULL);
    return;
  }
  circle_buf_free(&b);
  if (ok)
    circle_error_set(&err, CIRCLE_ERR_OVERLOADED,
                     "the server ran out of memory writing the response; "
                     "retry later");
  finish(c, &err);
}

/* ======================================================================== */
/* Queue-thread handlers                                                    */
/* ======================================================================== */

static void post_request(circle_grpc *g);

/* What a ModelInfer gets once a drain has begun, or when the engine is
 * stopping: UNAVAILABLE, so clients retry elsewhere. */
static void refuse_shutting_down(gcall *c) {
  finish_error(c, CIRCLE_ERR_SHUTTING_DOWN,
               "the server is shutting down; retry on another instance");
}

/* ModelInfer: the message is kept whole, its bytes reserved, and the call
 * handed to the engine. */
static void submit_infer(gcall *c) {
  circle_grpc *g = c->g;
  circle_http *http = g->http;
  grpc_byte_buffer_reader r;
  if (!grpc_byte_buffer_reader_init(&r, c->recv)) {
    finish_error(c, CIRCLE_ERR_INVALID_MESSAGE,
                 "the message could not be read (compressed with an "
                 "algorithm this server does not have?)");
    return;
  }
  size_t len = grpc_byte_buffer_length(c->recv);
  if (!circle__http_reserve(http, &c->held, len)) {
    grpc_byte_buffer_reader_destroy(&r);
    finish_error(c, CIRCLE_ERR_OVERLOADED,
                 "the server has too many requests in flight; retry after a "
                 "second");
    return;
  }
  c->msg = grpc_byte_buffer_reader_readall(&r);
  c->has_msg = true;
  grpc_byte_buffer_reader_destroy(&r);
  grpc_byte_buffer_destroy(c->recv);
  c->recv = NULL;
  int rc = circle_engine_submit(circle__http_engine(http), infer_job, c);
  if (rc == CIRCLE_OK) return;
  grpc_slice_unref(c->msg);
  c->has_msg = false;
  circle__http_release(http, &c->held, atomic_load(&c->held));
  if (rc == CIRCLE_EBUSY)
    finish_error(c, CIRCLE_ERR_OVERLOADED,
                 "the compute queue is full; retry after a second");
  else
    refuse_shutting_down(c);
}

/* The message of a call has arrived (or not): answer it or hand it on. */
static void on_read(gcall *c, bool success) {
  circle_grpc *g = c->g;
  circle_http *http = g->http;
  if (!success || c->recv == NULL) {
    finish_error(c, CIRCLE_ERR_INVALID_MESSAGE,
                 success ? "the call carried no request message"
                         : "the request message could not be received");
    return;
  }
  c->bytes_in = grpc_byte_buffer_length(c->recv);
  if (!c->rpc) {
    circle_error err;
    char method[160];
    size_t n = GRPC_SLICE_LENGTH(c->details.method);
    if (n > 120) n = 120;
    memcpy(method, GRPC_SLICE_START_PTR(c->details.method), n);
    method[n] = '\0';
    for (size_t i = 0; i < n; i++)
      if (method[i] < 0x20 || method[i] > 0x7e) method[i] = '?';
    /* The message names the rows of rpcs: a new row belongs in it. */
    circle_error_set(&err, CIRCLE_ERR_UNKNOWN_METHOD,
                     "no method %s on this server; it serves "
                     "inference.GRPCInferenceService (ServerLive, "
                     "ServerReady, ModelReady, ServerMetadata, "
                     "ModelMetadata, ModelConfig, ModelInfer) and "
                     "grpc.health.v1.Health/Check",
                     method);
    finish(c, &err); /* 501: UNIMPLEMENTED */
    return;
  }
  if (!c->rpc->open) {
    const char *tok = NULL;
    size_t len = 0;
    if (!bearer_token(c, &tok, &len)) tok = NULL;
    if (!circle__http_token_ok(http, tok, len)) {
      finish_error(c, CIRCLE_ERR_UNAUTHORIZED,
                   "missing or wrong bearer token: send the metadata "
                   "'authorization: Bearer <key>'");
      return;
    }
  }
  if (!c->rpc->answer) { /* ModelInfer */
    /* A call begun before the drain is served, as an HTTP request still
     * uploading is; one begun after it is refused. */
    if (c->late)
      refuse_shutting_down(c);
    else
      submit_infer(c);
    return;
  }

  /* The small RPCs, answered here as the HTTP GETs are on the network
   * thread: they never wait behind a computation. */
  grpc_byte_buffer_reader r;
  grpc_slice msg = grpc_empty_slice();
  if (grpc_byte_buffer_reader_init(&r, c->recv)) {
    msg = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
  }
  const uint8_t *p = GRPC_SLICE_START_PTR(msg);
  size_t len = GRPC_SLICE_LENGTH(msg);
  bool ready = !circle__http_draining(http);
  circle_error err;
  circle_buf b;
  circle_buf_init(&b);
  int rc = c->rpc->answer(http, p, len, ready, &b, &err);
  grpc_slice_unref(msg);
  if (rc == 0 && !take_response(c, &b))
    rc = circle_error_set(&err, CIRCLE_ERR_OVERLOADED,
                          "out of memory; retry after a second");
  circle_buf_free(&b);
  finish(c, rc == 0 ? NULL : &err);
}

/* A pre-posted request_call matched a new call (or was cancelled by the
 * shutdown, success false). */
static void on_new(gcall *c, bool success) {
  circle_grpc *g = c->g;
  if (!success) { /* shutting down: the call never existed */
    grpc_metadata_array_destroy(&c->md);
    grpc_call_details_destroy(&c->details);
    free(c);
    pthread_mutex_lock(&g->mu);
    g->live--;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return;
  }
  post_request(g);
  pthread_mutex_lock(&g->mu);
  g->active++;
  pthread_mutex_unlock(&g->mu);
  clock_gettime(CLOCK_MONOTONIC, &c->t0);
  c->late = circle__http_draining(g->http);
  circle__http_active_add(g->http, 1);
  c->rpc = NULL;
  for (size_t i = 0; i < N_RPCS && !c->rpc; i++)
    if (grpc_slice_str_cmp(c->details.method, rpcs[i].path) == 0)
      c->rpc = &rpcs[i];
  atomic_store(&c->state, CALL_READ);
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = &c->recv;
  if (grpc_call_start_batch(c->call, &op, 1, c, NULL) != GRPC_CALL_OK)
    finish_error(c, CIRCLE_ERR_INTERNAL, "the call could not be read");
}

/* The final batch completed: the call is over. */
static void on_done(gcall *c) {
  circle_grpc *g = c->g;
  circle_http *http = g->http;
  double ms = ms_since(&c->t0);
  const char *name = c->rpc ? c->rpc->path : "?";
  if (!g->opts.quiet)
    fprintf(stderr, "circled: grpc %s %d %zu %.3fms%s\n", name, (int)c->code,
            c->bytes_out, ms, c->cancelled ? " (cancelled)" : "");
  circle_metrics_observe_request(
      circle__http_metrics(http),
      c->rpc ? c->rpc->ep : CIRCLE_ENDPOINT_GRPC_OTHER,
      c->cancelled && c->code == GRPC_STATUS_OK ? 0 : c->http_status, ms / 1e3,
      c->bytes_in, c->bytes_out);
  circle__http_release(http, &c->held, atomic_load(&c->held));
  circle__http_active_add(http, -1);
  if (c->recv) grpc_byte_buffer_destroy(c->recv);
  if (c->send) grpc_byte_buffer_destroy(c->send);
  if (c->has_details) grpc_slice_unref(c->status_details);
  if (c->has_msg) grpc_slice_unref(c->msg);
  grpc_metadata_array_destroy(&c->md);
  grpc_call_details_destroy(&c->details);
  grpc_call_unref(c->call);
  free(c);
  pthread_mutex_lock(&g->mu);
  g->live--;
  g->active--;
  pthread_cond_broadcast(&g->cv);
  pthread_mutex_unlock(&g->mu);
}

/* Posts one request_call, unless the server is shutting down. Takes g->mu:
 * called without it. */
static void post_request(circle_grpc *g) {
  pthread_mutex_lock(&g->mu);
  if (g->shutting) {
    pthread_mutex_unlock(&g->mu);
    return;
  }
  gcall *c = calloc(1, sizeof *c);
  if (!c) { /* the next matched call posts again */
    pthread_mutex_unlock(&g->mu);
    return;
  }
  c->g = g;
  atomic_init(&c->state, CALL_NEW);
  atomic_init(&c->held, 0);
  grpc_call_details_init(&c->details);
  grpc_metadata_array_init(&c->md);
  g->live++;
  grpc_call_error e = grpc_server_request_call(g->server, &c->call, &c->details,
                                               &c->md, g->cq, g->cq, c);
  if (e != GRPC_CALL_OK) {
    g->live--;
    grpc_metadata_array_destroy(&c->md);
    grpc_call_details_destroy(&c->details);
    free(c);
  }
  pthread_mutex_unlock(&g->mu);
}

static void *queue_main(void *arg) {
  circle_grpc *g = arg;
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(
        g->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type != GRPC_OP_COMPLETE) continue;
    if (ev.tag == &g->shutdown_tag) {
      pthread_mutex_lock(&g->mu);
      g->shutdown_done = true;
      pthread_cond_broadcast(&g->cv);
      pthread_mutex_unlock(&g->mu);
      continue;
    }
    gcall *c = ev.tag;
    switch ((call_state)atomic_load(&c->state)) {
    case CALL_NEW:
      on_new(c, ev.success != 0);
      break;
    case CALL_READ:
      on_read(c, ev.success != 0);
      break;
    case CALL_DONE:
      on_done(c);
      break;
    }
  }
  return NULL;
}

/* ======================================================================== */
/* Life cycle                                                               */
/* ======================================================================== */

/* Shuts the completion queue down and takes every event left on it. */
static void cq_close(grpc_completion_queue *cq) {
  grpc_completion_queue_shutdown(cq);
  while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
             .type != GRPC_QUEUE_SHUTDOWN) {
  }
}

/* The last of g once its server is destroyed and its queue closed. */
static void release_all(circle_grpc *g) {
  grpc_completion_queue_destroy(g->cq);
  grpc_shutdown();
  pthread_cond_destroy(&g->cv);
  pthread_mutex_destroy(&g->mu);
  free(g);
}

int circle_grpc_init(circle_grpc **out, const circle_grpc_opts *opts,
                     circle_http *http, char *why, size_t why_len) {
  if (!out || !opts || !http || !opts->bind || opts->max_message < 1) {
    if (why && why_len) snprintf(why, why_len, "missing argument");
    return CIRCLE_EINVAL;
  }
  char addr[128];
  bool v6 = strchr(opts->bind, ':') != NULL;
  if (strlen(opts->bind) > 64) {
    if (why && why_len) snprintf(why, why_len, "grpc bind address is too long");
    return CIRCLE_EINVAL;
  }
  snprintf(addr, sizeof addr, "%s%s%s:%u", v6 ? "[" : "", opts->bind,
           v6 ? "]" : "", (unsigned)opts->port);

  circle_grpc *g = calloc(1, sizeof *g);
  if (!g) return CIRCLE_ENOMEM;
  g->http = http;
  g->opts = *opts;
  pthread_mutex_init(&g->mu, NULL);
  pthread_cond_init(&g->cv, NULL);
  grpc_init();

  grpc_arg args[5];
  memset(args, 0, sizeof args);
  args[0].type = GRPC_ARG_INTEGER;
  args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  args[0].value.integer =
      opts->max_message > INT_MAX ? INT_MAX : (int)opts->max_message;
  args[1].type = GRPC_ARG_INTEGER;
  args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
  args[1].value.integer = -1;
  /* Without this, a second circled on the same port would share it. */
  args[2].type = GRPC_ARG_INTEGER;
  args[2].key = GRPC_ARG_ALLOW_REUSEPORT;
  args[2].value.integer = 0;
  /* --timeout: a connection with no call in progress for this long is
   * closed (GOAWAY), as libmicrohttpd closes an idle HTTP connection. */
  args[3].type = GRPC_ARG_INTEGER;
  args[3].key = GRPC_ARG_MAX_CONNECTION_IDLE_MS;
  args[3].value.integer = opts->idle_timeout_s == 0 ? INT_MAX
                          : opts->idle_timeout_s > INT_MAX / 1000
                              ? INT_MAX
                              : (int)opts->idle_timeout_s * 1000;
  /* Calls at once on one connection (gRPC core's default is unbounded):
   * each may hold a message of up to --max-body-mb before circled sees it. */
  args[4].type = GRPC_ARG_INTEGER;
  args[4].key = GRPC_ARG_MAX_CONCURRENT_STREAMS;
  args[4].value.integer = 100;
  grpc_channel_args ca = {sizeof args / sizeof args[0], args};
  g->server = grpc_server_create(&ca, NULL);
  g->cq = grpc_completion_queue_create_for_next(NULL);
  grpc_server_register_completion_queue(g->server, g->cq, NULL);
  grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
  int port = grpc_server_add_http2_port(g->server, addr, creds);
  grpc_server_credentials_release(creds);
  if (port <= 0) {
    if (why && why_len)
      snprintf(why, why_len,
               "cannot listen for gRPC on %s (port in use, or not an address "
               "of this machine; --grpc-port off disables gRPC)",
               addr);
    grpc_server_destroy(g->server);
    cq_close(g->cq);
    release_all(g);
    return CIRCLE_EINVAL;
  }
  g->port = (uint16_t)port;
  grpc_server_start(g->server);
  for (int i = 0; i < PREPOSTED; i++) post_request(g);
  if (pthread_create(&g->thread, NULL, queue_main, g) != 0) {
    g->thread_started = false;
    circle_grpc_free(g);
    return CIRCLE_ENOMEM;
  }
  g->thread_started = true;
  *out = g;
  return CIRCLE_OK;
}

uint16_t circle_grpc_port(const circle_grpc *g) { return g ? g->port : 0; }

void circle_grpc_drain_begin(circle_grpc *g) {
  if (g) circle__http_set_draining(g->http);
}

/* Stops the server: no more request_calls, the listener closed, GOAWAY on
 * every connection; calls in progress go on. Once. */
static void server_shutdown(circle_grpc *g) {
  pthread_mutex_lock(&g->mu);
  bool first = !g->shutting;
  g->shutting = true;
  pthread_mutex_unlock(&g->mu);
  if (first) grpc_server_shutdown_and_notify(g->server, g->cq, &g->shutdown_tag);
}

/* wait_for's predicates: called with g->mu held. */
static bool no_call_active(const circle_grpc *g) { return g->active == 0; }
static bool all_gone(const circle_grpc *g) {
  return g->shutdown_done && g->live == 0;
}

/* Waits on g->cv until done(g) holds or the deadline passes (NULL: never).
 * Returns done(g). Takes g->mu; done is called with it held. */
static bool wait_for(circle_grpc *g, const struct timespec *deadline,
                     bool (*done)(const circle_grpc *)) {
  pthread_mutex_lock(&g->mu);
  while (!done(g)) {
    if (!deadline)
      pthread_cond_wait(&g->cv, &g->mu);
    else if (pthread_cond_timedwait(&g->cv, &g->mu, deadline) != 0)
      break;
  }
  bool ok = done(g);
  pthread_mutex_unlock(&g->mu);
  return ok;
}

void circle_grpc_drain(circle_grpc *g, double timeout_s) {
  if (!g || g->drained) return;
  g->drained = true;
  circle_grpc_drain_begin(g);
  if (!g->thread_started) {
    server_shutdown(g);
    return;
  }
  double secs = timeout_s < 0 ? 0 : (timeout_s > 86400 ? 86400 : timeout_s);
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  long long ns = (long long)deadline.tv_nsec + (long long)(secs * 1e9);
  deadline.tv_sec += (time_t)(ns / 1000000000LL);
  deadline.tv_nsec = (long)(ns % 1000000000LL);
  /* Until the calls in progress are over, the listener stays up and new
   * ModelInfer calls get UNAVAILABLE from circled itself (gRPC core would
   * answer a call arriving after its shutdown with CANCELLED). */
  wait_for(g, &deadline, no_call_active);
  server_shutdown(g);
  if (wait_for(g, &deadline, all_gone)) return;
  /* Calls still waiting for their message are cancelled; those on the
   * engine finish (their final batch then completes, failed or not). */
  grpc_server_cancel_all_calls(g->server);
  wait_for(g, NULL, all_gone);
}

void circle_grpc_free(circle_grpc *g) {
  if (!g) return;
  circle_grpc_drain(g, 0);
  if (g->thread_started) {
    grpc_server_destroy(g->server);
    grpc_completion_queue_shutdown(g->cq);
    pthread_join(g->thread, NULL);
  } else { /* no queue thread: the pre-posted calls are drained here */
    grpc_server_cancel_all_calls(g->server);
    for (;;) {
      grpc_event ev = grpc_completion_queue_next(
          g->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
      if (ev.type == GRPC_OP_COMPLETE && ev.tag == &g->shutdown_tag) break;
      if (ev.type == GRPC_OP_COMPLETE) on_new(ev.tag, false);
    }
    grpc_server_destroy(g->server);
    cq_close(g->cq);
  }
  release_all(g);
}
