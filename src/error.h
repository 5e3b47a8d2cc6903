/* error.h -- the client error a codec or the server reports instead of a
 * result, and the one table of every such error (error.c).
 *
 * CIRCLE_ERROR_MAP lists each error a client can get: its enum name, the
 * stable machine-readable code it sends, the HTTP status, the gRPC status
 * code and what it means. A code that goes out with two HTTP statuses has
 * one row per status ("limit_exceeded": 400 for JSON nesting, 413 for a
 * size over a limit; "bad_encoding": 400 for a malformed body, 415 for an
 * unsupported Content-Encoding), so the enum name alone decides the
 * status. The HTTP status is looked up from the table where a response is
 * made (http_respond.c), the gRPC code where a call is finished
 * (circle_grpc_status_of). docs/errors.md is written from this table by
 * tests/py/errors_table.py; tests/py/test_errors.py checks the two agree
 * and tests/py/test_openapi.py that the /v1 codes are those of openapi.yaml.
 *
 * gRPC codes: 3 INVALID_ARGUMENT, 5 NOT_FOUND, 8 RESOURCE_EXHAUSTED,
 * 12 UNIMPLEMENTED, 13 INTERNAL, 14 UNAVAILABLE, 16 UNAUTHENTICATED.
 */
#ifndef CIRCLE_ERROR_H
#define CIRCLE_ERROR_H

#include "circle/circle.h"

/* X(name, code, http status, gRPC status, meaning) */
#define CIRCLE_ERROR_MAP(X)                                                   \
  X(INVALID_JSON, "invalid_json", 400, 3, "the body is not valid JSON")       \
  X(WRONG_TYPE, "wrong_type", 400, 3, "a field has the wrong JSON type")      \
  X(RAGGED_ROWS, "ragged_rows", 400, 3,                                       \
    "the rows of a matrix differ in length")                                  \
  X(SHAPE_MISMATCH, "shape_mismatch", 400, 3,                                 \
    "sizes that must agree do not (rows and labels, D of two matrices, a "    \
    "tensor's shape and its data)")                                           \
  X(EMPTY_BATCH, "empty_batch", 400, 3,                                       \
    "the batch or the reference batch has no rows")                           \
  X(NON_FINITE, "non_finite", 400, 3,                                         \
    "a number is NaN or infinite, or overflows the dtype")                    \
  X(OUT_OF_RANGE, "out_of_range", 400, 3,                                     \
    "the embeddings overflow the dtype")                                      \
  X(BAD_LABEL, "bad_label", 400, 3, "a label is not an integer or a string")  \
  X(BAD_CONFIG, "bad_config", 400, 3, "a loss setting is invalid")            \
  X(UNKNOWN_KEY, "unknown_key", 400, 3,                                       \
    "a key or input the request may not have")                                \
  X(DUPLICATE_KEY, "duplicate_key", 400, 3, "a key appears twice")            \
  X(MISSING_FIELD, "missing_field", 400, 3, "a required field is missing")    \
  X(BAD_TAG, "bad_tag", 400, 3, "a tag or request id is too long or unsafe")  \
  X(HALF_REFERENCE, "half_reference", 400, 3,                                 \
    "reference embeddings without reference labels, or the reverse")          \
  X(TOO_DEEP, "limit_exceeded", 400, 3,                                       \
    "JSON nesting deeper than the depth limit")                               \
  X(LIMIT_EXCEEDED, "limit_exceeded", 413, 8,                                 \
    "N, M, D, the pair count or the inflated size is over its limit")         \
  X(BODY_TOO_LARGE, "body_too_large", 413, 8,                                 \
    "the body is over the body limit")                                        \
  X(BAD_ENCODING, "bad_encoding", 400, 3,                                     \
    "a compressed body is corrupt or truncated, or a framing header is "      \
    "wrong")                                                                  \
  X(UNSUPPORTED_ENCODING, "bad_encoding", 415, 13,                            \
    "the Content-Encoding is not gzip, deflate or identity")                  \
  X(BAD_OUTPUT, "bad_output", 400, 3, "an output asked for is unknown")       \
  X(INVALID_INPUT, "invalid_input", 400, 3, "the engine refused the input")   \
  X(INVALID_MESSAGE, "invalid_message", 400, 3,                               \
    "a gRPC message does not decode")                                         \
  X(BAD_REQUEST, "bad_request", 400, 3, "the HTTP request head is malformed") \
  X(UNAUTHORIZED, "unauthorized", 401, 16,                                    \
    "the bearer token is missing or wrong")                                   \
  X(NOT_FOUND, "not_found", 404, 5, "no such route, model or service")        \
  X(UNKNOWN_METHOD, "not_found", 501, 12, "no such gRPC method")              \
  X(METHOD_NOT_ALLOWED, "method_not_allowed", 405, 13,                        \
    "the route does not take this HTTP method")                               \
  X(NOT_IMPLEMENTED, "not_implemented", 501, 12,                              \
    "a Transfer-Encoding the server does not implement")                      \
  X(OVERLOADED, "overloaded", 503, 8,                                         \
    "the server is busy or out of memory; retry after Retry-After")           \
  X(SHUTTING_DOWN, "shutting_down", 503, 14, "the server is shutting down")   \
  X(INTERNAL, "internal", 500, 13, "a bug in the server")

/* One enum value per row; CIRCLE_ERR_NONE (0) is "no error yet". */
typedef enum {
  CIRCLE_ERR_NONE = 0,
#define CIRCLE__ERROR_ENUM(name, code, http, grpc, meaning) CIRCLE_ERR_##name,
  CIRCLE_ERROR_MAP(CIRCLE__ERROR_ENUM)
#undef CIRCLE__ERROR_ENUM
  CIRCLE_ERR_COUNT
} circle_error_kind;

/* A client error: its row of the table and a message saying how to fix
 * the request. A zeroed circle_error is CIRCLE_ERR_NONE with an empty
 * message. */
typedef struct {
  circle_error_kind kind;
  char message[512];
} circle_error;

/* Sets *err (printf-style message); returns CIRCLE_EINVAL for chaining. A
 * NULL err is a no-op (still CIRCLE_EINVAL). */
int circle_error_set(circle_error *err, circle_error_kind kind,
                     const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The row's machine-readable code, HTTP status and gRPC status code.
 * CIRCLE_ERR_NONE and values outside the table read as CIRCLE_ERR_INTERNAL
 * ("internal", 500, 13), so an error that was never set still answers. */
const char *circle_error_code(circle_error_kind kind);
int circle_error_http(circle_error_kind kind);
int circle_error_grpc(circle_error_kind kind);

#endif /* CIRCLE_ERROR_H */
