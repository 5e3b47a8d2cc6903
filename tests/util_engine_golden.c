/* util_engine_golden.c -- a strict reader for the Keras golden files; it must
 * accept exactly generate.py's layout and refuse anything else loudly.
 *
 * A small recursive-descent parser over the whole file held in memory. Only
 * the JSON the layout needs is understood: objects (the top level and
 * "config"), arrays of numbers, numbers, strings, true/false and null.
 * Numbers follow RFC 8259's grammar exactly and are converted by strtod, so
 * the shortest round-trip forms Python's repr() writes come back as the same
 * doubles.
 */
#include "util_engine_golden.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Parser state and errors                                                  */
/* ------------------------------------------------------------------------ */

typedef struct {
  const char *s;
  size_t len;
  size_t pos;
  const char *path;
  char *err;
  size_t err_len;
} parser;

/* Records the first error (with file and byte offset) and returns -1. */
static int fail(parser *p, const char *fmt, ...) {
  if (p->err != NULL && p->err_len > 0) {
    int k = snprintf(p->err, p->err_len, "%s: byte %zu: ", p->path, p->pos);
    if (k >= 0 && (size_t)k < p->err_len) {
      va_list ap;
      va_start(ap, fmt);
      vsnprintf(p->err + k, p->err_len - (size_t)k, fmt, ap);
      va_end(ap);
    }
  }
  return -1;
}

static void skip_ws(parser *p) {
  while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\n' ||
                             p->s[p->pos] == '\r' || p->s[p->pos] == '\t'))
    p->pos++;
}

/* The next non-blank character, or 0 at the end. */
static char peek(parser *p) {
  skip_ws(p);
  return p->pos < p->len ? p->s[p->pos] : 0;
}

static int expect(parser *p, char c) {
  if (peek(p) != c) return fail(p, "expected '%c'", c);
  p->pos++;
  return 0;
}

static int literal(parser *p, const char *word) {
  size_t k = strlen(word);
  skip_ws(p);
  if (p->len - p->pos < k || memcmp(p->s + p->pos, word, k) != 0)
    return fail(p, "expected '%s'", word);
  p->pos += k;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Scalars                                                                  */
/* ------------------------------------------------------------------------ */

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* A JSON string of printable ASCII with the simple escapes; malloc'd. */
static int parse_string(parser *p, char **out) {
  if (expect(p, '"') != 0) return -1;
  size_t cap = 32, k = 0;
  char *buf = malloc(cap);
  if (buf == NULL) return fail(p, "out of memory");
  for (;;) {
    if (p->pos >= p->len) {
      free(buf);
      return fail(p, "unterminated string");
    }
    char c = p->s[p->pos++];
    if (c == '"') break;
    if ((unsigned char)c < 0x20 || (unsigned char)c >= 0x7f) {
      free(buf);
      return fail(p, "control or non-ASCII byte in a string");
    }
    if (c == '\\') {
      char e = p->pos < p->len ? p->s[p->pos++] : 0;
      const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
      const char *hit = e != 0 ? strchr(from, e) : NULL;
      if (hit == NULL) {
        free(buf);
        return fail(p, "unsupported escape in a string");
      }
      c = to[hit - from];
    }
    if (k + 2 > cap) {
      char *nb = realloc(buf, cap *= 2);
      if (nb == NULL) {
        free(buf);
        return fail(p, "out of memory");
      }
      buf = nb;
    }
    buf[k++] = c;
  }
  buf[k] = 0;
  *out = buf;
  return 0;
}

/* A JSON number, exactly RFC 8259's grammar, finite. */
static int parse_number(parser *p, double *out) {
  skip_ws(p);
  size_t start = p->pos, i = p->pos;
  const char *s = p->s;
  if (i < p->len && s[i] == '-') i++;
  if (i < p->len && s[i] == '0') {
    i++;
  } else if (i < p->len && s[i] >= '1' && s[i] <= '9') {
    while (i < p->len && is_digit(s[i])) i++;
  } else {
    return fail(p, "expected a number");
  }
  if (i < p->len && s[i] == '.') {
    i++;
    if (i >= p->len || !is_digit(s[i])) return fail(p, "digits must follow '.'");
    while (i < p->len && is_digit(s[i])) i++;
  }
  if (i < p->len && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    if (i < p->len && (s[i] == '+' || s[i] == '-')) i++;
    if (i >= p->len || !is_digit(s[i]))
      return fail(p, "digits must follow the exponent");
    while (i < p->len && is_digit(s[i])) i++;
  }
  char tmp[64];
  if (i - start >= sizeof tmp) return fail(p, "number too long");
  memcpy(tmp, s + start, i - start);
  tmp[i - start] = 0;
  char *end = NULL;
  errno = 0;
  double v = strtod(tmp, &end);
  if (end != tmp + (i - start) || !isfinite(v))
    return fail(p, "number '%s' is not a finite double", tmp);
  p->pos = i;
  *out = v;
  return 0;
}

/* A JSON integer (no fraction, no exponent) that fits int64_t. */
static int parse_int64(parser *p, int64_t *out) {
  skip_ws(p);
  size_t i = p->pos;
  bool neg = false;
  if (i < p->len && p->s[i] == '-') {
    neg = true;
    i++;
  }
  if (i >= p->len || !is_digit(p->s[i])) return fail(p, "expected an integer");
  if (p->s[i] == '0' && i + 1 < p->len && is_digit(p->s[i + 1]))
    return fail(p, "leading zero in an integer");
  uint64_t v = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  while (i < p->len && is_digit(p->s[i])) {
    uint64_t dgt = (uint64_t)(p->s[i] - '0');
    if (v > (limit - dgt) / 10) return fail(p, "integer out of int64 range");
    v = v * 10 + dgt;
    i++;
  }
  if (i < p->len && (p->s[i] == '.' || p->s[i] == 'e' || p->s[i] == 'E'))
    return fail(p, "expected an integer, not a fraction");
  p->pos = i;
  *out = neg ? (int64_t)(0 - v) : (int64_t)v; /* 0 - 2^63 wraps to INT64_MIN */
  return 0;
}

static int parse_size(parser *p, size_t *out) {
  int64_t v;
  if (parse_int64(p, &v) != 0) return -1;
  if (v < 0) return fail(p, "a size must not be negative");
  *out = (size_t)v;
  return 0;
}

static int parse_bool(parser *p, bool *out) {
  if (peek(p) == 't') {
    if (literal(p, "true") != 0) return -1;
    *out = true;
    return 0;
  }
  if (literal(p, "false") != 0) return -1;
  *out = false;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Arrays                                                                   */
/* ------------------------------------------------------------------------ */

/* [number, ...] into a malloc'd array (ints when as_int). The empty array
 * gives a NULL pointer and count 0. */
static int parse_array(parser *p, bool as_int, void **out, size_t *count) {
  if (expect(p, '[') != 0) return -1;
  size_t elt = as_int ? sizeof(int64_t) : sizeof(double);
  size_t cap = 0, k = 0;
  char *buf = NULL;
  if (peek(p) == ']') {
    p->pos++;
    *out = NULL;
    *count = 0;
    return 0;
  }
  for (;;) {
    if (k == cap) {
      cap = cap ? cap * 2 : 64;
      char *nb = realloc(buf, cap * elt);
      if (nb == NULL) {
        free(buf);
        return fail(p, "out of memory");
      }
      buf = nb;
    }
    int rc = as_int ? parse_int64(p, (int64_t *)(void *)buf + k)
                    : parse_number(p, (double *)(void *)buf + k);
    if (rc != 0) {
      free(buf);
      return -1;
    }
    k++;
    char c = peek(p);
    p->pos++;
    if (c == ']') break;
    if (c != ',') {
      p->pos--;
      free(buf);
      return fail(p, "expected ',' or ']' in an array");
    }
  }
  *out = buf;
  *count = k;
  return 0;
}

/* An array or null (*present says which). */
static int parse_opt_array(parser *p, bool as_int, void **out, size_t *count,
                           bool *present) {
  if (peek(p) == 'n') {
    *present = false;
    *out = NULL;
    *count = 0;
    return literal(p, "null");
  }
  *present = true;
  return parse_array(p, as_int, out, count);
}

/* ------------------------------------------------------------------------ */
/* Objects                                                                  */
/* ------------------------------------------------------------------------ */

/* Reads one "key": and returns its index in names, rejecting unknown and
 * repeated keys. */
static int object_key(parser *p, const char *const *names, bool *seen) {
  char *key = NULL;
  if (parse_string(p, &key) != 0) return -1;
  int idx = -1;
  for (int k = 0; names[k] != NULL; k++)
    if (strcmp(names[k], key) == 0) idx = k;
  if (idx < 0) {
    fail(p, "unknown key \"%s\"", key);
    free(key);
    return -1;
  }
  free(key);
  if (seen[idx]) return fail(p, "key \"%s\" given twice", names[idx]);
  seen[idx] = true;
  if (expect(p, ':') != 0) return -1;
  return idx;
}

/* After a member: ',' (returns 1: more) or '}' (returns 0: done). */
static int object_next(parser *p) {
  char c = peek(p);
  if (c == ',') {
    p->pos++;
    return 1;
  }
  if (c == '}') {
    p->pos++;
    return 0;
  }
  return fail(p, "expected ',' or '}' in an object");
}

static int missing(parser *p, const char *const *names, const bool *seen) {
  for (int k = 0; names[k] != NULL; k++)
    if (!seen[k]) return fail(p, "key \"%s\" is missing", names[k]);
  return 0;
}

static const char *const config_keys[] = {"gamma",     "margin", "remove_diagonal",
                                          "reduction", "dtype",  "normalize",
                                          NULL};

/* The "config" object. Reduction and dtype spellings are mapped here, not
 * by the engine's parsers, so the reader does not trust what it tests. */
static int parse_config(parser *p, circle_config *cfg) {
  static const char *const reductions[] = {
      "sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none"};
  static const circle_reduction reduction_values[] = {
      CIRCLE_REDUCTION_SUM_OVER_BATCH_SIZE, CIRCLE_REDUCTION_SUM,
      CIRCLE_REDUCTION_MEAN, CIRCLE_REDUCTION_MEAN_WITH_SAMPLE_WEIGHT,
      CIRCLE_REDUCTION_NONE};
  bool seen[6] = {false};
  if (expect(p, '{') != 0) return -1;
  for (;;) {
    int k = object_key(p, config_keys, seen);
    char *str = NULL;
    int rc = 0;
    switch (k) {
      case 0: rc = parse_number(p, &cfg->gamma); break;
      case 1: rc = parse_number(p, &cfg->margin); break;
      case 2: rc = parse_bool(p, &cfg->remove_diagonal); break;
      case 3:
        if (peek(p) == 'n') {
          rc = literal(p, "null");
          cfg->reduction = CIRCLE_REDUCTION_NULL;
          break;
        }
        if (parse_string(p, &str) != 0) return -1;
        rc = -1;
        for (size_t r = 0; r < sizeof reductions / sizeof *reductions; r++)
          if (strcmp(str, reductions[r]) == 0) {
            cfg->reduction = reduction_values[r];
            rc = 0;
          }
        if (rc != 0) fail(p, "unknown reduction \"%s\"", str);
        free(str);
        break;
      case 4:
        if (parse_string(p, &str) != 0) return -1;
        if (strcmp(str, "float32") == 0) {
          cfg->dtype = CIRCLE_DTYPE_FLOAT32;
        } else if (strcmp(str, "float64") == 0) {
          cfg->dtype = CIRCLE_DTYPE_FLOAT64;
        } else {
          rc = fail(p, "unknown dtype \"%s\"", str);
        }
        free(str);
        break;
      case 5: rc = parse_bool(p, &cfg->normalize); break;
      default: return -1;
    }
    if (rc != 0) return -1;
    int more = object_next(p);
    if (more < 0) return -1;
    if (more == 0) break;
  }
  return missing(p, config_keys, seen);
}

enum {
  K_ID, K_KERAS, K_JAX, K_NUMPY, K_NOTE, K_CONFIG, K_N, K_M, K_D, K_LABELS,
  K_EMB, K_SW, K_RLABELS, K_REMB, K_LOSS, K_PER, K_GRAD, K_RGRAD, K_COUNT
};
static const char *const case_keys[] = {
    "id",         "keras_version", "jax_version",    "numpy_version",
    "note",       "config",        "n",              "m",
    "d",          "labels",        "embeddings",     "sample_weight",
    "ref_labels", "ref_embeddings", "loss",          "per_sample",
    "grad",       "ref_grad",      NULL};

/* Element counts of each array as read, checked against n, m, d after. */
typedef struct {
  size_t labels, emb, sw, rlabels, remb, loss, per, grad, rgrad;
  bool has_sw, has_rlabels, has_remb, has_rgrad, loss_is_array;
} counts;

static int parse_member(parser *p, int k, golden_case *c, counts *ct) {
  void *v = NULL;
  switch (k) {
    case K_ID: return parse_string(p, &c->id);
    case K_KERAS: return parse_string(p, &c->keras_version);
    case K_JAX: return parse_string(p, &c->jax_version);
    case K_NUMPY: return parse_string(p, &c->numpy_version);
    case K_NOTE: return parse_string(p, &c->note);
    case K_CONFIG: return parse_config(p, &c->cfg);
    case K_N: return parse_size(p, &c->n);
    case K_M: return parse_size(p, &c->m);
    case K_D: return parse_size(p, &c->d);
    case K_LABELS:
      if (parse_array(p, true, &v, &ct->labels) != 0) return -1;
      c->labels = v;
      return 0;
    case K_EMB:
      if (parse_array(p, false, &v, &ct->emb) != 0) return -1;
      c->embeddings = v;
      return 0;
    case K_SW:
      if (parse_opt_array(p, false, &v, &ct->sw, &ct->has_sw) != 0) return -1;
      c->sample_weight = v;
      return 0;
    case K_RLABELS:
      if (parse_opt_array(p, true, &v, &ct->rlabels, &ct->has_rlabels) != 0)
        return -1;
      c->ref_labels = v;
      return 0;
    case K_REMB:
      if (parse_opt_array(p, false, &v, &ct->remb, &ct->has_remb) != 0)
        return -1;
      c->ref_embeddings = v;
      return 0;
    case K_LOSS:
      if (peek(p) == '[') {
        ct->loss_is_array = true;
        if (parse_array(p, false, &v, &ct->loss) != 0) return -1;
        c->loss_values = v;
        return 0;
      }
      return parse_number(p, &c->loss);
    case K_PER:
      if (parse_array(p, false, &v, &ct->per) != 0) return -1;
      c->per_sample = v;
      return 0;
    case K_GRAD:
      if (parse_array(p, false, &v, &ct->grad) != 0) return -1;
      c->grad = v;
      return 0;
    case K_RGRAD:
      if (parse_opt_array(p, false, &v, &ct->rgrad, &ct->has_rgrad) != 0)
        return -1;
      c->ref_grad = v;
      return 0;
  }
  return -1;
}

/* Shapes: every array's length follows from n, m and d. */
static int check_shapes(parser *p, const golden_case *c, const counts *ct) {
  size_t nd, md;
  if (c->n == 0 || c->d == 0) return fail(p, "n and d must be >= 1");
  if (__builtin_mul_overflow(c->n, c->d, &nd) ||
      __builtin_mul_overflow(c->m, c->d, &md))
    return fail(p, "n*d or m*d overflows");
  bool ref = ct->has_rlabels;
  if (ct->has_remb != ref || ct->has_rgrad != ref || (c->m > 0) != ref)
    return fail(p, "ref_labels, ref_embeddings, ref_grad and m > 0 must "
                   "come together");
  if (ct->labels != c->n) return fail(p, "labels has %zu values, n is %zu",
                                      ct->labels, c->n);
  if (ct->emb != nd) return fail(p, "embeddings has %zu values, n*d is %zu",
                                 ct->emb, nd);
  if (ct->has_sw && ct->sw != c->n)
    return fail(p, "sample_weight has %zu values, n is %zu", ct->sw, c->n);
  if (ref && (ct->rlabels != c->m || ct->remb != md || ct->rgrad != md))
    return fail(p, "reference arrays do not match m=%zu, d=%zu", c->m, c->d);
  bool elementwise = circle_reduction_is_elementwise(c->cfg.reduction);
  if (ct->loss_is_array != elementwise)
    return fail(p, "loss must be an array exactly for \"none\" and null");
  if (elementwise && ct->loss != c->n)
    return fail(p, "loss has %zu values, n is %zu", ct->loss, c->n);
  if (ct->per != c->n) return fail(p, "per_sample has %zu values, n is %zu",
                                   ct->per, c->n);
  if (ct->grad != nd) return fail(p, "grad has %zu values, n*d is %zu",
                                  ct->grad, nd);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Public functions                                                         */
/* ------------------------------------------------------------------------ */

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  size_t cap = 1 << 16, k = 0;
  char *buf = malloc(cap);
  while (buf != NULL) {
    k += fread(buf + k, 1, cap - k, f);
    if (k < cap) break;
    char *nb = realloc(buf, cap *= 2);
    if (nb == NULL) free(buf);
    buf = nb;
  }
  bool bad = ferror(f);
  fclose(f);
  if (buf == NULL || bad) {
    free(buf);
    return NULL;
  }
  *len = k;
  return buf;
}

int golden_case_load(const char *path, golden_case *out, char *err,
                     size_t err_len) {
  parser p = {.path = path, .err = err, .err_len = err_len};
  if (err != NULL && err_len > 0) err[0] = 0;
  char *text = read_file(path, &p.len);
  if (text == NULL) {
    if (err != NULL && err_len > 0)
      snprintf(err, err_len, "%s: cannot read: %s", path, strerror(errno));
    return -1;
  }
  p.s = text;
  golden_case c;
  memset(&c, 0, sizeof c);
  counts ct;
  memset(&ct, 0, sizeof ct);
  bool seen[K_COUNT] = {false};
  int rc = expect(&p, '{');
  while (rc == 0) {
    int k = object_key(&p, case_keys, seen);
    if (k < 0 || parse_member(&p, k, &c, &ct) != 0) {
      rc = -1;
      break;
    }
    int more = object_next(&p);
    if (more <= 0) {
      rc = more;
      break;
    }
  }
  if (rc == 0 && peek(&p) != 0) rc = fail(&p, "text after the object");
  if (rc == 0) rc = missing(&p, case_keys, seen);
  if (rc == 0) rc = check_shapes(&p, &c, &ct);
  free(text);
  if (rc != 0) {
    golden_case_free(&c);
    return -1;
  }
  *out = c;
  return 0;
}

void golden_case_free(golden_case *c) {
  if (c == NULL) return;
  free(c->id);
  free(c->keras_version);
  free(c->jax_version);
  free(c->numpy_version);
  free(c->note);
  free(c->labels);
  free(c->embeddings);
  free(c->sample_weight);
  free(c->ref_labels);
  free(c->ref_embeddings);
  free(c->loss_values);
  free(c->per_sample);
  free(c->grad);
  free(c->ref_grad);
  memset(c, 0, sizeof *c);
}

const char *golden_dir(void) {
  const char *d = getenv("CIRCLE_GOLDEN_DIR");
  return d != NULL && d[0] != 0 ? d : "tests/golden";
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

int golden_list(const char *dir, char ***paths, size_t *count) {
  if (dir == NULL || paths == NULL || count == NULL) return -1;
  DIR *dh = opendir(dir);
  if (dh == NULL) return -1;
  char **list = NULL;
  size_t k = 0, cap = 0;
  struct dirent *ent;
  int rc = 0;
  while (rc == 0 && (ent = readdir(dh)) != NULL) {
    size_t len = strlen(ent->d_name);
    if (len <= 5 || strcmp(ent->d_name + len - 5, ".json") != 0) continue;
    if (k == cap) {
      char **nl = realloc(list, (cap = cap ? cap * 2 : 64) * sizeof *list);
      if (nl == NULL) {
        rc = -1;
        break;
      }
      list = nl;
    }
    size_t size = strlen(dir) + 1 + len + 1;
    if ((list[k] = malloc(size)) == NULL) {
      rc = -1;
      break;
    }
    snprintf(list[k++], size, "%s/%s", dir, ent->d_name);
  }
  closedir(dh);
  if (rc != 0) {
    golden_list_free(list, k);
    return -1;
  }
  if (k > 1) qsort(list, k, sizeof *list, cmp_str);
  *paths = list;
  *count = k;
  return 0;
}

void golden_list_free(char **paths, size_t count) {
  if (paths == NULL) return;
  for (size_t k = 0; k < count; k++) free(paths[k]);
  free(paths);
}
