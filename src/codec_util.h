/* codec_util.h -- helpers shared by the JSON and OIP codecs (private): the
 * cheap pre-scan that runs before cJSON, key tables that reject unknown and
 * duplicate keys, exact integer reading from the raw JSON text, and the
 * request pieces both read the same way (booleans, tags, half-precision
 * arrays). The figures both encoders write are in codec_figures.h.
 */
#ifndef CIRCLE_CODEC_UTIL_H
#define CIRCLE_CODEC_UTIL_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "request.h"

/* Checks that body[0..len) is one JSON value (and blanks), in linear time
 * and without building anything: first a pre-scan (nesting depth <=
 * max_depth, 400 "limit_exceeded"; strings without raw control characters,
 * bad escapes, \u0000 (cJSON strings are NUL-terminated, so a NUL would
 * silently cut a label short) or half a UTF-16 surrogate pair; numbers in
 * strict JSON syntax and at most 63 characters, cJSON's own limit), then the
 * grammar (brackets, commas, colons, keys, literals). Returns 0, with
 * *values (when not NULL) the JSON values and keys in the text: what cJSON
 * would allocate a node or a string for. Or CIRCLE_EINVAL with *err set:
 * 400 "invalid_json" with the byte offset of the first byte that cannot
 * continue the text, or "limit_exceeded". Everything after this may assume
 * valid JSON. */
int circle__json_validate(const char *body, size_t len, size_t max_depth,
                          size_t *values, circle_error *err);

/* Validates body[0..len) (circle__json_validate), refuses a text of more
 * than max_values JSON values and keys (413 "limit_exceeded": the tree
 * cJSON builds takes about 100 bytes a value, so this is what bounds it),
 * then parses it with cJSON. Returns the tree (the caller cJSON_Delete's
 * it) or NULL with *err set (503 "overloaded" when cJSON ran out of
 * memory). */
cJSON *circle__json_parse(const char *body, size_t len, size_t max_depth,
                          size_t max_values, circle_error *err);
/* circle__json_parse for a text already known to pass circle__json_validate
 * (a copy json_fast.c walked) and to hold `values` values and keys: builds
 * the tree without checking the text again. Errors as circle__json_parse. */
cJSON *circle__json_parse_valid(const char *body, size_t len, size_t values,
                                size_t max_depth, size_t max_values,
                                circle_error *err);

/* One expected key of an object: the caller fills name, the walk fills
 * item (NULL when absent). */
typedef struct {
  const char *name;
  const cJSON *item;
} circle__json_field;

/* Walks obj's members once, storing each into the field of the same name.
 * An unknown key gives 400 "unknown_key", a repeated key 400
 * "duplicate_key"; `where` names the object in messages ("the request
 * body", "config"). obj must be an object. Returns 0 or CIRCLE_EINVAL. */
int circle__json_fields(const cJSON *obj, const char *where,
                        circle__json_field *fields, size_t nfields,
                        circle_error *err);

/* What a JSON node is, for messages: "a string", "an array", "null"... */
const char *circle__json_kind(const cJSON *item);

/* Writes the shortest "%g" text of v that reads back as v ("1.5",
 * "1e+39") into buf (40 bytes) and returns buf. For error messages. */
const char *circle__short_number(char *buf, double v);

/* Copies s into dst (dst_len bytes) for use inside an error message: at
 * most max_chars characters, non-printable and non-ASCII bytes as '?', and
 * "..." when cut. */
void circle__json_quote(char *dst, size_t dst_len, const char *s,
                        size_t max_chars);

/* A path step for circle__json_locate: an object key, or (key NULL) an
 * array index. */
typedef struct {
  const char *key;
  size_t index;
} circle__json_step;

/* Finds the byte offset of the value at path in an already validated JSON
 * text (cJSON parsed it, keys are unique). Returns false when the path is
 * not there. Linear in len, no recursion. */
bool circle__json_locate(const char *body, size_t len,
                         const circle__json_step *path, size_t npath,
                         size_t *offset);

/* Walks the elements of an array, or the members of an object, in JSON
 * text that circle__json_validate accepted; nothing is allocated. */
typedef struct {
  const char *body;
  size_t len, p; /* p: the next element, or the closing bracket */
  bool pending;  /* p is the element last returned, not yet skipped: an
                    element is skipped only when the walk goes on, so a
                    caller that reads it can say where it ended instead */
} circle__json_iter;

/* Starts at the opening bracket at body[off]. */
void circle__json_iter_init(circle__json_iter *it, const char *body,
                            size_t len, size_t off);
/* The offset of the next element in *at; false at the closing bracket. */
bool circle__json_iter_next(circle__json_iter *it, size_t *at);
/* The next member of an object: its key decoded into key (*key_ok false
 * when it does not fit in key_len bytes or has an escape beyond ASCII:
 * then it matches no name a codec looks for) and its value's offset in
 * *at; false at the closing brace. */
bool circle__json_iter_member(circle__json_iter *it, char *key, size_t key_len,
                              bool *key_ok, size_t *at);
/* Decodes the key (a validated JSON string) at p into dst, as the member
 * walk reads keys: false when it does not fit in dst_len bytes or has an
 * escape beyond ASCII (then it matches no name a codec looks for). */
bool circle__json_key_read(const char *p, const char *end, char *dst,
                           size_t dst_len);
/* Skips the element or member value last returned; returns the offset
 * just past it. */
size_t circle__json_iter_skip(circle__json_iter *it);
/* Goes on past the element or member value last returned, which the
 * caller read up to end (the offset just past it). */
void circle__json_iter_past(circle__json_iter *it, size_t end);
/* What the value at body[off] is, worded as circle__json_kind does. */
const char *circle__json_text_kind(const char *body, size_t len, size_t off);

/* Calls fn(ctx, offset, index) for each leaf (any value but an array) of the
 * possibly nested array at body[off] (validated JSON), in document order,
 * index counting from 0; stops with SIZE_MAX when fn returns false. fn may
 * be NULL. Returns the number of leaves. No recursion, no allocation. */
typedef bool (*circle__json_leaf_fn)(void *ctx, size_t off, size_t index);
size_t circle__json_leaves(const char *body, size_t len, size_t off,
                           circle__json_leaf_fn fn, void *ctx);

/* A malloc'd, NUL-terminated copy of body[0..len) in which each of the
 * nspans values spans[2i]..spans[2i+1] (ascending, not overlapping) is cut
 * down to [] (so cJSON builds nothing for it). False on ENOMEM. */
bool circle__json_cut(const char *body, size_t len, const size_t *spans,
                      size_t nspans, char **copy, size_t *copy_len);

/* Outcome of reading one JSON number token as an exact int64. */
enum {
  CIRCLE__INT_OK = 0,
  CIRCLE__INT_NOT_INTEGER = 1, /* 1.5, 1e-3 */
  CIRCLE__INT_RANGE = 2,       /* outside [-2^63, 2^63) */
  CIRCLE__INT_NOT_NUMBER = 3   /* not a number token at all */
};

/* Reads the numbers of the (possibly nested) array at body[offset] in
 * document order as exact int64 into out[0..n). Returns CIRCLE__INT_OK, or
 * the first failure with *bad_index set to the flat index of the element.
 * The array must hold exactly n numbers (the caller checked the tree). */
int circle__json_read_int64s(const char *body, size_t len, size_t offset,
                             int64_t *out, size_t n, size_t *bad_index);

/* Reads a metrics tag (a string of at most tag_len - 1 bytes from
 * [A-Za-z0-9_.:-]; null means none) into tag. Returns 0 or CIRCLE_EINVAL
 * with *err = 400 "bad_tag" naming field. */
int circle__tag_parse(const cJSON *item, char *tag, size_t tag_len,
                      const char *field, circle_error *err);

/* Reads a JSON boolean into *out. Returns 0, or CIRCLE_EINVAL with *err =
 * kind: "<field> is <kind>; expected true or false". */
int circle__bool_parse(const cJSON *item, bool *out, const char *field,
                       circle_error_kind kind, circle_error *err);

/* For a config with a half format, whose arrays the codecs read as
 * float64: replaces *arr (count doubles, malloc'd) by a new malloc'd float32
 * array of the values rounded once, straight to the format
 * (circle_half_narrow), and frees the doubles. Returns 0 (also when there
 * is no half format or *arr is NULL: nothing changes), CIRCLE_ENOMEM, or
 * CIRCLE_ERANGE with *bad the index of the first value past the format's
 * range; *arr is untouched on failure. */
int circle__half_narrow_array(circle_half half, void **arr, size_t count,
                              size_t *bad);

/* Length of the string (quotes included) or number at p that the pre-scan
 * passes: a string with no raw control character, only known escapes, no
 * \u0000 and whole surrogate pairs; a number whose run of number
 * characters is one strict JSON number of at most 63. 0 for anything else.
 * What a text made only of such tokens, blanks and well-formed brackets,
 * commas, colons and literals needs to pass circle__json_validate. */
size_t circle__json_token_len(const char *p, const char *end);

/* Stores v at ((dt *)out)[i] (float32 or float64); false when the stored
 * value is not finite: NaN, an infinity, or a float32 overflow. The one
 * finiteness test the codecs (/v1, OIP, gRPC through OIP) make of every
 * number they store; each names the bad element in its own words. */
static inline bool circle__store_finite(void *out, size_t i, double v,
                                        circle_dtype dt) {
  if (dt == CIRCLE_DTYPE_FLOAT32) {
    float f = (float)v;
    ((float *)out)[i] = f;
    return isfinite(f);
  }
  ((double *)out)[i] = v;
  return isfinite(v);
}

/* a * b into *out; false when it overflows uint64. */
static inline bool circle__mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
  return !__builtin_mul_overflow(a, b, out);
}

#endif /* CIRCLE_CODEC_UTIL_H */
