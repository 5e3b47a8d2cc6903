/* inflate.h -- gzip / deflate request-body decoding with a size cap (zlib).
 *
 * A compressed body is inflated into a new buffer no larger than the cap:
 * a deflate bomb is refused as soon as it would pass the cap, never fully
 * inflated.
 */
#ifndef CIRCLE_INFLATE_H
#define CIRCLE_INFLATE_H

#include <stddef.h>

#include "request.h"

/* Inflates in[0..in_len) encoded as Content-Encoding `encoding` ("gzip",
 * "deflate" (zlib-wrapped or raw), "identity" is not passed here) into a
 * malloc'd *out / *out_len (caller frees). Returns 0, or fills *err: 413
 * "limit_exceeded" over max_out bytes, 400 "bad_encoding" for corrupt data,
 * 415 "bad_encoding" for an unsupported encoding. */
int circle_inflate(const char *encoding, const char *in, size_t in_len,
                   size_t max_out, char **out, size_t *out_len,
                   circle_error *err);

#endif /* CIRCLE_INFLATE_H */
