/* json_fast.h -- the /v1 codec's fast path for big numeric arrays: correctly
 * rounded JSON numbers without strtod, and the embedding matrices of a
 * request body read straight from its text instead of through a cJSON node
 * per number. Internal to the codecs.
 *
 * The fast path never decides what a request means: it either produces
 * exactly the numbers the cJSON path would (bit for bit) or gives up, and the
 * caller then runs the cJSON path, which owns every error message.
 */
#ifndef CIRCLE_JSON_FAST_H
#define CIRCLE_JSON_FAST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Parses one strict JSON number (RFC 8259 grammar, no leading '+', no
 * leading zeros, digits on both sides of '.') starting at p, not reading at
 * or past end. On success stores the double strtod would give for the same
 * text (correctly rounded, -0 kept, overflow to +-inf) in *out and returns
 * the number of characters used; returns 0 (and leaves *out alone) when p
 * does not start a JSON number or the number is longer than 63 characters
 * (the codecs' limit). Thread-safe. */
size_t circle__json_fast_number(const char *p, const char *end, double *out);

/* A matrix read from the text of a request body. */
typedef struct {
  bool found;     /* the member was present and read */
  size_t begin;   /* byte offsets of its value: [begin, end) */
  size_t end;
  size_t rows, d; /* rows >= 1, d >= 1 */
  double *v;      /* rows * d values, row-major; malloc'd, owner frees */
  size_t first_inf; /* index in v of the first infinity (a number past the
                     * double range, which strtod reads so), rows * d when
                     * there is none */
  /* odd: valid JSON, but not rows of numbers of one length within the
   * limits (an element that is not a number, a row that is not an array, a
   * ragged row, a row past D, more rows than allowed). Then v is NULL, d is
   * 0, rows counts the elements, and the codec reads the numbers from the
   * text, knowing the shape: row 0's length (when it is an array) and the
   * first row that is not an array or has another length than row 0 (its
   * index, offset and length, SIZE_MAX when it is no array; bad_row ==
   * rows when there is none). */
  bool odd;
  size_t row0_len, bad_row, bad_off, bad_len;
} circle__json_fast_matrix;

/* The big arrays of a /v1 body. */
typedef struct {
  circle__json_fast_matrix emb, ref;
  char *copy;      /* the body with those values cut down to [] */
  const char *text; /* the body walked, of text_len bytes */
  size_t text_len;
  size_t copy_len; /* its length (a NUL follows) */
  size_t values;   /* the copy's JSON values and keys, as the pre-scan counts
                      them; the copy is valid JSON (circle__json_validate
                      passes it, depth and count aside) */
} circle__json_fast_body;

/* Walks the top-level object of a /v1 body and reads the values of
 * "embeddings" and "ref_embeddings" (when present) as rectangular matrices
 * of numbers (an infinity kept, its place in first_inf), with at most
 * max_rows rows (max_ref_rows for the reference set) and max_d columns; a
 * matrix that is valid JSON but not that (a ragged or empty row, a value
 * that is not a number, a limit passed) is walked to its end and marked
 * odd, its shape noted. Everything else is validated as it is walked. On
 * success fills *fb, including a malloc'd NUL-terminated copy of the body
 * in which those values are cut down to [], and returns true; the caller
 * frees with circle__json_fast_body_free. Returns false, with *fb empty,
 * whenever the body is anything but that common shape: not an object, a
 * key with an escape, a repeated matrix key, invalid JSON,
 * a number over 63 characters, nesting past max_depth, or out of memory.
 * The slow path (codec_json.c, decode_slow) then decides. Thread-safe. */
bool circle__json_fast_body_read(const char *body, size_t len, size_t max_depth,
                                 size_t max_rows, size_t max_ref_rows,
                                 size_t max_d, circle__json_fast_body *fb);

/* Frees what circle__json_fast_body_read allocated and empties *fb. NULL is a
 * no-op. */
void circle__json_fast_body_free(circle__json_fast_body *fb);

/* The 128-bit power of ten the Eisel-Lemire step uses for 10^e, rounded
 * down and shifted so bit 127 is set: *hi, *lo. False outside the table
 * (e < -348 or e > 347). For tests. */
bool circle__json_fast_pow10(int e, uint64_t *hi, uint64_t *lo);

/* When false, circle__json_fast_body_read always returns false (the tests
 * compare both paths with it). Default true. Not thread-safe to change. */
extern bool circle__json_fast_enabled;

#endif /* CIRCLE_JSON_FAST_H */
