/* codec_json.c -- the native /v1/loss codec: JSON bytes -> circle_request,
 * engine output -> JSON bytes. Must keep true: every rejected request gets a
 * 4xx naming the field, the row and what was expected; nothing the client
 * sends can make it recurse deeply, allocate more than its body implies or
 * go quadratic; the response is valid JSON whose numbers round-trip.
 *
 *   body --json_fast.c: the matrices, read from the text--> double[]
 *        --the rest validated as it is walked (depth, strings, numbers,
 *          grammar, values counted), then copied with the matrices cut to
 *          [] (at most 2N + M + 1024 values)--> cJSON tree
 *        --keys (unknown, duplicate)--> config, options
 *        --labels (ints exact to int64, or strings -> ids)--> int64[n], [m]
 *        --embeddings (N x D, ragged rows named)--> cfg.dtype arrays
 *
 * The embedding matrices never become cJSON nodes (80 bytes each, 40 times
 * a body of small numbers): json_fast.c reads those of a body of the usual
 * shape, bit for bit as strtod would, and the error a request of that
 * shape gets is found from them and the copy's tree, as the slow way would
 * find it, so the matrices' text is read once and the rest is not checked
 * again before cJSON (docs/performance.md counts the passes). A matrix
 * that is valid JSON but not the usual shape (a null among the numbers, a
 * ragged row) is walked to its end with its shape noted: its error is
 * named from the shape, or from its numbers read once more from the text.
 * Anything else goes the slow way (decode_slow), which validates the whole
 * text first, in one pass, and reads the matrices from it with the same
 * number reader. Labels and weights past N
 * and trees past what a request can need are refused before cJSON builds
 * anything. Decoding so holds at most the body, a copy of it, and 8 bytes a
 * number (a number takes 2 bytes of text at least): 6 times the body.
 *
 * Integer labels are read from the double cJSON parsed when they are below
 * 2^53 in magnitude (where every integer is exact) and from the raw text
 * otherwise, so 9007199254740993 and 9007199254740992 stay two labels.
 */
#include "codec_json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "codec_config.h"
#include "codec_figures.h"
#include "codec_util.h"
#include "json_fast.h"

/* 2^53: every integer of smaller magnitude is exact in a double. */
#define EXACT_INT_LIMIT 9007199254740992.0

/* ------------------------------------------------------------------------ */
/* String labels                                                            */
/* ------------------------------------------------------------------------ */

/* Maps strings to dense ids (0, 1, 2, ...) with equal strings getting equal
 * ids: collect every label with label_set_add, then call label_set_assign.
 * Sorting, not hashing, so crafted labels cannot make it quadratic. The
 * strings are borrowed (they live in the cJSON tree). */
typedef struct {
  const char **str;
  int64_t **dst; /* where each string's id goes */
  size_t len, cap;
} label_set;

static void label_set_init(label_set *l) { memset(l, 0, sizeof(*l)); }

static void label_set_free(label_set *l) {
  if (l == NULL) return;
  free(l->str);
  free(l->dst);
  label_set_init(l);
}

/* Returns false on ENOMEM. */
static bool label_set_add(label_set *l, const char *s, int64_t *dst) {
  if (l->len == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 64;
    const char **ns = realloc(l->str, cap * sizeof(*ns));
    if (ns == NULL) return false;
    l->str = ns;
    int64_t **nd = realloc(l->dst, cap * sizeof(*nd));
    if (nd == NULL) return false;
    l->dst = nd;
    l->cap = cap;
  }
  l->str[l->len] = s;
  l->dst[l->len] = dst;
  l->len++;
  return true;
}

static int cmp_label_index(const void *a, const void *b, void *ctx) {
  const char **str = ctx;
  size_t i = *(const size_t *)a, j = *(const size_t *)b;
  int c = strcmp(str[i], str[j]);
  if (c) return c;
  return i < j ? -1 : i > j; /* stable: ids follow first appearance */
}

/* Writes every id. Returns false on ENOMEM. */
static bool label_set_assign(label_set *l) {
  if (l->len == 0) return true;
  size_t *order = malloc(l->len * sizeof(*order));
  if (order == NULL) return false;
  for (size_t i = 0; i < l->len; i++) order[i] = i;
  qsort_r(order, l->len, sizeof(*order), cmp_label_index, l->str);
  int64_t id = -1;
  for (size_t k = 0; k < l->len; k++) {
    if (k == 0 || strcmp(l->str[order[k]], l->str[order[k - 1]]) != 0) id++;
    *l->dst[order[k]] = id;
  }
  free(order);
  return true;
}

/* ------------------------------------------------------------------------ */
/* Decoding                                                                 */
/* ------------------------------------------------------------------------ */

enum {
  F_LABELS, F_EMBEDDINGS, F_SAMPLE_WEIGHT, F_REF_LABELS, F_REF_EMBEDDINGS,
  F_CONFIG, F_NORMALIZE, F_OUTPUTS, F_TAG, F_COUNT
};

enum { KIND_NONE = 0, KIND_INT = 1, KIND_STRING = 2 };

/* Where the matrices are when they were cut from the text cJSON parses
 * (the slow path): offsets of their opening brackets in the body. */
typedef struct {
  const char *text; /* the body as sent */
  size_t len;
  bool emb, ref;    /* embeddings / ref_embeddings were cut */
  size_t emb_off, ref_off;
  size_t emb_rows, ref_rows; /* their elements, counted as they were cut */
} cut_matrices;

typedef struct {
  const char *body;
  size_t len;
  const circle_limits *lim;
  circle_error *err;
  label_set strings; /* string labels of both sets */
  int kind;               /* of the labels seen so far */
  bool fast_unsure; /* take_fast_matrix left the error to the slow path */
} decoder;

static int missing(circle_error *err, const char *field, const char *what) {
  return circle_error_set(err, CIRCLE_ERR_MISSING_FIELD,
                          "%s is missing; expected %s", field, what);
}

/* Counts an array's elements, insisting on an array. */
static int array_len(const cJSON *a, const char *field, const char *what,
                     size_t *out, circle_error *err) {
  if (!cJSON_IsArray(a))
    return circle_error_set(err, CIRCLE_ERR_WRONG_TYPE, "%s is %s; expected %s",
                            field, circle__json_kind(a), what);
  size_t n = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, a) n++;
  *out = n;
  return 0;
}

/* Reads labels or ref_labels (n elements) into out. */
static int parse_labels(decoder *dc, const cJSON *arr, const char *field,
                        size_t n, int64_t *out) {
  circle_error *err = dc->err;
  bool need_raw = false;
  size_t i = 0;
  const cJSON *it;
  char vb[40];
  const char *first_field = dc->kind == KIND_NONE ? field : "labels";
  cJSON_ArrayForEach(it, arr) {
    int kind;
    if (cJSON_IsNumber(it)) kind = KIND_INT;
    else if (cJSON_IsString(it)) kind = KIND_STRING;
    else
      return circle_error_set(err, CIRCLE_ERR_BAD_LABEL,
                              "%s[%zu] is %s; labels must be integers or "
                              "strings",
                              field, i, circle__json_kind(it));
    if (dc->kind == KIND_NONE) {
      dc->kind = kind;
      first_field = field;
    } else if (dc->kind != kind) {
      return circle_error_set(
          err, CIRCLE_ERR_BAD_LABEL,
          "%s[%zu] is %s but %s[0] is %s; use integers or strings for all "
          "labels and ref_labels, not both",
          field, i, kind == KIND_INT ? "a number" : "a string", first_field,
          dc->kind == KIND_INT ? "a number" : "a string");
    }
    if (kind == KIND_STRING) {
      if (!label_set_add(&dc->strings, it->valuestring, &out[i]))
        return circle_error_set(err, CIRCLE_ERR_OVERLOADED,
                                "out of memory reading %s; retry later", field);
    } else {
      double v = it->valuedouble;
      if (fabs(v) < EXACT_INT_LIMIT) {
        if (v != trunc(v))
          return circle_error_set(err, CIRCLE_ERR_BAD_LABEL,
                                  "%s[%zu] is %s; labels must be integers or "
                                  "strings",
                                  field, i, circle__short_number(vb, v));
        out[i] = (int64_t)v;
      } else {
        need_raw = true; /* decided on the text below */
      }
    }
    i++;
  }
  (void)n;
  if (need_raw) {
    circle__json_step path[1] = {{field, 0}};
    size_t off, bad = 0;
    int rc = CIRCLE__INT_NOT_NUMBER;
    if (circle__json_locate(dc->body, dc->len, path, 1, &off))
      rc = circle__json_read_int64s(dc->body, dc->len, off, out, n, &bad);
    if (rc == CIRCLE__INT_RANGE)
      return circle_error_set(err, CIRCLE_ERR_BAD_LABEL,
                              "%s[%zu] is outside the int64 range; send "
                              "integers in [-2^63, 2^63) or strings",
                              field, bad);
    if (rc == CIRCLE__INT_NOT_INTEGER)
      return circle_error_set(err, CIRCLE_ERR_BAD_LABEL,
                              "%s[%zu] is not an integer; labels must be "
                              "integers or strings",
                              field, bad);
    if (rc != CIRCLE__INT_OK)
      return circle_error_set(err, CIRCLE_ERR_BAD_LABEL,
                              "%s holds integers too large to read exactly; "
                              "send them as strings",
                              field);
  }
  return 0;
}

static int non_finite(circle_error *err, const char *field, size_t r,
                      size_t c, bool two_d, double v, circle_dtype dt) {
  char idx[64];
  if (two_d) snprintf(idx, sizeof(idx), "%s[%zu][%zu]", field, r, c);
  else snprintf(idx, sizeof(idx), "%s[%zu]", field, r);
  if (isfinite(v)) {
    char vb[40];
    return circle_error_set(err, CIRCLE_ERR_NON_FINITE,
                            "%s is %s, which overflows float32; use config "
                            "dtype \"float64\" or rescale the values",
                            idx, circle__short_number(vb, v));
  }
  return circle_error_set(err, CIRCLE_ERR_NON_FINITE,
                          "%s overflows to infinity; every number must be "
                          "finite",
                          idx);
}

/* A half-precision config's arrays are read as float64 and rounded here,
 * once, straight to the format (held as float32, the engine's dtype). A
 * value past the format's range is refused, as float32 overflow is. */
static int narrow_half(circle_error *err, const circle_config *cfg, void **arr,
                       size_t rows, size_t d, const char *field, bool two_d) {
  size_t k = 0;
  int rc = circle__half_narrow_array(cfg->half, arr, rows * d, &k);
  if (rc == CIRCLE_ENOMEM)
    return circle_error_set(err, CIRCLE_ERR_OVERLOADED,
                            "out of memory for %s; retry later", field);
  if (rc != 0) {
    char idx[64], vb[40];
    double v = ((const double *)*arr)[k];
    if (two_d) snprintf(idx, sizeof(idx), "%s[%zu][%zu]", field, k / d, k % d);
    else snprintf(idx, sizeof(idx), "%s[%zu]", field, k);
    return circle_error_set(err, CIRCLE_ERR_NON_FINITE,
                            "%s is %s, beyond %s's largest finite value %g; "
                            "use config dtype \"float32\" or rescale the "
                            "values",
                            idx, circle__short_number(vb, v),
                            circle_half_name(cfg->half),
                            circle_half_max(cfg->half));
  }
  return 0;
}

/* The number of elements of the array at text[off] (validated JSON); the
 * offset just past it in *end (unless NULL). */
static size_t array_count(const char *text, size_t len, size_t off,
                          size_t *end) {
  circle__json_iter it;
  circle__json_iter_init(&it, text, len, off);
  size_t n = 0, at;
  while (circle__json_iter_next(&it, &at)) n++;
  if (end) *end = it.p + 1; /* it.p: the closing bracket */
  return n;
}

/* Reads the matrix of rows rows at text[off] (cut from the tree, read from
 * the body as sent) into a new cfg.dtype matrix. *d is the expected row
 * length, or 0 to take it from row 0 (then checked against max_d). like
 * names the row that set d, for messages. Shapes are checked before
 * anything is allocated: a body of one full row and many empty ones must
 * not get an N x D allocation before the second row is looked at. */
static int parse_matrix(decoder *dc, const char *t, size_t tl, size_t off,
                        const circle__json_fast_matrix *shape,
                        const char *field, size_t rows, size_t *d,
                        const char *like, circle_dtype dt, void **out) {
  circle_error *err = dc->err;
  size_t dd = *d, at = off, r = 0;
  circle__json_iter it, row;
  circle__json_iter_init(&it, t, tl, off);
  /* Row 0 sets D unless *d does: from the shape the walk noted, or read. */
  bool row0_array = true;
  size_t row0_off = off, row0_len = 0;
  if (shape) {
    row0_array = !(shape->bad_row == 0 && shape->bad_len == SIZE_MAX);
    row0_off = shape->bad_off;
    row0_len = shape->row0_len;
  } else if (dd == 0) {
    row0_array = circle__json_iter_next(&it, &at) && t[at] == '[';
    row0_off = at;
    if (row0_array) row0_len = array_count(t, tl, at, NULL);
    circle__json_iter_init(&it, t, tl, off);
  }
  if (dd == 0) {
    if (!row0_array)
      return circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                              "%s[0] is %s; expected an array of numbers",
                              field, circle__json_text_kind(t, tl, row0_off));
    dd = row0_len;
    if (dd == 0)
      return circle_error_set(err, CIRCLE_ERR_SHAPE_MISMATCH,
                              "%s[0] is empty; each row needs at least one "
                              "number",
                              field);
    if (dd > dc->lim->max_d)
      return circle_error_set(err, CIRCLE_ERR_LIMIT_EXCEEDED,
                              "%s[0] has %zu numbers; the dimension limit D "
                              "is %zu",
                              field, dd, dc->lim->max_d);
  }
  if (shape) {
    /* The verdict of the row checks below, without reading the rows. */
    size_t bad = shape->bad_row, have = shape->bad_len;
    if (row0_array && row0_len != dd) bad = 0, have = row0_len;
    if (bad < rows && have == SIZE_MAX)
      return circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                              "%s[%zu] is %s; expected an array of %zu "
                              "numbers",
                              field, bad, circle__json_text_kind(t, tl, shape->bad_off),
                              dd);
    if (bad < rows)
      return circle_error_set(err, *d ? CIRCLE_ERR_SHAPE_MISMATCH : CIRCLE_ERR_RAGGED_ROWS,
                              "%s[%zu] has %zu numbers; expected %zu like %s",
                              field, bad, have, dd, like);
  }
  while (!shape && circle__json_iter_next(&it, &at)) {
    if (t[at] != '[')
      return circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                              "%s[%zu] is %s; expected an array of %zu "
                              "numbers",
                              field, r, circle__json_text_kind(t, tl, at), dd);
    size_t have = array_count(t, tl, at, NULL);
    if (have != dd) /* within one matrix: ragged; against another: D */
      return circle_error_set(err, *d ? CIRCLE_ERR_SHAPE_MISMATCH : CIRCLE_ERR_RAGGED_ROWS,
                              "%s[%zu] has %zu numbers; expected %zu like %s",
                              field, r, have, dd, like);
    r++;
  }
  size_t esz = circle_dtype_size(dt);
  uint64_t total;
  if (!circle__mul_u64(rows, dd, &total) || !circle__mul_u64(total, esz, &total) ||
      total > SIZE_MAX)
    return circle_error_set(err, CIRCLE_ERR_LIMIT_EXCEEDED,
                            "%s is too large (%zu x %zu)", field, rows, dd);
  void *m = malloc(total ? (size_t)total : 1);
  if (m == NULL)
    return circle_error_set(err, CIRCLE_ERR_OVERLOADED,
                            "out of memory for %s (%zu x %zu); retry later or "
                            "send a smaller batch",
                            field, rows, dd);
  circle__json_iter_init(&it, t, tl, off);
  r = 0;
  size_t row_at;
  while (circle__json_iter_next(&it, &row_at)) {
    size_t c = 0, base = r * dd;
    circle__json_iter_init(&row, t, tl, row_at);
    while (circle__json_iter_next(&row, &at)) {
      double v;
      /* The pre-scan passed every number: a token that does not read is
       * some other value. */
      if (circle__json_fast_number(t + at, t + tl, &v) == 0) {
        free(m);
        return circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                                "%s[%zu][%zu] is %s; expected a number",
                                field, r, c, circle__json_text_kind(t, tl, at));
      }
      if (!circle__store_finite(m, base + c, v, dt)) {
        free(m);
        return non_finite(err, field, r, c, true, v, dt);
      }
      c++;
    }
    r++;
  }
  *d = dd;
  *out = m;
  return 0;
}

static int parse_outputs(const cJSON *a, bool has_ref, unsigned *want,
                         circle_error *err) {
  static const struct {
    const char *name;
    unsigned bit;
  } names[] = {{"loss", CIRCLE_OUT_LOSS},
               {"per_sample_loss", CIRCLE_OUT_PER_SAMPLE},
               {"embeddings_grad", CIRCLE_OUT_GRAD},
               {"ref_embeddings_grad", CIRCLE_OUT_REF_GRAD},
               {"stats", CIRCLE_OUT_STATS},
               {"retrieval", CIRCLE_OUT_RETRIEVAL}};
  static const char *const list =
      "\"loss\", \"per_sample_loss\", \"embeddings_grad\", "
      "\"ref_embeddings_grad\", \"stats\", \"retrieval\"";
  if (!cJSON_IsArray(a))
    return circle_error_set(err, CIRCLE_ERR_BAD_OUTPUT,
                            "outputs is %s; expected an array of names from "
                            "%s",
                            circle__json_kind(a), list);
  unsigned w = 0;
  size_t i = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, a) {
    if (!cJSON_IsString(it))
      return circle_error_set(err, CIRCLE_ERR_BAD_OUTPUT,
                              "outputs[%zu] is %s; expected one of %s", i,
                              circle__json_kind(it), list);
    size_t k;
    for (k = 0; k < sizeof(names) / sizeof(names[0]); k++)
      if (strcmp(it->valuestring, names[k].name) == 0) break;
    char q[72];
    circle__json_quote(q, sizeof(q), it->valuestring, 64);
    if (k == sizeof(names) / sizeof(names[0]))
      return circle_error_set(err, CIRCLE_ERR_BAD_OUTPUT,
                              "outputs[%zu] is \"%s\"; expected one of %s", i,
                              q, list);
    if (w & names[k].bit)
      return circle_error_set(err, CIRCLE_ERR_BAD_OUTPUT,
                              "outputs[%zu] repeats \"%s\"; name each output "
                              "once",
                              i, q);
    if (names[k].bit == CIRCLE_OUT_REF_GRAD && !has_ref)
      return circle_error_set(err, CIRCLE_ERR_BAD_OUTPUT,
                              "outputs[%zu] asks for \"ref_embeddings_grad\" "
                              "but the request has no reference set; send "
                              "ref_labels and ref_embeddings",
                              i);
    w |= names[k].bit;
    i++;
  }
  if (w == 0)
    return circle_error_set(err, CIRCLE_ERR_BAD_OUTPUT,
                            "outputs is empty; name at least one of %s (or "
                            "leave outputs out for all)",
                            list);
  *want = w;
  return 0;
}

/* The fast path's matrix fm (json_fast.c) named field in dtype dt, as
 * parse_matrix would have read it from the same text, with its errors in
 * its words; d as there. Takes fm->v. A shape json_fast.c should already
 * have refused sets dc->fast_unsure: then the slow path decides. */
static int take_fast_matrix(decoder *dc, circle__json_fast_matrix *fm,
                            const char *field, size_t rows, size_t *d,
                            circle_dtype dt, void **out) {
  if (!fm->found || fm->rows != rows || fm->d > dc->lim->max_d) {
    dc->fast_unsure = true;
    return circle_error_set(dc->err, CIRCLE_ERR_SHAPE_MISMATCH, "fast path");
  }
  if (*d && fm->d != *d) /* parse_matrix: its row 0 against embeddings[0] */
    return circle_error_set(dc->err, CIRCLE_ERR_SHAPE_MISMATCH,
                            "%s[%zu] has %zu numbers; expected %zu like %s",
                            field, (size_t)0, fm->d, *d, "embeddings[0]");
  size_t count = rows * fm->d;
  if (dt == CIRCLE_DTYPE_FLOAT32) {
    /* In place, front to back: float i overwrites bytes of double i / 2,
     * already read. Then give the upper half back. */
    char *bytes = (char *)fm->v;
    for (size_t i = 0; i < count; i++) {
      double v;
      float f;
      memcpy(&v, bytes + i * sizeof(double), sizeof v);
      if (!circle__store_finite(&f, 0, v, CIRCLE_DTYPE_FLOAT32))
        return non_finite(dc->err, field, i / fm->d, i % fm->d, true, v, dt);
      memcpy(bytes + i * sizeof f, &f, sizeof f);
    }
    void *shrunk = realloc(fm->v, count * sizeof(float));
    *out = shrunk ? shrunk : fm->v;
  } else {
    if (fm->first_inf < count) {
      size_t i = fm->first_inf;
      return non_finite(dc->err, field, i / fm->d, i % fm->d, true, fm->v[i], dt);
    }
    *out = fm->v;
  }
  fm->v = NULL;
  *d = fm->d;
  return 0;
}

/* One matrix into a new dt matrix: from the numbers the fast walk read, or
 * from the text: the slow path's (cut, at cut_off), or the body the walk
 * found that matrix odd in (its shape noted, so the rows are not read
 * twice). */
static int matrix_take(decoder *dc, circle__json_fast_body *fb,
                       circle__json_fast_matrix *fm, const cut_matrices *cut,
                       size_t cut_off, const char *field, size_t rows,
                       size_t *d, circle_dtype dt, void **out) {
  if (fb && !(fm->found && fm->odd))
    return take_fast_matrix(dc, fm, field, rows, d, dt, out);
  if (fb)
    return parse_matrix(dc, fb->text, fb->text_len, fm->begin, fm, field, rows,
                        d, "embeddings[0]", dt, out);
  return parse_matrix(dc, cut->text, cut->len, cut_off, NULL, field, rows, d,
                      "embeddings[0]", dt, out);
}

static int decode(const char *body, size_t len, const circle_config *defaults,
                  const char *default_name, const circle_limits *lim,
                  circle_request *req, circle_error *err,
                  circle__json_fast_body *fb, const cut_matrices *cut,
                  size_t values, bool *final);

/* a + b, or SIZE_MAX when that overflows. */
static size_t add_sat(size_t a, size_t b) {
  return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

/* The most JSON values and keys a request within lim has outside its
 * matrices: labels, sample_weight (N each) and ref_labels (M), plus the
 * options, with room to spare. What bounds the tree cJSON builds. */
static size_t max_values(const circle_limits *lim) {
  return add_sat(add_sat(add_sat(lim->max_n, lim->max_n), lim->max_m), 1024);
}

/* The slow path: validates the whole body (so a syntax error anywhere is
 * found without building anything), refuses label and weight arrays past
 * the limits, then decodes a copy in which the matrices are cut down to
 * [], reading them from the body as sent. So no number of theirs costs a
 * cJSON node: decoding stays within a small multiple of the body whatever
 * it holds. */
static int decode_slow(const char *body, size_t len,
                       const circle_config *defaults, const char *default_name,
                       const circle_limits *lim, circle_request *req,
                       circle_error *err) {
  size_t values;
  if (circle__json_validate(body, len, lim->max_depth, &values, err) != 0)
    return CIRCLE_EINVAL;
  cut_matrices cut = {body, len, false, false, 0, 0, 0, 0};
  size_t spans[16], nspans = 0;
  size_t top = 0;
  while (top < len && (body[top] == ' ' || body[top] == '\t' ||
                       body[top] == '\n' || body[top] == '\r'))
    top++;
  if (top < len && body[top] == '{') {
    circle__json_iter it;
    circle__json_iter_init(&it, body, len, top);
    char key[32];
    bool key_ok;
    size_t at;
    while (circle__json_iter_member(&it, key, sizeof key, &key_ok, &at)) {
      if (!key_ok || body[at] != '[') continue;
      bool emb = !strcmp(key, "embeddings"), ref = !strcmp(key, "ref_embeddings");
      if (emb || ref) {
        /* Every copy of the key is cut; the tree then reports a repeat. */
        if (nspans == sizeof spans / sizeof *spans / 2)
          return circle_error_set(err, CIRCLE_ERR_DUPLICATE_KEY,
                                  "duplicate key \"%s\" in the request body; "
                                  "send each key once",
                                  key);
        /* Its rows counted and its end found in one walk. */
        size_t end, rows = array_count(body, len, at, &end);
        circle__json_iter_past(&it, end);
        spans[2 * nspans] = at;
        spans[2 * nspans + 1] = end;
        nspans++;
        if (emb && !cut.emb) cut.emb = true, cut.emb_off = at, cut.emb_rows = rows;
        if (ref && !cut.ref) cut.ref = true, cut.ref_off = at, cut.ref_rows = rows;
        continue;
      }
      /* Arrays of one value a row, refused by their length before the
       * tree is built. */
      size_t cap = !strcmp(key, "ref_labels") ? lim->max_m : lim->max_n;
      if (strcmp(key, "labels") && strcmp(key, "ref_labels") &&
          strcmp(key, "sample_weight"))
        continue;
      size_t end, k = array_count(body, len, at, &end);
      circle__json_iter_past(&it, end);
      if (k > cap)
        return circle_error_set(
            err, CIRCLE_ERR_LIMIT_EXCEEDED, "%s has %zu %s; the %s limit %s is %zu",
            key, k, strcmp(key, "sample_weight") ? "rows" : "numbers",
            strcmp(key, "ref_labels") ? "batch" : "reference",
            strcmp(key, "ref_labels") ? "N" : "M", cap);
    }
  }
  /* Nothing to cut (no matrices, or not an object at all): the body is
   * its own copy, validated already. */
  if (nspans == 0)
    return decode(body, len, defaults, default_name, lim, req, err, NULL, &cut,
                  values, NULL);
  char *copy;
  size_t copy_len;
  if (!circle__json_cut(body, len, spans, nspans, &copy, &copy_len))
    return circle_error_set(err, CIRCLE_ERR_OVERLOADED,
                            "out of memory reading the request; retry later");
  int rc = decode(copy, copy_len, defaults, default_name, lim, req, err, NULL,
                  &cut, SIZE_MAX, NULL);
  free(copy);
  return rc;
}

/* The embedding matrices are read from the text by json_fast.c when the
 * body has the common shape (cJSON then parses a copy without them). Both
 * ways give the same request, bit for bit, and the same error. An error
 * found in the tree of that copy is final (decode sets *final): the slow
 * path would cut the same spans to the same copy, build the same tree and
 * stop at the same check, so the matrices are not read again. Anything
 * else -- a body json_fast.c does not take, a copy with more values than
 * a request needs or one cJSON cannot build (its byte offsets are not the
 * body's), a matrix shape take_fast_matrix leaves to the slow path, out of
 * memory, or an array the slow path's pre-check would refuse first -- is
 * decoded again the slow way (decode_slow). */
int circle_json_decode(const char *body, size_t len,
                       const circle_config *defaults, const char *default_name,
                       const circle_limits *lim, circle_request *req,
                       circle_error *err) {
  if (req == NULL || err == NULL || lim == NULL || (body == NULL && len)) {
    if (err) circle_error_set(err, CIRCLE_ERR_INTERNAL, "circle_json_decode: bad argument");
    return CIRCLE_EINVAL;
  }
  if (body == NULL) body = "";
  circle__json_fast_body fb;
  if (circle__json_fast_body_read(body, len, lim->max_depth, lim->max_n,
                                  lim->max_m, lim->max_d, &fb)) {
    circle_error ferr;
    bool final = false;
    int rc = decode(fb.copy, fb.copy_len, defaults, default_name, lim, req,
                    &ferr, &fb, NULL, fb.values, &final);
    circle__json_fast_body_free(&fb);
    if (rc == 0) return 0;
    if (final) {
      *err = ferr;
      return rc;
    }
  }
  circle_request_free(req);
  return decode_slow(body, len, defaults, default_name, lim, req, err);
}

/* Whether decode_slow's pre-check (before its tree is built) refuses one
 * of root's members: a labels, ref_labels or sample_weight array longer
 * than its limit. Then its message, not the tree's, is the answer. */
static bool slow_precheck_refuses(const cJSON *root, const circle_limits *lim) {
  const cJSON *it;
  cJSON_ArrayForEach(it, root) {
    if (!cJSON_IsArray(it) || it->string == NULL) continue;
    size_t cap;
    if (!strcmp(it->string, "labels") || !strcmp(it->string, "sample_weight"))
      cap = lim->max_n;
    else if (!strcmp(it->string, "ref_labels"))
      cap = lim->max_m;
    else
      continue;
    size_t k = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, it) k++;
    if (k > cap) return true;
  }
  return false;
}

/* Decodes the tree of body (with the matrices cut: from fb, the fast path,
 * or from cut, the slow one). With fb, *final says on failure whether the
 * error is the one decode_slow would give too (circle_json_decode). */
static int decode(const char *body, size_t len, const circle_config *defaults,
                  const char *default_name, const circle_limits *lim,
                  circle_request *req, circle_error *err,
                  circle__json_fast_body *fb, const cut_matrices *cut,
                  size_t values, bool *final) {
  if (final) *final = false;
  circle_request_free(req);
  cJSON *root = values != SIZE_MAX
                    ? circle__json_parse_valid(body, len, values, lim->max_depth,
                                               max_values(lim), err)
                    : circle__json_parse(body, len, lim->max_depth, max_values(lim), err);
  if (root == NULL) return CIRCLE_EINVAL;

  decoder dc = {body, len, lim, err, {0}, KIND_NONE, false};
  label_set_init(&dc.strings);
  circle_request r;
  circle_request_init(&r);
  r.proto = CIRCLE_PROTO_V1;
  if (defaults) r.cfg = *defaults;
  snprintf(r.name, sizeof(r.name), "%s", default_name ? default_name : "circle");
  int rc = CIRCLE_EINVAL;

  if (!cJSON_IsObject(root)) {
    circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                     "the body is %s; expected a JSON object with labels and "
                     "embeddings",
                     circle__json_kind(root));
    goto fail;
  }
  circle__json_field f[F_COUNT] = {
      {"labels", NULL},     {"embeddings", NULL}, {"sample_weight", NULL},
      {"ref_labels", NULL}, {"ref_embeddings", NULL}, {"config", NULL},
      {"normalize", NULL},  {"outputs", NULL},    {"tag", NULL}};
  if (circle__json_fields(root, "the request body", f, F_COUNT, err) != 0)
    goto fail;
  /* null means "not given" for every optional member. */
  for (int i = F_SAMPLE_WEIGHT; i < F_COUNT; i++)
    if (f[i].item && cJSON_IsNull(f[i].item)) f[i].item = NULL;

  /* Options first: they decide the dtype the arrays are converted to. */
  if (f[F_CONFIG].item &&
      circle__config_from_json(f[F_CONFIG].item, &r.cfg, r.name,
                               sizeof(r.name), err) != 0)
    goto fail;
  if (f[F_NORMALIZE].item) {
    bool normalize;
    if (circle__bool_parse(f[F_NORMALIZE].item, &normalize, "normalize",
                           CIRCLE_ERR_WRONG_TYPE, err) != 0)
      goto fail;
    const cJSON *cn = f[F_CONFIG].item
                          ? cJSON_GetObjectItemCaseSensitive(f[F_CONFIG].item,
                                                             "normalize")
                          : NULL;
    if (cn && (bool)cJSON_IsTrue(cn) != normalize) {
      circle_error_set(err, CIRCLE_ERR_BAD_CONFIG,
                       "normalize is %s but config.normalize is %s; give it "
                       "once",
                       normalize ? "true" : "false",
                       cJSON_IsTrue(cn) ? "true" : "false");
      goto fail;
    }
    r.cfg.normalize = normalize;
  }
  if (f[F_TAG].item &&
      circle__tag_parse(f[F_TAG].item, r.tag, sizeof(r.tag), "tag", err) != 0)
    goto fail;
  /* The dtype the arrays are read in: float64 for a half format, rounded
   * to it once read (narrow_half). */
  circle_dtype adt = r.cfg.half != CIRCLE_HALF_NONE ? CIRCLE_DTYPE_FLOAT64
                                                    : r.cfg.dtype;

  /* Shapes and limits, before anything big is allocated. */
  if (f[F_LABELS].item == NULL) {
    missing(err, "labels", "an array of N integers or strings");
    goto fail;
  }
  if (f[F_EMBEDDINGS].item == NULL) {
    missing(err, "embeddings", "an array of N arrays of D numbers");
    goto fail;
  }
  size_t n, rows;
  if (array_len(f[F_LABELS].item, "labels", "an array of N integers or strings",
                &n, err) != 0)
    goto fail;
  if (n == 0) {
    circle_error_set(err, CIRCLE_ERR_EMPTY_BATCH,
                     "labels is empty; send at least one row");
    goto fail;
  }
  if (n > lim->max_n) {
    circle_error_set(err, CIRCLE_ERR_LIMIT_EXCEEDED,
                     "labels has %zu rows; the batch limit N is %zu", n,
                     lim->max_n);
    goto fail;
  }
  if (array_len(f[F_EMBEDDINGS].item, "embeddings",
                "an array of N arrays of D numbers", &rows, err) != 0)
    goto fail;
  /* Cut from the text cJSON saw: counted where they are. */
  if (fb) rows = fb->emb.rows;
  else if (cut && cut->emb) rows = cut->emb_rows;
  if (rows != n) {
    circle_error_set(err, rows == 0 ? CIRCLE_ERR_EMPTY_BATCH : CIRCLE_ERR_SHAPE_MISMATCH,
                     "embeddings has %zu rows; expected %zu, one per label",
                     rows, n);
    goto fail;
  }
  const cJSON *rl = f[F_REF_LABELS].item, *re = f[F_REF_EMBEDDINGS].item;
  if ((rl == NULL) != (re == NULL)) {
    circle_error_set(err, CIRCLE_ERR_HALF_REFERENCE,
                     "%s is given without %s; send both ref_labels and "
                     "ref_embeddings, or neither",
                     rl ? "ref_labels" : "ref_embeddings",
                     rl ? "ref_embeddings" : "ref_labels");
    goto fail;
  }
  size_t m = 0;
  r.has_ref = rl != NULL;
  if (r.has_ref) {
    size_t mrows;
    if (array_len(rl, "ref_labels", "an array of M integers or strings", &m,
                  err) != 0 ||
        array_len(re, "ref_embeddings", "an array of M arrays of D numbers",
                  &mrows, err) != 0)
      goto fail;
    if (fb) mrows = fb->ref.found ? fb->ref.rows : 0;
    else if (cut && cut->ref) mrows = cut->ref_rows;
    if (m == 0) {
      circle_error_set(err, CIRCLE_ERR_EMPTY_BATCH,
                       "ref_labels is empty; send at least one reference row "
                       "or leave the reference set out");
      goto fail;
    }
    if (m > lim->max_m) {
      circle_error_set(err, CIRCLE_ERR_LIMIT_EXCEEDED,
                       "ref_labels has %zu rows; the reference limit M is %zu",
                       m, lim->max_m);
      goto fail;
    }
    if (mrows != m) {
      circle_error_set(err, CIRCLE_ERR_SHAPE_MISMATCH,
                       "ref_embeddings has %zu rows; expected %zu, one per "
                       "ref label",
                       mrows, m);
      goto fail;
    }
  }
  /* N and M are in their limits (checked above, naming the array); D is
   * checked row by row as the rows are read. */
  if (circle__limits_check(lim, n, m, r.has_ref, 0, err) != 0) goto fail;

  /* Without outputs: everything that applies but the retrieval figures,
   * which cost a ranking per row and are computed only when named. */
  unsigned want = CIRCLE_OUT_LOSS | CIRCLE_OUT_PER_SAMPLE | CIRCLE_OUT_GRAD |
                  CIRCLE_OUT_STATS | (r.has_ref ? CIRCLE_OUT_REF_GRAD : 0u);
  if (f[F_OUTPUTS].item && parse_outputs(f[F_OUTPUTS].item, r.has_ref, &want, err) != 0)
    goto fail;
  r.want = want;

  /* Labels. */
  r.labels = malloc(n * sizeof(int64_t));
  if (r.has_ref) r.ref_labels = malloc(m * sizeof(int64_t));
  if (r.labels == NULL || (r.has_ref && r.ref_labels == NULL)) {
    circle_error_set(err, CIRCLE_ERR_OVERLOADED, "out of memory for labels; retry later");
    goto fail;
  }
  if (parse_labels(&dc, f[F_LABELS].item, "labels", n, r.labels) != 0) goto fail;
  if (r.has_ref && parse_labels(&dc, rl, "ref_labels", m, r.ref_labels) != 0)
    goto fail;

  /* Embeddings. */
  size_t d = 0;
  if (matrix_take(&dc, fb, fb ? &fb->emb : NULL, cut, cut ? cut->emb_off : 0,
                  "embeddings", n, &d, adt, &r.x) != 0)
    goto fail;
  if (r.has_ref &&
      matrix_take(&dc, fb, fb ? &fb->ref : NULL, cut, cut ? cut->ref_off : 0,
                  "ref_embeddings", m, &d, adt, &r.r) != 0)
    goto fail;
  if (narrow_half(err, &r.cfg, &r.x, n, d, "embeddings", true) != 0 ||
      narrow_half(err, &r.cfg, &r.r, r.has_ref ? m : 0, d, "ref_embeddings",
                  true) != 0)
    goto fail;

  /* Sample weights. */
  if (f[F_SAMPLE_WEIGHT].item) {
    const cJSON *sw = f[F_SAMPLE_WEIGHT].item;
    size_t k;
    if (array_len(sw, "sample_weight", "an array of N numbers >= 0", &k, err) != 0)
      goto fail;
    if (k != n) {
      circle_error_set(err, CIRCLE_ERR_SHAPE_MISMATCH,
                       "sample_weight has %zu numbers; expected %zu, one per "
                       "label",
                       k, n);
      goto fail;
    }
    r.sw = malloc(n * circle_dtype_size(adt));
    if (r.sw == NULL) {
      circle_error_set(err, CIRCLE_ERR_OVERLOADED, "out of memory; retry later");
      goto fail;
    }
    size_t i = 0;
    const cJSON *it;
    char vb[40];
    cJSON_ArrayForEach(it, sw) {
      if (!cJSON_IsNumber(it)) {
        circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                         "sample_weight[%zu] is %s; expected a number >= 0", i,
                         circle__json_kind(it));
        goto fail;
      }
      if (!circle__store_finite(r.sw, i, it->valuedouble, adt)) {
        non_finite(err, "sample_weight", i, 0, false, it->valuedouble, adt);
        goto fail;
      }
      if (it->valuedouble < 0) {
        circle_error_set(err, CIRCLE_ERR_WRONG_TYPE,
                         "sample_weight[%zu] is %s; sample weights must be "
                         ">= 0",
                         i, circle__short_number(vb, it->valuedouble));
        goto fail;
      }
      i++;
    }
  }

  if (narrow_half(err, &r.cfg, &r.sw, n, 1, "sample_weight", false) != 0)
    goto fail;
  if (!label_set_assign(&dc.strings)) {
    circle_error_set(err, CIRCLE_ERR_OVERLOADED, "out of memory for labels; retry later");
    goto fail;
  }
  r.n = n;
  r.m = m;
  r.d = d;
  *req = r;
  rc = 0;
  goto done;

fail:
  if (final && fb && !dc.fast_unsure && err->kind != CIRCLE_ERR_OVERLOADED)
    *final = !slow_precheck_refuses(root, lim);
  circle_request_free(&r);
done:
  label_set_free(&dc.strings);
  cJSON_Delete(root);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Encoding                                                                 */
/* ------------------------------------------------------------------------ */

/* Appends [v0, v1, ...] for count values of dtype at p. */
static void write_array(circle_buf *b, const void *p, size_t count,
                        circle_dtype dt) {
  /* Reserve per array: count numbers + separators (the caller keeps rows
   * short enough; a whole batch is reserved row by row). */
  if (count > (SIZE_MAX - 2) / (CIRCLE_JSON_NUMBER_MAX + 2) ||
      !circle_buf_reserve(b, count * (CIRCLE_JSON_NUMBER_MAX + 2) + 2)) {
    b->failed = true;
    return;
  }
  char *o = b->data + b->len;
  *o++ = '[';
  if (dt == CIRCLE_DTYPE_FLOAT32) {
    const float *v = p;
    for (size_t i = 0; i < count; i++) {
      if (i) *o++ = ',';
      o += circle__json_number_write(o, v[i], dt);
    }
  } else {
    const double *v = p;
    for (size_t i = 0; i < count; i++) {
      if (i) *o++ = ',';
      o += circle__json_number_write(o, v[i], dt);
    }
  }
  *o++ = ']';
  b->len = (size_t)(o - b->data);
  b->data[b->len] = '\0';
}

static void write_matrix(circle_buf *b, const void *p, size_t rows, size_t d,
                         circle_dtype dt) {
  size_t esz = circle_dtype_size(dt);
  circle_buf_append(b, "[", 1);
  for (size_t r = 0; r < rows && !b->failed; r++) {
    if (r) circle_buf_append(b, ",", 1);
    write_array(b, (const char *)p + r * d * esz, d, dt);
  }
  circle_buf_append(b, "]", 1);
}

int circle_json_encode(const circle_request *req, const circle_output *out,
                       circle_buf *b) {
  if (req == NULL || out == NULL || b == NULL) return CIRCLE_EINVAL;
  circle_dtype dt = req->cfg.dtype;
  unsigned w = req->want & out->want;
  bool first = true;
#define SEP() do { circle_buf_puts(b, first ? "{" : ", "); first = false; } while (0)
  if (w & CIRCLE_OUT_LOSS) {
    SEP();
    circle_buf_puts(b, "\"loss\": ");
    if (circle_reduction_is_elementwise(req->cfg.reduction))
      write_array(b, out->loss_values, req->n, dt);
    else
      circle_buf_json_number(b, out->loss, dt);
  }
  if (w & CIRCLE_OUT_PER_SAMPLE) {
    SEP();
    circle_buf_puts(b, "\"per_sample_loss\": ");
    write_array(b, out->per_sample, req->n, dt);
  }
  if (w & CIRCLE_OUT_GRAD) {
    SEP();
    circle_buf_puts(b, "\"embeddings_grad\": ");
    write_matrix(b, out->grad, req->n, req->d, dt);
  }
  if ((w & CIRCLE_OUT_REF_GRAD) && req->has_ref) {
    SEP();
    circle_buf_puts(b, "\"ref_embeddings_grad\": ");
    write_matrix(b, out->ref_grad, req->m, req->d, dt);
  }
  if (w & CIRCLE_OUT_STATS) {
    SEP();
    circle_buf_puts(b, "\"stats\": {");
    circle__json_figures_members(b, &out->stats, NULL, "", true);
    circle_buf_puts(b, "}");
  }
  if (w & CIRCLE_OUT_RETRIEVAL) {
    SEP();
    circle_buf_puts(b, "\"retrieval\": {");
    circle__json_figures_members(b, NULL, &out->retrieval, "", true);
    circle_buf_puts(b, "}");
  }
  SEP();
#undef SEP
  circle_buf_puts(b, "\"config\": ");
  circle__config_to_json(b, &req->cfg, req->name);
  circle_buf_puts(b, ", \"dtype\": ");
  circle_buf_json_string(b, circle_config_dtype_name(&req->cfg));
  circle_buf_puts(b, ", \"n\": ");
  circle_buf_json_uint(b, req->n);
  circle_buf_puts(b, ", \"m\": ");
  circle_buf_json_uint(b, req->has_ref ? req->m : 0);
  circle_buf_puts(b, ", \"d\": ");
  circle_buf_json_uint(b, req->d);
  circle_buf_puts(b, "}");
  return b->failed ? CIRCLE_ENOMEM : 0;
}

void circle_json_error(const circle_error *err, circle_buf *b) {
  if (err == NULL || b == NULL) return;
  circle_buf_puts(b, "{\"error\": {\"code\": ");
  circle_buf_json_string(b, circle_error_code(err->kind));
  circle_buf_puts(b, ", \"message\": ");
  circle_buf_json_string(b, err->message);
  circle_buf_puts(b, "}}");
}
