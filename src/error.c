/* error.c -- the client error a codec or the server reports instead of a
 * result: a row of CIRCLE_ERROR_MAP (error.h) and a message that says how
 * to fix the request. The message is always NUL-terminated and truncated,
 * never overflowed; the code and statuses come from the table only.
 */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>

static const struct row {
  const char *code;
  int http;
  int grpc;
} rows[CIRCLE_ERR_COUNT] = {
#define CIRCLE__ERROR_ROW(name, c, h, g, meaning) [CIRCLE_ERR_##name] = {c, h, g},
    CIRCLE_ERROR_MAP(CIRCLE__ERROR_ROW)
#undef CIRCLE__ERROR_ROW
};

static const struct row *row_of(circle_error_kind kind) {
  if ((int)kind <= CIRCLE_ERR_NONE || kind >= CIRCLE_ERR_COUNT)
    kind = CIRCLE_ERR_INTERNAL;
  return &rows[kind];
}

int circle_error_set(circle_error *err, circle_error_kind kind,
                     const char *fmt, ...) {
  if (err == NULL) return CIRCLE_EINVAL;
  err->kind = kind;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof(err->message), fmt, ap);
  va_end(ap);
  return CIRCLE_EINVAL;
}

const char *circle_error_code(circle_error_kind kind) {
  return row_of(kind)->code;
}

int circle_error_http(circle_error_kind kind) { return row_of(kind)->http; }

int circle_error_grpc(circle_error_kind kind) { return row_of(kind)->grpc; }
