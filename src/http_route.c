/* http_route.c -- the route table, and what is decided from a request's
 * line and headers, on the network thread, before any of its body is read:
 * the route and its error family, framing (http_frame.c), the bearer
 * token, the method, the body's declared size and codings. It keeps true:
 * every property of an endpoint (path, methods, open or behind the token,
 * GET or compute, metrics label, GET handler) is in its one row of the
 * table, so adding an endpoint is adding a row; auth is checked before 404
 * and 405 so the routes are not revealed, the token is compared in time
 * that does not depend on where it differs, and a request refused with no
 * body to come is answered at its final call, so its connection stays
 * open.
 */
#include "http_impl.h"

#include <stdlib.h>
#include <strings.h>

#include "codec_oip.h"

/* ======================================================================== */
/* The route table                                                          */
/* ======================================================================== */

/* Every endpoint, one row each (see struct route in http_impl.h): the
 * router, auth, the method check and Allow, metrics labels, Vary and the
 * GET dispatch read nothing else. Fixed paths and model paths may come in
 * any order: no path matches two rows. */
static const route routes[] = {
    /* path, methods, open, compute, metrics label, GET handler */
    {"/healthz", "GET, HEAD", true, COMPUTE_NONE, CIRCLE_ENDPOINT_HEALTHZ,
     circle__http_get_healthz},
    {"/readyz", "GET, HEAD", true, COMPUTE_NONE, CIRCLE_ENDPOINT_READYZ,
     circle__http_get_readyz},
    {"/config", "GET, HEAD", false, COMPUTE_NONE, CIRCLE_ENDPOINT_CONFIG,
     circle__http_get_config},
    {"/metrics", "GET, HEAD", false, COMPUTE_NONE, CIRCLE_ENDPOINT_METRICS,
     circle__http_get_metrics},
    {"/dashboard", "GET, HEAD", false, COMPUTE_NONE, CIRCLE_ENDPOINT_DASHBOARD,
     circle__http_get_dashboard},
    {"/v1/loss", "POST", false, COMPUTE_V1, CIRCLE_ENDPOINT_V1_LOSS, NULL},
    {"/v2", "GET, HEAD", false, COMPUTE_NONE, CIRCLE_ENDPOINT_V2_SERVER,
     circle__http_get_v2_server},
    {"/v2/health/live", "GET, HEAD", true, COMPUTE_NONE,
     CIRCLE_ENDPOINT_V2_HEALTH, circle__http_get_v2_live},
    {"/v2/health/ready", "GET, HEAD", true, COMPUTE_NONE,
     CIRCLE_ENDPOINT_V2_HEALTH, circle__http_get_v2_ready},
    {MODEL_PATH, "GET, HEAD", false, COMPUTE_NONE, CIRCLE_ENDPOINT_V2_MODEL,
     circle__http_get_v2_model},
    {MODEL_PATH "/ready", "GET, HEAD", false, COMPUTE_NONE,
     CIRCLE_ENDPOINT_V2_MODEL, circle__http_get_v2_model_ready},
    {MODEL_PATH "/config", "GET, HEAD", false, COMPUTE_NONE,
     CIRCLE_ENDPOINT_V2_MODEL, circle__http_get_v2_model_config},
    {MODEL_PATH "/infer", "POST", false, COMPUTE_OIP, CIRCLE_ENDPOINT_V2_INFER,
     NULL},
};

/* The rows of no endpoint: a path no row matches, and a model route of a
 * model other than circle. Neither is open, so auth comes before their
 * 404 and the routes are not revealed. */
static const route not_found = {NULL, "GET, HEAD", false, COMPUTE_NONE,
                                CIRCLE_ENDPOINT_OTHER, NULL};
static const route unknown_model = {NULL, "GET, HEAD", false, COMPUTE_NONE,
                                    CIRCLE_ENDPOINT_OTHER, NULL};

const char *circle__http_route_allow(const route *r) { return r->methods; }

/* ======================================================================== */
/* Routing                                                                  */
/* ======================================================================== */

/* A model route's path, taken apart: /v2/models/<name>[/versions/<ver>]
 * and the rest (tail). */
typedef struct {
  const char *name, *ver, *tail;
  size_t name_len, ver_len;
} model_path;

/* Takes url apart as a model route; false when it is none (no name, or an
 * empty version). */
static bool model_path_split(const char *url, model_path *m) {
  static const char models[] = "/v2/models/";
  if (strncmp(url, models, sizeof models - 1)) return false;
  m->name = url + sizeof models - 1;
  m->name_len = strcspn(m->name, "/");
  if (m->name_len == 0) return false;
  const char *p = m->name + m->name_len;
  m->ver = NULL;
  m->ver_len = 0;
  if (!strncmp(p, "/versions/", 10)) {
    m->ver = p + 10;
    m->ver_len = strcspn(m->ver, "/");
    if (m->ver_len == 0) return false;
    p = m->ver + m->ver_len;
  }
  m->tail = p;
  return true;
}

/* Sets ex->route and ex->fam from the path (query string already removed
 * by libmicrohttpd). */
static void route_request(struct exchange *ex, const char *url) {
  static const char model_prefix[] = MODEL_PATH;
  ex->fam = (!strncmp(url, "/v2", 3) && (url[3] == '\0' || url[3] == '/'))
                ? FAMILY_OIP
                : FAMILY_V1;
  ex->route = &not_found;
  model_path m;
  bool is_model = model_path_split(url, &m);
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
    const route *r = &routes[i];
    if (strncmp(r->path, model_prefix, sizeof model_prefix - 1)) {
      if (strcmp(url, r->path)) continue;
      ex->route = r;
      return;
    }
    if (!is_model || strcmp(m.tail, r->path + sizeof model_prefix - 1))
      continue;
    circle_error merr;
    if (circle__oip_model_check(m.name, m.name_len, m.ver, m.ver_len, &merr)) {
      ex->route = &unknown_model;
      snprintf(ex->model_msg, sizeof ex->model_msg, "%.200s", merr.message);
    } else {
      ex->route = r;
    }
    return;
  }
}

static bool method_allowed(const route *r, const char *method) {
  size_t n = strlen(method);
  for (const char *p = r->methods; *p;) {
    size_t k = strcspn(p, ",");
    if (k == n && !strncmp(p, method, n)) return true;
    p += k;
    p += strspn(p, ", ");
  }
  return false;
}

/* ======================================================================== */
/* Auth                                                                     */
/* ======================================================================== */

/* Compares the presented token with the key in time that depends only on
 * the key's length, never on where the first difference is. */
static bool token_equal(const char *key, size_t key_len, const char *tok,
                        size_t tok_len) {
  volatile unsigned char diff = (unsigned char)(key_len != tok_len);
  for (size_t i = 0; i < key_len; i++) {
    unsigned char t = tok_len ? (unsigned char)tok[i % tok_len] : 0;
    diff |= (unsigned char)(key[i] ^ t);
  }
  return diff == 0;
}

/* True when auth is off or the request carries the right bearer token. */
static bool authorized(struct exchange *ex) {
  circle_http *srv = ex->srv;
  if (!srv->api_key) return true;
  const char *h = MHD_lookup_connection_value(ex->conn, MHD_HEADER_KIND,
                                              MHD_HTTP_HEADER_AUTHORIZATION);
  if (!h || strncasecmp(h, "Bearer ", 7)) return false;
  h += 7;
  while (*h == ' ') h++;
  size_t n = strlen(h);
  while (n && (h[n - 1] == ' ' || h[n - 1] == '\t')) n--;
  return token_equal(srv->api_key, srv->api_key_len, h, n);
}

bool circle__http_token_ok(const circle_http *srv, const char *token,
                           size_t len) {
  if (!srv->api_key) return true;
  return token && token_equal(srv->api_key, srv->api_key_len, token, len);
}

/* ======================================================================== */
/* The request head (the first call)                                        */
/* ======================================================================== */

/* Parses a decimal size with nothing else around it but blanks. */
static bool parse_size(const char *s, size_t *out) {
  while (*s == ' ' || *s == '\t') s++;
  if (*s < '0' || *s > '9') return false;
  size_t v = 0;
  for (; *s >= '0' && *s <= '9'; s++) {
    size_t digit = (size_t)(*s - '0');
    if (v > (SIZE_MAX - digit) / 10) return false;
    v = v * 10 + digit;
  }
  while (*s == ' ' || *s == '\t') s++;
  if (*s) return false;
  *out = v;
  return true;
}

/* Picks the response encoding from Accept-Encoding: gzip preferred, then
 * deflate; a coding with q=0 is refused. */
static encoding pick_accept(const char *h) {
  bool gzip = false, deflate = false;
  while (h && *h) {
    while (*h == ' ' || *h == '\t' || *h == ',') h++;
    const char *tok = h;
    while (*h && *h != ',' && *h != ';' && *h != ' ' && *h != '\t') h++;
    size_t tl = (size_t)(h - tok);
    bool q0 = false;
    while (*h && *h != ',') {
      if (*h == ';') {
        const char *p = h + 1;
        while (*p == ' ') p++;
        if ((p[0] == 'q' || p[0] == 'Q') && p[1] == '=') {
          double q = strtod(p + 2, NULL);
          q0 = q <= 0.0;
        }
      }
      h++;
    }
    if (q0) continue;
    if ((tl == 4 && !strncasecmp(tok, "gzip", 4)) ||
        (tl == 6 && !strncasecmp(tok, "x-gzip", 6)))
      gzip = true;
    else if (tl == 7 && !strncasecmp(tok, "deflate", 7))
      deflate = true;
  }
  return gzip ? ENC_GZIP : deflate ? ENC_DEFLATE : ENC_NONE;
}

/* True when the request announces a body (Content-Length > 0 or chunked). */
static bool has_body(struct MHD_Connection *c) {
  const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                               MHD_HTTP_HEADER_CONTENT_LENGTH);
  size_t v;
  if (MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                  MHD_HTTP_HEADER_TRANSFER_ENCODING))
    return true;
  return cl && (!parse_size(cl, &v) || v > 0);
}

/* Answers err now when the request has a body still to come (it is then
 * never read, and the connection closes), else at the final call. */
static enum MHD_Result refuse(struct exchange *ex, const circle_error *err) {
  if (has_body(ex->conn)) return circle__http_respond_error(ex, err);
  ex->err = *err;
  ex->pending = PENDING_ERROR;
  return MHD_YES;
}

void circle__http_body_too_large(const circle_http *srv, size_t bytes,
                                 circle_error *err) {
  size_t max_body = srv->opts.max_body;
  if (bytes == SIZE_MAX)
    circle_error_set(err, CIRCLE_ERR_BODY_TOO_LARGE,
                     "the body is over %zu bytes; this server accepts at "
                     "most %zu bytes (--max-body-mb %zu): send a smaller "
                     "batch or compress it",
                     max_body, max_body, max_body / 1048576);
  else
    circle_error_set(err, CIRCLE_ERR_BODY_TOO_LARGE,
                     "the body is %zu bytes; this server accepts at most "
                     "%zu bytes (--max-body-mb %zu): send a smaller batch "
                     "or compress it",
                     bytes, max_body, max_body / 1048576);
}

/* First call: everything decided from the request line and headers. Returns
 * MHD_YES with or without a queued response. */
enum MHD_Result circle__http_first_call(struct exchange *ex, const char *url,
                                        const char *version) {
  circle_http *srv = ex->srv;
  circle_error err;
  route_request(ex, url);

  /* Framing comes first: a request whose extent is in doubt is answered
   * and its connection closed before anything else is read of it. */
  if (!circle__http_framing_ok(ex, version, &err)) {
    ex->close = true;
    return circle__http_respond_error(ex, &err);
  }

  /* Auth comes before 404 and 405 so that the routes are not revealed. */
  if (!ex->route->open && !authorized(ex)) {
    circle_error_set(&err, CIRCLE_ERR_UNAUTHORIZED,
                     "missing or wrong bearer token: send the header "
                     "'Authorization: Bearer <key>'");
    return refuse(ex, &err);
  }
  if (ex->route == &not_found) {
    circle_error_set(&err, CIRCLE_ERR_NOT_FOUND,
                     "no endpoint at %.100s; see GET /v2 and POST /v1/loss",
                     ex->url);
    return refuse(ex, &err);
  }
  if (ex->route == &unknown_model) {
    circle_error_set(&err, CIRCLE_ERR_NOT_FOUND, "%s", ex->model_msg);
    return refuse(ex, &err);
  }
  if (!method_allowed(ex->route, ex->method)) {
    circle_error_set(&err, CIRCLE_ERR_METHOD_NOT_ALLOWED,
                     "%.16s is not allowed on %.100s; use %s", ex->method,
                     ex->url, circle__http_route_allow(ex->route));
    return refuse(ex, &err);
  }
  if (!ex->route->compute) {
    ex->pending = PENDING_GET;
    return MHD_YES;
  }

  /* A compute route: check the body's declared size before reading it. */
  struct MHD_Connection *c = ex->conn;
  const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                               MHD_HTTP_HEADER_CONTENT_LENGTH);
  const char *te = MHD_lookup_connection_value(
      c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
  size_t max_body = srv->opts.max_body;
  ex->expect = SIZE_MAX;
  if (cl && !te) {
    size_t v;
    if (!parse_size(cl, &v)) {
      circle_error_set(&err, CIRCLE_ERR_BAD_ENCODING,
                       "Content-Length is not a number");
      return refuse(ex, &err);
    }
    if (v > max_body) {
      circle__http_body_too_large(srv, v, &err);
      return refuse(ex, &err);
    }
    /* Nothing is reserved yet: the body's bytes are, as they arrive
     * (upload_call), so a length declared and never sent holds nothing. */
    ex->expect = v;
  }

  const char *ce = MHD_lookup_connection_value(
      c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_ENCODING);
  if (ce) {
    while (*ce == ' ') ce++;
    size_t n = strcspn(ce, " \t,");
    if (n == 0 || (n == 8 && !strncasecmp(ce, "identity", 8))) {
      ex->content_encoding[0] = '\0';
    } else if ((n == 4 && !strncasecmp(ce, "gzip", 4)) ||
               (n == 6 && !strncasecmp(ce, "x-gzip", 6))) {
      strcpy(ex->content_encoding, "gzip");
    } else if (n == 7 && !strncasecmp(ce, "deflate", 7)) {
      strcpy(ex->content_encoding, "deflate");
    } else {
      circle_error_set(&err, CIRCLE_ERR_UNSUPPORTED_ENCODING,
                       "Content-Encoding %.32s is not supported; send gzip, "
                       "deflate or identity",
                       ce);
      return refuse(ex, &err);
    }
    if (ce[n] != '\0' && strspn(ce + n, " \t") != strlen(ce + n)) {
      circle_error_set(&err, CIRCLE_ERR_UNSUPPORTED_ENCODING,
                       "only one Content-Encoding is supported");
      return refuse(ex, &err);
    }
  }

  if (ex->route->compute == COMPUTE_OIP) {
    const char *ih = MHD_lookup_connection_value(
        c, MHD_HEADER_KIND, "Inference-Header-Content-Length");
    if (ih) {
      if (!parse_size(ih, &ex->ihcl)) {
        circle_error_set(&err, CIRCLE_ERR_BAD_ENCODING,
                         "Inference-Header-Content-Length is not a number");
        return refuse(ex, &err);
      }
      ex->has_ihcl = true;
    }
  }
  ex->accept = pick_accept(MHD_lookup_connection_value(
      c, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT_ENCODING));
  return MHD_YES;
}
