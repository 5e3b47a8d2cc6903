/* grpc_server.h -- circled's gRPC listener: the Open Inference Protocol's
 * inference.GRPCInferenceService (ServerLive, ServerReady, ModelReady,
 * ServerMetadata, ModelMetadata, ModelInfer, and Triton's ModelConfig) and
 * grpc.health.v1.Health/Check, beside the HTTP server and sharing its
 * engine, limits, in-flight memory budget, bearer token and metrics.
 *
 * The listener does not own the HTTP server: create it after
 * circle_http_init and free it before circle_http_free.
 */
#ifndef CIRCLE_GRPC_SERVER_H
#define CIRCLE_GRPC_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "http.h"

typedef struct {
  const char *bind;   /* listen address, IPv4 or IPv6 literal */
  uint16_t port;      /* 0 picks a free port (see circle_grpc_port) */
  size_t max_message; /* largest request message accepted, bytes; larger
                         ones get RESOURCE_EXHAUSTED before they are kept */
  unsigned idle_timeout_s; /* close a connection with no call for this
                              long (--timeout); 0: never */
  bool quiet;         /* no per-call log lines */
} circle_grpc_opts;

typedef struct circle_grpc circle_grpc;

/* Starts listening with opts, serving through http's engine and limits.
 * Returns CIRCLE_OK, CIRCLE_EINVAL (bad argument, or the address could not
 * be bound: why, when not NULL, receives a sentence saying which) or
 * CIRCLE_ENOMEM. *out is untouched on failure. */
int circle_grpc_init(circle_grpc **out, const circle_grpc_opts *opts,
                     circle_http *http, char *why, size_t why_len);

/* The port actually bound (useful with port 0); 0 for NULL. */
uint16_t circle_grpc_port(const circle_grpc *g);

/* Begins a graceful stop without waiting: from now on ModelInfer calls
 * that begin get UNAVAILABLE ("the server is shutting down"), ServerReady,
 * ModelReady and the health check say not ready (on HTTP too: it raises the
 * HTTP server's draining flag); calls in progress go on. Safe to call more
 * than once; NULL is a no-op. */
void circle_grpc_drain_begin(circle_grpc *g);

/* Begins the stop if need be and waits up to timeout_s for the calls in
 * progress to finish (answering new ones as above), then stops the
 * listener (GOAWAY), then cancels the calls still waiting for their
 * request message. Calls already handed to the engine are always waited
 * for, whatever the timeout. Safe to call once, from one thread. */
void circle_grpc_drain(circle_grpc *g, double timeout_s);

/* Drains (with a zero timeout if circle_grpc_drain was not called), stops
 * and frees. NULL is a no-op. */
void circle_grpc_free(circle_grpc *g);

#endif /* CIRCLE_GRPC_SERVER_H */
