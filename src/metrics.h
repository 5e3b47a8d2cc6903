/* metrics.h -- circled's Prometheus metrics: what the server and the engine
 * workers record, and the text exposition GET /metrics serves.
 *
 * Two kinds of figures, recorded by two kinds of threads:
 *
 *   network threads   circle_metrics_observe_request, once per finished
 *                     request: requests by endpoint and status, latency,
 *                     bytes in and out. Lock-free (relaxed atomics).
 *   engine workers    circle_metrics_observe_compute, once per successful
 *                     computation: batch rows, the loss, the embedding-
 *                     quality figures of circle_stats and the retrieval
 *                     figures of circle_retrieval, as last values and
 *                     histograms labelled by the request's tag. One mutex,
 *                     held for a table look-up and a few dozen additions.
 *
 * Tags are client-supplied, so their number is bounded: the first max_tags
 * distinct non-empty tags get series of their own, every later one counts
 * as tag="other" (as does a client tag spelled "other"), and requests
 * without a tag use tag="". The label set of every other family is fixed.
 *
 * Rendering copies what it needs under the mutex and formats outside it,
 * so a scrape never holds up a worker for longer than a memcpy.
 */
#ifndef CIRCLE_METRICS_H
#define CIRCLE_METRICS_H

#include <stdbool.h>
#include <stddef.h>

#include "circle/circle.h"
#include "buf.h"

/* Media type of the exposition (Prometheus text format 0.0.4). */
#define CIRCLE_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Default and largest --max-tags. The cap bounds the exposition (each tag
 * adds about 270 series) and the memory (about 3 KiB a tag). */
#define CIRCLE_METRICS_DEFAULT_TAGS 32
#define CIRCLE_METRICS_MAX_TAGS 1000

/* X(name, label): the fixed set of endpoint label values. */
#define CIRCLE_METRICS_ENDPOINT_MAP(X)                                        \
  X(V1_LOSS, "/v1/loss")                                                      \
  X(V2_INFER, "/v2/models/circle/infer")                                      \
  X(V2_MODEL, "/v2/models/circle")                                            \
  X(V2_SERVER, "/v2")                                                         \
  X(V2_HEALTH, "/v2/health")                                                  \
  X(CONFIG, "/config")                                                        \
  X(HEALTHZ, "/healthz")                                                      \
  X(READYZ, "/readyz")                                                        \
  X(METRICS, "/metrics")                                                      \
  X(DASHBOARD, "/dashboard")                                                  \
  X(GRPC_INFER, "grpc:ModelInfer")                                            \
  X(GRPC_METADATA, "grpc:metadata")                                           \
  X(GRPC_HEALTH, "grpc:health")                                               \
  X(GRPC_OTHER, "grpc:other")                                                 \
  X(OTHER, "other")

typedef enum {
#define CIRCLE__EP_ENUM(name, label) CIRCLE_ENDPOINT_##name,
  CIRCLE_METRICS_ENDPOINT_MAP(CIRCLE__EP_ENUM)
#undef CIRCLE__EP_ENUM
  CIRCLE_ENDPOINT_COUNT
} circle_endpoint;

/* The label value of ep ("/v1/loss"); "other" for values out of range. */
const char *circle_endpoint_label(circle_endpoint ep);

typedef struct circle_metrics circle_metrics;

/* Creates the registry. max_tags is the number of distinct non-empty tags
 * with series of their own, 0..CIRCLE_METRICS_MAX_TAGS; version is the
 * server version circled_build_info reports (copied, at most 31 bytes).
 * Returns CIRCLE_OK, CIRCLE_EINVAL (out or version NULL, max_tags too
 * large) or CIRCLE_ENOMEM; *out is untouched on failure. */
int circle_metrics_init(circle_metrics **out, size_t max_tags,
                        const char *version);

/* Frees the registry. NULL is a no-op. No observe or render call may run
 * concurrently with it. */
void circle_metrics_free(circle_metrics *m);

/* Records one finished request: its endpoint, the HTTP status sent (0 when
 * the connection ended before a response was queued: the status label is
 * then "none"), its wall time in seconds, the body bytes received and the
 * body bytes sent. Thread-safe, lock-free, never blocks; NULL m is a
 * no-op, as are out-of-range endpoints (counted as "other") and statuses
 * (counted as "none"). */
void circle_metrics_observe_request(circle_metrics *m, circle_endpoint ep,
                                    unsigned status, double seconds,
                                    size_t bytes_in, size_t bytes_out);

/* Records one successful computation under tag (NULL or "" for none): the
 * batch rows, the loss when out->want asked for it (for the elementwise
 * reductions the mean of out->loss_values), when out->want has
 * CIRCLE_OUT_STATS the quality figures, and when it has
 * CIRCLE_OUT_RETRIEVAL the three retrieval figures. A figure over an empty
 * set (no positive pair, no negative pair, no neighbour, no retrieval
 * query) is not recorded: the engine reports it as 0, which is not a
 * measurement. Thread-safe: takes
 * the registry's mutex briefly. NULL m, cfg, in or out is a no-op. */
void circle_metrics_observe_compute(circle_metrics *m, const char *tag,
                                    const circle_config *cfg,
                                    const circle_input *in,
                                    const circle_output *out);

/* Gauges the server reads at scrape time. */
typedef struct {
  size_t requests_in_flight; /* requests begun and not yet completed */
  size_t queue_depth;        /* circle_engine_queue_depth */
  size_t inflight_bytes;     /* bytes committed to requests */
  size_t inflight_bytes_max; /* --max-inflight-mb in bytes */
  unsigned engine_threads;   /* circle_engine_threads */
  bool draining;             /* SIGTERM received */
} circle_metrics_live;

/* Appends the whole exposition to b. live may be NULL (those gauges are
 * then left out). Returns CIRCLE_OK, CIRCLE_EINVAL (m or b NULL) or
 * CIRCLE_ENOMEM (b->failed is set and its contents are incomplete). Thread-
 * safe; may run while observations are being recorded. */
int circle_metrics_render(circle_metrics *m, const circle_metrics_live *live,
                          circle_buf *b);

#endif /* CIRCLE_METRICS_H */
