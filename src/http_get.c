/* http_get.c -- the GET endpoints (health, readiness, /config, the
 * dashboard, OIP metadata), answered on the network thread so that they
 * never wait behind a computation, and the /metrics renderer thread. It
 * keeps true: a /metrics request is suspended exactly once and resumed
 * exactly once, by the renderer, with an exposition rendered after it
 * arrived.
 *
 * Rendering the exposition takes long with many tags (24 MB and hundreds
 * of ms at 1000), so it never runs on a network thread: the request is
 * suspended and queued for the renderer thread, which takes every request
 * waiting, renders once for all of them (each gets a copy) and resumes
 * them. A request is only ever answered by a render that began after it
 * arrived, so it sees every request completed before it; pollers that
 * arrive together share one render. Health checks on the same network
 * thread are answered meanwhile.
 */
#include "http_impl.h"

#include "codec_config.h"
#include "codec_oip.h"
#include "dashboard.h"

/* ======================================================================== */
/* GET /metrics: the renderer thread                                        */
/* ======================================================================== */

/* Renders the whole exposition, with the live gauges, into b. Called
 * without srv->mu: it takes hundreds of ms with many tags. */
static void metrics_render(circle_http *srv, circle_buf *b) {
  circle_metrics_live live = {
      .requests_in_flight = atomic_load(&srv->active),
      .queue_depth = circle_engine_queue_depth(srv->engine),
      .inflight_bytes = atomic_load(&srv->inflight),
      .inflight_bytes_max = srv->opts.max_inflight,
      .engine_threads = circle_engine_threads(srv->engine),
      .draining = atomic_load(&srv->draining),
  };
  circle_buf_init(b);
  circle_metrics_render(srv->metrics, &live, b);
}

/* Queues ex for the renderer and suspends its connection. False when the
 * renderer is not running (the caller renders on its own thread). Takes
 * srv->mu: called without it. */
static bool metrics_queue(struct exchange *ex) {
  circle_http *srv = ex->srv;
  pthread_mutex_lock(&srv->mu);
  bool queued = srv->renderer_started && !srv->render_stop;
  if (queued) {
    ex->next_render = srv->render_head;
    srv->render_head = ex;
    srv->jobs++; /* the drain waits for it like a computation */
    MHD_suspend_connection(ex->conn);
    pthread_cond_signal(&srv->render_cv);
  }
  pthread_mutex_unlock(&srv->mu);
  return queued;
}

/* The renderer: takes every request waiting, renders once, gives each a
 * copy and resumes them; on stop, serves those still waiting first. */
void *circle__http_renderer_main(void *arg) {
  circle_http *srv = arg;
  pthread_mutex_lock(&srv->mu);
  for (;;) {
    struct exchange *batch = srv->render_head;
    srv->render_head = NULL;
    if (!batch) {
      if (srv->render_stop) break;
      pthread_cond_wait(&srv->render_cv, &srv->mu);
      continue;
    }
    pthread_mutex_unlock(&srv->mu);
    circle_buf text;
    metrics_render(srv, &text);
    for (struct exchange *ex = batch; ex; ex = ex->next_render) {
      circle_buf_init(&ex->resp);
      circle_buf_append(&ex->resp, text.data ? text.data : "", text.len);
      if (text.failed) ex->resp.failed = true;
      ex->rendered = true;
    }
    circle_buf_free(&text);
    pthread_mutex_lock(&srv->mu);
    while (batch) {
      struct exchange *ex = batch;
      batch = ex->next_render; /* read before the resume: ex may then go */
      MHD_resume_connection(ex->conn);
      srv->jobs--;
    }
    pthread_cond_broadcast(&srv->cv);
  }
  pthread_mutex_unlock(&srv->mu);
  return NULL;
}

/* ======================================================================== */
/* GET endpoints (answered on the network thread)                           */
/* ======================================================================== */

static enum MHD_Result respond_text(struct exchange *ex, unsigned status,
                                    const char *json) {
  circle_buf b;
  circle_buf_init(&b);
  circle_buf_puts(&b, json);
  return circle__http_respond(ex, status, &b, "application/json");
}

/* Readiness answers: 200 with ready, or 503 with not_ready while draining
 * and with saturated while the compute queue is full (a new computation
 * would get 503: a load balancer should send it elsewhere). */
static enum MHD_Result respond_ready(struct exchange *ex, const char *ready,
                                     const char *not_ready,
                                     const char *saturated) {
  circle_engine *e = ex->srv->engine;
  if (atomic_load(&ex->srv->draining)) return respond_text(ex, 503, not_ready);
  if (circle_engine_queue_depth(e) >= circle_engine_queue_capacity(e))
    return respond_text(ex, 503, saturated);
  return respond_text(ex, 200, ready);
}

/* The route table's GET handlers (http_route.c), one per route. */

enum MHD_Result circle__http_get_healthz(struct exchange *ex) {
  return respond_text(ex, 200, "{\"status\": \"ok\"}");
}

enum MHD_Result circle__http_get_readyz(struct exchange *ex) {
  return respond_ready(ex, "{\"status\": \"ready\"}",
                       "{\"status\": \"draining\"}",
                       "{\"status\": \"saturated\"}");
}

enum MHD_Result circle__http_get_config(struct exchange *ex) {
  circle_http *srv = ex->srv;
  circle_buf b;
  circle_buf_init(&b);
  circle__config_to_json(&b, &srv->opts.defaults, srv->opts.name);
  return circle__http_respond(ex, 200, &b, "application/json");
}

/* Called again once the renderer has resumed the request (ex->rendered). */
enum MHD_Result circle__http_get_metrics(struct exchange *ex) {
  if (ex->rendered || !metrics_queue(ex)) {
    if (!ex->rendered) metrics_render(ex->srv, &ex->resp);
    return circle__http_respond(ex, 200, &ex->resp,
                                CIRCLE_METRICS_CONTENT_TYPE);
  }
  return MHD_YES; /* suspended until the renderer resumes it */
}

enum MHD_Result circle__http_get_dashboard(struct exchange *ex) {
  size_t len;
  const char *page = circle_dashboard_html(&len);
  circle_buf b;
  circle_buf_init(&b);
  circle_buf_append(&b, page, len);
  return circle__http_respond(ex, 200, &b, CIRCLE_DASHBOARD_CONTENT_TYPE);
}

enum MHD_Result circle__http_get_v2_server(struct exchange *ex) {
  circle_buf b;
  circle_buf_init(&b);
  circle_oip_server_metadata(&b, CIRCLE_HTTP_VERSION);
  return circle__http_respond(ex, 200, &b, "application/json");
}

enum MHD_Result circle__http_get_v2_live(struct exchange *ex) {
  return respond_text(ex, 200, "{\"live\": true}");
}

enum MHD_Result circle__http_get_v2_ready(struct exchange *ex) {
  return respond_ready(ex, "{\"ready\": true}", "{\"ready\": false}",
                       "{\"ready\": false}");
}

enum MHD_Result circle__http_get_v2_model(struct exchange *ex) {
  circle_buf b;
  circle_buf_init(&b);
  circle_oip_model_metadata(&b);
  return circle__http_respond(ex, 200, &b, "application/json");
}

enum MHD_Result circle__http_get_v2_model_config(struct exchange *ex) {
  circle_buf b;
  circle_buf_init(&b);
  circle_oip_model_config(&b, &ex->srv->opts.defaults);
  return circle__http_respond(ex, 200, &b, "application/json");
}

enum MHD_Result circle__http_get_v2_model_ready(struct exchange *ex) {
  return respond_ready(ex, "{\"name\": \"circle\", \"ready\": true}",
                       "{\"name\": \"circle\", \"ready\": false}",
                       "{\"name\": \"circle\", \"ready\": false}");
}
