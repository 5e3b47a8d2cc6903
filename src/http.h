/* http.h -- the circled HTTP server: moves requests between the network
 * (libmicrohttpd's epoll thread pool) and the engine's workers, and never
 * lets one client's request, config or failure reach another's.
 *
 * The server does not own the engine: the caller creates it first, hands it
 * to circle_http_init, and frees it after circle_http_free.
 */
#ifndef CIRCLE_HTTP_H
#define CIRCLE_HTTP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "circle/circle.h"
#include "request.h"

/* Version reported by GET /v2 and `circled --version`. */
#define CIRCLE_HTTP_VERSION "0.1.0"

typedef struct {
  const char *bind;       /* listen address, IPv4 or IPv6 literal */
  uint16_t port;          /* 0 picks a free port (see circle_http_port) */
  unsigned net_threads;   /* libmicrohttpd pool threads (network only) */
  unsigned timeout_s;     /* idle connection timeout, >= 1 */
  unsigned request_timeout_s; /* a connection that owes a request (opened,
                                 or its previous one answered) must send it
                                 whole, head and body, within this; else it
                                 is closed. 0: no limit */
  unsigned header_timeout_s;  /* the request head (line and headers) must
                                 arrive within this of the connection
                                 opening or its previous answer; else it is
                                 closed. 0: no limit */
  unsigned max_connections;
  unsigned max_connections_per_ip; /* from one client address; 0: no limit */
  size_t max_body;        /* request body bytes, as sent (compressed) */
  size_t max_inflight;    /* bytes committed to requests being computed */
  circle_limits limits;   /* handed to the codecs */
  circle_config defaults; /* server default loss config */
  char name[128];         /* default Keras loss name */
  const char *api_key;    /* bearer token required on everything but the
                             health endpoints; NULL or "" disables auth.
                             Copied by circle_http_init. */
  bool quiet;             /* no per-request log lines */
  size_t max_tags;        /* distinct metrics tags with series of their
                             own; later ones count as "other" (metrics.h) */
} circle_http_opts;

typedef struct circle_http circle_http;

/* Fills *opts with the documented defaults: 127.0.0.1:8080, 2 network
 * threads, 30 s idle timeout, 10 s header timeout, 120 s request timeout,
 * 1024 connections, 256 from one address,
 * 64 MiB bodies, 2048 MiB in flight, circle_limits_init's limits, Keras'
 * default config, name "circle", no auth, logging on, 32 metrics tags. */
void circle_http_opts_init(circle_http_opts *opts);

/* Starts listening. engine must outlive the server. Returns CIRCLE_OK,
 * CIRCLE_EINVAL (bad option or address, or the port could not be bound:
 * why, when not NULL, receives a sentence saying which), CIRCLE_ENOMEM.
 * *out is untouched on failure. */
int circle_http_init(circle_http **out, const circle_http_opts *opts,
                     circle_engine *engine, char *why, size_t why_len);

/* The port actually bound (useful with port 0). */
uint16_t circle_http_port(const circle_http *srv);

/* Begins a graceful stop: /readyz and /v2/health/ready answer 503, the
 * listening socket is closed, responses ask clients to close their
 * connections, and the call waits up to timeout_s for requests in progress
 * to finish. After it, a request still waiting for a compute thread is
 * answered 503 shutting_down when its turn comes instead of computed; one
 * already computing is always waited for. Safe to call once, from one
 * thread. */
void circle_http_drain(circle_http *srv, double timeout_s);

/* Drains (if circle_http_drain was not called, with a zero timeout for
 * uploads), stops the daemon and frees. NULL is a no-op. */
void circle_http_free(circle_http *srv);

/* ---- Shared with the gRPC listener (grpc_server.c) ------------------------
 * The gRPC listener serves the same model from the same engine, under the
 * same limits, memory budget, bearer token and metrics registry: it uses
 * these. All are thread-safe; srv must outlive every call. */

struct circle_metrics;
circle_engine *circle__http_engine(circle_http *srv);
const circle_http_opts *circle__http_opts(const circle_http *srv);
struct circle_metrics *circle__http_metrics(circle_http *srv);
/* True once a drain has begun (circle_http_drain or the setter below,
 * which only raises the flag: readiness turns false on both protocols). */
bool circle__http_draining(circle_http *srv);
void circle__http_set_draining(circle_http *srv);
/* True when auth is off, or token (len bytes, not NUL-terminated) is the
 * bearer token, compared in constant time. */
bool circle__http_token_ok(const circle_http *srv, const char *token,
                           size_t len);
/* Adds delta to the requests-in-flight gauge of /metrics. */
void circle__http_active_add(circle_http *srv, int delta);

/* Takes bytes of the shared in-flight budget (--max-inflight-mb) and adds
 * them to *held; false, taking nothing, when they do not fit. Release
 * gives back up to bytes of *held. */
bool circle__http_reserve(circle_http *srv, atomic_size_t *held,
                          size_t bytes);
void circle__http_release(circle_http *srv, atomic_size_t *held,
                          size_t bytes);

/* Fills *in from a decoded request (dropping a reference gradient without
 * a reference set from req->want) and checks it as the engine will, but
 * for finiteness: the codec that stored each value tested that
 * (engine_server.h). Returns 0, or a circle status with *err filled
 * (400/413). */
int circle__http_check(circle_request *req, circle_input *in,
                       circle_error *err);
/* Admits (the bytes it will hold, into *held), allocates the outputs *out
 * asks for, computes and records the computation's metrics. Runs on an
 * engine worker. Returns 0, or a circle status with *err filled (413 over
 * --max-inflight-mb, 503 "overloaded" when the budget or memory is short,
 * the engine's errors). Only for an input circle__http_check accepted: the
 * engine does not check it again. Either way the caller frees *out with
 * circle__http_output_free and releases *held. */
int circle__http_compute(circle_http *srv, circle_request *req,
                         const circle_input *in, circle_output *out,
                         bool binary_out, atomic_size_t *held,
                         circle_error *err);
/* Frees the output arrays and zeroes *out. NULL is a no-op. */
void circle__http_output_free(circle_output *out);

#endif /* CIRCLE_HTTP_H */
