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

#include "circle/circle.h"

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

/* A client error: HTTP status, a stable machine-readable code (for /v1:
 * "invalid_json", "wrong_type", "ragged_rows", "shape_mismatch",
 * "empty_batch", "non_finite", "bad_label", "bad_config", "unknown_key",
 * "duplicate_key", "missing_field", "bad_tag", "half_reference",
 * "limit_exceeded", "body_too_large", "bad_encoding", "bad_output",
 * "method_not_allowed", "not_found", "unauthorized", "overloaded",
 * "internal") and a message saying how to fix the request.
 *
 * HTTP statuses the codecs use: 400 for every malformed or invalid request,
 * JSON nesting deeper than max_depth included ("limit_exceeded"); 413
 * "limit_exceeded" when N, M, D, the pair count or the inflated size is over
 * its limit; 415 "bad_encoding" for an unknown Content-Encoding. */
typedef struct {
  int http_status;
  char code[32];
  char message[512];
} circle_error;

/* Sets *err (printf-style message); returns CIRCLE_EINVAL for chaining. */
int circle_error_set(circle_error *err, int http_status, const char *code,
                     const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* A growable byte buffer for response bodies. Every circle_buf_* call
 * accepts a NULL buffer (and does nothing); once an allocation fails the
 * buffer stays failed and further appends are no-ops, so a writer can
 * append freely and check b->failed once at the end. */
typedef struct {
  char *data;
  size_t len;
  size_t cap;
  bool failed; /* an allocation failed; contents are incomplete */
} circle_buf;

void circle_buf_init(circle_buf *b);
void circle_buf_free(circle_buf *b);
/* Ensures room for extra more bytes; false (and b->failed) on ENOMEM. */
bool circle_buf_reserve(circle_buf *b, size_t extra);
void circle_buf_append(circle_buf *b, const void *p, size_t len);
void circle_buf_puts(circle_buf *b, const char *s);
void circle_buf_printf(circle_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Appends a JSON string literal (quotes and escapes included). */
void circle_buf_json_string(circle_buf *b, const char *s);
/* True when s is valid UTF-8 (no overlongs, surrogates or code points
 * past U+10FFFF): exactly the strings circle_buf_json_string writes
 * unchanged (it writes U+FFFD for each byte that is not). False for NULL. */
bool circle__utf8_valid(const char *s);
/* Appends a number that round-trips in dtype: the 9 (float32) or 17
 * (float64) significant digits and layout of printf's "%.9g" / "%.17g"
 * ("-0" for negative zero); non-finite values are written as null. For
 * float32, v is first rounded to float. Never writes more than
 * CIRCLE_JSON_NUMBER_MAX bytes. */
void circle_buf_json_number(circle_buf *b, double v, circle_dtype dtype);
/* Appends an unsigned integer in decimal. */
void circle_buf_json_uint(circle_buf *b, uint64_t v);
/* Appends v the way Python's repr(float) does (80.0, 0.4, 1e-05): the
 * shortest digits that round-trip as a double, ".0" on integral values.
 * Used for get_config() JSON. */
void circle_buf_python_float(circle_buf *b, double v);

/* Longest text circle_buf_json_number writes ("-1.2345678901234567e-308"
 * is 24 bytes). */
#define CIRCLE_JSON_NUMBER_MAX 32
/* Writes what circle_buf_json_number appends into dst (room for
 * CIRCLE_JSON_NUMBER_MAX bytes, no NUL) and returns its length: for encoders
 * that reserve a whole array's worth of buffer at once. It may leave scratch
 * bytes after the returned length, within those CIRCLE_JSON_NUMBER_MAX (the
 * next number or separator overwrites them). Thread-safe from main() on: its
 * tables are built at program load. */
size_t circle__json_number_write(char *dst, double v, circle_dtype dtype);

#endif /* CIRCLE_REQUEST_H */
