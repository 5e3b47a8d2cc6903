/* request.h -- the decoded request: what a codec builds from bytes and the
 * server hands to the engine, and the error a codec reports instead.
 *
 * A circle_request owns every array it points to (malloc'd by the codec,
 * freed by circle_request_free). Arrays are in req->cfg.dtype. Labels are
 * int64 ids: string labels are mapped to ids by the codec, with one mapping
 * shared by labels and ref_labels so equality is preserved across both.
 */
#ifndef CIRCLE_REQUEST_H
#define CIRCLE_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "circle/circle.h"
#include "error.h"

/* Limits a codec enforces while decoding; each has a server flag. */
typedef struct {
  size_t max_n;        /* batch rows */
  size_t max_m;        /* reference rows */
  size_t max_d;        /* embedding dimension */
  uint64_t max_pairs;  /* n * m (n * n without a ref set): the work limit */
  size_t max_depth;    /* JSON nesting depth */
  size_t max_inflated; /* bytes after gzip/deflate decoding */
} circle_limits;

/* Fills *lim with the documented defaults: n, m 65536; d 4096;
 * pairs 2^32; depth 32; inflated 256 MiB. NULL is a no-op. */
void circle_limits_init(circle_limits *lim);

/* The outputs that are figures, not tensors (stats, retrieval): the OIP
 * codecs carry them as response parameters, never as binary data. */
#define CIRCLE__OUT_FIGURES ((unsigned)(CIRCLE_OUT_STATS | CIRCLE_OUT_RETRIEVAL))
/* The one size check every codec (/v1, OIP, gRPC through OIP) makes before
 * it allocates anything for a request's arrays: n, m (0 without a reference
 * set), d (0 while not known yet) against their limits, then the pair count
 * n * m (n * n without a reference set) against max_pairs, overflow
 * included. Returns 0, or CIRCLE_EINVAL with *err = 413 "limit_exceeded":
 * "N = 70000 exceeds this server's limit of 65536", or "A x B = P pairs
 * exceeds the work limit of L pairs; send a smaller batch". A codec that can
 * name the array over a limit (/v1's "labels has 70000 rows") checks that
 * first, with its own message. */
int circle__limits_check(const circle_limits *lim, uint64_t n, uint64_t m,
                         bool has_ref, uint64_t d, circle_error *err);

typedef enum { CIRCLE_PROTO_V1 = 0, CIRCLE_PROTO_OIP = 1 } circle_proto;

typedef struct {
  circle_proto proto;
  circle_config cfg;  /* effective config (server defaults + request) */
  char name[128];     /* Keras loss name echoed in get_config ("circle") */
  size_t n, m, d;     /* m == 0 without a ref set */
  bool has_ref;
  int64_t *labels;     /* [n] */
  int64_t *ref_labels; /* [m] or NULL */
  void *x;             /* [n * d] embeddings */
  void *r;             /* [m * d] ref embeddings or NULL */
  void *sw;            /* [n] sample weights or NULL */
  unsigned want;       /* CIRCLE_OUT_* bits to compute and return */
  char tag[64];        /* client-supplied metrics tag, "" when none */
  /* Open Inference Protocol only. */
  char id[256];            /* request id, echoed; "" when none */
  unsigned binary_outputs; /* CIRCLE_OUT_* bits to return as binary data */
  unsigned out_order[5];   /* requested outputs in request order */
  size_t out_count;        /* entries used in out_order (0: defaults) */
  int emb_datatype;        /* circle_oip_datatype of "embeddings" input */
} circle_request;

/* Zeroes *req, sets cfg to circle_config_init's defaults and name to
 * "circle". NULL is a no-op. */
void circle_request_init(circle_request *req);
/* Frees every array and re-inits. NULL is a no-op. */
void circle_request_free(circle_request *req);

#endif /* CIRCLE_REQUEST_H */
