/* test_metrics.c -- the Prometheus registry (src/metrics.c) in-process, and
 * /metrics and /dashboard on the real daemon.
 *
 * What is checked, and against what:
 *  - the exposition is parsed by a strict reader written from the text
 *    format 0.0.4 spec (HELP/TYPE before samples, one contiguous block per
 *    family, metric and label names, escaped label values, Go float
 *    syntax, histogram suffixes); the Python test also runs promtool;
 *  - counts are exact: every observation is known, so every counter,
 *    bucket and _count is compared with the number expected, and sums of
 *    dyadic values (exact in binary) with ==;
 *  - histograms: bucket bounds strictly increase, end with +Inf, counts
 *    never decrease and the +Inf bucket equals _count, for every series;
 *  - the tag cap: with --max-tags N only N client tags get series, the
 *    rest count as "other", and "" stays its own series;
 *  - thread safety: threads record requests and computations while
 *    another renders; the totals must come out exact.
 */
#include <check.h>
#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "circle/circle.h"
#include "dashboard.h"
#include "metrics.h"
#include "util_daemon.h"

/* ======================================================================== */
/* A strict reader of the text exposition format                            */
/* ======================================================================== */

#define MAX_SAMPLES 20000
#define MAX_FAMILIES 256

typedef struct {
  char name[128];   /* sample name, suffix included */
  char labels[512]; /* canonical: k="v",k="v" as written, minus le */
  char le[32];      /* le label of a bucket, "" otherwise */
  double value;
} sample;

typedef struct {
  char name[128];
  char type[16];
  bool help;
} family;

typedef struct {
  sample *s;
  size_t n;
  family f[MAX_FAMILIES];
  size_t nf;
} expo;

static bool name_char(int c, bool first) {
  return isalpha(c) || c == '_' || c == ':' || (!first && isdigit(c));
}

/* A float as Go's ParseFloat reads it (what Prometheus uses). */
static bool parse_value(const char *s, double *v) {
  if (!strcmp(s, "+Inf")) return *v = INFINITY, true;
  if (!strcmp(s, "-Inf")) return *v = -INFINITY, true;
  if (!strcmp(s, "NaN")) return *v = NAN, true;
  char *end;
  *v = strtod(s, &end);
  return end != s && *end == '\0' && isfinite(*v);
}

static family *find_family(expo *e, const char *name) {
  for (size_t i = 0; i < e->nf; i++)
    if (!strcmp(e->f[i].name, name)) return &e->f[i];
  return NULL;
}

/* The family a sample belongs to: its own name, or the name without a
 * histogram suffix when that family is a histogram. */
static family *family_of(expo *e, const char *name) {
  static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
  family *f = find_family(e, name);
  if (f && strcmp(f->type, "histogram")) return f;
  for (size_t k = 0; k < 3; k++) {
    size_t n = strlen(name), sl = strlen(suffixes[k]);
    if (n > sl && !strcmp(name + n - sl, suffixes[k])) {
      char base[128];
      snprintf(base, sizeof base, "%.*s", (int)(n - sl), name);
      family *h = find_family(e, base);
      if (h && !strcmp(h->type, "histogram")) return h;
    }
  }
  return NULL;
}

/* Parses text into *e, asserting every rule of the format as it goes. */
static void parse_expo(const char *text, expo *e) {
  memset(e, 0, sizeof *e);
  e->s = calloc(MAX_SAMPLES, sizeof *e->s);
  ck_assert_ptr_nonnull(e->s);
  family *current = NULL;
  size_t lineno = 0;
  for (const char *p = text; *p;) {
    const char *nl = strchr(p, '\n');
    ck_assert_msg(nl != NULL, "the exposition must end with a newline");
    char line[2048];
    ck_assert_uint_lt((size_t)(nl - p), sizeof line);
    memcpy(line, p, (size_t)(nl - p));
    line[nl - p] = '\0';
    p = nl + 1;
    lineno++;
    ck_assert_msg(line[0] != '\0', "line %zu is empty", lineno);
    if (line[0] == '#') {
      char kind[8], name[128];
      int off = 0;
      ck_assert_msg(sscanf(line, "# %7s %127s %n", kind, name, &off) == 2,
                    "bad comment line %zu: %s", lineno, line);
      for (size_t i = 0; name[i]; i++)
        ck_assert_msg(name_char((unsigned char)name[i], i == 0),
                      "bad metric name in %s", line);
      family *f = find_family(e, name);
      if (!strcmp(kind, "HELP")) {
        ck_assert_msg(!f, "HELP for %s after its family began", name);
        ck_assert_uint_lt(e->nf, MAX_FAMILIES);
        f = &e->f[e->nf++];
        snprintf(f->name, sizeof f->name, "%s", name);
        f->help = true;
        ck_assert_msg(strlen(line + off) > 0, "empty HELP for %s", name);
        current = f;
      } else {
        ck_assert_str_eq(kind, "TYPE");
        ck_assert_msg(f && f == current && !f->type[0],
                      "TYPE for %s must follow its HELP, once", name);
        const char *type = line + off;
        ck_assert_msg(!strcmp(type, "counter") || !strcmp(type, "gauge") ||
                          !strcmp(type, "histogram"),
                      "type %s", type);
        snprintf(f->type, sizeof f->type, "%s", type);
        if (!strcmp(type, "counter"))
          ck_assert_msg(strlen(name) > 6 &&
                            !strcmp(name + strlen(name) - 6, "_total"),
                        "counter %s must end in _total", name);
      }
      continue;
    }
    /* A sample: name{labels} value */
    ck_assert_uint_lt(e->n, MAX_SAMPLES);
    sample *s = &e->s[e->n++];
    size_t i = 0;
    while (name_char((unsigned char)line[i], i == 0)) i++;
    ck_assert_msg(i > 0 && i < sizeof s->name, "bad sample line %s", line);
    memcpy(s->name, line, i);
    family *f = family_of(e, s->name);
    ck_assert_msg(f != NULL && f->type[0], "sample %s has no TYPE", s->name);
    ck_assert_msg(f == current, "sample %s outside its family's block",
                  s->name);
    size_t ll = 0;
    if (line[i] == '{') {
      i++;
      bool first = true;
      while (line[i] != '}') {
        ck_assert_msg(first || line[i] == ',', "bad label list: %s", line);
        if (!first) i++;
        first = false;
        char key[64], val[256];
        size_t k = 0, v = 0;
        while (name_char((unsigned char)line[i], k == 0) && k < 63)
          key[k++] = line[i++];
        key[k] = '\0';
        ck_assert_msg(k > 0 && line[i] == '=' && line[i + 1] == '"',
                      "bad label in %s", line);
        i += 2;
        while (line[i] != '"') {
          ck_assert_msg(line[i] != '\0', "unterminated label value: %s",
                        line);
          if (line[i] == '\\') {
            i++;
            ck_assert_msg(line[i] == '\\' || line[i] == '"' || line[i] == 'n',
                          "bad escape in %s", line);
            val[v++] = line[i] == 'n' ? '\n' : line[i];
          } else {
            val[v++] = line[i];
          }
          i++;
          ck_assert_uint_lt(v, sizeof val);
        }
        val[v] = '\0';
        i++;
        if (!strcmp(key, "le")) {
          ck_assert_uint_lt(strlen(val), sizeof s->le);
          snprintf(s->le, sizeof s->le, "%.31s", val);
        } else {
          ll += (size_t)snprintf(s->labels + ll, sizeof s->labels - ll,
                                 "%s%s=\"%s\"", ll ? "," : "", key, val);
          ck_assert_uint_lt(ll, sizeof s->labels);
        }
      }
      i++;
    }
    ck_assert_msg(line[i] == ' ', "no blank before the value: %s", line);
    ck_assert_msg(parse_value(line + i + 1, &s->value), "bad value: %s",
                  line);
    size_t nl2 = strlen(s->name);
    bool bucket = nl2 > 7 && !strcmp(s->name + nl2 - 7, "_bucket");
    if (!strcmp(f->type, "histogram"))
      ck_assert_msg(bucket == (s->le[0] != '\0'),
                    "le goes with _bucket samples only: %s", line);
  }
  for (size_t k = 0; k < e->nf; k++)
    ck_assert_msg(e->f[k].type[0], "family %s has no TYPE", e->f[k].name);
}

static void expo_free(expo *e) { free(e->s); }

/* The value of the sample name{labels} (labels as canonical text, "" for
 * none); NAN when absent. */
static double value_of(const expo *e, const char *name, const char *labels) {
  for (size_t i = 0; i < e->n; i++)
    if (!strcmp(e->s[i].name, name) && !strcmp(e->s[i].labels, labels) &&
        !e->s[i].le[0])
      return e->s[i].value;
  return NAN;
}

static double bucket_of(const expo *e, const char *name, const char *labels,
                        const char *le) {
  for (size_t i = 0; i < e->n; i++)
    if (!strcmp(e->s[i].name, name) && !strcmp(e->s[i].labels, labels) &&
        !strcmp(e->s[i].le, le))
      return e->s[i].value;
  return NAN;
}

static bool has_series(const expo *e, const char *name, const char *labels) {
  return !isnan(value_of(e, name, labels));
}

/* Checks every histogram series: le strictly increasing and ending in
 * +Inf, cumulative counts never decreasing, +Inf == _count. Returns the
 * number of series checked. */
static size_t check_histograms(const expo *e) {
  size_t series = 0;
  for (size_t i = 0; i < e->n;) {
    const sample *s = &e->s[i];
    if (!s->le[0]) {
      i++;
      continue;
    }
    double prev_le = -INFINITY, prev_count = 0;
    size_t j = i;
    for (; j < e->n && !strcmp(e->s[j].name, s->name) &&
           !strcmp(e->s[j].labels, s->labels) && e->s[j].le[0];
         j++) {
      double le;
      ck_assert_msg(parse_value(e->s[j].le, &le), "bad le %s", e->s[j].le);
      ck_assert_msg(le > prev_le, "%s{%s}: le %s not above the one before",
                    s->name, s->labels, e->s[j].le);
      ck_assert_msg(e->s[j].value >= prev_count,
                    "%s{%s}: bucket le=%s holds fewer than the one before",
                    s->name, s->labels, e->s[j].le);
      prev_le = le;
      prev_count = e->s[j].value;
    }
    ck_assert_msg(isinf(prev_le) && prev_le > 0, "%s{%s} lacks le=+Inf",
                  s->name, s->labels);
    char count_name[140];
    snprintf(count_name, sizeof count_name, "%.*s_count",
             (int)(strlen(s->name) - 7), s->name);
    ck_assert_msg(value_of(e, count_name, s->labels) == prev_count,
                  "%s{%s}: _count differs from the +Inf bucket", count_name,
                  s->labels);
    series++;
    i = j;
  }
  return series;
}

static char *render(circle_metrics *m, const circle_metrics_live *live) {
  circle_buf b;
  circle_buf_init(&b);
  ck_assert_int_eq(circle_metrics_render(m, live, &b), CIRCLE_OK);
  circle_buf_puts(&b, ""); /* ensure NUL room */
  char *text = malloc(b.len + 1);
  ck_assert_ptr_nonnull(text);
  memcpy(text, b.data, b.len);
  text[b.len] = '\0';
  circle_buf_free(&b);
  return text;
}

static void render_parse(circle_metrics *m, const circle_metrics_live *live,
                         expo *e) {
  char *text = render(m, live);
  parse_expo(text, e);
  free(text);
}

/* ======================================================================== */
/* Inputs for observe_compute                                               */
/* ======================================================================== */

typedef struct {
  circle_config cfg;
  circle_input in;
  circle_output out;
  float lv[4];
} compute_case;

/* Four rows, scalar loss `loss`, stats with both pair kinds. */
static void make_case(compute_case *c, double loss) {
  memset(c, 0, sizeof *c);
  circle_config_init(&c->cfg);
  c->in.n = 4;
  c->in.d = 2;
  c->out.want = CIRCLE_OUT_LOSS | CIRCLE_OUT_STATS;
  c->out.loss = loss;
  c->out.stats = (circle_stats){.pos_row_frac = 0.5,
                                .mean_pos_sim = 0.75,
                                .min_pos_sim = 0.5,
                                .mean_neg_sim = -0.25,
                                .max_neg_sim = 0.125,
                                .sim_gap = 1.0,
                                .hard_neg_frac = 0.25,
                                .recall_at_1 = 1.0,
                                .norm_dev_mean = 0.0,
                                .norm_dev_max = 0.0,
                                .pos_pairs = 4,
                                .neg_pairs = 8,
                                .hard_neg_base = 6,
                                .nn_rows = 4};
}

static circle_metrics *new_metrics(size_t max_tags) {
  circle_metrics *m = NULL;
  ck_assert_int_eq(circle_metrics_init(&m, max_tags, "9.9.9"), CIRCLE_OK);
  ck_assert_ptr_nonnull(m);
  return m;
}

/* ======================================================================== */
/* Registry tests                                                           */
/* ======================================================================== */

START_TEST(metrics_should_refuse_bad_arguments) {
  circle_metrics *m = (circle_metrics *)0x1;
  ck_assert_int_eq(circle_metrics_init(NULL, 1, "v"), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_metrics_init(&m, CIRCLE_METRICS_MAX_TAGS + 1, "v"),
                   CIRCLE_EINVAL);
  ck_assert_int_eq(circle_metrics_init(&m, 1, NULL), CIRCLE_EINVAL);
  ck_assert_ptr_eq(m, (circle_metrics *)0x1); /* untouched on failure */
  m = new_metrics(0);
  circle_buf b;
  circle_buf_init(&b);
  ck_assert_int_eq(circle_metrics_render(NULL, NULL, &b), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_metrics_render(m, NULL, NULL), CIRCLE_EINVAL);
  ck_assert_uint_eq(b.len, 0);
  /* NULL registries and arguments are no-ops, never crashes. */
  circle_metrics_observe_request(NULL, CIRCLE_ENDPOINT_V1_LOSS, 200, 1, 1, 1);
  compute_case c;
  make_case(&c, 1);
  circle_metrics_observe_compute(NULL, "t", &c.cfg, &c.in, &c.out);
  circle_metrics_observe_compute(m, "t", NULL, &c.in, &c.out);
  circle_metrics_observe_compute(m, "t", &c.cfg, NULL, &c.out);
  circle_metrics_observe_compute(m, "t", &c.cfg, &c.in, NULL);
  ck_assert_str_eq(circle_endpoint_label(CIRCLE_ENDPOINT_COUNT), "other");
  ck_assert_str_eq(circle_endpoint_label((circle_endpoint)-1), "other");
  ck_assert_str_eq(circle_endpoint_label(CIRCLE_ENDPOINT_V1_LOSS), "/v1/loss");
  expo e;
  render_parse(m, NULL, &e);
  ck_assert_double_eq(value_of(&e, "circled_computations_total", ""), 0);
  expo_free(&e);
  circle_metrics_free(m);
  circle_metrics_free(NULL);
}
END_TEST

START_TEST(metrics_should_render_a_valid_exposition_when_empty_and_full) {
  circle_metrics *m = new_metrics(4);
  expo e;
  render_parse(m, NULL, &e);
  ck_assert(has_series(&e, "process_start_time_seconds", ""));
  ck_assert(!has_series(&e, "circled_requests_in_flight", "")); /* no live */
  expo_free(&e);

  for (int ep = 0; ep < CIRCLE_ENDPOINT_COUNT; ep++)
    circle_metrics_observe_request(m, (circle_endpoint)ep, 200, 0.01, 10, 20);
  compute_case c;
  make_case(&c, 2.5);
  circle_metrics_observe_compute(m, "run-1", &c.cfg, &c.in, &c.out);
  circle_metrics_observe_compute(m, NULL, &c.cfg, &c.in, &c.out);
  circle_metrics_live live = {.requests_in_flight = 3,
                              .queue_depth = 7,
                              .inflight_bytes = 1024,
                              .inflight_bytes_max = 4096,
                              .engine_threads = 2,
                              .draining = true};
  render_parse(m, &live, &e);
  ck_assert_double_eq(value_of(&e, "circled_requests_in_flight", ""), 3);
  ck_assert_double_eq(value_of(&e, "circled_engine_queue_depth", ""), 7);
  ck_assert_double_eq(value_of(&e, "circled_inflight_bytes", ""), 1024);
  ck_assert_double_eq(value_of(&e, "circled_inflight_bytes_max", ""), 4096);
  ck_assert_double_eq(value_of(&e, "circled_engine_threads", ""), 2);
  ck_assert_double_eq(value_of(&e, "circled_draining", ""), 1);
  char labels[256];
  snprintf(labels, sizeof labels,
           "version=\"9.9.9\",openblas_core=\"%s\",compiler=\"%s\"",
           circle_blas_corename(),
#if defined(__clang__)
           "clang " __clang_version__
#else
           "gcc " __VERSION__
#endif
  );
  ck_assert_msg(value_of(&e, "circled_build_info", labels) == 1,
                "build info with labels %s", labels);
  double start = value_of(&e, "process_start_time_seconds", "");
  ck_assert(start > 1.6e9 && start <= (double)time(NULL) + 1);
  ck_assert(value_of(&e, "process_resident_memory_bytes", "") > 0);
  ck_assert(check_histograms(&e) >= CIRCLE_ENDPOINT_COUNT + 2 * 11);
  expo_free(&e);
  circle_metrics_free(m);
}
END_TEST

START_TEST(metrics_should_count_requests_by_endpoint_and_status) {
  circle_metrics *m = new_metrics(4);
  for (int i = 0; i < 3; i++)
    circle_metrics_observe_request(m, CIRCLE_ENDPOINT_V1_LOSS, 200, 0.25, 100,
                                   1000);
  circle_metrics_observe_request(m, CIRCLE_ENDPOINT_V1_LOSS, 400, 0.5, 7, 70);
  circle_metrics_observe_request(m, CIRCLE_ENDPOINT_V2_INFER, 503, 0.125, 0,
                                 5);
  circle_metrics_observe_request(m, CIRCLE_ENDPOINT_V2_INFER, 0, 30.5, 9, 0);
  circle_metrics_observe_request(m, (circle_endpoint)99, 404, 0, 0, 1);
  circle_metrics_observe_request(m, CIRCLE_ENDPOINT_HEALTHZ, 99999, NAN, 0, 0);
  expo e;
  render_parse(m, NULL, &e);
  const char *rq = "circled_requests_total";
  ck_assert_double_eq(
      value_of(&e, rq, "endpoint=\"/v1/loss\",status=\"200\""), 3);
  ck_assert_double_eq(
      value_of(&e, rq, "endpoint=\"/v1/loss\",status=\"400\""), 1);
  ck_assert_double_eq(
      value_of(&e, rq, "endpoint=\"/v2/models/circle/infer\",status=\"503\""),
      1);
  ck_assert_double_eq(
      value_of(&e, rq, "endpoint=\"/v2/models/circle/infer\",status=\"none\""),
      1);
  ck_assert_double_eq(value_of(&e, rq, "endpoint=\"other\",status=\"404\""),
                      1);
  ck_assert_double_eq(value_of(&e, rq, "endpoint=\"/healthz\",status=\"none\""),
                      1);
  ck_assert(!has_series(&e, rq, "endpoint=\"/config\",status=\"200\""));
  ck_assert_double_eq(
      value_of(&e, "circled_request_bytes_total", "endpoint=\"/v1/loss\""),
      307);
  ck_assert_double_eq(
      value_of(&e, "circled_response_bytes_total", "endpoint=\"/v1/loss\""),
      3070);
  /* Latency: 3 x 0.25 + 0.5, exact in binary. */
  ck_assert_double_eq(
      value_of(&e, "circled_request_duration_seconds_sum",
               "endpoint=\"/v1/loss\""),
      1.25);
  ck_assert_double_eq(bucket_of(&e, "circled_request_duration_seconds_bucket",
                                "endpoint=\"/v1/loss\"", "0.1"),
                      0);
  ck_assert_double_eq(bucket_of(&e, "circled_request_duration_seconds_bucket",
                                "endpoint=\"/v1/loss\"", "0.25"),
                      3); /* le is inclusive */
  ck_assert_double_eq(bucket_of(&e, "circled_request_duration_seconds_bucket",
                                "endpoint=\"/v1/loss\"", "0.5"),
                      4);
  /* 30.5 s lands in le=60; a NaN duration is recorded as 0. */
  ck_assert_double_eq(bucket_of(&e, "circled_request_duration_seconds_bucket",
                                "endpoint=\"/v2/models/circle/infer\"", "30"),
                      1);
  ck_assert_double_eq(bucket_of(&e, "circled_request_duration_seconds_bucket",
                                "endpoint=\"/healthz\"", "0.0005"),
                      1);
  check_histograms(&e);
  expo_free(&e);
  circle_metrics_free(m);
}
END_TEST

START_TEST(metrics_should_cap_distinct_tags_and_count_the_rest_as_other) {
  circle_metrics *m = new_metrics(2);
  compute_case c;
  make_case(&c, 1.0);
  const char *tags[] = {"a", "b", "c", "a", "d", "", NULL, "other", "b"};
  for (size_t i = 0; i < sizeof tags / sizeof tags[0]; i++)
    circle_metrics_observe_compute(m, tags[i], &c.cfg, &c.in, &c.out);
  expo e;
  render_parse(m, NULL, &e);
  const char *n = "circled_tag_computations_total";
  ck_assert_double_eq(value_of(&e, n, "tag=\"a\""), 2);
  ck_assert_double_eq(value_of(&e, n, "tag=\"b\""), 2);
  ck_assert(!has_series(&e, n, "tag=\"c\""));
  ck_assert(!has_series(&e, n, "tag=\"d\""));
  ck_assert_double_eq(value_of(&e, n, "tag=\"other\""), 3); /* c, d, other */
  ck_assert_double_eq(value_of(&e, n, "tag=\"\""), 2);      /* "" and NULL */
  ck_assert_double_eq(value_of(&e, "circled_tags", ""), 2);
  ck_assert_double_eq(value_of(&e, "circled_tags_max", ""), 2);
  ck_assert_double_eq(value_of(&e, "circled_tags_overflow_total", ""), 2);
  ck_assert_double_eq(value_of(&e, "circled_computations_total", ""), 9);
  /* Every per-tag family has exactly the four label values. */
  size_t count = 0;
  for (size_t i = 0; i < e.n; i++)
    if (!strcmp(e.s[i].name, "circled_quality_recall_at_1_last")) count++;
  ck_assert_uint_eq(count, 4);
  expo_free(&e);

  /* A thousand more distinct tags add no series. */
  render_parse(m, NULL, &e);
  size_t before = e.n;
  expo_free(&e);
  for (int i = 0; i < 1000; i++) {
    char t[32];
    snprintf(t, sizeof t, "flood-%d", i);
    circle_metrics_observe_compute(m, t, &c.cfg, &c.in, &c.out);
  }
  render_parse(m, NULL, &e);
  ck_assert_uint_eq(e.n, before);
  ck_assert_double_eq(value_of(&e, n, "tag=\"other\""), 1003);
  ck_assert_double_eq(value_of(&e, "circled_tags_overflow_total", ""), 1002);
  expo_free(&e);
  circle_metrics_free(m);

  /* --max-tags 0: every client tag is "other". */
  m = new_metrics(0);
  circle_metrics_observe_compute(m, "x", &c.cfg, &c.in, &c.out);
  render_parse(m, NULL, &e);
  ck_assert_double_eq(value_of(&e, n, "tag=\"other\""), 1);
  ck_assert(!has_series(&e, n, "tag=\"x\""));
  expo_free(&e);
  circle_metrics_free(m);
}
END_TEST

START_TEST(metrics_should_keep_histogram_buckets_monotonic) {
  circle_metrics *m = new_metrics(3);
  compute_case c;
  /* Values across and beyond every bucket range, negative ones included. */
  const double xs[] = {-5,  -1,   -0.3, 0,   1e-9, 0.001, 0.05, 0.33,
                       0.5, 0.99, 1,    1.5, 3,    17,    1e3,  1e12};
  for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++) {
    make_case(&c, fabs(xs[i]));
    circle_stats *s = &c.out.stats;
    s->mean_pos_sim = s->min_pos_sim = s->mean_neg_sim = s->max_neg_sim = xs[i];
    s->sim_gap = xs[i];
    s->pos_row_frac = s->hard_neg_frac = s->recall_at_1 = fabs(xs[i]);
    s->norm_dev_mean = s->norm_dev_max = fabs(xs[i]);
    c.in.n = (size_t)(i * 4097 + 1);
    circle_metrics_observe_compute(m, i % 2 ? "odd" : "even", &c.cfg, &c.in,
                                   &c.out);
    circle_metrics_observe_request(m, CIRCLE_ENDPOINT_V1_LOSS, 200,
                                   fabs(xs[i]), 0, 0);
  }
  expo e;
  render_parse(m, NULL, &e);
  /* 1 latency + rows + 11 figures x 2 tags. */
  ck_assert_uint_eq(check_histograms(&e), 1 + 1 + 22);
  ck_assert_double_eq(value_of(&e, "circled_batch_rows_count", ""), 16);
  ck_assert_double_eq(bucket_of(&e, "circled_batch_rows_bucket", "", "1"), 1);
  ck_assert_double_eq(
      bucket_of(&e, "circled_quality_mean_pos_sim_bucket", "tag=\"even\"", "-1"),
      1); /* -5; -1 went to "odd" */
  ck_assert_double_eq(
      bucket_of(&e, "circled_quality_mean_pos_sim_bucket", "tag=\"even\"",
                "+Inf"),
      8);
  expo_free(&e);
  circle_metrics_free(m);
}
END_TEST

START_TEST(metrics_should_record_last_values_and_skip_empty_sets) {
  circle_metrics *m = new_metrics(8);
  compute_case c;
  make_case(&c, 2.5);
  circle_metrics_observe_compute(m, "t", &c.cfg, &c.in, &c.out);
  make_case(&c, 0.5);
  c.out.stats.recall_at_1 = 0.25;
  circle_metrics_observe_compute(m, "t", &c.cfg, &c.in, &c.out);
  expo e;
  render_parse(m, NULL, &e);
  ck_assert_double_eq(value_of(&e, "circled_quality_loss_last", "tag=\"t\""),
                      0.5);
  ck_assert_double_eq(value_of(&e, "circled_quality_loss_sum", "tag=\"t\""),
                      3.0);
  ck_assert_double_eq(
      value_of(&e, "circled_quality_recall_at_1_last", "tag=\"t\""), 0.25);
  ck_assert_double_eq(
      value_of(&e, "circled_quality_recall_at_1_sum", "tag=\"t\""), 1.25);
  ck_assert_double_eq(
      value_of(&e, "circled_tag_positive_pairs_total", "tag=\"t\""), 8);
  ck_assert_double_eq(
      value_of(&e, "circled_tag_negative_pairs_total", "tag=\"t\""), 16);
  ck_assert_double_eq(value_of(&e, "circled_tag_rows_total", "tag=\"t\""), 8);
  expo_free(&e);

  /* One row, no reference set: no positive pair, no negative pair, no
   * neighbour. The engine reports 0 for those figures; none is recorded. */
  make_case(&c, 0.0);
  c.in.n = 1;
  c.out.stats = (circle_stats){.pos_row_frac = 0, .norm_dev_mean = 0.5,
                               .norm_dev_max = 0.5};
  circle_metrics_observe_compute(m, "single", &c.cfg, &c.in, &c.out);
  /* Negatives only. */
  make_case(&c, 1.0);
  c.out.stats.pos_pairs = 0;
  c.out.stats.hard_neg_base = 0;
  circle_metrics_observe_compute(m, "negonly", &c.cfg, &c.in, &c.out);
  /* Both kinds of pair, but no row with both: no hard-negative fraction
   * (the engine reports 0 over an empty set). */
  make_case(&c, 1.0);
  c.out.stats.hard_neg_frac = 0;
  c.out.stats.hard_neg_base = 0;
  circle_metrics_observe_compute(m, "split", &c.cfg, &c.in, &c.out);
  /* Loss not asked for: no loss recorded. */
  make_case(&c, 123.0);
  c.out.want = CIRCLE_OUT_STATS;
  circle_metrics_observe_compute(m, "noloss", &c.cfg, &c.in, &c.out);
  render_parse(m, NULL, &e);
  ck_assert(has_series(&e, "circled_quality_norm_dev_max_last", "tag=\"single\""));
  ck_assert(has_series(&e, "circled_quality_loss_last", "tag=\"single\""));
  const char *absent[] = {"mean_pos_sim", "min_pos_sim", "mean_neg_sim",
                          "max_neg_sim",  "sim_gap",     "hard_neg_frac",
                          "recall_at_1"};
  for (size_t i = 0; i < sizeof absent / sizeof absent[0]; i++) {
    char name[96];
    snprintf(name, sizeof name, "circled_quality_%s_last", absent[i]);
    ck_assert_msg(!has_series(&e, name, "tag=\"single\""), "%s", name);
  }
  ck_assert(!has_series(&e, "circled_quality_mean_pos_sim_last", "tag=\"negonly\""));
  ck_assert(!has_series(&e, "circled_quality_sim_gap_last", "tag=\"negonly\""));
  ck_assert(!has_series(&e, "circled_quality_hard_neg_frac_last", "tag=\"negonly\""));
  ck_assert(!has_series(&e, "circled_quality_hard_neg_frac_last", "tag=\"split\""));
  ck_assert(has_series(&e, "circled_quality_sim_gap_last", "tag=\"split\""));
  ck_assert(has_series(&e, "circled_quality_mean_neg_sim_last", "tag=\"negonly\""));
  ck_assert(has_series(&e, "circled_quality_recall_at_1_last", "tag=\"negonly\""));
  ck_assert(!has_series(&e, "circled_quality_loss_last", "tag=\"noloss\""));
  ck_assert(has_series(&e, "circled_quality_recall_at_1_last", "tag=\"noloss\""));
  check_histograms(&e);
  expo_free(&e);
  circle_metrics_free(m);
}
END_TEST

/* True when the exposition has any sample of the family `name` (its
 * histogram suffixes included), whatever its labels. */
static bool has_family(const expo *e, const char *name) {
  size_t n = strlen(name);
  for (size_t i = 0; i < e->n; i++)
    if (!strncmp(e->s[i].name, name, n) &&
        (!e->s[i].name[n] || !strcmp(e->s[i].name + n, "_bucket") ||
         !strcmp(e->s[i].name + n, "_sum") || !strcmp(e->s[i].name + n, "_count")))
      return true;
  return false;
}

static const char *const RETRIEVAL_FIGS[] = {"precision_at_1", "r_precision",
                                             "map_at_r"};

/* The three retrieval figures of one tag: true when all have series, false
 * when none has; a mix fails the test. */
static bool retrieval_recorded(const expo *e, const char *tag) {
  char labels[96], name[96];
  snprintf(labels, sizeof labels, "tag=\"%s\"", tag);
  int seen = 0;
  for (size_t k = 0; k < 3; k++) {
    snprintf(name, sizeof name, "circled_quality_%s_last", RETRIEVAL_FIGS[k]);
    bool last = has_series(e, name, labels);
    snprintf(name, sizeof name, "circled_quality_%s_count", RETRIEVAL_FIGS[k]);
    ck_assert_msg(last == has_series(e, name, labels),
                  "tag %s: %s has a _last gauge without a histogram or the "
                  "other way round", tag, RETRIEVAL_FIGS[k]);
    seen += last;
  }
  ck_assert_msg(seen == 0 || seen == 3, "tag %s: %d of the 3 retrieval figures",
                tag, seen);
  return seen == 3;
}

START_TEST(metrics_should_record_retrieval_figures_only_when_asked_over_queries) {
  circle_metrics *m = new_metrics(8);
  compute_case c;
  expo e;

  /* Stats but no retrieval asked for: no retrieval family at all, even
   * though the output struct holds (stale) figures. */
  make_case(&c, 1.0);
  c.out.retrieval = (circle_retrieval){.precision_at_1 = 0.5,
                                       .r_precision = 0.5,
                                       .map_at_r = 0.5,
                                       .queries = 4};
  circle_metrics_observe_compute(m, "unasked", &c.cfg, &c.in, &c.out);
  render_parse(m, NULL, &e);
  for (size_t k = 0; k < 3; k++) {
    char name[96];
    snprintf(name, sizeof name, "circled_quality_%s", RETRIEVAL_FIGS[k]);
    ck_assert_msg(!has_family(&e, name), "%s rendered with no figure", name);
    snprintf(name, sizeof name, "circled_quality_%s_last", RETRIEVAL_FIGS[k]);
    ck_assert_msg(!has_family(&e, name), "%s rendered with no figure", name);
  }
  check_histograms(&e);
  expo_free(&e);

  /* Asked for, two requests under "ret": last values, exact sums (dyadic
   * values), counts and buckets per figure. */
  make_case(&c, 1.0);
  c.out.want |= CIRCLE_OUT_RETRIEVAL;
  c.out.retrieval = (circle_retrieval){.precision_at_1 = 0.75,
                                       .r_precision = 0.5,
                                       .map_at_r = 0.375,
                                       .queries = 4};
  circle_metrics_observe_compute(m, "ret", &c.cfg, &c.in, &c.out);
  c.out.retrieval = (circle_retrieval){.precision_at_1 = 1.0,
                                       .r_precision = 0.25,
                                       .map_at_r = 0.125,
                                       .queries = 2};
  circle_metrics_observe_compute(m, "ret", &c.cfg, &c.in, &c.out);
  /* A 0 over at least one query is a measurement, and is recorded. */
  c.out.retrieval = (circle_retrieval){.queries = 3};
  circle_metrics_observe_compute(m, "zero", &c.cfg, &c.in, &c.out);
  /* Asked for, but no query (every row lone): the engine's zeros are not
   * recorded; the other figures of the request still are. */
  c.out.retrieval = (circle_retrieval){.queries = 0};
  circle_metrics_observe_compute(m, "lone", &c.cfg, &c.in, &c.out);
  /* Retrieval alone: its figures and nothing else of the quality set. */
  make_case(&c, 7.0);
  c.out.want = CIRCLE_OUT_RETRIEVAL;
  c.out.retrieval = (circle_retrieval){.precision_at_1 = 0.5,
                                       .r_precision = 0.5,
                                       .map_at_r = 0.25,
                                       .queries = 1};
  circle_metrics_observe_compute(m, "only", &c.cfg, &c.in, &c.out);
  /* A non-finite figure is dropped by itself, as every figure is. */
  c.out.retrieval.precision_at_1 = NAN;
  circle_metrics_observe_compute(m, "nan", &c.cfg, &c.in, &c.out);
  render_parse(m, NULL, &e);

  const char *rp = "circled_quality_r_precision";
  ck_assert(retrieval_recorded(&e, "ret"));
  ck_assert_double_eq(
      value_of(&e, "circled_quality_precision_at_1_last", "tag=\"ret\""), 1.0);
  ck_assert_double_eq(
      value_of(&e, "circled_quality_r_precision_last", "tag=\"ret\""), 0.25);
  ck_assert_double_eq(
      value_of(&e, "circled_quality_map_at_r_last", "tag=\"ret\""), 0.125);
  ck_assert_double_eq(
      value_of(&e, "circled_quality_precision_at_1_sum", "tag=\"ret\""), 1.75);
  ck_assert_double_eq(
      value_of(&e, "circled_quality_r_precision_sum", "tag=\"ret\""), 0.75);
  ck_assert_double_eq(
      value_of(&e, "circled_quality_map_at_r_sum", "tag=\"ret\""), 0.5);
  for (size_t k = 0; k < 3; k++) {
    char name[96];
    snprintf(name, sizeof name, "circled_quality_%s_count", RETRIEVAL_FIGS[k]);
    ck_assert_double_eq(value_of(&e, name, "tag=\"ret\""), 2);
  }
  /* Fraction buckets (le inclusive): R-precision 0.5 and 0.25. */
  ck_assert_double_eq(bucket_of(&e, "circled_quality_r_precision_bucket",
                                "tag=\"ret\"", "0.2"),
                      0);
  ck_assert_double_eq(bucket_of(&e, "circled_quality_r_precision_bucket",
                                "tag=\"ret\"", "0.3"),
                      1);
  ck_assert_double_eq(bucket_of(&e, "circled_quality_r_precision_bucket",
                                "tag=\"ret\"", "0.5"),
                      2);
  ck_assert(has_series(&e, "circled_quality_recall_at_1_last", "tag=\"ret\""));

  ck_assert(retrieval_recorded(&e, "zero"));
  ck_assert_double_eq(value_of(&e, "circled_quality_map_at_r_last", "tag=\"zero\""),
                      0);
  ck_assert_double_eq(bucket_of(&e, "circled_quality_map_at_r_bucket",
                                "tag=\"zero\"", "0.01"),
                      1);

  ck_assert(!retrieval_recorded(&e, "lone"));
  ck_assert(has_series(&e, "circled_quality_recall_at_1_last", "tag=\"lone\""));
  ck_assert_double_eq(
      value_of(&e, "circled_tag_computations_total", "tag=\"lone\""), 1);

  ck_assert(retrieval_recorded(&e, "only"));
  ck_assert_double_eq(value_of(&e, "circled_quality_map_at_r_last", "tag=\"only\""),
                      0.25);
  ck_assert(!has_series(&e, "circled_quality_loss_last", "tag=\"only\""));
  ck_assert(!has_series(&e, "circled_quality_recall_at_1_last", "tag=\"only\""));

  ck_assert(!has_series(&e, "circled_quality_precision_at_1_last", "tag=\"nan\""));
  ck_assert(has_series(&e, "circled_quality_map_at_r_last", "tag=\"nan\""));

  ck_assert(!retrieval_recorded(&e, "unasked"));
  /* Series only for the tags that had a figure: ret, zero, only, nan. */
  size_t tags = 0;
  char last[96];
  snprintf(last, sizeof last, "%s_last", rp);
  for (size_t i = 0; i < e.n; i++)
    if (!strcmp(e.s[i].name, last)) tags++;
  ck_assert_uint_eq(tags, 4);
  check_histograms(&e);
  expo_free(&e);
  circle_metrics_free(m);
}
END_TEST

START_TEST(metrics_should_record_the_mean_loss_for_elementwise_reductions) {
  circle_metrics *m = new_metrics(8);
  compute_case c;
  make_case(&c, 99.0);
  c.cfg.reduction = CIRCLE_REDUCTION_NONE;
  c.lv[0] = 1, c.lv[1] = 2, c.lv[2] = 3, c.lv[3] = 6;
  c.out.loss_values = c.lv;
  circle_metrics_observe_compute(m, "f32", &c.cfg, &c.in, &c.out);
  double lv64[4] = {0.5, 0.5, 0.25, 0.75};
  c.cfg.dtype = CIRCLE_DTYPE_FLOAT64;
  c.cfg.reduction = CIRCLE_REDUCTION_NULL;
  c.out.loss_values = lv64;
  circle_metrics_observe_compute(m, "f64", &c.cfg, &c.in, &c.out);
  c.out.loss_values = NULL; /* not computed: nothing recorded */
  circle_metrics_observe_compute(m, "none", &c.cfg, &c.in, &c.out);
  expo e;
  render_parse(m, NULL, &e);
  ck_assert_double_eq(value_of(&e, "circled_quality_loss_last", "tag=\"f32\""),
                      3.0);
  ck_assert_double_eq(value_of(&e, "circled_quality_loss_last", "tag=\"f64\""),
                      0.5);
  ck_assert(!has_series(&e, "circled_quality_loss_last", "tag=\"none\""));
  expo_free(&e);
  circle_metrics_free(m);
}
END_TEST

START_TEST(metrics_should_escape_label_values) {
  circle_metrics *m = new_metrics(8);
  compute_case c;
  make_case(&c, 1.0);
  circle_metrics_observe_compute(m, "q\"b\\s\nn", &c.cfg, &c.in, &c.out);
  char *text = render(m, NULL);
  ck_assert_ptr_nonnull(
      strstr(text, "circled_tag_computations_total{tag=\"q\\\"b\\\\s\\nn\"} 1\n"));
  expo e;
  parse_expo(text, &e);
  ck_assert_double_eq(
      value_of(&e, "circled_tag_computations_total", "tag=\"q\"b\\s\nn\""), 1);
  expo_free(&e);
  free(text);
  circle_metrics_free(m);
}
END_TEST

/* ---- thread safety ------------------------------------------------------ */

#define T_REQ_THREADS 4
#define T_REQS 200000
#define T_COMP_THREADS 3
#define T_COMPS 3000

typedef struct {
  circle_metrics *m;
  int id;
  atomic_bool *stop;
} worker_arg;

/* Recording threads start together, so that they really overlap. */
static pthread_barrier_t g_go;

static void *req_worker(void *p) {
  worker_arg *a = p;
  pthread_barrier_wait(&g_go);
  for (int i = 0; i < T_REQS; i++)
    circle_metrics_observe_request(a->m,
                                   i % 2 ? CIRCLE_ENDPOINT_V1_LOSS
                                         : CIRCLE_ENDPOINT_V2_INFER,
                                   i % 3 ? 200 : 503, 0.0078125, 3, 5);
  return NULL;
}

static void *comp_worker(void *p) {
  worker_arg *a = p;
  compute_case c;
  make_case(&c, 0.5);
  pthread_barrier_wait(&g_go);
  for (int i = 0; i < T_COMPS; i++) {
    char tag[16];
    snprintf(tag, sizeof tag, "t%d", (i + a->id) % 6); /* 6 tags, cap 4 */
    circle_metrics_observe_compute(a->m, tag, &c.cfg, &c.in, &c.out);
  }
  return NULL;
}

static void *render_worker(void *p) {
  worker_arg *a = p;
  while (!atomic_load(a->stop)) {
    expo e;
    render_parse(a->m, NULL, &e);
    check_histograms(&e);
    expo_free(&e);
  }
  return NULL;
}

START_TEST(metrics_should_stay_exact_under_concurrent_updates) {
  circle_metrics *m = new_metrics(4);
  atomic_bool stop;
  atomic_init(&stop, false);
  pthread_barrier_init(&g_go, NULL, T_REQ_THREADS + T_COMP_THREADS);
  pthread_t rt, rq[T_REQ_THREADS], cp[T_COMP_THREADS];
  worker_arg ra = {m, 0, &stop}, args[T_REQ_THREADS + T_COMP_THREADS];
  ck_assert_int_eq(pthread_create(&rt, NULL, render_worker, &ra), 0);
  for (int i = 0; i < T_REQ_THREADS; i++) {
    args[i] = (worker_arg){m, i, &stop};
    ck_assert_int_eq(pthread_create(&rq[i], NULL, req_worker, &args[i]), 0);
  }
  for (int i = 0; i < T_COMP_THREADS; i++) {
    args[T_REQ_THREADS + i] = (worker_arg){m, i, &stop};
    ck_assert_int_eq(
        pthread_create(&cp[i], NULL, comp_worker, &args[T_REQ_THREADS + i]), 0);
  }
  for (int i = 0; i < T_REQ_THREADS; i++) pthread_join(rq[i], NULL);
  for (int i = 0; i < T_COMP_THREADS; i++) pthread_join(cp[i], NULL);
  atomic_store(&stop, true);
  pthread_join(rt, NULL);
  pthread_barrier_destroy(&g_go);

  expo e;
  render_parse(m, NULL, &e);
  /* Per thread: i odd -> v1, even -> v2; i % 3 == 0 -> 503. */
  double v1_200 = 0, v1_503 = 0, v2_200 = 0, v2_503 = 0;
  for (int i = 0; i < T_REQS; i++) {
    bool v1 = i % 2, ok = i % 3;
    *(v1 ? (ok ? &v1_200 : &v1_503) : (ok ? &v2_200 : &v2_503)) += 1;
  }
  const char *rq_name = "circled_requests_total";
  ck_assert_double_eq(
      value_of(&e, rq_name, "endpoint=\"/v1/loss\",status=\"200\""),
      T_REQ_THREADS * v1_200);
  ck_assert_double_eq(
      value_of(&e, rq_name, "endpoint=\"/v1/loss\",status=\"503\""),
      T_REQ_THREADS * v1_503);
  ck_assert_double_eq(
      value_of(&e, rq_name, "endpoint=\"/v2/models/circle/infer\",status=\"200\""),
      T_REQ_THREADS * v2_200);
  /* The latency sum is exact: 2^-7 per request, far below 2^53 ulps. */
  ck_assert_double_eq(value_of(&e, "circled_request_duration_seconds_sum",
                               "endpoint=\"/v1/loss\""),
                      T_REQ_THREADS * (T_REQS / 2) * 0.0078125);
  ck_assert_double_eq(
      value_of(&e, "circled_request_bytes_total", "endpoint=\"/v1/loss\""),
      T_REQ_THREADS * (T_REQS / 2) * 3);
  /* Computations: every one is counted under some tag. */
  double tagged = 0;
  for (size_t i = 0; i < e.n; i++)
    if (!strcmp(e.s[i].name, "circled_tag_computations_total"))
      tagged += e.s[i].value;
  ck_assert_double_eq(tagged, T_COMP_THREADS * T_COMPS);
  ck_assert_double_eq(value_of(&e, "circled_computations_total", ""),
                      T_COMP_THREADS * T_COMPS);
  ck_assert_double_eq(value_of(&e, "circled_tags", ""), 4);
  ck_assert(has_series(&e, "circled_tag_computations_total", "tag=\"other\""));
  ck_assert_double_eq(value_of(&e, "circled_quality_loss_sum", "tag=\"other\""),
                      0.5 * value_of(&e, "circled_quality_loss_count",
                                     "tag=\"other\""));
  check_histograms(&e);
  expo_free(&e);
  circle_metrics_free(m);
}
END_TEST

/* ======================================================================== */
/* Against the daemon                                                       */
/* ======================================================================== */

static td_daemon g_d;
static bool g_up;

static void daemon_up(void) {
  const char *args[] = {"--quiet", "--workers", "2", "--max-tags", "2", NULL};
  g_up = td_start(&g_d, args, NULL) == 0;
}

static void daemon_down(void) {
  if (g_up) td_stop(&g_d, 15, 30);
  g_up = false;
}

static void get(const char *path, td_resp *r) {
  ck_assert_msg(g_up, "circled did not start");
  ck_assert_int_eq(td_request(&g_d, NULL, "GET", path, NULL, 0, NULL, NULL, r),
                   0);
}

static void post(const char *path, const char *body, td_resp *r) {
  ck_assert_int_eq(td_request(&g_d, NULL, "POST", path, body, strlen(body),
                              NULL, NULL, r),
                   0);
}

static const char LOSS_BODY[] =
    "{\"labels\": [0, 0, 1, 1], \"embeddings\": [[1, 0], [0.8, 0.6], [0, 1], "
    "[-0.6, 0.8]], \"tag\": \"%s\"}";

START_TEST(circled_should_serve_metrics_that_follow_its_requests) {
  td_resp r;
  char body[256], hdr[128];
  get("/metrics", &r);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(td_header(&r, "Content-Type", hdr, sizeof hdr),
                   CIRCLE_METRICS_CONTENT_TYPE);
  expo before;
  parse_expo(r.body, &before);
  td_resp_free(&r);

  const char *tags[] = {"a", "b", "c", "a"};
  size_t sent = 0;
  for (size_t i = 0; i < 4; i++) {
    snprintf(body, sizeof body, LOSS_BODY, tags[i]);
    sent += strlen(body);
    post("/v1/loss", body, &r);
    ck_assert_int_eq(r.status, 200);
    td_resp_free(&r);
  }
  post("/v1/loss", "{\"labels\": [0]}", &r); /* 400 missing_field */
  ck_assert_int_eq(r.status, 400);
  sent += strlen("{\"labels\": [0]}");
  td_resp_free(&r);
  const char oip[] =
      "{\"inputs\": [{\"name\": \"labels\", \"shape\": [2], \"datatype\": "
      "\"INT64\", \"data\": [0, 1]}, {\"name\": \"embeddings\", \"shape\": "
      "[2, 2], \"datatype\": \"FP32\", \"data\": [1, 0, 0, 1]}], "
      "\"parameters\": {\"tag\": \"b\"}}";
  post("/v2/models/circle/infer", oip, &r);
  ck_assert_int_eq(r.status, 200);
  td_resp_free(&r);

  get("/metrics", &r);
  expo e;
  parse_expo(r.body, &e);
  td_resp_free(&r);
  const char *rq = "circled_requests_total";
  ck_assert_double_eq(value_of(&e, rq, "endpoint=\"/v1/loss\",status=\"200\""),
                      4);
  ck_assert_double_eq(value_of(&e, rq, "endpoint=\"/v1/loss\",status=\"400\""),
                      1);
  ck_assert_double_eq(
      value_of(&e, rq, "endpoint=\"/v2/models/circle/infer\",status=\"200\""),
      1);
  /* The first scrape itself, finished before the second began. */
  ck_assert(value_of(&e, rq, "endpoint=\"/metrics\",status=\"200\"") >= 1);
  ck_assert_double_eq(
      value_of(&e, "circled_request_bytes_total", "endpoint=\"/v1/loss\""),
      (double)sent);
  /* --max-tags 2: a and b have series, c counts as other. */
  const char *tc = "circled_tag_computations_total";
  ck_assert_double_eq(value_of(&e, tc, "tag=\"a\""), 2);
  ck_assert_double_eq(value_of(&e, tc, "tag=\"b\""), 2);
  ck_assert_double_eq(value_of(&e, tc, "tag=\"other\""), 1);
  ck_assert(!has_series(&e, tc, "tag=\"c\""));
  /* The stats of the 4-row batch, as /v1 returns them. */
  ck_assert_double_eq(
      value_of(&e, "circled_quality_recall_at_1_last", "tag=\"a\""), 1);
  ck_assert_double_eq_tol(
      value_of(&e, "circled_quality_mean_pos_sim_last", "tag=\"a\""), 0.8,
      1e-6);
  ck_assert_double_eq_tol(
      value_of(&e, "circled_quality_loss_last", "tag=\"a\""), 3.20086575,
      1e-6);
  ck_assert_double_eq(value_of(&e, "circled_batch_rows_count", ""), 5);
  ck_assert_double_eq(value_of(&e, "circled_engine_threads", ""), 2);
  ck_assert_double_eq(value_of(&e, "circled_engine_queue_depth", ""), 0);
  ck_assert_double_eq(value_of(&e, "circled_requests_in_flight", ""), 1);
  check_histograms(&e);
  expo_free(&e);
  expo_free(&before);
}
END_TEST

START_TEST(circled_should_serve_a_self_contained_dashboard) {
  td_resp r;
  char hdr[128];
  get("/dashboard", &r);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(td_header(&r, "Content-Type", hdr, sizeof hdr),
                   CIRCLE_DASHBOARD_CONTENT_TYPE);
  size_t len;
  const char *page = circle_dashboard_html(&len);
  ck_assert_uint_eq(r.len, len);
  ck_assert_int_eq(memcmp(r.body, page, len), 0);
  ck_assert_uint_eq(strlen(page), len); /* NUL-terminated, no NUL inside */
  ck_assert_ptr_nonnull(strstr(page, "<canvas"));
  ck_assert_ptr_nonnull(strstr(page, "fetch(\"metrics\""));
  /* Nothing from elsewhere: no URL with a scheme, no external src/href. */
  ck_assert_ptr_null(strstr(page, "http://"));
  ck_assert_ptr_null(strstr(page, "https://"));
  ck_assert_ptr_null(strstr(page, "src="));
  ck_assert_ptr_null(strstr(page, "href="));
  td_resp_free(&r);
  ck_assert_ptr_eq(circle_dashboard_html(NULL), page);
}
END_TEST

START_TEST(circled_should_refuse_a_bad_max_tags) {
  const char *bad[][3] = {{"--max-tags", "1001", NULL},
                          {"--max-tags", "-1", NULL},
                          {"--max-tags", "lots", NULL}};
  for (size_t i = 0; i < 3; i++) {
    td_daemon d;
    /* td_start fails: circled exits 2 with a message instead of listening. */
    ck_assert_int_ne(td_start(&d, bad[i], NULL), 0);
  }
}
END_TEST

static Suite *metrics_suite(void) {
  Suite *s = suite_create("metrics");
  TCase *tc = tcase_create("registry");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, metrics_should_refuse_bad_arguments);
  tcase_add_test(tc, metrics_should_render_a_valid_exposition_when_empty_and_full);
  tcase_add_test(tc, metrics_should_count_requests_by_endpoint_and_status);
  tcase_add_test(tc, metrics_should_cap_distinct_tags_and_count_the_rest_as_other);
  tcase_add_test(tc, metrics_should_keep_histogram_buckets_monotonic);
  tcase_add_test(tc, metrics_should_record_last_values_and_skip_empty_sets);
  tcase_add_test(tc, metrics_should_record_retrieval_figures_only_when_asked_over_queries);
  tcase_add_test(tc, metrics_should_record_the_mean_loss_for_elementwise_reductions);
  tcase_add_test(tc, metrics_should_escape_label_values);
  tcase_add_test(tc, metrics_should_stay_exact_under_concurrent_updates);
  suite_add_tcase(s, tc);

  TCase *live = tcase_create("daemon");
  tcase_set_timeout(live, 60);
  tcase_add_checked_fixture(live, daemon_up, daemon_down);
  tcase_add_test(live, circled_should_serve_metrics_that_follow_its_requests);
  tcase_add_test(live, circled_should_serve_a_self_contained_dashboard);
  suite_add_tcase(s, live);

  TCase *flags = tcase_create("flags");
  tcase_set_timeout(flags, 120);
  tcase_add_test(flags, circled_should_refuse_a_bad_max_tags);
  suite_add_tcase(s, flags);
  return s;
}

int main(void) {
  curl_global_init(CURL_GLOBAL_ALL);
  SRunner *sr = srunner_create(metrics_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  curl_global_cleanup();
  return failed ? 1 : 0;
}
