/* buf.c -- the growable response buffer and its JSON string writer. Once an
 * allocation fails the buffer stays failed and every append is a no-op, so
 * a writer checks b->failed once at the end; every byte a JSON string
 * writer emits is valid UTF-8 (U+FFFD for each byte that is not). Numbers
 * are written by json_number.c.
 */
#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Buffer                                                                   */
/* ------------------------------------------------------------------------ */

void circle_buf_init(circle_buf *b) {
  if (b) memset(b, 0, sizeof(*b));
}

void circle_buf_free(circle_buf *b) {
  if (b == NULL) return;
  free(b->data);
  circle_buf_init(b);
}

bool circle_buf_reserve(circle_buf *b, size_t extra) {
  if (b == NULL || b->failed) return false;
  /* One spare byte so data is always NUL-terminated for debugging and for
   * callers that hand it to string functions. */
  if (extra > SIZE_MAX - b->len - 1) {
    b->failed = true;
    return false;
  }
  size_t need = b->len + extra + 1;
  if (need <= b->cap) return true;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  char *p = realloc(b->data, cap);
  if (p == NULL) {
    b->failed = true;
    return false;
  }
  b->data = p;
  b->cap = cap;
  return true;
}

void circle_buf_append(circle_buf *b, const void *p, size_t len) {
  if (p == NULL && len) return;
  if (!circle_buf_reserve(b, len)) return;
  if (len) memcpy(b->data + b->len, p, len);
  b->len += len;
  b->data[b->len] = '\0';
}

void circle_buf_puts(circle_buf *b, const char *s) {
  if (s) circle_buf_append(b, s, strlen(s));
}

void circle_buf_printf(circle_buf *b, const char *fmt, ...) {
  if (b == NULL || fmt == NULL || b->failed) return;
  va_list ap;
  va_start(ap, fmt);
  char small[256];
  int n = vsnprintf(small, sizeof(small), fmt, ap);
  va_end(ap);
  if (n < 0) {
    b->failed = true;
    return;
  }
  if ((size_t)n < sizeof(small)) {
    circle_buf_append(b, small, (size_t)n);
    return;
  }
  if (!circle_buf_reserve(b, (size_t)n)) return;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

/* Length of the valid UTF-8 sequence at s (at most avail bytes), or 0 when
 * the bytes there are not valid UTF-8 (overlongs, surrogates and code points
 * above U+10FFFF included). */
static size_t utf8_seq_len(const unsigned char *s, size_t avail) {
  unsigned c = s[0];
  size_t n;
  unsigned min;
  unsigned cp;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) { n = 2; min = 0x80; cp = c & 0x1f; }
  else if (c >= 0xe0 && c <= 0xef) { n = 3; min = 0x800; cp = c & 0x0f; }
  else if (c >= 0xf0 && c <= 0xf4) { n = 4; min = 0x10000; cp = c & 0x07; }
  else return 0;
  if (avail < n) return 0;
  for (size_t i = 1; i < n; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

void circle_buf_json_string(circle_buf *b, const char *s) {
  static const char hex[] = "0123456789abcdef";
  if (b == NULL) return;
  if (s == NULL) {
    circle_buf_puts(b, "null");
    return;
  }
  size_t len = strlen(s);
  /* Worst case: every byte becomes \u00XX or \ufffd (6 bytes). */
  if (len > (SIZE_MAX - 2) / 6 || !circle_buf_reserve(b, len * 6 + 2)) {
    b->failed = true;
    return;
  }
  char *o = b->data + b->len;
  const unsigned char *p = (const unsigned char *)s;
  *o++ = '"';
  while (*p) {
    unsigned c = *p;
    if (c == '"' || c == '\\') {
      *o++ = '\\';
      *o++ = (char)c;
      p++;
    } else if (c < 0x20) {
      *o++ = '\\';
      switch (c) {
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        default:
          *o++ = 'u'; *o++ = '0'; *o++ = '0';
          *o++ = hex[c >> 4]; *o++ = hex[c & 15];
      }
      p++;
    } else if (c < 0x80) {
      *o++ = (char)c;
      p++;
    } else {
      size_t n = utf8_seq_len(p, (size_t)((const unsigned char *)s + len - p));
      if (n == 0) {
        /* Not UTF-8: the replacement character keeps the output valid. */
        memcpy(o, "\\ufffd", 6);
        o += 6;
        p++;
      } else {
        memcpy(o, p, n);
        o += n;
        p += n;
      }
    }
  }
  *o++ = '"';
  b->len = (size_t)(o - b->data);
  b->data[b->len] = '\0';
}

bool circle__utf8_valid(const char *s) {
  if (s == NULL) return false;
  const unsigned char *p = (const unsigned char *)s;
  const unsigned char *end = p + strlen(s);
  while (p < end) {
    size_t n = utf8_seq_len(p, (size_t)(end - p));
    if (n == 0) return false;
    p += n;
  }
  return true;
}
