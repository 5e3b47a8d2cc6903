/* http_respond.c -- how every answer leaves the server: the one place
 * where statuses become HTTP codes (error_from_status), and the one
 * function that queues a response (respond), with the headers that follow
 * from the status and the exchange. It keeps true: every request that is
 * answered is answered through respond (so logging and
 * metrics see it), an error body has the shape of its route's family, and
 * a body whose writing ran out of memory is never sent in part.
 */
#include "http_impl.h"

#include <stdlib.h>

#include "codec_json.h"
#include "codec_oip.h"

static const char *const phase_name[PHASES] = {"recv", "queue", "decode",
                                               "compute", "encode"};

/* The phases reached, "recv<eq>1.234<sep>queue<eq>0.010...", into dst;
 * false when there are none. */
bool circle__http_phases_format(const struct exchange *ex, char *dst, size_t n,
                                const char *sep, const char *eq) {
  size_t o = 0;
  dst[0] = '\0';
  for (int i = 0; i < PHASES && o < n; i++) {
    if (ex->phase_ms[i] < 0) continue;
    int w = snprintf(dst + o, n - o, "%s%s%s%.3f", o ? sep : "", phase_name[i],
                     eq, ex->phase_ms[i]);
    if (w < 0) break;
    o += (size_t)w;
  }
  return o > 0 && o < n;
}

/* ======================================================================== */
/* Errors: the one place statuses become HTTP                               */
/* ======================================================================== */

/* Fills *err for an engine or server status. what, when not empty, says
 * which field or row (circle_input_check's sentence). */
void circle__http_error_from_status(int status, const char *what,
                                    circle_error *err) {
  const char *w = (what && *what) ? what : NULL;
  switch (status) {
  case CIRCLE_EEMPTY:
    circle_error_set(err, CIRCLE_ERR_EMPTY_BATCH, "%s",
                     w ? w : "the batch is empty: send at least one row");
    break;
  case CIRCLE_ENONFINITE:
    circle_error_set(err, CIRCLE_ERR_NON_FINITE, "%s",
                     w ? w : "an input holds NaN or Infinity; send finite "
                             "numbers only");
    break;
  case CIRCLE_ERANGE:
    circle_error_set(err, CIRCLE_ERR_OUT_OF_RANGE, "%s",
                     w ? w : "embeddings are too large for the dtype; scale "
                             "them down, set normalize, or use float64");
    break;
  case CIRCLE_EINVAL:
    circle_error_set(err, CIRCLE_ERR_INVALID_INPUT, "%s",
                     w ? w : "the input is invalid");
    break;
  case CIRCLE_EOVERFLOW:
  case CIRCLE_ELIMIT:
    circle_error_set(err, CIRCLE_ERR_LIMIT_EXCEEDED, "%s",
                     w ? w : "the request exceeds a size limit of this "
                             "server; send a smaller batch");
    break;
  case CIRCLE_ENOMEM:
  case CIRCLE_EBUSY:
    circle_error_set(err, CIRCLE_ERR_OVERLOADED, "%s",
                     w ? w : "the server is busy; retry after a second");
    break;
  case CIRCLE_ESHUTDOWN:
    circle_error_set(err, CIRCLE_ERR_SHUTTING_DOWN,
                     "the server is shutting down; retry on another "
                     "instance");
    break;
  default:
    circle_error_set(err, CIRCLE_ERR_INTERNAL, "internal error (%s): %s",
                     circle_status_name(status), circle_status_str(status));
    break;
  }
}

/* ======================================================================== */
/* Responses                                                                */
/* ======================================================================== */

/* A response body handed to libmicrohttpd: the buffer, and the exchange
 * whose ex->sent body_read keeps (body_read runs on the connection's
 * thread, only while the answer is being sent: always before the
 * completed callback frees the exchange). */
struct body_src {
  circle_buf buf;
  struct exchange *ex;
};

/* Largest block libmicrohttpd copies out of a body per call. */
#define BODY_BLOCK_BYTES ((size_t)256 << 10)

static void body_free(void *cls) {
  struct body_src *src = cls;
  circle_buf_free(&src->buf);
  free(src);
}

/* libmicrohttpd asks for the block at pos once everything before pos has
 * been written to the socket, so pos is what is known to be sent: a send
 * cut off by the client is logged and counted with it, not with the
 * body's length. */
static ssize_t body_read(void *cls, uint64_t pos, char *dst, size_t max) {
  struct body_src *src = cls;
  if (pos >= src->buf.len) return MHD_CONTENT_READER_END_OF_STREAM;
  size_t n = src->buf.len - (size_t)pos;
  if (n > max) n = max;
  memcpy(dst, src->buf.data + pos, n);
  src->ex->sent = (size_t)pos;
  return (ssize_t)n;
}

/* Queues status + body (taken: *body is reset), with the headers that
 * follow from the status and the exchange (Allow, WWW-Authenticate,
 * Retry-After, Inference-Header-Content-Length, Content-Encoding). This is
 * the only function that queues a response, so logging and metrics see
 * every request. A body whose writing ran out of memory is never sent:
 * MHD_NO closes the connection instead of sending part of an answer. */
enum MHD_Result circle__http_respond(struct exchange *ex, unsigned status,
                                     circle_buf *body,
                                     const char *content_type) {
  struct MHD_Response *resp;
  size_t len = body->len;
  if (body->failed) {
    circle_buf_free(body);
    return MHD_NO;
  }
  if (len == 0 || !body->data) {
    circle_buf_free(body);
    resp = MHD_create_response_from_buffer(0, (void *)"",
                                           MHD_RESPMEM_PERSISTENT);
  } else {
    struct body_src *src = malloc(sizeof *src);
    if (!src) {
      circle_buf_free(body);
      return MHD_NO;
    }
    src->buf = *body;
    src->ex = ex;
    circle_buf_init(body);
    resp = MHD_create_response_from_callback(
        len, len < BODY_BLOCK_BYTES ? len : BODY_BLOCK_BYTES, body_read, src,
        body_free);
    if (!resp) body_free(src);
  }
  if (!resp) return MHD_NO;

  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
  if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW,
                            circle__http_route_allow(ex->route));
  if (status == MHD_HTTP_UNAUTHORIZED)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                            "Bearer realm=\"circled\"");
  if (status == MHD_HTTP_SERVICE_UNAVAILABLE)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
  if (ex->submitted && ex->ok) {
    if (ex->binary) {
      char n[32];
      snprintf(n, sizeof n, "%zu", ex->header_len);
      MHD_add_response_header(resp, "Inference-Header-Content-Length", n);
    }
    if (ex->resp_encoding != ENC_NONE)
      MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_ENCODING,
                              ex->resp_encoding == ENC_GZIP ? "gzip"
                                                            : "deflate");
  }
  if (ex->submitted) {
    char timing[256];
    if (circle__http_phases_format(ex, timing, sizeof timing, ", ", ";dur="))
      MHD_add_response_header(resp, "Server-Timing", timing);
  }
  if (ex->route->compute) /* the body may be compressed */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_VARY, "Accept-Encoding");
  if (ex->close || atomic_load(&ex->srv->draining))
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");

  enum MHD_Result rc = MHD_queue_response(ex->conn, status, resp);
  MHD_destroy_response(resp);
  if (rc == MHD_YES) {
    ex->answered = true;
    ex->status = status;
    ex->bytes = len;
  }
  return rc;
}

/* Sends err in the shape of the request's family. */
enum MHD_Result circle__http_respond_error(struct exchange *ex,
                                           const circle_error *err) {
  circle_buf b;
  circle_buf_init(&b);
  if (ex->fam == FAMILY_OIP)
    circle_oip_error(err, &b);
  else
    circle_json_error(err, &b);
  /* The one place an error's HTTP status is chosen: its table row. */
  int status = circle_error_http(err->kind);
  return circle__http_respond(ex, (unsigned)status, &b, "application/json");
}
