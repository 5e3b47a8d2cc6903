/* dashboard.h -- the page GET /dashboard serves: a self-contained HTML
 * dashboard (src/dashboard.html, embedded at build time) that polls
 * /metrics and charts throughput, latency, loss and the embedding-quality
 * figures over time.
 */
#ifndef CIRCLE_DASHBOARD_H
#define CIRCLE_DASHBOARD_H

#include <stddef.h>

/* Media type of the page. */
#define CIRCLE_DASHBOARD_CONTENT_TYPE "text/html; charset=utf-8"

/* The page: static, NUL-terminated, never freed. *len (when len is not
 * NULL) receives its length without the NUL. Thread-safe. */
const char *circle_dashboard_html(size_t *len);

#endif /* CIRCLE_DASHBOARD_H */
