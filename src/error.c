/* error.c -- the client error a codec or the server reports instead of a
 * result: an HTTP status, a stable machine-readable code and a message
 * that says how to fix the request. The message is always NUL-terminated
 * and truncated, never overflowed.
 */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>

int circle_error_set(circle_error *err, int http_status, const char *code,
                     const char *fmt, ...) {
  if (err == NULL) return CIRCLE_EINVAL;
  err->http_status = http_status;
  snprintf(err->code, sizeof(err->code), "%s", code ? code : "internal");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof(err->message), fmt, ap);
  va_end(ap);
  return CIRCLE_EINVAL;
}
