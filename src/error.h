/* error.h -- the client error a codec or the server reports instead of a
 * result (error.c).
 */
#ifndef CIRCLE_ERROR_H
#define CIRCLE_ERROR_H

#include "circle/circle.h"

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

#endif /* CIRCLE_ERROR_H */
