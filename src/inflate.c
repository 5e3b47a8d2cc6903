/* inflate.c -- gzip / deflate request bodies (zlib) under a size cap. Must
 * keep true: never more than max_out + 1 bytes of output are produced, so a
 * deflate bomb costs at most the cap in memory and the time to fill it.
 *
 * zlib writes into a window that never reaches past max_out + 1 bytes; when
 * that last byte gets filled the body is refused (413) without inflating
 * the rest. The buffer grows geometrically from a guess based on the input
 * size, so well-behaved bodies take a few reallocs at most.
 */
#include "inflate.h"

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <zlib.h>

/* zlib counts in uInt; feed it at most this much at a time. */
#define CHUNK_MAX ((size_t)1 << 30)

/* zlib's header check for a zlib-wrapped stream (RFC 1950): CM = 8 and the
 * 16-bit header a multiple of 31. Raw deflate almost never passes it. */
static bool looks_zlib(const unsigned char *p, size_t n) {
  return n >= 2 && (p[0] & 0x0f) == 8 && (p[0] >> 4) <= 7 &&
         (((unsigned)p[0] << 8) | p[1]) % 31 == 0;
}

static void too_big(circle_error *err, const char *what, size_t max_out) {
  circle_error_set(err, CIRCLE_ERR_LIMIT_EXCEEDED,
                   "the %s body inflates to more than %zu bytes, the "
                   "decompressed-size limit; send a smaller batch",
                   what, max_out);
}

int circle_inflate(const char *encoding, const char *in, size_t in_len,
                   size_t max_out, char **out, size_t *out_len,
                   circle_error *err) {
  if (encoding == NULL || (in == NULL && in_len) || out == NULL ||
      out_len == NULL || err == NULL) {
    if (err) circle_error_set(err, CIRCLE_ERR_INTERNAL, "circle_inflate: bad argument");
    return CIRCLE_EINVAL;
  }
  bool gzip = strcasecmp(encoding, "gzip") == 0 || strcasecmp(encoding, "x-gzip") == 0;
  bool deflate = strcasecmp(encoding, "deflate") == 0;
  if (strcasecmp(encoding, "identity") == 0) {
    if (in_len > max_out)
      return circle_error_set(err, CIRCLE_ERR_LIMIT_EXCEEDED,
                              "the body has %zu bytes; the limit is %zu",
                              in_len, max_out);
    char *copy = malloc(in_len ? in_len : 1);
    if (copy == NULL)
      return circle_error_set(err, CIRCLE_ERR_OVERLOADED, "out of memory; retry later");
    if (in_len) memcpy(copy, in, in_len);
    *out = copy;
    *out_len = in_len;
    return 0;
  }
  if (!gzip && !deflate) {
    char q[40];
    size_t i;
    for (i = 0; encoding[i] && i + 1 < sizeof(q); i++) {
      unsigned char c = (unsigned char)encoding[i];
      q[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    q[i] = '\0';
    return circle_error_set(err, CIRCLE_ERR_UNSUPPORTED_ENCODING,
                            "Content-Encoding \"%s\" is not supported; use "
                            "gzip, deflate or identity",
                            q);
  }
  const char *what = gzip ? "gzip" : "deflate";
  if (in_len == 0)
    return circle_error_set(err, CIRCLE_ERR_BAD_ENCODING,
                            "the body is empty but Content-Encoding is %s",
                            what);

  int wbits = gzip ? 16 + MAX_WBITS
                   : (looks_zlib((const unsigned char *)in, in_len) ? MAX_WBITS
                                                                     : -MAX_WBITS);
  z_stream zs;
  memset(&zs, 0, sizeof(zs));
  int zrc = inflateInit2(&zs, wbits);
  if (zrc != Z_OK)
    return circle_error_set(err, CIRCLE_ERR_OVERLOADED,
                            "cannot start the %s decoder (%s); retry later",
                            what, zrc == Z_MEM_ERROR ? "out of memory" : "zlib error");

  /* Output room: max_out + 1 at most, so reaching it proves "too big". */
  size_t limit = max_out == SIZE_MAX ? SIZE_MAX : max_out + 1;
  size_t cap = in_len < (SIZE_MAX / 4) ? in_len * 4 : SIZE_MAX;
  if (cap < 65536) cap = 65536;
  if (cap > limit) cap = limit;
  char *buf = malloc(cap);
  size_t have = 0, fed = 0;
  int rc = CIRCLE_EINVAL;
  if (buf == NULL) {
    circle_error_set(err, CIRCLE_ERR_OVERLOADED, "out of memory; retry later");
    goto done;
  }
  for (;;) {
    if (zs.avail_in == 0 && fed < in_len) {
      size_t n = in_len - fed < CHUNK_MAX ? in_len - fed : CHUNK_MAX;
      zs.next_in = (Bytef *)(in + fed);
      zs.avail_in = (uInt)n;
      fed += n;
    }
    if (have == cap) {
      if (cap == limit) {
        too_big(err, what, max_out);
        goto done;
      }
      size_t ncap = cap > limit / 2 ? limit : cap * 2;
      char *nb = realloc(buf, ncap);
      if (nb == NULL) {
        circle_error_set(err, CIRCLE_ERR_OVERLOADED, "out of memory; retry later");
        goto done;
      }
      buf = nb;
      cap = ncap;
    }
    size_t room = cap - have < CHUNK_MAX ? cap - have : CHUNK_MAX;
    zs.next_out = (Bytef *)(buf + have);
    zs.avail_out = (uInt)room;
    zrc = inflate(&zs, Z_NO_FLUSH);
    have += room - zs.avail_out;
    if (zrc == Z_STREAM_END) {
      /* gzip allows several members back to back (gzip(1) reads them all);
       * anything else after the end is corrupt. */
      size_t rest = zs.avail_in + (in_len - fed);
      if (rest == 0) break;
      if (gzip) {
        const unsigned char *nx = zs.next_in;
        if (zs.avail_in == 0) {
          nx = (const unsigned char *)in + fed;
        }
        if (nx[0] == 0x1f) {
          inflateReset(&zs);
          continue;
        }
      }
      circle_error_set(err, CIRCLE_ERR_BAD_ENCODING,
                       "the %s body has %zu bytes of garbage after the "
                       "compressed data",
                       what, rest);
      goto done;
    }
    if (zrc == Z_OK) continue;
    if (zrc == Z_BUF_ERROR) {
      if (zs.avail_in == 0 && fed == in_len) {
        circle_error_set(err, CIRCLE_ERR_BAD_ENCODING,
                         "the %s body ends early (truncated after %zu "
                         "compressed bytes)",
                         what, in_len);
        goto done;
      }
      continue; /* no room: the loop grows the buffer */
    }
    if (zrc == Z_MEM_ERROR) {
      circle_error_set(err, CIRCLE_ERR_OVERLOADED, "out of memory; retry later");
      goto done;
    }
    circle_error_set(err, CIRCLE_ERR_BAD_ENCODING, "corrupt %s data: %s", what,
                     zs.msg ? zs.msg : "invalid stream");
    goto done;
  }
  if (have > max_out) { /* the stream ended exactly at max_out + 1 */
    too_big(err, what, max_out);
    goto done;
  }
  /* Shrink-to-fit is not worth a copy; a NUL after the data helps callers
   * that treat it as text. */
  if (have == cap) {
    char *nb = realloc(buf, cap + 1);
    if (nb == NULL) {
      circle_error_set(err, CIRCLE_ERR_OVERLOADED, "out of memory; retry later");
      goto done;
    }
    buf = nb;
  }
  buf[have] = '\0';
  *out = buf;
  *out_len = have;
  buf = NULL;
  rc = 0;
done:
  inflateEnd(&zs);
  free(buf);
  return rc;
}
