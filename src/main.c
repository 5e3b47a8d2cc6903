/* main.c -- circled's entry point: flags and environment, start-up, signals.
 * It must keep true: every setting has one flag, one environment variable
 * and a default that `circled --help` shows; a flag beats its variable;
 * SIGTERM and SIGINT drain in-flight requests and exit 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "circle/circle.h"
#include "codec_config.h"
#include "grpc_server.h"
#include "http.h"
#include "metrics.h"

/* ======================================================================== */
/* Settings                                                                 */
/* ======================================================================== */

typedef struct {
  circle_http_opts http;
  circle_engine_opts engine;
  double drain_timeout_s;
  const char *api_key_file;
  int grpc_port;         /* -1: off */
  const char *grpc_bind; /* NULL: --bind */
  bool grpc;
  bool show_help;
  bool show_version;
} settings;

typedef enum {
  K_STR,       /* const char * */
  K_PORT,      /* uint16_t */
  K_UINT,      /* unsigned, lo..hi */
  K_SIZE,      /* size_t, lo..hi */
  K_U64,       /* uint64_t, lo..hi */
  K_MB,        /* size_t bytes, given in MiB, lo..hi MiB */
  K_SECONDS,   /* double seconds >= lo */
  K_DOUBLE,    /* double, finite */
  K_BOOL,      /* bool */
  K_REDUCTION, /* circle_reduction */
  K_DTYPE,     /* circle_config: its dtype and half, as config.dtype */
  K_NAME,      /* char[128] */
  K_OPT_PORT   /* int: a port 0..65535, or -1 for "off" */
} kind;

typedef struct {
  const char *flag; /* without the leading "--" */
  const char *env;
  kind k;
  const char *arg; /* placeholder shown by --help */
  const char *help;
  double lo, hi;
} flag_spec;

/* The one table of settings; --help is generated from it. */
static const flag_spec FLAGS[] = {
    {"bind", "CIRCLED_BIND", K_STR, "ADDR",
     "address to listen on, an IPv4 or IPv6 literal (0.0.0.0 or :: for "
     "all interfaces)", 0, 0},
    {"port", "CIRCLED_PORT", K_PORT, "N",
     "TCP port; 0 picks a free one (the start-up log says which)", 0, 65535},
    {"grpc-port", "CIRCLED_GRPC_PORT", K_OPT_PORT, "N|off",
     "gRPC port (the Open Inference Protocol over gRPC and "
     "grpc.health.v1); 0 picks a free one, off disables gRPC", 0, 65535},
    {"grpc-bind", "CIRCLED_GRPC_BIND", K_STR, "ADDR",
     "address the gRPC listener binds; unset, it follows --bind", 0, 0},
    {"grpc", "CIRCLED_GRPC", K_BOOL, "BOOL",
     "serve gRPC; --no-grpc disables it (as --grpc-port off does)", 0, 0},
    {"net-threads", "CIRCLED_NET_THREADS", K_UINT, "N",
     "network threads (libmicrohttpd epoll pool); they never compute", 1,
     1024},
    {"workers", "CIRCLED_WORKERS", K_UINT, "N",
     "compute threads of the engine; 0 means one per online core (one "
     "more thread runs only small requests)", 0, 4096},
    {"max-queue", "CIRCLED_MAX_QUEUE", K_SIZE, "N",
     "requests waiting for a compute thread before new ones get 503", 1,
     1e9},
    {"timeout", "CIRCLED_TIMEOUT", K_UINT, "SECONDS",
     "close a connection idle (or sending nothing) for this long", 1, 86400},
    {"request-timeout", "CIRCLED_REQUEST_TIMEOUT", K_UINT, "SECONDS",
     "close a connection that has not sent a whole request (head and body) "
     "this long after it opened or got its previous answer: slow clients "
     "and slowloris; 0 means no limit", 0, 86400},
    {"header-timeout", "CIRCLED_HEADER_TIMEOUT", K_UINT, "SECONDS",
     "close a connection that has not sent a whole request head (line and "
     "headers) this long after it opened or got its previous answer; 0 "
     "means no limit", 0, 86400},
    {"drain-timeout", "CIRCLED_DRAIN_TIMEOUT", K_SECONDS, "SECONDS",
     "on SIGTERM, how long requests still uploading or waiting for a "
     "compute thread may take; after it, waiting ones get 503; requests "
     "already computing are always finished", 0, 86400},
    {"max-connections", "CIRCLED_MAX_CONNECTIONS", K_UINT, "N",
     "simultaneous connections; more are refused", 1, 1000000},
    {"max-connections-per-ip", "CIRCLED_MAX_CONNECTIONS_PER_IP", K_UINT, "N",
     "simultaneous connections from one client address; more are closed at "
     "once. 0 means no limit (behind a proxy every client shares its "
     "address)", 0, 1000000},
    {"max-body-mb", "CIRCLED_MAX_BODY_MB", K_MB, "MB",
     "largest request body as sent; larger ones get 413 before they are "
     "read", 1, 1 << 20},
    {"max-inflated-mb", "CIRCLED_MAX_INFLATED_MB", K_MB, "MB",
     "largest body after gzip/deflate decoding (413 past it)", 1, 1 << 20},
    {"max-inflight-mb", "CIRCLED_MAX_INFLIGHT_MB", K_MB, "MB",
     "memory committed to requests being received and computed; past it "
     "requests get 503 with Retry-After", 1, 1 << 24},
    {"max-n", "CIRCLED_MAX_N", K_SIZE, "N", "most batch rows per request", 1,
     1e12},
    {"max-m", "CIRCLED_MAX_M", K_SIZE, "N", "most reference rows per request",
     1, 1e12},
    {"max-d", "CIRCLED_MAX_D", K_SIZE, "N", "largest embedding dimension", 1,
     1e12},
    {"max-pairs", "CIRCLED_MAX_PAIRS", K_U64, "N",
     "most pairs per request, N x M (N x N without a reference set): the "
     "work limit", 1, 1.8e19},
    {"max-depth", "CIRCLED_MAX_DEPTH", K_SIZE, "N",
     "deepest JSON nesting accepted", 2, 10000},
    {"block-rows", "CIRCLED_BLOCK_ROWS", K_SIZE, "N",
     "rows per engine work item; 0 chooses automatically", 0, 1e9},
    {"materialize-mb", "CIRCLED_MATERIALIZE_MB", K_MB, "MB",
     "largest N x M similarity matrix the engine keeps whole; above it rows "
     "are streamed in blocks. 0 means the engine's default (256)", 0,
     1 << 24},
    {"gamma", "CIRCLED_GAMMA", K_DOUBLE, "X",
     "default gamma (scale), > 0", 0, 0},
    {"margin", "CIRCLED_MARGIN", K_DOUBLE, "X", "default margin", 0, 0},
    {"remove-diagonal", "CIRCLED_REMOVE_DIAGONAL", K_BOOL, "BOOL",
     "default remove_diagonal (--no-remove-diagonal for false)", 0, 0},
    {"reduction", "CIRCLED_REDUCTION", K_REDUCTION, "NAME",
     "default reduction: sum_over_batch_size, sum, mean, "
     "mean_with_sample_weight, none or null", 0, 0},
    {"dtype", "CIRCLED_DTYPE", K_DTYPE, "NAME",
     "default dtype: float32, float64, float16, bfloat16, mixed_float16, "
     "mixed_bfloat16, null (float32) or a DTypePolicy as JSON", 0, 0},
    {"normalize", "CIRCLED_NORMALIZE", K_BOOL, "BOOL",
     "L2-normalize embeddings by default", 0, 0},
    {"name", "CIRCLED_NAME", K_NAME, "NAME",
     "default loss name, echoed in get_config()", 0, 0},
    {"api-key-file", "CIRCLED_API_KEY_FILE", K_STR, "PATH",
     "file holding a bearer token; when set, every endpoint but /healthz, "
     "/readyz and /v2/health/* needs 'Authorization: Bearer <token>'", 0, 0},
    {"quiet", "CIRCLED_QUIET", K_BOOL, "BOOL",
     "no per-request log lines", 0, 0},
    {"max-tags", "CIRCLED_MAX_TAGS", K_SIZE, "N",
     "distinct request tags that get metrics series of their own; later "
     "tags count as tag=\"other\" (bounds /metrics)", 0,
     CIRCLE_METRICS_MAX_TAGS},
};
#define NFLAGS (sizeof FLAGS / sizeof FLAGS[0])

/* Where flag i stores its value in s. */
static void *flag_dst(settings *s, size_t i) {
  const char *f = FLAGS[i].flag;
  circle_http_opts *h = &s->http;
  if (!strcmp(f, "bind")) return &h->bind;
  if (!strcmp(f, "port")) return &h->port;
  if (!strcmp(f, "grpc-port")) return &s->grpc_port;
  if (!strcmp(f, "grpc-bind")) return &s->grpc_bind;
  if (!strcmp(f, "grpc")) return &s->grpc;
  if (!strcmp(f, "net-threads")) return &h->net_threads;
  if (!strcmp(f, "workers")) return &s->engine.threads;
  if (!strcmp(f, "max-queue")) return &s->engine.max_queue;
  if (!strcmp(f, "timeout")) return &h->timeout_s;
  if (!strcmp(f, "request-timeout")) return &h->request_timeout_s;
  if (!strcmp(f, "header-timeout")) return &h->header_timeout_s;
  if (!strcmp(f, "drain-timeout")) return &s->drain_timeout_s;
  if (!strcmp(f, "max-connections")) return &h->max_connections;
  if (!strcmp(f, "max-connections-per-ip"))
    return &h->max_connections_per_ip;
  if (!strcmp(f, "max-body-mb")) return &h->max_body;
  if (!strcmp(f, "max-inflated-mb")) return &h->limits.max_inflated;
  if (!strcmp(f, "max-inflight-mb")) return &h->max_inflight;
  if (!strcmp(f, "max-n")) return &h->limits.max_n;
  if (!strcmp(f, "max-m")) return &h->limits.max_m;
  if (!strcmp(f, "max-d")) return &h->limits.max_d;
  if (!strcmp(f, "max-pairs")) return &h->limits.max_pairs;
  if (!strcmp(f, "max-depth")) return &h->limits.max_depth;
  if (!strcmp(f, "block-rows")) return &s->engine.block_rows;
  if (!strcmp(f, "materialize-mb")) return &s->engine.materialize_bytes;
  if (!strcmp(f, "gamma")) return &h->defaults.gamma;
  if (!strcmp(f, "margin")) return &h->defaults.margin;
  if (!strcmp(f, "remove-diagonal")) return &h->defaults.remove_diagonal;
  if (!strcmp(f, "reduction")) return &h->defaults.reduction;
  if (!strcmp(f, "dtype")) return &h->defaults;
  if (!strcmp(f, "normalize")) return &h->defaults.normalize;
  if (!strcmp(f, "name")) return h->name;
  if (!strcmp(f, "api-key-file")) return &s->api_key_file;
  if (!strcmp(f, "quiet")) return &h->quiet;
  if (!strcmp(f, "max-tags")) return &h->max_tags;
  return NULL;
}

static void settings_init(settings *s) {
  memset(s, 0, sizeof *s);
  circle_http_opts_init(&s->http);
  s->engine.threads = 0;
  s->engine.max_queue = 1024;
  s->engine.block_rows = 0;
  s->engine.materialize_bytes = 0;
  s->drain_timeout_s = 30;
  s->api_key_file = NULL;
  s->grpc_port = 8081;
  s->grpc_bind = NULL;
  s->grpc = true;
}

static bool parse_bool(const char *v, bool *out) {
  static const char *yes[] = {"1", "true", "yes", "on"};
  static const char *no[] = {"0", "false", "no", "off"};
  for (size_t i = 0; i < 4; i++) {
    if (!strcasecmp(v, yes[i])) return *out = true, true;
    if (!strcasecmp(v, no[i])) return *out = false, true;
  }
  return false;
}

/* Parses an unsigned decimal in [lo, hi]. */
static bool parse_u64(const char *v, double lo, double hi, uint64_t *out) {
  if (!*v || *v == '-' || *v == '+') return false;
  errno = 0;
  char *end;
  unsigned long long x = strtoull(v, &end, 10);
  if (errno || *end) return false;
  if ((double)x < lo || (double)x > hi) return false;
  *out = (uint64_t)x;
  return true;
}

/* Stores value v for flag i. On error writes a sentence into why. */
static bool set_value(settings *s, size_t i, const char *v, char *why,
                      size_t why_len) {
  const flag_spec *f = &FLAGS[i];
  void *dst = flag_dst(s, i);
  uint64_t u;
  switch (f->k) {
  case K_STR:
    if (!*v) {
      snprintf(why, why_len, "must not be empty");
      return false;
    }
    *(const char **)dst = v;
    return true;
  case K_NAME:
    if (!*v || strlen(v) >= 128) {
      snprintf(why, why_len, "must be 1 to 127 characters");
      return false;
    }
    snprintf((char *)dst, 128, "%s", v);
    return true;
  case K_OPT_PORT:
    if (!strcasecmp(v, "off")) {
      *(int *)dst = -1;
      return true;
    }
    if (!parse_u64(v, f->lo, f->hi, &u)) {
      snprintf(why, why_len, "must be off or a whole number from %.0f to %.0f",
               f->lo, f->hi);
      return false;
    }
    *(int *)dst = (int)u;
    return true;
  case K_PORT:
  case K_UINT:
  case K_SIZE:
  case K_U64:
  case K_MB:
    if (!parse_u64(v, f->lo, f->hi, &u)) {
      snprintf(why, why_len, "must be a whole number from %.0f to %.0f",
               f->lo, f->hi);
      return false;
    }
    if (f->k == K_PORT) *(uint16_t *)dst = (uint16_t)u;
    if (f->k == K_UINT) *(unsigned *)dst = (unsigned)u;
    if (f->k == K_SIZE) *(size_t *)dst = (size_t)u;
    if (f->k == K_U64) *(uint64_t *)dst = u;
    if (f->k == K_MB) *(size_t *)dst = (size_t)u << 20;
    return true;
  case K_SECONDS:
  case K_DOUBLE: {
    errno = 0;
    char *end;
    double x = strtod(v, &end);
    if (!*v || errno || *end || !isfinite(x) ||
        (f->k == K_SECONDS && (x < f->lo || x > f->hi))) {
      if (f->k == K_SECONDS)
        snprintf(why, why_len, "must be a number of seconds from %.0f to %.0f",
                 f->lo, f->hi);
      else
        snprintf(why, why_len, "must be a finite number");
      return false;
    }
    *(double *)dst = x;
    return true;
  }
  case K_BOOL:
    if (!parse_bool(v, (bool *)dst)) {
      snprintf(why, why_len, "must be true or false");
      return false;
    }
    return true;
  case K_REDUCTION:
    if (!strcmp(v, "null") || !strcmp(v, "None")) {
      *(circle_reduction *)dst = CIRCLE_REDUCTION_NULL;
      return true;
    }
    if (circle_reduction_parse(v, (circle_reduction *)dst) != CIRCLE_OK) {
      snprintf(why, why_len,
               "must be sum_over_batch_size, sum, mean, "
               "mean_with_sample_weight, none or null");
      return false;
    }
    return true;
  case K_DTYPE: {
    /* Every spelling config.dtype takes, through the same parser: a name,
     * null / None, or the serialized DTypePolicy's JSON text. */
    circle_config c = *(circle_config *)dst;
    circle_error err;
    cJSON *obj = cJSON_CreateObject();
    cJSON *val = v[0] == '{' ? cJSON_Parse(v)
                 : (!strcmp(v, "null") || !strcmp(v, "None"))
                     ? cJSON_CreateNull()
                     : cJSON_CreateString(v);
    bool ok = obj != NULL && val != NULL &&
              cJSON_AddItemToObject(obj, "dtype", val);
    if (!ok) cJSON_Delete(val);
    ok = ok && circle__config_from_json(obj, &c, NULL, 0, &err) == 0;
    cJSON_Delete(obj);
    if (!ok) {
      snprintf(why, why_len,
               "must be float32, float64, float16, bfloat16, mixed_float16, "
               "mixed_bfloat16, null, or a DTypePolicy as JSON "
               "({\"class_name\": \"DTypePolicy\", \"config\": {\"name\": "
               "\"float16\"}})");
      return false;
    }
    ((circle_config *)dst)->dtype = c.dtype;
    ((circle_config *)dst)->half = c.half;
    return true;
  }
  }
  return false;
}

/* The current value of flag i, for --help. */
static void format_value(settings *s, size_t i, char *buf, size_t len) {
  const flag_spec *f = &FLAGS[i];
  void *dst = flag_dst(s, i);
  switch (f->k) {
  case K_STR:
    snprintf(buf, len, "%s", *(const char **)dst ? *(const char **)dst
                                                 : "(none)");
    break;
  case K_NAME:
    snprintf(buf, len, "%s", (const char *)dst);
    break;
  case K_PORT:
    snprintf(buf, len, "%u", (unsigned)*(uint16_t *)dst);
    break;
  case K_OPT_PORT:
    if (*(int *)dst < 0)
      snprintf(buf, len, "off");
    else
      snprintf(buf, len, "%d", *(int *)dst);
    break;
  case K_UINT:
    snprintf(buf, len, "%u", *(unsigned *)dst);
    break;
  case K_SIZE:
    snprintf(buf, len, "%zu", *(size_t *)dst);
    break;
  case K_U64:
    snprintf(buf, len, "%llu", (unsigned long long)*(uint64_t *)dst);
    break;
  case K_MB:
    snprintf(buf, len, "%zu", *(size_t *)dst >> 20);
    break;
  case K_SECONDS:
  case K_DOUBLE:
    snprintf(buf, len, "%g", *(double *)dst);
    break;
  case K_BOOL:
    snprintf(buf, len, "%s", *(bool *)dst ? "true" : "false");
    break;
  case K_REDUCTION: {
    const char *r = circle_reduction_name(*(circle_reduction *)dst);
    snprintf(buf, len, "%s", r ? r : "null");
    break;
  }
  case K_DTYPE: {
    const char *d = circle_config_dtype_name((const circle_config *)dst);
    snprintf(buf, len, "%s", d ? d : "?");
    break;
  }
  }
}

static void print_help(settings *defaults) {
  printf(
      "Usage: circled [FLAGS]\n"
      "\n"
      "circled serves keras.losses.Circle (loss, per-sample values and "
      "gradients)\n"
      "over HTTP: POST /v1/loss (JSON), the Open Inference Protocol v2 "
      "(model\n"
      "\"circle\", JSON and binary tensors), GET /config, /healthz, "
      "/readyz,\n"
      "/metrics (Prometheus) and /dashboard (live charts); and the Open "
      "Inference\nProtocol over gRPC (inference.GRPCInferenceService, "
      "grpc.health.v1) on --grpc-port.\n"
      "\n"
      "Every flag can also be set through the environment variable shown "
      "with it;\n"
      "a flag given on the command line wins. Write --flag VALUE or "
      "--flag=VALUE;\n"
      "a BOOL flag alone means true and --no-FLAG means false.\n"
      "\n");
  for (size_t i = 0; i < NFLAGS; i++) {
    char def[64], left[64];
    format_value(defaults, i, def, sizeof def);
    snprintf(left, sizeof left, "--%s %s", FLAGS[i].flag, FLAGS[i].arg);
    printf("  %-28s %-26s default: %s\n      %s\n", left, FLAGS[i].env, def,
           FLAGS[i].help);
  }
  printf("  %-28s %-26s\n      %s\n", "--help", "", "print this and exit");
  printf("  %-28s %-26s\n      %s\n", "--version", "",
         "print the version and exit");
  printf("\nSIGTERM or SIGINT: /readyz turns 503, no new connections are "
         "accepted,\nrequests in flight finish, then circled exits 0.\n");
}

static int find_flag(const char *name, size_t len) {
  for (size_t i = 0; i < NFLAGS; i++)
    if (strlen(FLAGS[i].flag) == len && !strncmp(FLAGS[i].flag, name, len))
      return (int)i;
  return -1;
}

/* Applies the environment, then argv. Returns 0, or 2 after printing why. */
static int parse_settings(settings *s, int argc, char **argv) {
  char why[256];
  for (size_t i = 0; i < NFLAGS; i++) {
    const char *v = getenv(FLAGS[i].env);
    if (!v || !*v) continue;
    if (!set_value(s, i, v, why, sizeof why)) {
      fprintf(stderr, "circled: %s=%s: %s\n", FLAGS[i].env, v, why);
      return 2;
    }
  }
  for (int a = 1; a < argc; a++) {
    const char *arg = argv[a];
    if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
      s->show_help = true;
      continue;
    }
    if (!strcmp(arg, "--version")) {
      s->show_version = true;
      continue;
    }
    if (strncmp(arg, "--", 2) || !arg[2]) {
      fprintf(stderr, "circled: unexpected argument '%s'; see circled --help\n",
              arg);
      return 2;
    }
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    int i = find_flag(name, len);
    bool negated = false;
    if (i < 0 && len > 3 && !strncmp(name, "no-", 3)) {
      i = find_flag(name + 3, len - 3);
      negated = i >= 0 && FLAGS[i].k == K_BOOL && !eq;
      if (!negated) i = -1;
    }
    if (i < 0) {
      fprintf(stderr, "circled: unknown flag --%.*s; see circled --help\n",
              (int)len, name);
      return 2;
    }
    const char *v;
    if (negated) {
      v = "false";
    } else if (eq) {
      v = eq + 1;
    } else if (FLAGS[i].k == K_BOOL) {
      bool b;
      if (a + 1 < argc && parse_bool(argv[a + 1], &b))
        v = argv[++a];
      else
        v = "true";
    } else if (a + 1 < argc) {
      v = argv[++a];
    } else {
      fprintf(stderr, "circled: --%s needs a value (%s); see circled --help\n",
              FLAGS[i].flag, FLAGS[i].arg);
      return 2;
    }
    if (!set_value(s, (size_t)i, v, why, sizeof why)) {
      fprintf(stderr, "circled: --%s %s: %s\n", FLAGS[i].flag, v, why);
      return 2;
    }
  }
  return 0;
}

/* Reads the bearer token: the file's content without surrounding blanks
 * and line ends. Never prints the token. Returns a malloc'd string or NULL
 * after printing why. */
static char *read_api_key(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "circled: --api-key-file %s: %s\n", path, strerror(errno));
    return NULL;
  }
  char buf[4097];
  size_t n = fread(buf, 1, sizeof buf, f);
  bool err = ferror(f);
  fclose(f);
  if (err || n == sizeof buf) {
    fprintf(stderr, "circled: --api-key-file %s: %s\n", path,
            err ? "read error" : "longer than 4096 bytes");
    return NULL;
  }
  buf[n] = '\0';
  size_t b = 0;
  while (b < n && strchr(" \t\r\n", buf[b])) b++;
  while (n > b && strchr(" \t\r\n", buf[n - 1])) n--;
  if (n == b) {
    fprintf(stderr, "circled: --api-key-file %s: the file is empty\n", path);
    return NULL;
  }
  for (size_t i = b; i < n; i++) {
    unsigned char c = (unsigned char)buf[i];
    if (c < 0x21 || c > 0x7e) {
      fprintf(stderr,
              "circled: --api-key-file %s: the token must be one line of "
              "printable ASCII without blanks\n",
              path);
      return NULL;
    }
  }
  char *key = malloc(n - b + 1);
  if (!key) return NULL;
  memcpy(key, buf + b, n - b);
  key[n - b] = '\0';
  memset(buf, 0, sizeof buf);
  return key;
}

static void wipe_free(char *s) {
  if (!s) return;
  volatile char *p = s;
  while (*p) *p++ = 0;
  free(s);
}

/* ======================================================================== */
/* main                                                                     */
/* ======================================================================== */

static int g_stop_pipe[2] = {-1, -1};
static volatile sig_atomic_t g_stop_signals;

/* SIGTERM / SIGINT: wakes main through the pipe. Async-signal-safe. */
static void on_stop_signal(int sig) {
  int saved = errno;
  unsigned char c = (unsigned char)sig;
  if (g_stop_signals++ > 0) {
    static const char m[] =
        "circled: already draining; SIGKILL stops at once\n";
    ssize_t w = write(2, m, sizeof m - 1);
    (void)w;
  } else {
    ssize_t w = write(g_stop_pipe[1], &c, 1);
    (void)w;
  }
  errno = saved;
}

/* A request's big buffers (its body, decoded tensors, outputs, response:
 * 8 MiB each at 4096 x 512 float32) are freed when it ends and allocated
 * again by the next. glibc by default hands blocks over 128 KiB back to the
 * kernel (its threshold then adapts, but its trim threshold frees the top
 * of an arena past twice that), so every request faulted its buffers in
 * anew: 2,048 page faults and 8 MiB zeroed per buffer, ~10 ms of a 4096 x
 * 512 OIP request's 25 ms outside the engine. Blocks up to 32 MiB now come
 * from the arenas, and an arena keeps up to 64 MiB free at its top for the
 * next request; bigger requests still map and unmap their own. */
static void malloc_tune(void) {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
}

int main(int argc, char **argv) {
  circle_blas_ensure_kernel(argc, argv);
  malloc_tune();

  settings s;
  settings_init(&s);
  int rc = parse_settings(&s, argc, argv);
  if (rc) return rc;
  if (s.show_help) {
    settings d;
    settings_init(&d);
    print_help(&d);
    return 0;
  }
  if (s.show_version) {
    printf("circled %s\n", CIRCLE_HTTP_VERSION);
    return 0;
  }
  if (circle_config_validate(&s.http.defaults) != CIRCLE_OK) {
    fprintf(stderr, "circled: the default loss config is invalid: gamma must "
                    "be > 0 and finite, margin finite\n");
    return 2;
  }

  char *api_key = NULL;
  if (s.api_key_file) {
    api_key = read_api_key(s.api_key_file);
    if (!api_key) return 2;
    s.http.api_key = api_key;
  }

  /* Stop signals go through a self-pipe: whichever thread the kernel picks
   * (OpenBLAS starts threads before main, with nothing blocked), the
   * handler only writes a byte, and a second signal during the drain
   * cannot kill the process. */
  if (pipe2(g_stop_pipe, O_CLOEXEC) != 0) {
    fprintf(stderr, "circled: pipe: %s\n", strerror(errno));
    wipe_free(api_key);
    return 1;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  circle_engine *engine = NULL;
  rc = circle_engine_init(&engine, &s.engine);
  if (rc != CIRCLE_OK) {
    fprintf(stderr, "circled: cannot start the engine: %s\n",
            circle_status_str(rc));
    wipe_free(api_key);
    return 1;
  }

  circle_http *srv = NULL;
  char why[256] = "";
  rc = circle_http_init(&srv, &s.http, engine, why, sizeof why);
  wipe_free(api_key);
  s.http.api_key = NULL;
  if (rc != CIRCLE_OK) {
    fprintf(stderr, "circled: %s\n", why[0] ? why : circle_status_str(rc));
    circle_engine_free(engine);
    return 1;
  }

  const char *red = circle_reduction_name(s.http.defaults.reduction);
  fprintf(stderr,
          "circled %s: %u network threads, %u compute threads, OpenBLAS "
          "core %s; timeout %us, max body %zu MiB, in flight %zu MiB; "
          "defaults gamma=%g margin=%g remove_diagonal=%s reduction=%s "
          "dtype=%s; auth %s\n",
          CIRCLE_HTTP_VERSION, s.http.net_threads,
          circle_engine_threads(engine), circle_blas_corename(),
          s.http.timeout_s, s.http.max_body >> 20, s.http.max_inflight >> 20,
          s.http.defaults.gamma, s.http.defaults.margin,
          s.http.defaults.remove_diagonal ? "true" : "false",
          red ? red : "null", circle_config_dtype_name(&s.http.defaults),
          s.api_key_file ? "bearer token required" : "off");
  /* Both listeners are up before either is announced: a harness that
   * waits for the first line finds the second right after it. */
  circle_grpc *grpc = NULL;
  circle_grpc_opts go = {
      .bind = s.grpc_bind ? s.grpc_bind : s.http.bind,
      .port = (uint16_t)(s.grpc_port < 0 ? 0 : s.grpc_port),
      .max_message = s.http.max_body,
      .idle_timeout_s = s.http.timeout_s,
      .quiet = s.http.quiet,
  };
  if (s.grpc && s.grpc_port >= 0) {
    rc = circle_grpc_init(&grpc, &go, srv, why, sizeof why);
    if (rc != CIRCLE_OK) {
      fprintf(stderr, "circled: %s\n", why[0] ? why : circle_status_str(rc));
      circle_http_free(srv);
      circle_engine_free(engine);
      return 1;
    }
  }
  bool v6 = strchr(s.http.bind, ':') != NULL;
  fprintf(stderr, "circled: listening on %s%s%s:%u\n", v6 ? "[" : "",
          s.http.bind, v6 ? "]" : "", (unsigned)circle_http_port(srv));
  if (grpc) {
    bool gv6 = strchr(go.bind, ':') != NULL;
    fprintf(stderr, "circled: grpc listening on %s%s%s:%u\n", gv6 ? "[" : "",
            go.bind, gv6 ? "]" : "", (unsigned)circle_grpc_port(grpc));
  }
  fflush(stderr);

  /* poll with a timeout rather than one blocking read: under
   * ThreadSanitizer a signal's handler runs only when its thread next
   * enters an intercepted call, so main must keep entering one (the
   * `make tsan` daemon tests stop circled with SIGTERM). */
  unsigned char sigbyte = 0;
  for (;;) {
    struct pollfd pfd = {.fd = g_stop_pipe[0], .events = POLLIN};
    if (poll(&pfd, 1, 200) == 1 && read(g_stop_pipe[0], &sigbyte, 1) == 1)
      break;
  }
  int sig = sigbyte;
  fprintf(stderr,
          "circled: %s received: draining (new connections refused, "
          "computing requests finish; uploads and queued ones get %gs)\n",
          sig == SIGINT ? "SIGINT" : "SIGTERM", s.drain_timeout_s);
  /* Both protocols stop taking new work at once; then each finishes what
   * it has. */
  circle__http_set_draining(srv);
  circle_grpc_drain_begin(grpc);
  circle_http_drain(srv, s.drain_timeout_s);
  circle_grpc_drain(grpc, s.drain_timeout_s);
  circle_grpc_free(grpc);
  circle_http_free(srv);
  circle_engine_free(engine);
  fprintf(stderr, "circled: stopped\n");
  return 0;
}
