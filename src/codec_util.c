/* codec_util.c -- shared codec helpers: the pre-scan that guards cJSON, key
 * tables, exact integers from raw JSON text, the request pieces both codecs
 * read alike (booleans, tags, half-precision arrays). Must keep true: nothing here recurses on client
 * data, and nothing is quadratic in client data.
 */
#include "codec_util.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* cJSON allocation hooks: tell "out of memory" from "invalid JSON"         */
/* ------------------------------------------------------------------------ */

static _Thread_local bool cjson_oom;

static void *cjson_malloc(size_t n) {
  void *p = malloc(n);
  if (p == NULL) cjson_oom = true;
  return p;
}

static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;

static void hooks_install(void) {
  cJSON_Hooks h = {cjson_malloc, free};
  cJSON_InitHooks(&h);
}

/* ------------------------------------------------------------------------ */
/* Pre-scan                                                                 */
/* ------------------------------------------------------------------------ */

static bool is_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
         (c >= 'A' && c <= 'F');
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static bool is_ws(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Length of the strict JSON number at s (s < end), 0 if not one. */
static size_t number_len(const char *s, const char *end) {
  const char *p = s;
  if (p < end && *p == '-') p++;
  if (p >= end) return 0;
  if (*p == '0') {
    p++;
  } else if (*p >= '1' && *p <= '9') {
    while (p < end && is_digit(*p)) p++;
  } else {
    return 0;
  }
  if (p < end && *p == '.') {
    p++;
    if (p >= end || !is_digit(*p)) return 0;
    while (p < end && is_digit(*p)) p++;
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    p++;
    if (p < end && (*p == '+' || *p == '-')) p++;
    if (p >= end || !is_digit(*p)) return 0;
    while (p < end && is_digit(*p)) p++;
  }
  return (size_t)(p - s);
}

static bool is_number_char(char c) {
  return is_digit(c) || c == '-' || c == '+' || c == '.' || c == 'e' ||
         c == 'E';
}

/* The value of the four hex digits at p. */
static unsigned hex4(const char *p) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    v = v * 16 + (unsigned)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
  }
  return v;
}

size_t circle__json_token_len(const char *p, const char *end) {
  if (p >= end) return 0;
  if (*p == '-' || is_digit(*p)) {
    const char *q = p;
    while (q < end && is_number_char(*q)) q++;
    size_t span = (size_t)(q - p);
    return span <= 63 && number_len(p, q) == span ? span : 0;
  }
  if (*p != '"') return 0;
  for (const char *q = p + 1; q < end;) {
    unsigned char u = (unsigned char)*q;
    if (u == '"') return (size_t)(q + 1 - p);
    if (u < 0x20) return 0;
    if (u != '\\') {
      q++;
      continue;
    }
    if (end - q < 2) return 0;
    if (q[1] != 'u') {
      if (strchr("\"\\/bfnrt", q[1]) == NULL || q[1] == '\0') return 0;
      q += 2;
      continue;
    }
    if (end - q < 6 || !is_hex(q[2]) || !is_hex(q[3]) || !is_hex(q[4]) ||
        !is_hex(q[5]))
      return 0;
    unsigned u16 = hex4(q + 2);
    if (u16 == 0 || (u16 >= 0xdc00 && u16 <= 0xdfff)) return 0;
    if (u16 >= 0xd800 && u16 <= 0xdbff) {
      if (end - q < 12 || q[6] != '\\' || q[7] != 'u' || !is_hex(q[8]) ||
          !is_hex(q[9]) || !is_hex(q[10]) || !is_hex(q[11]) ||
          hex4(q + 8) < 0xdc00 || hex4(q + 8) > 0xdfff)
        return 0;
      q += 12;
      continue;
    }
    q += 6;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Grammar                                                                  */
/* ------------------------------------------------------------------------ */

/* What may come next in a JSON text. */
enum { X_VALUE, X_VALUE_OR_CLOSE, X_KEY, X_KEY_OR_CLOSE, X_COLON, X_SEP };

/* The grammar of a JSON text (brackets, commas, colons, keys, literals),
 * fed the pre-scan's tokens in order, so that one pass over the text finds
 * both kinds of error. Tokens after the top-level value or after the first
 * byte that cannot continue a JSON text are not looked at. */
typedef struct {
  uint64_t local[8], *kind; /* bit set: that open container is an object */
  size_t depth;
  int want;
  size_t lit_end; /* the letters of a literal end here: not tokens */
  bool done;      /* the top-level value is complete, ending at stop */
  bool failed;    /* at bad, the offset of the byte that cannot continue */
  size_t stop, bad;
} grammar;

/* Starts g for texts nested at most max_depth deep (the pre-scan refuses
 * deeper ones before the grammar sees them). False when there is no memory
 * for the stack: then the grammar is not checked (cJSON finds any error). */
static bool grammar_init(grammar *g, size_t max_depth) {
  memset(g, 0, sizeof *g);
  g->kind = g->local;
  size_t words = max_depth / 64 + 1;
  if (words > sizeof g->local / sizeof *g->local) {
    g->kind = calloc(words, sizeof *g->kind);
    if (g->kind == NULL) return false;
  }
  return true;
}

static void grammar_free(grammar *g) {
  if (g->kind != g->local) free(g->kind);
}

/* The token of tok_len bytes at p, offset off; blanks are skipped. */
static void grammar_feed(grammar *g, const char *p, const char *end, size_t off,
                         size_t tok_len) {
  if (g->done || g->failed || off < g->lit_end || is_ws(*p)) return;
  char c = *p;
  bool in_obj = g->depth && (g->kind[(g->depth - 1) / 64] >> ((g->depth - 1) % 64) & 1);
  if (g->want == X_VALUE || g->want == X_VALUE_OR_CLOSE) {
    if (c == ']' && g->want == X_VALUE_OR_CLOSE) {
      g->depth--;
      g->want = X_SEP;
    } else if (c == '[' || c == '{') {
      uint64_t bit = (uint64_t)1 << (g->depth % 64);
      if (c == '{') g->kind[g->depth / 64] |= bit;
      else g->kind[g->depth / 64] &= ~bit;
      g->depth++;
      g->want = c == '[' ? X_VALUE_OR_CLOSE : X_KEY_OR_CLOSE;
    } else if (c == '"' || c == '-' || is_digit(c)) {
      g->want = X_SEP;
    } else if (end - p >= 4 && (!memcmp(p, "true", 4) || !memcmp(p, "null", 4))) {
      tok_len = 4;
      g->lit_end = off + 4;
      g->want = X_SEP;
    } else if (end - p >= 5 && !memcmp(p, "false", 5)) {
      tok_len = 5;
      g->lit_end = off + 5;
      g->want = X_SEP;
    } else {
      goto fail;
    }
  } else if (g->want == X_KEY || g->want == X_KEY_OR_CLOSE) {
    if (c == '}' && g->want == X_KEY_OR_CLOSE) {
      g->depth--;
      g->want = X_SEP;
    } else if (c == '"') {
      g->want = X_COLON;
    } else {
      goto fail;
    }
  } else if (g->want == X_COLON) {
    if (c != ':') goto fail;
    g->want = X_VALUE;
  } else { /* X_SEP inside a container */
    if (c == ',') g->want = in_obj ? X_KEY : X_VALUE;
    else if (c == (in_obj ? '}' : ']')) g->depth--;
    else goto fail;
  }
  if (g->want == X_SEP && g->depth == 0) {
    g->done = true;
    g->stop = off + tok_len;
  }
  return;
fail:
  g->failed = true;
  g->bad = off;
}

/* The pre-scan proper; *open receives the brackets left open at the end,
 * *values the JSON values and keys seen (what cJSON would allocate a node
 * or a string for). Each token that passes is fed to g (unless NULL), so
 * the grammar is checked in the same pass; an error of the pre-scan's own
 * wins wherever it is, as if the grammar were checked after it. */
static int prescan(const char *body, size_t len, size_t max_depth,
                   size_t *open, size_t *values, grammar *g, circle_error *err) {
  const char *s = body, *end = body + len;
  size_t depth = 0, count = 0;
  for (const char *p = s; p < end;) {
    char c = *p;
    const char *p0 = p; /* this token; the grammar is fed it once passed */
    if (c == '"' || c == '[' || c == '{' || c == '-' || is_digit(c) ||
        c == 't' || c == 'f' || c == 'n')
      count++;
    if (c == '"') {
      const char *q = p + 1;
      for (;;) {
        if (q >= end)
          return circle_error_set(err, CIRCLE_ERR_INVALID_JSON,
                                  "invalid JSON: the string that starts at "
                                  "byte %zu is never closed",
                                  (size_t)(p - s));
        unsigned char u = (unsigned char)*q;
        if (u == '"') break;
        if (u < 0x20)
          return circle_error_set(err, CIRCLE_ERR_INVALID_JSON,
                                  "invalid JSON: control character 0x%02x "
                                  "inside a string at byte %zu; escape it",
                                  u, (size_t)(q - s));
        if (u == '\\') {
          if (q + 1 >= end) {
            q++;
            continue; /* reported as unterminated */
          }
          char e = q[1];
          if (e == 'u') {
            if (end - q < 6 || !is_hex(q[2]) || !is_hex(q[3]) ||
                !is_hex(q[4]) || !is_hex(q[5]))
              return circle_error_set(err, CIRCLE_ERR_INVALID_JSON,
                                      "invalid JSON: \\u escape at byte %zu "
                                      "needs four hex digits",
                                      (size_t)(q - s));
            if (q[2] == '0' && q[3] == '0' && q[4] == '0' && q[5] == '0')
              return circle_error_set(err, CIRCLE_ERR_INVALID_JSON,
                                      "invalid request: \\u0000 (NUL) at "
                                      "byte %zu; strings must not contain "
                                      "NUL characters",
                                      (size_t)(q - s));
            /* UTF-16 surrogates come in pairs, high then low (cJSON
             * refuses anything else). */
            unsigned u16 = hex4(q + 2);
            bool pair = u16 >= 0xd800 && u16 <= 0xdbff && end - q >= 12 &&
                        q[6] == '\\' && q[7] == 'u' && is_hex(q[8]) &&
                        is_hex(q[9]) && is_hex(q[10]) && is_hex(q[11]) &&
                        hex4(q + 8) >= 0xdc00 && hex4(q + 8) <= 0xdfff;
            if (u16 >= 0xd800 && u16 <= 0xdfff && !pair)
              return circle_error_set(err, CIRCLE_ERR_INVALID_JSON,
                                      "invalid JSON: \\u escape at byte %zu "
                                      "is half of a UTF-16 surrogate pair",
                                      (size_t)(q - s));
            q += pair ? 12 : 6;
            continue;
          }
          if (strchr("\"\\/bfnrt", e) == NULL || e == '\0')
            return circle_error_set(err, CIRCLE_ERR_INVALID_JSON,
                                    "invalid JSON: unknown escape \\%c at "
                                    "byte %zu",
                                    (e >= 0x20 && e < 0x7f) ? e : '?',
                                    (size_t)(q - s));
          q += 2;
          continue;
        }
        q++;
      }
      p = q + 1;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth)
        return circle_error_set(err, CIRCLE_ERR_TOO_DEEP,
                                "JSON nesting deeper than %zu levels at "
                                "byte %zu; the limit is %zu",
                                max_depth, (size_t)(p - s), max_depth);
      p++;
    } else if (c == ']' || c == '}') {
      if (depth) depth--;
      p++;
    } else if (c == '-' || is_digit(c)) {
      const char *q = p;
      while (q < end && is_number_char(*q)) q++;
      size_t span = (size_t)(q - p);
      if (number_len(p, q) != span)
        return circle_error_set(err, CIRCLE_ERR_INVALID_JSON,
                                "invalid JSON: malformed number \"%.*s\" at "
                                "byte %zu",
                                span > 40 ? 40 : (int)span, p,
                                (size_t)(p - s));
      if (span > 63)
        return circle_error_set(err, CIRCLE_ERR_INVALID_JSON,
                                "invalid JSON: the number at byte %zu has %zu "
                                "characters; at most 63 are accepted",
                                (size_t)(p - s), span);
      p = q;
    } else if ((unsigned char)c < 0x20 && !is_ws(c)) {
      /* cJSON would skip these as whitespace. */
      return circle_error_set(err, CIRCLE_ERR_INVALID_JSON,
                              "invalid JSON: control character 0x%02x at "
                              "byte %zu",
                              (unsigned char)c, (size_t)(p - s));
    } else {
      p++;
    }
    if (g) grammar_feed(g, p0, end, (size_t)(p0 - s), (size_t)(p - p0));
  }
  *open = depth;
  *values = count;
  return 0;
}

/* The invalid_json message for a syntax error at byte off of body (off ==
 * len: the text ended early), open brackets being left open at the end. */
static void syntax_error(const char *body, size_t len, size_t off, size_t open,
                         circle_error *err) {
  if (off > len) off = len;
  if (len == 0)
    circle_error_set(err, CIRCLE_ERR_INVALID_JSON,
                     "invalid JSON: the body is empty; send a JSON object");
  else if (open > 0 && off + 1 >= len)
    circle_error_set(err, CIRCLE_ERR_INVALID_JSON,
                     "invalid JSON: the body ends at byte %zu with %zu "
                     "unclosed brackets (truncated?)",
                     len, open);
  else if (off >= len)
    circle_error_set(err, CIRCLE_ERR_INVALID_JSON,
                     "invalid JSON: the body ends early at byte %zu "
                     "(truncated?)",
                     len);
  else {
    /* The client's bytes go into the message made printable: it ends up
     * in a JSON response and must not carry raw or cut UTF-8. */
    char raw[21], near[32];
    size_t k = len - off < 20 ? len - off : 20;
    memcpy(raw, body + off, k);
    raw[k] = '\0';
    circle__json_quote(near, sizeof(near), raw, 20);
    circle_error_set(err, CIRCLE_ERR_INVALID_JSON,
                     "invalid JSON at byte %zu (near \"%s\")", off, near);
  }
}

int circle__json_validate(const char *body, size_t len, size_t max_depth,
                          size_t *values, circle_error *err) {
  size_t open = 0, count = 0;
  grammar g;
  bool checked = grammar_init(&g, max_depth);
  int rc = prescan(body, len, max_depth, &open, &count, checked ? &g : NULL, err);
  grammar_free(&g);
  if (rc != 0) return CIRCLE_EINVAL;
  if (checked && !g.done) {
    /* The first byte that cannot continue a JSON text (the text's end when
     * it ends early): the byte cJSON would stop at. */
    syntax_error(body, len, g.failed ? g.bad : len, open, err);
    return CIRCLE_EINVAL;
  }
  size_t off = checked ? g.stop : len;
  while (off < len && is_ws(body[off])) off++;
  if (off < len)
    return circle_error_set(err, CIRCLE_ERR_INVALID_JSON,
                            "invalid JSON: unexpected data after the JSON "
                            "value at byte %zu",
                            off);
  if (values) *values = count;
  return 0;
}

static cJSON *tree_build(const char *body, size_t len, circle_error *err);

cJSON *circle__json_parse(const char *body, size_t len, size_t max_depth,
                          size_t max_values, circle_error *err) {
  size_t values = 0;
  if (circle__json_validate(body, len, max_depth, &values, err) != 0)
    return NULL;
  if (values > max_values) {
    circle_error_set(err, CIRCLE_ERR_LIMIT_EXCEEDED,
                     "the request has %zu JSON values and keys besides its "
                     "numeric arrays; no request within this server's limits "
                     "needs more than %zu",
                     values, max_values);
    return NULL;
  }
  return tree_build(body, len, err);
}

cJSON *circle__json_parse_valid(const char *body, size_t len, size_t values,
                                size_t max_depth, size_t max_values,
                                circle_error *err) {
  /* Past the tree's bound, or a tree cJSON cannot build: the checks find
   * why and say it as they would for any body. */
  if (values > max_values)
    return circle__json_parse(body, len, max_depth, max_values, err);
  circle_error e;
  cJSON *root = tree_build(body, len, &e);
  if (root == NULL && e.kind == CIRCLE_ERR_OVERLOADED) *err = e;
  else if (root == NULL)
    root = circle__json_parse(body, len, max_depth, max_values, err);
  return root;
}

/* cJSON's tree of a valid text: NULL with *err overloaded when memory ran
 * out, invalid_json otherwise (cJSON's own nesting limit). */
static cJSON *tree_build(const char *body, size_t len, circle_error *err) {
  pthread_once(&hooks_once, hooks_install);
  cjson_oom = false;
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
  if (root == NULL) {
    /* The text is valid JSON: only memory (or cJSON's own nesting limit,
     * past a --max-depth of 1000) can stop cJSON now. */
    if (cjson_oom) {
      circle_error_set(err, CIRCLE_ERR_OVERLOADED,
                       "out of memory while parsing the request; retry "
                       "later or send a smaller batch");
      return NULL;
    }
    syntax_error(body, len, end ? (size_t)(end - body) : 0, 0, err);
    return NULL;
  }
  return root;
}

/* ------------------------------------------------------------------------ */
/* Key tables and messages                                                  */
/* ------------------------------------------------------------------------ */

void circle__json_quote(char *dst, size_t dst_len, const char *s,
                        size_t max_chars) {
  if (dst_len == 0) return;
  size_t o = 0, i = 0;
  for (; s[i] && i < max_chars && o + 1 < dst_len; i++) {
    unsigned char c = (unsigned char)s[i];
    dst[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
  }
  if (s[i] && o + 4 < dst_len) {
    memcpy(dst + o, "...", 3);
    o += 3;
  }
  dst[o] = '\0';
}

const char *circle__short_number(char *buf, double v) {
  char tmp[40];
  for (int p = 1; p <= 17; p++) {
    snprintf(tmp, sizeof(tmp), "%.*g", p, v);
    if (strtod(tmp, NULL) == v || p == 17) break;
  }
  memcpy(buf, tmp, strlen(tmp) + 1);
  return buf;
}

const char *circle__json_kind(const cJSON *item) {
  if (item == NULL) return "missing";
  if (cJSON_IsNull(item)) return "null";
  if (cJSON_IsBool(item)) return "a boolean";
  if (cJSON_IsNumber(item)) return "a number";
  if (cJSON_IsString(item)) return "a string";
  if (cJSON_IsArray(item)) return "an array";
  if (cJSON_IsObject(item)) return "an object";
  return "an unknown value";
}

int circle__json_fields(const cJSON *obj, const char *where,
                        circle__json_field *fields, size_t nfields,
                        circle_error *err) {
  for (size_t i = 0; i < nfields; i++) fields[i].item = NULL;
  const cJSON *it;
  cJSON_ArrayForEach(it, obj) {
    const char *k = it->string ? it->string : "";
    size_t i;
    for (i = 0; i < nfields; i++)
      if (strcmp(fields[i].name, k) == 0) break;
    char q[72];
    circle__json_quote(q, sizeof(q), k, 64);
    if (i == nfields) {
      char list[384];
      size_t o = 0;
      for (size_t j = 0; j < nfields && o < sizeof(list); j++)
        o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%s",
                              j ? ", " : "", fields[j].name);
      return circle_error_set(err, CIRCLE_ERR_UNKNOWN_KEY,
                              "unknown key \"%s\" in %s; expected one of: %s",
                              q, where, list);
    }
    if (fields[i].item != NULL)
      return circle_error_set(err, CIRCLE_ERR_DUPLICATE_KEY,
                              "duplicate key \"%s\" in %s; send each key once",
                              q, where);
    fields[i].item = it;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Raw text walking                                                         */
/* ------------------------------------------------------------------------ */

static const char *skip_ws(const char *p, const char *end) {
  while (p < end && is_ws(*p)) p++;
  return p;
}

/* p at '"'; returns the byte after the closing quote. */
static const char *skip_string(const char *p, const char *end) {
  for (p++; p < end; p++) {
    if (*p == '\\') p++;
    else if (*p == '"') return p + 1;
  }
  return end;
}

/* Skips one value of validated JSON without recursion. */
static const char *skip_value(const char *p, const char *end) {
  if (p >= end) return end;
  if (*p == '"') return skip_string(p, end);
  if (*p != '[' && *p != '{') {
    while (p < end && !is_ws(*p) && *p != ',' && *p != ']' && *p != '}') p++;
    return p;
  }
  size_t depth = 0;
  while (p < end) {
    char c = *p;
    if (c == '"') {
      p = skip_string(p, end);
      continue;
    }
    if (c == '[' || c == '{') depth++;
    else if (c == ']' || c == '}') {
      if (--depth == 0) return p + 1;
    }
    p++;
  }
  return end;
}

/* Decodes the JSON string at p (at '"') into dst when it fits and has only
 * simple escapes; returns false otherwise (such a key matches no name we
 * look for, except through \u escapes, which we decode for ASCII). */
bool circle__json_key_read(const char *p, const char *end, char *dst,
                           size_t dst_len) {
  size_t o = 0;
  for (p++; p < end && *p != '"'; p++) {
    char c = *p;
    if (c == '\\') {
      if (++p >= end) return false;
      switch (*p) {
        case 'u': {
          if (end - p < 5) return false;
          char hex[5] = {p[1], p[2], p[3], p[4], 0};
          long v = strtol(hex, NULL, 16);
          if (v <= 0 || v >= 0x80) return false;
          c = (char)v;
          p += 4;
          break;
        }
        case 'n': c = '\n'; break;
        case 't': c = '\t'; break;
        case 'r': c = '\r'; break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        default: c = *p; /* " \ / */
      }
    }
    if (o + 1 >= dst_len) return false;
    dst[o++] = c;
  }
  dst[o] = '\0';
  return true;
}

void circle__json_iter_init(circle__json_iter *it, const char *body,
                            size_t len, size_t off) {
  it->body = body;
  it->len = len;
  it->p = (size_t)(skip_ws(body + off + 1, body + len) - body);
  it->pending = false;
}

void circle__json_iter_past(circle__json_iter *it, size_t end) {
  const char *stop = it->body + it->len;
  const char *p = skip_ws(it->body + end, stop);
  if (p < stop && *p == ',') p = skip_ws(p + 1, stop);
  it->p = (size_t)(p - it->body);
  it->pending = false;
}

size_t circle__json_iter_skip(circle__json_iter *it) {
  const char *p = it->body + it->p;
  size_t end = (size_t)(skip_value(p, it->body + it->len) - it->body);
  circle__json_iter_past(it, end);
  return end;
}

bool circle__json_iter_next(circle__json_iter *it, size_t *at) {
  if (it->pending) circle__json_iter_skip(it);
  const char *end = it->body + it->len, *p = it->body + it->p;
  if (p >= end || *p == ']' || *p == '}') return false;
  *at = it->p;
  it->pending = true;
  return true;
}

bool circle__json_iter_member(circle__json_iter *it, char *key, size_t key_len,
                              bool *key_ok, size_t *at) {
  if (it->pending) circle__json_iter_skip(it);
  const char *end = it->body + it->len, *p = it->body + it->p;
  if (p >= end || *p != '"') return false;
  *key_ok = circle__json_key_read(p, end, key, key_len);
  p = skip_ws(skip_string(p, end), end);
  if (p < end && *p == ':') p = skip_ws(p + 1, end);
  it->p = (size_t)(p - it->body);
  return circle__json_iter_next(it, at);
}

const char *circle__json_text_kind(const char *body, size_t len, size_t off) {
  char c = off < len ? body[off] : '\0';
  switch (c) {
    case '[': return "an array";
    case '{': return "an object";
    case '"': return "a string";
    case 't': case 'f': return "a boolean";
    case 'n': return "null";
    default: return "a number";
  }
}

size_t circle__json_leaves(const char *body, size_t len, size_t off,
                           circle__json_leaf_fn fn, void *ctx) {
  const char *p = body + off, *end = body + len;
  size_t depth = 0, count = 0;
  while (p < end) {
    char c = *p;
    if (c == '[') {
      depth++;
      p++;
    } else if (c == ']') {
      p++;
      if (--depth == 0) break;
    } else if (c == ',' || is_ws(c)) {
      p++;
    } else {
      if (fn && !fn(ctx, (size_t)(p - body), count)) return SIZE_MAX;
      count++;
      p = skip_value(p, end);
    }
  }
  return count;
}

bool circle__json_cut(const char *body, size_t len, const size_t *spans,
                      size_t nspans, char **copy, size_t *copy_len) {
  char *c = malloc(len + 1);
  if (c == NULL) return false;
  size_t from = 0, o = 0;
  for (size_t i = 0; i < nspans; i++) {
    size_t b = spans[2 * i], e = spans[2 * i + 1];
    memcpy(c + o, body + from, b - from);
    o += b - from;
    memcpy(c + o, "[]", 2);
    o += 2;
    from = e;
  }
  memcpy(c + o, body + from, len - from);
  o += len - from;
  c[o] = '\0';
  *copy = c;
  *copy_len = o;
  return true;
}

bool circle__json_locate(const char *body, size_t len,
                         const circle__json_step *path, size_t npath,
                         size_t *offset) {
  const char *p = body, *end = body + len;
  p = skip_ws(p, end);
  for (size_t k = 0; k < npath; k++) {
    if (path[k].key != NULL) {
      if (p >= end || *p != '{') return false;
      p = skip_ws(p + 1, end);
      bool found = false;
      while (p < end && *p == '"') {
        char key[128];
        bool ok = circle__json_key_read(p, end, key, sizeof(key));
        p = skip_ws(skip_string(p, end), end);
        if (p >= end || *p != ':') return false;
        p = skip_ws(p + 1, end);
        if (ok && strcmp(key, path[k].key) == 0) {
          found = true;
          break;
        }
        p = skip_ws(skip_value(p, end), end);
        if (p < end && *p == ',') p = skip_ws(p + 1, end);
      }
      if (!found) return false;
    } else {
      if (p >= end || *p != '[') return false;
      p = skip_ws(p + 1, end);
      for (size_t i = 0; i < path[k].index; i++) {
        if (p >= end || *p == ']') return false;
        p = skip_ws(skip_value(p, end), end);
        if (p < end && *p == ',') p = skip_ws(p + 1, end);
      }
      if (p >= end || *p == ']') return false;
    }
  }
  *offset = (size_t)(p - body);
  return true;
}

/* Reads the JSON number token at s (strict syntax, at most end - s bytes)
 * as an exact int64: "12", "-3", "1.0", "2e3" and "9007199254740993" are
 * integers; the value is decided on the decimal text, never through a
 * double. *used receives the token length. */
static int token_int64(const char *s, const char *end, int64_t *out,
                       size_t *used) {
  size_t n = number_len(s, end);
  if (n == 0) return CIRCLE__INT_NOT_NUMBER;
  *used = n;
  const char *p = s, *e = s + n;
  bool neg = false;
  if (*p == '-') {
    neg = true;
    p++;
  }
  /* Significant digits (integer and fraction parts) and the exponent. */
  char dig[64];
  size_t nd = 0;
  long exp10 = 0;
  for (; p < e && is_digit(*p); p++)
    if (nd || *p != '0') dig[nd++] = *p; /* tokens are <= 63 chars */
  if (p < e && *p == '.') {
    for (p++; p < e && is_digit(*p); p++) {
      if (nd || *p != '0') dig[nd++] = *p;
      exp10--;
    }
  }
  if (p < e && (*p == 'e' || *p == 'E')) {
    p++;
    bool eneg = false;
    if (*p == '+' || *p == '-') eneg = *p++ == '-';
    long x = 0;
    for (; p < e; p++)
      if (x < 100000) x = x * 10 + (*p - '0');
    exp10 += eneg ? -x : x;
  }
  while (nd > 0 && dig[nd - 1] == '0') {
    nd--;
    exp10++;
  }
  if (nd == 0) {
    *out = 0;
    return CIRCLE__INT_OK;
  }
  if (exp10 < 0) return CIRCLE__INT_NOT_INTEGER;
  if ((long)nd + exp10 > 19) return CIRCLE__INT_RANGE;
  uint64_t v = 0;
  for (size_t i = 0; i < nd; i++) v = v * 10 + (uint64_t)(dig[i] - '0');
  for (long i = 0; i < exp10; i++) {
    if (v > UINT64_MAX / 10) return CIRCLE__INT_RANGE;
    v *= 10;
  }
  /* 19 digits fit in uint64 (< 1e19 < 2^64); now the int64 range. */
  if (neg) {
    if (v > (uint64_t)INT64_MAX + 1) return CIRCLE__INT_RANGE;
    *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
  } else {
    if (v > (uint64_t)INT64_MAX) return CIRCLE__INT_RANGE;
    *out = (int64_t)v;
  }
  return CIRCLE__INT_OK;
}

typedef struct {
  const char *body;
  size_t len;
  int64_t *out;
  size_t n, bad;
  int rc;
} int64s;

static bool leaf_int64(void *ctx, size_t off, size_t i) {
  int64s *c = ctx;
  size_t used = 0;
  c->rc = i < c->n ? token_int64(c->body + off, c->body + c->len,
                                              &c->out[i], &used)
                   : CIRCLE__INT_NOT_NUMBER;
  c->bad = i;
  return c->rc == CIRCLE__INT_OK;
}

int circle__json_read_int64s(const char *body, size_t len, size_t offset,
                             int64_t *out, size_t n, size_t *bad_index) {
  int64s c = {body, len, out, n, 0, CIRCLE__INT_OK};
  size_t count = circle__json_leaves(body, len, offset, leaf_int64, &c);
  if (count == SIZE_MAX) {
    *bad_index = c.bad;
    return c.rc;
  }
  if (count != n) {
    *bad_index = count;
    return CIRCLE__INT_NOT_NUMBER;
  }
  return CIRCLE__INT_OK;
}

/* ------------------------------------------------------------------------ */
/* Shared request and response pieces                                       */
/* ------------------------------------------------------------------------ */

int circle__bool_parse(const cJSON *it, bool *out, const char *field,
                       circle_error_kind kind, circle_error *err) {
  if (!cJSON_IsBool(it))
    return circle_error_set(err, kind, "%s is %s; expected true or false",
                            field, circle__json_kind(it));
  *out = cJSON_IsTrue(it);
  return 0;
}

int circle__tag_parse(const cJSON *it, char *tag, size_t tag_len,
                      const char *field, circle_error *err) {
  if (cJSON_IsNull(it)) {
    tag[0] = '\0';
    return 0;
  }
  if (!cJSON_IsString(it))
    return circle_error_set(err, CIRCLE_ERR_BAD_TAG,
                            "%s is %s; expected a string of at most %zu "
                            "characters from [A-Za-z0-9_.:-]",
                            field, circle__json_kind(it), tag_len - 1);
  const char *s = it->valuestring;
  size_t l = strlen(s);
  if (l >= tag_len)
    return circle_error_set(err, CIRCLE_ERR_BAD_TAG,
                            "%s has %zu bytes; at most %zu are allowed", field,
                            l, tag_len - 1);
  for (size_t i = 0; i < l; i++) {
    unsigned char c = (unsigned char)s[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '.' || c == ':' ||
              c == '-';
    if (!ok)
      return circle_error_set(err, CIRCLE_ERR_BAD_TAG,
                              "%s has the character %s%c%s at byte %zu; "
                              "use only [A-Za-z0-9_.:-]",
                              field, c >= 0x20 && c < 0x7f ? "'" : "",
                              c >= 0x20 && c < 0x7f ? c : '?',
                              c >= 0x20 && c < 0x7f ? "'" : "", i);
  }
  memcpy(tag, s, l + 1);
  return 0;
}

int circle__half_narrow_array(circle_half half, void **arr, size_t count,
                              size_t *bad) {
  if (half == CIRCLE_HALF_NONE || *arr == NULL) return 0;
  float *dst = malloc(count ? count * sizeof(float) : 1);
  if (dst == NULL) return CIRCLE_ENOMEM;
  size_t k = circle_half_narrow(half, *arr, dst, count);
  if (k < count) {
    free(dst);
    *bad = k;
    return CIRCLE_ERANGE;
  }
  free(*arr);
  *arr = dst;
  return 0;
}
