/* metrics.c -- circled's Prometheus registry and text exposition. It must
 * keep true: recording never blocks a network thread, the engine workers
 * hold the mutex only for a look-up and a few additions, the number of
 * series is bounded whatever clients send, and every scrape is valid text
 * format 0.0.4 (promtool check metrics passes on it).
 *
 * Layout
 * ------
 *
 *   requests[endpoint][status]   atomic counters; status 0 = no response,
 *                                100..599 = the HTTP status sent
 *   latency[endpoint]            atomic histogram (seconds)
 *   bytes_in / bytes_out         atomic counters per endpoint
 *   ---------------------------- under mu ----------------------------------
 *   rows                         histogram of batch rows
 *   slots[0..nslots)             one per tag: counters, and for each figure
 *                                of FIGURES its last value and histogram
 *   index                        open-addressing hash: tag -> slot + 1
 *
 * Histograms keep per-bucket counts (not cumulative) so that an observation
 * is one increment; rendering accumulates them and derives _count from the
 * buckets, so a scrape's _count always equals its +Inf bucket. The atomic
 * histograms' _sum is added with a compare-and-swap on the double's bits
 * and may trail the buckets by an observation in flight.
 *
 * Slots are allocated on a tag's first use and never freed before the
 * registry: series never disappear, as Prometheus expects of counters.
 */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* Room for the longest bucket list below (the +Inf bucket comes on top). */
#define MAX_BOUNDS 24
/* Status slots: 0 for "none", then the HTTP status itself (100..599). */
#define STATUS_SLOTS 600
/* Longest tag kept (the codecs accept 63 bytes). */
#define TAG_MAX 64

/* ======================================================================== */
/* Buckets and figures                                                      */
/* ======================================================================== */

typedef struct {
  const double *v;
  size_t n;
} bounds;

#define BOUNDS(a) {a, sizeof(a) / sizeof(a[0])}

/* Request latency, seconds: half a millisecond (a GET) to a minute. */
static const double LATENCY_S[] = {0.0005, 0.001, 0.0025, 0.005, 0.01,
                                   0.025,  0.05,  0.1,    0.25,  0.5,
                                   1,      2.5,   5,      10,    30,
                                   60};
/* Batch rows: powers of two up to the default --max-n. */
static const double ROWS[] = {1,    2,    4,    8,     16,    32,
                              64,   128,  256,  512,   1024,  2048,
                              4096, 8192, 16384, 32768, 65536};
/* Loss values: gamma 80 puts a bad batch in the tens. */
static const double LOSS[] = {0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1,
                              2,     5,    10,   25,  50,   100, 250};
/* Fractions in [0, 1]. */
static const double FRACTION[] = {0.01, 0.05, 0.1, 0.2, 0.3,  0.4, 0.5,
                                  0.6,  0.7,  0.8, 0.9, 0.95, 0.99, 1};
/* Cosine similarities in [-1, 1] (wider for raw, unnormalized input). */
static const double SIMILARITY[] = {-1,  -0.8, -0.6, -0.4, -0.2, 0,   0.1,
                                    0.2, 0.3,  0.4,  0.5,  0.6,  0.7, 0.8,
                                    0.9, 0.95, 0.99, 1};
/* mean positive - mean negative similarity, in [-2, 2]. */
static const double GAP[] = {-0.5, -0.25, 0,   0.1, 0.2, 0.3, 0.4,
                             0.5,  0.6,   0.8, 1,   1.5, 2};
/* | ||x|| - 1 |: rounding noise when normalized, large when not. */
static const double NORM_DEV[] = {1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1,
                                  0.25, 0.5,  1,    2,    5,    10};

typedef enum {
  FIG_LOSS,
  FIG_POS_ROW_FRAC,
  FIG_MEAN_POS_SIM,
  FIG_MIN_POS_SIM,
  FIG_MEAN_NEG_SIM,
  FIG_MAX_NEG_SIM,
  FIG_SIM_GAP,
  FIG_HARD_NEG_FRAC,
  FIG_RECALL_AT_1,
  FIG_NORM_DEV_MEAN,
  FIG_NORM_DEV_MAX,
  FIG_PRECISION_AT_1,
  FIG_R_PRECISION,
  FIG_MAP_AT_R,
  FIG_COUNT
} figure;

/* Each figure is exposed as circled_quality_<name> (histogram) and
 * circled_quality_<name>_last (gauge). */
static const struct {
  const char *name;
  const char *help;
  bounds b;
} FIGURES[FIG_COUNT] = {
    {"loss", "the loss of the request (mean of the values for reduction none)",
     BOUNDS(LOSS)},
    {"pos_row_frac", "fraction of rows with a positive loss value",
     BOUNDS(FRACTION)},
    {"mean_pos_sim", "mean similarity over positive pairs",
     BOUNDS(SIMILARITY)},
    {"min_pos_sim", "smallest similarity of a positive pair",
     BOUNDS(SIMILARITY)},
    {"mean_neg_sim", "mean similarity over negative pairs",
     BOUNDS(SIMILARITY)},
    {"max_neg_sim", "largest similarity of a negative pair",
     BOUNDS(SIMILARITY)},
    {"sim_gap", "mean positive minus mean negative similarity", BOUNDS(GAP)},
    {"hard_neg_frac",
     "fraction of negatives more similar than their row's weakest positive",
     BOUNDS(FRACTION)},
    {"recall_at_1",
     "fraction of rows whose nearest neighbour shares their label",
     BOUNDS(FRACTION)},
    {"norm_dev_mean", "mean |norm - 1| of the query embeddings",
     BOUNDS(NORM_DEV)},
    {"norm_dev_max", "largest |norm - 1| of the query embeddings",
     BOUNDS(NORM_DEV)},
    {"precision_at_1",
     "retrieval: fraction of queries whose nearest neighbour shares their "
     "label",
     BOUNDS(FRACTION)},
    {"r_precision",
     "retrieval: mean over queries of the fraction of their R nearest "
     "neighbours that share their label (R: items sharing it)",
     BOUNDS(FRACTION)},
    {"map_at_r",
     "retrieval: mean average precision at R over queries (MAP@R)",
     BOUNDS(FRACTION)},
};

/* Index of the bucket v falls in: the first bound >= v, or b.n (+Inf). NaN
 * goes to +Inf, as Prometheus' client libraries do. */
static size_t bucket_of(bounds b, double v) {
  size_t lo = 0, hi = b.n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (v <= b.v[mid])
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

/* ======================================================================== */
/* Types                                                                    */
/* ======================================================================== */

/* A histogram updated without a lock. */
typedef struct {
  _Atomic uint64_t counts[MAX_BOUNDS + 1];
  _Atomic uint64_t sum_bits; /* a double */
} atomic_hist;

/* A histogram under the registry's mutex (or in a private copy). */
typedef struct {
  uint64_t counts[MAX_BOUNDS + 1];
  double sum;
} plain_hist;

typedef struct {
  char tag[TAG_MAX];
  uint64_t requests;  /* computations recorded under this tag */
  uint64_t rows;      /* batch rows over them */
  uint64_t pos_pairs; /* positive pairs over them */
  uint64_t neg_pairs;
  double last_unix;   /* when the last one was recorded */
  bool seen[FIG_COUNT];
  double last[FIG_COUNT];
  plain_hist hist[FIG_COUNT];
} tag_slot;

struct circle_metrics {
  size_t max_tags;
  double start_unix;
  char version[32];

  _Atomic uint64_t requests[CIRCLE_ENDPOINT_COUNT][STATUS_SLOTS];
  _Atomic uint64_t bytes_in[CIRCLE_ENDPOINT_COUNT];
  _Atomic uint64_t bytes_out[CIRCLE_ENDPOINT_COUNT];
  atomic_hist latency[CIRCLE_ENDPOINT_COUNT];

  pthread_mutex_t mu; /* guards everything below */
  plain_hist rows;
  uint64_t computes;     /* successful computations */
  uint64_t tag_overflow; /* tagged requests counted as "other" by the cap */
  uint64_t dropped;      /* observations lost to a failed allocation */
  size_t named;          /* slots for client tags (not "" or "other") */
  tag_slot **slots;      /* [nslots], in order of first use */
  size_t nslots, slots_cap;
  uint32_t *index; /* [index_cap]: slot + 1, 0 = empty */
  size_t index_cap;
};

static const char *const ENDPOINT_LABELS[CIRCLE_ENDPOINT_COUNT] = {
#define CIRCLE__EP_LABEL(name, label) label,
    CIRCLE_METRICS_ENDPOINT_MAP(CIRCLE__EP_LABEL)
#undef CIRCLE__EP_LABEL
};

const char *circle_endpoint_label(circle_endpoint ep) {
  if ((unsigned)ep >= CIRCLE_ENDPOINT_COUNT) return "other";
  return ENDPOINT_LABELS[ep];
}

/* ======================================================================== */
/* Clocks and process figures                                               */
/* ======================================================================== */

static double now_unix(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The process' start time in Unix seconds, from /proc (field 22 of
 * /proc/self/stat, in clock ticks after boot, plus btime of /proc/stat);
 * fallback when /proc is not readable. */
static double process_start_unix(double fallback) {
  double since_boot = -1, btime = -1;
  FILE *f = fopen("/proc/self/stat", "r");
  if (f) {
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name may hold spaces and ')': skip to the last ')'. */
    char *p = strrchr(buf, ')');
    unsigned long long ticks;
    /* After ')': state is field 3, starttime field 22: skip 19 fields. */
    if (p && sscanf(p + 2,
                    "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d "
                    "%*d %*d %*d %*d %*d %llu",
                    &ticks) == 1) {
      long hz = sysconf(_SC_CLK_TCK);
      if (hz > 0) since_boot = (double)ticks / (double)hz;
    }
  }
  f = fopen("/proc/stat", "r");
  if (f) {
    char line[256];
    unsigned long long bt;
    while (fgets(line, sizeof line, f))
      if (sscanf(line, "btime %llu", &bt) == 1) {
        btime = (double)bt;
        break;
      }
    fclose(f);
  }
  if (since_boot < 0 || btime < 0) return fallback;
  return btime + since_boot;
}

/* Resident set size in bytes from /proc/self/statm; -1 when unknown. */
static double resident_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  if (!f) return -1;
  unsigned long long size, rss;
  int got = fscanf(f, "%llu %llu", &size, &rss);
  fclose(f);
  long page = sysconf(_SC_PAGESIZE);
  if (got != 2 || page <= 0) return -1;
  return (double)rss * (double)page;
}

/* ======================================================================== */
/* Life cycle                                                               */
/* ======================================================================== */

int circle_metrics_init(circle_metrics **out, size_t max_tags,
                        const char *version) {
  if (!out || !version || max_tags > CIRCLE_METRICS_MAX_TAGS)
    return CIRCLE_EINVAL;
  circle_metrics *m = calloc(1, sizeof *m);
  if (!m) return CIRCLE_ENOMEM;
  m->max_tags = max_tags;
  snprintf(m->version, sizeof m->version, "%s", version);
  m->slots_cap = max_tags + 2; /* the client tags, "" and "other" */
  m->index_cap = 8;
  while (m->index_cap < 2 * m->slots_cap) m->index_cap *= 2;
  m->slots = calloc(m->slots_cap, sizeof *m->slots);
  m->index = calloc(m->index_cap, sizeof *m->index);
  if (!m->slots || !m->index || pthread_mutex_init(&m->mu, NULL) != 0) {
    free(m->slots);
    free(m->index);
    free(m);
    return CIRCLE_ENOMEM;
  }
  for (size_t e = 0; e < CIRCLE_ENDPOINT_COUNT; e++) {
    for (size_t s = 0; s < STATUS_SLOTS; s++) atomic_init(&m->requests[e][s], 0);
    atomic_init(&m->bytes_in[e], 0);
    atomic_init(&m->bytes_out[e], 0);
    for (size_t b = 0; b <= MAX_BOUNDS; b++)
      atomic_init(&m->latency[e].counts[b], 0);
    atomic_init(&m->latency[e].sum_bits, 0); /* the bits of 0.0 */
  }
  m->start_unix = process_start_unix(now_unix());
  *out = m;
  return CIRCLE_OK;
}

void circle_metrics_free(circle_metrics *m) {
  if (!m) return;
  for (size_t i = 0; i < m->nslots; i++) free(m->slots[i]);
  free(m->slots);
  free(m->index);
  pthread_mutex_destroy(&m->mu);
  free(m);
}

/* ======================================================================== */
/* Recording                                                                */
/* ======================================================================== */

static void atomic_add_double(_Atomic uint64_t *bits, double v) {
  uint64_t old = atomic_load_explicit(bits, memory_order_relaxed), upd;
  do {
    double s;
    memcpy(&s, &old, sizeof s);
    s += v;
    memcpy(&upd, &s, sizeof upd);
  } while (!atomic_compare_exchange_weak_explicit(
      bits, &old, upd, memory_order_relaxed, memory_order_relaxed));
}

void circle_metrics_observe_request(circle_metrics *m, circle_endpoint ep,
                                    unsigned status, double seconds,
                                    size_t bytes_in, size_t bytes_out) {
  if (!m) return;
  if ((unsigned)ep >= CIRCLE_ENDPOINT_COUNT) ep = CIRCLE_ENDPOINT_OTHER;
  if (status < 100 || status >= STATUS_SLOTS) status = 0;
  if (!(seconds >= 0)) seconds = 0; /* NaN too */
  atomic_fetch_add_explicit(&m->requests[ep][status], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&m->bytes_in[ep], bytes_in, memory_order_relaxed);
  atomic_fetch_add_explicit(&m->bytes_out[ep], bytes_out,
                            memory_order_relaxed);
  atomic_hist *h = &m->latency[ep];
  bounds b = BOUNDS(LATENCY_S);
  atomic_fetch_add_explicit(&h->counts[bucket_of(b, seconds)], 1,
                            memory_order_relaxed);
  atomic_add_double(&h->sum_bits, seconds);
}

static void plain_observe(plain_hist *h, bounds b, double v) {
  h->counts[bucket_of(b, v)]++;
  h->sum += v;
}

static uint64_t hash_tag(const char *s) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

/* The slot for tag, created on first use; NULL when it cannot be
 * allocated. Past max_tags client tags, new ones get "other"'s slot.
 * Called with mu held. */
static tag_slot *slot_for(circle_metrics *m, const char *tag) {
  size_t mask = m->index_cap - 1;
  size_t i = (size_t)hash_tag(tag) & mask;
  for (; m->index[i]; i = (i + 1) & mask) {
    tag_slot *s = m->slots[m->index[i] - 1];
    if (!strcmp(s->tag, tag)) return s;
  }
  bool reserved = !tag[0] || !strcmp(tag, "other");
  if (!reserved && m->named >= m->max_tags) {
    m->tag_overflow++;
    return slot_for(m, "other");
  }
  /* Never more than slots_cap slots: the cap holds the client tags plus
   * the two reserved ones. */
  if (m->nslots >= m->slots_cap) return NULL;
  tag_slot *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  snprintf(s->tag, sizeof s->tag, "%s", tag);
  m->slots[m->nslots++] = s;
  m->index[i] = (uint32_t)m->nslots;
  if (!reserved) m->named++;
  return s;
}

/* The mean of the n loss values in dtype. */
static double mean_of(const void *v, size_t n, circle_dtype dt) {
  double s = 0;
  for (size_t i = 0; i < n; i++)
    s += dt == CIRCLE_DTYPE_FLOAT32 ? (double)((const float *)v)[i]
                                    : ((const double *)v)[i];
  return n ? s / (double)n : 0;
}

void circle_metrics_observe_compute(circle_metrics *m, const char *tag,
                                    const circle_config *cfg,
                                    const circle_input *in,
                                    const circle_output *out) {
  if (!m || !cfg || !in || !out) return;
  char key[TAG_MAX];
  snprintf(key, sizeof key, "%s", tag ? tag : "");

  /* Everything that needs no lock first: the figures of this request. */
  double v[FIG_COUNT];
  bool have[FIG_COUNT] = {false};
  if (out->want & CIRCLE_OUT_LOSS) {
    if (!circle_reduction_is_elementwise(cfg->reduction)) {
      v[FIG_LOSS] = out->loss;
      have[FIG_LOSS] = true;
    } else if (out->loss_values && in->n) {
      v[FIG_LOSS] = mean_of(out->loss_values, in->n, cfg->dtype);
      have[FIG_LOSS] = true;
    }
  }
  const circle_stats *st = &out->stats;
  bool stats = (out->want & CIRCLE_OUT_STATS) != 0;
  if (stats) {
    bool pos = st->pos_pairs > 0, neg = st->neg_pairs > 0;
    v[FIG_POS_ROW_FRAC] = st->pos_row_frac;
    v[FIG_MEAN_POS_SIM] = st->mean_pos_sim;
    v[FIG_MIN_POS_SIM] = st->min_pos_sim;
    v[FIG_MEAN_NEG_SIM] = st->mean_neg_sim;
    v[FIG_MAX_NEG_SIM] = st->max_neg_sim;
    v[FIG_SIM_GAP] = st->sim_gap;
    v[FIG_HARD_NEG_FRAC] = st->hard_neg_frac;
    v[FIG_RECALL_AT_1] = st->recall_at_1;
    v[FIG_NORM_DEV_MEAN] = st->norm_dev_mean;
    v[FIG_NORM_DEV_MAX] = st->norm_dev_max;
    have[FIG_POS_ROW_FRAC] = true;
    have[FIG_MEAN_POS_SIM] = have[FIG_MIN_POS_SIM] = pos;
    have[FIG_MEAN_NEG_SIM] = have[FIG_MAX_NEG_SIM] = neg;
    have[FIG_SIM_GAP] = pos && neg;
    /* A fraction is a figure only over a non-empty set: its denominator
     * says (positives and negatives may both exist without any row
     * having both, and then there is no hard-negative fraction). */
    have[FIG_HARD_NEG_FRAC] = st->hard_neg_base > 0;
    have[FIG_RECALL_AT_1] = st->nn_rows > 0;
    have[FIG_NORM_DEV_MEAN] = have[FIG_NORM_DEV_MAX] = true;
  }
  /* Retrieval figures exist only over at least one query (a row with a
   * relevant gallery item); with none the engine reports 0 for all three. */
  const circle_retrieval *rt = &out->retrieval;
  if ((out->want & CIRCLE_OUT_RETRIEVAL) && rt->queries > 0) {
    v[FIG_PRECISION_AT_1] = rt->precision_at_1;
    v[FIG_R_PRECISION] = rt->r_precision;
    v[FIG_MAP_AT_R] = rt->map_at_r;
    have[FIG_PRECISION_AT_1] = have[FIG_R_PRECISION] = have[FIG_MAP_AT_R] =
        true;
  }
  for (int f = 0; f < FIG_COUNT; f++)
    if (have[f] && !isfinite(v[f])) have[f] = false;
  double t = now_unix();

  pthread_mutex_lock(&m->mu);
  m->computes++;
  plain_observe(&m->rows, (bounds)BOUNDS(ROWS), (double)in->n);
  tag_slot *s = slot_for(m, key);
  if (!s) {
    m->dropped++;
  } else {
    s->requests++;
    s->rows += in->n;
    if (stats) {
      s->pos_pairs += st->pos_pairs;
      s->neg_pairs += st->neg_pairs;
    }
    s->last_unix = t;
    for (int f = 0; f < FIG_COUNT; f++) {
      if (!have[f]) continue;
      s->seen[f] = true;
      s->last[f] = v[f];
      plain_observe(&s->hist[f], FIGURES[f].b, v[f]);
    }
  }
  pthread_mutex_unlock(&m->mu);
}

/* ======================================================================== */
/* Exposition                                                               */
/* ======================================================================== */

/* A sample value as Prometheus parses it (Go's ParseFloat): shortest
 * round-trip digits, NaN and +Inf / -Inf spelled out. */
static void put_value(circle_buf *b, double v) {
  if (isnan(v)) {
    circle_buf_puts(b, "NaN");
  } else if (isinf(v)) {
    circle_buf_puts(b, v > 0 ? "+Inf" : "-Inf");
  } else if (fabs(v) < 1e15 && v == (double)(int64_t)v) {
    circle_buf_printf(b, "%lld", (long long)v);
  } else {
    char tmp[40];
    for (int prec = 15; prec <= 17; prec++) {
      snprintf(tmp, sizeof tmp, "%.*g", prec, v);
      if (strtod(tmp, NULL) == v) break;
    }
    circle_buf_puts(b, tmp);
  }
}

static void put_u64(circle_buf *b, uint64_t v) {
  circle_buf_printf(b, "%llu", (unsigned long long)v);
}

/* A label value with \, " and newline escaped. */
static void put_label_value(circle_buf *b, const char *s) {
  for (; *s; s++) {
    if (*s == '\\')
      circle_buf_puts(b, "\\\\");
    else if (*s == '"')
      circle_buf_puts(b, "\\\"");
    else if (*s == '\n')
      circle_buf_puts(b, "\\n");
    else
      circle_buf_append(b, s, 1);
  }
}

static void put_family(circle_buf *b, const char *name, const char *type,
                       const char *help) {
  circle_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name,
                    type);
}

/* name{label="value"} (label may be NULL for no labels), without the
 * closing brace when open is true, so the caller can add labels. */
static void put_series(circle_buf *b, const char *name, const char *suffix,
                       const char *label, const char *value, bool open) {
  circle_buf_puts(b, name);
  circle_buf_puts(b, suffix);
  if (!label) {
    if (open) circle_buf_puts(b, "{");
    return;
  }
  circle_buf_printf(b, "{%s=\"", label);
  put_label_value(b, value);
  circle_buf_puts(b, open ? "\"," : "\"}");
}

/* The _bucket, _sum and _count lines of one histogram series. counts are
 * per bucket (b.n + 1 of them, the last +Inf). */
static void put_hist(circle_buf *b, const char *name, const char *label,
                     const char *value, bounds bs, const uint64_t *counts,
                     double sum) {
  uint64_t cum = 0;
  for (size_t i = 0; i <= bs.n; i++) {
    cum += counts[i];
    put_series(b, name, "_bucket", label, value, true);
    circle_buf_puts(b, "le=\"");
    if (i < bs.n)
      put_value(b, bs.v[i]);
    else
      circle_buf_puts(b, "+Inf");
    circle_buf_puts(b, "\"} ");
    put_u64(b, cum);
    circle_buf_puts(b, "\n");
  }
  put_series(b, name, "_sum", label, value, false);
  circle_buf_puts(b, " ");
  put_value(b, sum);
  circle_buf_puts(b, "\n");
  put_series(b, name, "_count", label, value, false);
  circle_buf_puts(b, " ");
  put_u64(b, cum);
  circle_buf_puts(b, "\n");
}

/* A family of one unlabelled sample; type "gauge" or "counter". */
static void put_single(circle_buf *b, const char *name, const char *type,
                       const char *help, double v) {
  put_family(b, name, type, help);
  circle_buf_puts(b, name);
  circle_buf_puts(b, " ");
  put_value(b, v);
  circle_buf_puts(b, "\n");
}

static void put_gauge(circle_buf *b, const char *name, const char *help,
                      double v) {
  put_single(b, name, "gauge", help, v);
}

/* What the renderer copies out under the mutex. */
typedef struct {
  plain_hist rows;
  uint64_t computes, tag_overflow, dropped;
  size_t named;
  tag_slot *slots;
  size_t nslots;
} snapshot;

static bool take_snapshot(circle_metrics *m, snapshot *s) {
  memset(s, 0, sizeof *s);
  pthread_mutex_lock(&m->mu);
  size_t n = m->nslots;
  /* One allocation per scrape, under the lock so that the copy matches
   * nslots; formatting happens after the unlock. */
  s->slots = n ? malloc(n * sizeof *s->slots) : NULL;
  if (n && !s->slots) {
    pthread_mutex_unlock(&m->mu);
    return false;
  }
  for (size_t i = 0; i < n; i++) s->slots[i] = *m->slots[i];
  s->nslots = n;
  s->rows = m->rows;
  s->computes = m->computes;
  s->tag_overflow = m->tag_overflow;
  s->dropped = m->dropped;
  s->named = m->named;
  pthread_mutex_unlock(&m->mu);
  return true;
}

static void render_requests(circle_metrics *m, circle_buf *b) {
  /* Endpoints that have had a request: the others get no series. */
  bool seen[CIRCLE_ENDPOINT_COUNT] = {false};
  put_family(b, "circled_requests_total", "counter",
             "Requests finished, by endpoint and HTTP status (status=\"none\" "
             "when the connection ended before a response).");
  for (size_t e = 0; e < CIRCLE_ENDPOINT_COUNT; e++)
    for (size_t st = 0; st < STATUS_SLOTS; st++) {
      uint64_t c = atomic_load_explicit(&m->requests[e][st],
                                        memory_order_relaxed);
      if (!c) continue;
      seen[e] = true;
      put_series(b, "circled_requests_total", "", "endpoint",
                 ENDPOINT_LABELS[e], true);
      if (st)
        circle_buf_printf(b, "status=\"%zu\"} ", st);
      else
        circle_buf_puts(b, "status=\"none\"} ");
      put_u64(b, c);
      circle_buf_puts(b, "\n");
    }

  put_family(b, "circled_request_duration_seconds", "histogram",
             "Wall time from a request's first byte handled to its "
             "completion, by endpoint.");
  bounds lb = BOUNDS(LATENCY_S);
  for (size_t e = 0; e < CIRCLE_ENDPOINT_COUNT; e++) {
    uint64_t counts[MAX_BOUNDS + 1], total = 0;
    for (size_t i = 0; i <= lb.n; i++) {
      counts[i] = atomic_load_explicit(&m->latency[e].counts[i],
                                       memory_order_relaxed);
      total += counts[i];
    }
    if (!total) continue;
    uint64_t bits = atomic_load_explicit(&m->latency[e].sum_bits,
                                         memory_order_relaxed);
    double sum;
    memcpy(&sum, &bits, sizeof sum);
    put_hist(b, "circled_request_duration_seconds", "endpoint",
             ENDPOINT_LABELS[e], lb, counts, sum);
  }

  static const struct {
    const char *name, *help;
    size_t off;
  } bytes[] = {
      {"circled_request_bytes_total",
       "Request body bytes received (as sent, before decompression), by "
       "endpoint.",
       offsetof(circle_metrics, bytes_in)},
      {"circled_response_bytes_total",
       "Response body bytes sent (after compression), by endpoint.",
       offsetof(circle_metrics, bytes_out)},
  };
  for (size_t k = 0; k < 2; k++) {
    put_family(b, bytes[k].name, "counter", bytes[k].help);
    _Atomic uint64_t *arr =
        (_Atomic uint64_t *)((char *)m + bytes[k].off);
    for (size_t e = 0; e < CIRCLE_ENDPOINT_COUNT; e++) {
      uint64_t c = atomic_load_explicit(&arr[e], memory_order_relaxed);
      if (!c && !seen[e]) continue;
      put_series(b, bytes[k].name, "", "endpoint", ENDPOINT_LABELS[e], false);
      circle_buf_puts(b, " ");
      put_u64(b, c);
      circle_buf_puts(b, "\n");
    }
  }
}

static void render_live(const circle_metrics_live *live, circle_buf *b) {
  put_gauge(b, "circled_requests_in_flight",
            "Requests begun and not yet completed.",
            (double)live->requests_in_flight);
  put_gauge(b, "circled_engine_queue_depth",
            "Computations waiting for an engine thread.",
            (double)live->queue_depth);
  put_gauge(b, "circled_engine_threads", "Compute threads of the engine.",
            (double)live->engine_threads);
  put_gauge(b, "circled_inflight_bytes",
            "Bytes committed to requests being received and computed.",
            (double)live->inflight_bytes);
  put_gauge(b, "circled_inflight_bytes_max",
            "Limit on circled_inflight_bytes (--max-inflight-mb); past it "
            "requests get 503.",
            (double)live->inflight_bytes_max);
  put_gauge(b, "circled_draining",
            "1 after SIGTERM while requests in flight finish, else 0.",
            live->draining ? 1 : 0);
}

/* True when some tag has a value of figure f (families without samples
 * are left out). */
static bool any_seen(const snapshot *s, int f) {
  for (size_t i = 0; i < s->nslots; i++)
    if (s->slots[i].seen[f]) return true;
  return false;
}

static void render_tags(circle_metrics *m, const snapshot *s, circle_buf *b) {
  put_single(b, "circled_computations_total", "counter",
             "Successful computations, all tags.", (double)s->computes);

  put_family(b, "circled_batch_rows", "histogram",
             "Batch rows (N) of successful computations.");
  put_hist(b, "circled_batch_rows", NULL, NULL, (bounds)BOUNDS(ROWS),
           s->rows.counts, s->rows.sum);

  put_gauge(b, "circled_tags", "Distinct client tags with series of their "
                               "own (at most circled_tags_max).",
            (double)s->named);
  put_gauge(b, "circled_tags_max",
            "Client tags that get series of their own (--max-tags); later "
            "ones count as tag=\"other\".",
            (double)m->max_tags);
  put_single(b, "circled_tags_overflow_total", "counter",
             "Computations whose tag came after --max-tags others and was "
             "counted as \"other\".",
             (double)s->tag_overflow);
  put_single(b, "circled_metrics_dropped_total", "counter",
             "Computations not recorded by tag for want of memory.",
             (double)s->dropped);

  if (!s->nslots) return;
  static const struct {
    const char *name, *type, *help;
    size_t off;
  } per_tag[] = {
      {"circled_tag_computations_total", "counter",
       "Successful computations, by tag.", offsetof(tag_slot, requests)},
      {"circled_tag_rows_total", "counter",
       "Batch rows computed, by tag.", offsetof(tag_slot, rows)},
      {"circled_tag_positive_pairs_total", "counter",
       "Positive pairs seen by the stats, by tag.",
       offsetof(tag_slot, pos_pairs)},
      {"circled_tag_negative_pairs_total", "counter",
       "Negative pairs seen by the stats, by tag.",
       offsetof(tag_slot, neg_pairs)},
  };
  for (size_t k = 0; k < sizeof per_tag / sizeof per_tag[0]; k++) {
    put_family(b, per_tag[k].name, per_tag[k].type, per_tag[k].help);
    for (size_t i = 0; i < s->nslots; i++) {
      const tag_slot *t = &s->slots[i];
      uint64_t c;
      memcpy(&c, (const char *)t + per_tag[k].off, sizeof c);
      put_series(b, per_tag[k].name, "", "tag", t->tag, false);
      circle_buf_puts(b, " ");
      put_u64(b, c);
      circle_buf_puts(b, "\n");
    }
  }
  put_family(b, "circled_tag_last_timestamp_seconds", "gauge",
             "Unix time of the last computation recorded, by tag.");
  for (size_t i = 0; i < s->nslots; i++) {
    put_series(b, "circled_tag_last_timestamp_seconds", "", "tag",
               s->slots[i].tag, false);
    circle_buf_puts(b, " ");
    put_value(b, floor(s->slots[i].last_unix * 1000) / 1000);
    circle_buf_puts(b, "\n");
  }

  char name[96], help[256];
  for (int f = 0; f < FIG_COUNT; f++) {
    if (!any_seen(s, f)) continue;
    snprintf(name, sizeof name, "circled_quality_%s_last", FIGURES[f].name);
    snprintf(help, sizeof help, "Last value, by tag: %s.", FIGURES[f].help);
    put_family(b, name, "gauge", help);
    for (size_t i = 0; i < s->nslots; i++) {
      const tag_slot *t = &s->slots[i];
      if (!t->seen[f]) continue;
      put_series(b, name, "", "tag", t->tag, false);
      circle_buf_puts(b, " ");
      put_value(b, t->last[f]);
      circle_buf_puts(b, "\n");
    }
    snprintf(name, sizeof name, "circled_quality_%s", FIGURES[f].name);
    snprintf(help, sizeof help, "Distribution over requests, by tag: %s.",
             FIGURES[f].help);
    put_family(b, name, "histogram", help);
    for (size_t i = 0; i < s->nslots; i++) {
      const tag_slot *t = &s->slots[i];
      if (!t->seen[f]) continue;
      put_hist(b, name, "tag", t->tag, FIGURES[f].b, t->hist[f].counts,
               t->hist[f].sum);
    }
  }
}

static void render_process(circle_metrics *m, circle_buf *b) {
  put_family(b, "circled_build_info", "gauge",
             "Always 1; the labels say what is running.");
  circle_buf_puts(b, "circled_build_info{version=\"");
  put_label_value(b, m->version);
  circle_buf_puts(b, "\",openblas_core=\"");
  put_label_value(b, circle_blas_corename());
  circle_buf_puts(b, "\",compiler=\"");
#if defined(__clang__)
  put_label_value(b, "clang " __clang_version__);
#elif defined(__GNUC__)
  put_label_value(b, "gcc " __VERSION__);
#else
  put_label_value(b, "unknown");
#endif
  circle_buf_puts(b, "\"} 1\n");

  put_gauge(b, "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds.",
            floor(m->start_unix * 100) / 100);
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) == 0) {
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    put_single(b, "process_cpu_seconds_total", "counter",
               "Total user and system CPU time spent in seconds.", cpu);
  }
  double rss = resident_bytes();
  if (rss >= 0)
    put_gauge(b, "process_resident_memory_bytes",
              "Resident memory size in bytes.", rss);
}

int circle_metrics_render(circle_metrics *m, const circle_metrics_live *live,
                          circle_buf *b) {
  if (!m || !b) return CIRCLE_EINVAL;
  snapshot s;
  if (!take_snapshot(m, &s)) {
    b->failed = true;
    return CIRCLE_ENOMEM;
  }
  render_requests(m, b);
  if (live) render_live(live, b);
  render_tags(m, &s, b);
  render_process(m, b);
  free(s.slots);
  return b->failed ? CIRCLE_ENOMEM : CIRCLE_OK;
}
