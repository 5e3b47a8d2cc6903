/* buf.h -- the growable response buffer and its JSON writers: strings
 * (buf.c) and numbers (json_number.c).
 */
#ifndef CIRCLE_BUF_H
#define CIRCLE_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "circle/circle.h"

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

#endif /* CIRCLE_BUF_H */
