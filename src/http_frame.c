/* http_frame.c -- the framing checks: a request head that libmicrohttpd
 * 0.9.75 lets through but that a proxy in front of circled could read as
 * a different request is refused (400, or 501 for a transfer coding) and
 * its connection closed. It keeps true: the checks only read the head,
 * and the ones that rest on 0.9.75's in-place parsing are compiled for
 * that version alone (HEAD_LAYOUT_CHECKS).
 */
#include "http_impl.h"

#include <strings.h>

/* libmicrohttpd 0.9.75 parses a request head loosely, and where it and a
 * proxy in front of circled could read the same bytes as different
 * requests (request smuggling), circled refuses the request, answers 400
 * (501 for a transfer coding it does not implement) in its own JSON shape
 * and closes the connection. What it refuses, and how each is seen:
 *
 *   Content-Length twice, disagreeing      counted over every header line
 *   Content-Length with Transfer-Encoding  (MHD_get_connection_values_n
 *   Transfer-Encoding other than chunked    gives each occurrence)
 *   Host missing (HTTP/1.1) or repeated
 *   a space before the colon               the name is not an RFC 9110
 *                                          token ("Content-Length ")
 *   a folded line (obs-fold)               0.9.75 glues the continuation
 *                                          onto the previous NAME (it
 *                                          strcat's onto the line), moving
 *                                          the name away from its value
 *   a NUL byte in a value                  0.9.75 ends the value there
 *                                          ("Bearer KEY\0junk" read as
 *                                          "Bearer KEY")
 *   %00 in the path                        on_uri sees the raw path
 *   a NUL byte in the request line         the raw URI ends before the
 *                                          blank before the version
 *
 * The folding and NUL checks rest on how 0.9.75 parses: in place, in the read
 * buffer, each line's CR and LF overwritten with NUL, the name ending at
 * the colon (overwritten with NUL) and the value after the blanks that
 * follow it. So for a header parsed from its own line the bytes between
 * the name's end and the value are blanks, and the byte after the value's
 * terminating NUL is the line's LF (now NUL) or, for a bare-LF line, the
 * first byte of the next header's name. Anything else there is either a
 * NUL inside the value or a name that was moved (folded). Likewise the
 * version string starts right after the raw URI's terminating NUL (the
 * blank before it, overwritten). These checks are compiled only for the
 * version they were verified on. */
#if MHD_VERSION >= 0x00097500 && MHD_VERSION < 0x00097600
#define HEAD_LAYOUT_CHECKS 1
#else
#define HEAD_LAYOUT_CHECKS 0
#endif

struct head_scan {
  unsigned cl, te, host;   /* occurrences */
  const char *cl_first;    /* the first Content-Length value */
  bool cl_disagree;
  const char *te_value;
  bool bad_name, folded, nul;
  char name[64];           /* the offending header's name, printable */
  const char *prev_value;  /* the previous header, for the NUL check */
  size_t prev_len;
};

/* RFC 9110 tchar. */
static bool is_tchar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool starts_with_ci(const char *s, size_t n, const char *prefix) {
  size_t k = strlen(prefix);
  return n >= k && !strncasecmp(s, prefix, k);
}

/* Flags *sc when the previous header's value did not end its line. */
static void check_prev_end(struct head_scan *sc, const char *next_name) {
#if HEAD_LAYOUT_CHECKS
  if (!sc->prev_value) return;
  const char *after = sc->prev_value + sc->prev_len + 1;
  if (*after != '\0' && after != next_name) sc->nul = true;
#else
  (void)sc;
  (void)next_name;
#endif
}

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind,
                                   const char *key, size_t key_len,
                                   const char *value, size_t value_len) {
  (void)kind;
  struct head_scan *sc = cls;
  if (!key || !value) return MHD_YES;
  check_prev_end(sc, key);
  sc->prev_value = value;
  sc->prev_len = value_len;
  bool token = key_len > 0;
  for (size_t i = 0; i < key_len && token; i++)
    token = is_tchar((unsigned char)key[i]);
  bool cl = key_len == 14 && !strncasecmp(key, "Content-Length", 14);
  bool te = key_len == 17 && !strncasecmp(key, "Transfer-Encoding", 17);
  /* "Content-Length" + a folded "43" is a token, but no header by that
   * name is anything but a folded or mangled framing header. */
  bool mangled = !cl && !te &&
                 (starts_with_ci(key, key_len, "content-length") ||
                  starts_with_ci(key, key_len, "transfer-encoding"));
  bool moved = false;
#if HEAD_LAYOUT_CHECKS
  const char *gap = key + key_len + 1;
  if (value < gap || (size_t)(value - gap) > CONN_POOL_BYTES) {
    moved = true;
  } else {
    for (const char *q = gap; q < value && !moved; q++)
      moved = *q != ' ' && *q != '\t';
  }
#endif
  if ((!token || mangled || moved) && !sc->bad_name && !sc->folded) {
    copy_printable(sc->name, sizeof sc->name, key);
    if (!token && !moved) sc->bad_name = true;
    else sc->folded = true;
  }
  if (cl) {
    if (sc->cl++ == 0) sc->cl_first = value;
    else if (strcmp(sc->cl_first, value)) sc->cl_disagree = true;
  }
  if (te && sc->te++ == 0) sc->te_value = value;
  if (key_len == 4 && !strncasecmp(key, "Host", 4)) sc->host++;
  return MHD_YES;
}

/* True when value, without surrounding blanks, is the token want. */
static bool value_is(const char *value, const char *want) {
  while (*value == ' ' || *value == '\t') value++;
  size_t n = strlen(value), k = strlen(want);
  while (n && (value[n - 1] == ' ' || value[n - 1] == '\t')) n--;
  return n == k && !strncasecmp(value, want, k);
}

/* Fills *err and returns false when the request head is one circled must
 * not answer as if it were well framed (see the essay above). */
bool circle__http_framing_ok(struct exchange *ex, const char *version,
                             circle_error *err) {
  struct MHD_Connection *c = ex->conn;
  struct head_scan sc;
  memset(&sc, 0, sizeof sc);
  MHD_get_connection_values_n(c, MHD_HEADER_KIND, scan_header, &sc);
  check_prev_end(&sc, NULL);
  const struct watch *w = watch_of(c);
  if (sc.folded) {
    circle_error_set(err, CIRCLE_ERR_BAD_REQUEST,
                     "a header line is folded onto the next one (obs-fold, "
                     "seen at '%s'); send every header on one line",
                     sc.name);
  } else if (sc.bad_name) {
    circle_error_set(err, CIRCLE_ERR_BAD_REQUEST,
                     "the header name '%s' is not a token (RFC 9110): write "
                     "'Name: value', with no space before the colon",
                     sc.name);
  } else if (sc.nul) {
    circle_error_set(err, CIRCLE_ERR_BAD_REQUEST,
                     "a header value holds a NUL byte; send header values "
                     "without control characters");
  } else if (w && w->nul_in_path) {
    circle_error_set(err, CIRCLE_ERR_BAD_REQUEST,
                     "the path holds an encoded NUL byte (%%00); remove it");
  } else if (HEAD_LAYOUT_CHECKS && w && w->uri_end && version &&
             w->uri_end + 1 != version) {
    /* 0.9.75 ends the URI with the blank before the version, overwritten
     * with NUL, and the version follows: the raw URI's string ended
     * sooner, at a NUL byte of the request line. */
    circle_error_set(err, CIRCLE_ERR_BAD_REQUEST,
                     "the request line holds a NUL byte; send a path "
                     "without control characters");
  } else if (sc.host > 1) {
    circle_error_set(err, CIRCLE_ERR_BAD_REQUEST,
                     "the request has %u Host headers; send exactly one",
                     sc.host);
  } else if (sc.host == 0 && version && !strcmp(version, "HTTP/1.1")) {
    circle_error_set(err, CIRCLE_ERR_BAD_REQUEST,
                     "an HTTP/1.1 request needs a Host header (RFC 9112 "
                     "3.2); send one");
  } else if (sc.cl_disagree) {
    circle_error_set(err, CIRCLE_ERR_BAD_REQUEST,
                     "the request has Content-Length headers that disagree; "
                     "send exactly one");
  } else if (sc.cl && sc.te) {
    circle_error_set(err, CIRCLE_ERR_BAD_REQUEST,
                     "the request has both Content-Length and "
                     "Transfer-Encoding (RFC 9112 6.3); send one of them");
  } else if (sc.te > 1 || (sc.te && !value_is(sc.te_value, "chunked"))) {
    char te[40];
    copy_printable(te, sizeof te, sc.te_value);
    circle_error_set(err, CIRCLE_ERR_NOT_IMPLEMENTED,
                     "Transfer-Encoding '%s'%s is not supported; send the "
                     "body with Content-Length or Transfer-Encoding: chunked "
                     "(compress it with Content-Encoding)",
                     te, sc.te > 1 ? " (and more)" : "");
  } else {
    return true;
  }
  return false;
}

/* MHD_OPTION_URI_LOG_CALLBACK: sees each request's path before
 * libmicrohttpd decodes it (a decoded %00 would end it), and notes on the
 * connection's watch whether it holds an encoded NUL. Returns no request
 * context: the access handler makes its own. */
void *circle__http_on_uri(void *cls, const char *uri,
                          struct MHD_Connection *conn) {
  (void)cls;
  struct watch *w = watch_of(conn);
  if (!w) return NULL;
  w->uri_end = uri + strlen(uri);
  size_t n = strcspn(uri, "?");
  bool nul = false;
  for (size_t i = 0; i + 2 < n && !nul; i++)
    nul = uri[i] == '%' && uri[i + 1] == '0' && uri[i + 2] == '0';
  w->nul_in_path = nul;
  return NULL;
}
