/* bench_codec.c -- the /v1 JSON and OIP binary paths of one request without
 * the network: decode, compute, encode, each timed on its own.
 *
 * For each n x d it builds the body a Python client sends (JSON: numbers as
 * Python prints float32 values made float, about 20 characters each, or
 * --short: 9 significant digits; OIP: a JSON header plus raw FP32 bytes),
 * then times in one thread, interleaved round by round:
 *
 *   json decode   circle_json_decode (json_fast.c reads the matrices,
 *                 cJSON the rest), and again with the fast path off
 *                 (the slow path: the whole body validated, the matrices
 *                 read from the text one element at a time), for comparison
 *   fast read     circle__json_fast_body_read alone: json_fast.c reading
 *                 the matrices' numbers (ns per number of embeddings)
 *   compute       circle_loss_compute (loss, per-sample, gradient)
 *   json encode   circle_json_encode (numbers straight into the buffer)
 *   oip decode / oip encode   the same for the binary protocol
 *
 * and prints medians with throughput: MB/s of JSON text and millions of
 * numbers per second.
 *
 * --mem instead measures what decoding costs in memory: in a fresh child
 * process per case, the peak resident set (VmHWM) reached while decoding,
 * minus the resident set just before (the body already built), in bytes
 * per input number: JSON through the fast path, JSON through the slow path
 * (circle__json_fast_enabled off), and OIP binary.
 *
 * --invalid instead times circle_json_decode of the body and of five
 * rejected ones made from it: an unknown key after the matrices, the last
 * number of embeddings made 1e400, a syntax error in a config after the
 * matrices, the last number made null, and the last row one number short
 * (docs/performance.md counts how often each reads the text).
 *
 * Usage: bench_codec [--n N,..] [--d D,..] [--reps R] [--short] [--mem]
 *                    [--invalid]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "circle/circle.h"
#include "codec_json.h"
#include "codec_oip.h"
#include "json_fast.h"
#include "request.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double unif(void) { return unif_from(&rng); }

static void die(const char *what) {
  fprintf(stderr, "bench_codec: %s\n", what);
  exit(1);
}

/* Python's repr of a float32 value widened to double: the shortest digits
 * that round-trip the double (what json.dumps(x.tolist()) writes). */
static void py_repr(circle_buf *b, double v) { circle_buf_python_float(b, v); }

static long status_kb(const char *field) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long v = -1;
  size_t fl = strlen(field);
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, field, fl) && line[fl] == ':') v = atol(line + fl + 1);
  if (f) fclose(f);
  return v;
}

/* In a child process: peak RSS growth (bytes) while decoding body with
 * kind 0 = JSON fast path, 1 = JSON through the slow path, 2 = OIP. */
static double decode_peak_bytes(int kind, const circle_buf *body, size_t hlen,
                                const circle_limits *lim, const circle_config *defaults) {
  int fd[2];
  if (pipe(fd) != 0) die("pipe");
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    circle__json_fast_enabled = kind == 0;
    /* Touch the body so it is resident, then reset the peak to now. */
    volatile char sink = 0;
    for (size_t i = 0; i < body->len; i += 4096) sink ^= body->data[i];
    (void)sink;
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) {
      fputs("5", f); /* resets VmHWM to the current RSS */
      fclose(f);
    }
    long before = status_kb("VmRSS");
    circle_request req;
    circle_error err;
    circle_request_init(&req);
    int rc = kind == 2 ? circle_oip_decode(body->data, body->len, hlen, defaults, lim, &req, &err)
                       : circle_json_decode(body->data, body->len, defaults, "circle", lim, &req,
                                            &err);
    long peak = status_kb("VmHWM");
    double grow = rc == 0 ? (double)(peak - before) * 1024.0 : -1.0;
    if (write(fd[1], &grow, sizeof grow) != (ssize_t)sizeof grow) _exit(1);
    _exit(0);
  }
  close(fd[1]);
  double grow = -1;
  if (read(fd[0], &grow, sizeof grow) != (ssize_t)sizeof grow) grow = -1;
  close(fd[0]);
  waitpid(pid, NULL, 0);
  return grow;
}

/* The median time of circle_json_decode of text (rc: its result). */
static double time_decode(const char *text, size_t len, int reps, const circle_limits *lim,
                          const circle_config *defaults, int *rc) {
  double t[1000];
  for (int r = -1; r < reps; r++) {
    circle_request req;
    circle_request_init(&req);
    circle_error err;
    double t0 = now();
    *rc = circle_json_decode(text, len, defaults, "circle", lim, &req, &err);
    if (r >= 0) t[r] = now() - t0;
    circle_request_free(&req);
  }
  return median(t, reps);
}

/* --invalid: body and the rejected bodies made from it. */
static void time_invalid(const circle_buf *body, size_t n, size_t d, int reps,
                         const circle_limits *lim, const circle_config *defaults) {
  static const char *const names[] = {"valid", "unknown key", "1e400 last",
                                      "config syntax error", "null last",
                                      "last row short"};
  const char *b = body->data;
  size_t len = body->len; /* ends "]]}" */
  size_t last = len - 3;  /* the last number is (cut, last) */
  size_t cut = last;
  while (cut > 0 && b[cut - 1] != ' ' && b[cut - 1] != '[') cut--;
  double valid = 0;
  for (int v = 0; v < 6; v++) {
    circle_buf t;
    circle_buf_init(&t);
    if (v == 5 && !(cut >= 2 && b[cut - 2] == ',')) {
      circle_buf_free(&t);
      continue; /* a row of one number cannot be made shorter */
    }
    if (v == 2 || v == 4) {
      circle_buf_append(&t, b, cut);
      circle_buf_puts(&t, v == 2 ? "1e400]]}" : "null]]}");
    } else if (v == 5) {
      circle_buf_append(&t, b, cut - 2);
      circle_buf_puts(&t, "]]}");
    } else {
      circle_buf_append(&t, b, len - 1);
      circle_buf_puts(&t, v == 0 ? "}" : v == 1 ? ", \"bogus\": 1}"
                                                : ", \"config\": {\"gamma\" 2}}");
    }
    if (t.failed) die("out of memory building a body");
    int rc;
    double ms = time_decode(t.data, t.len, reps, lim, defaults, &rc) * 1e3;
    if ((rc == 0) != (v == 0)) die("a body was not decoded as expected");
    if (v == 0) valid = ms;
    printf("| %zu | %zu | %s | %zu | %.3f | %.2f |\n", n, d, names[v], t.len / 1024, ms,
           ms / valid);
    circle_buf_free(&t);
  }
}

int main(int argc, char **argv) {
  circle_blas_ensure_kernel(argc, argv);
  size_t ns[8] = {64, 1024, 4096}, ds[8] = {128, 512};
  size_t nn = 3, nd = 2;
  int reps = 7;
  bool short_numbers = false, mem = false, invalid = false;
  for (int a = 1; a < argc; a++) {
    if (!strcmp(argv[a], "--n") && a + 1 < argc) nn = parse_list(argv[++a], ns, 8);
    else if (!strcmp(argv[a], "--d") && a + 1 < argc) nd = parse_list(argv[++a], ds, 8);
    else if (!strcmp(argv[a], "--reps") && a + 1 < argc) reps = atoi(argv[++a]);
    else if (!strcmp(argv[a], "--short")) short_numbers = true;
    else if (!strcmp(argv[a], "--mem")) mem = true;
    else if (!strcmp(argv[a], "--invalid")) invalid = true;
    else {
      fprintf(stderr,
              "usage: %s [--n N,..] [--d D,..] [--reps R] [--short] [--mem] [--invalid]\n",
              argv[0]);
      return 2;
    }
  }
  if (reps < 1 || reps > 1000) reps = 7;
  circle_engine_opts eo = {.threads = 1};
  circle_engine *e;
  if (circle_engine_init(&e, &eo) != CIRCLE_OK) die("engine init failed");
  circle_limits lim;
  circle_limits_init(&lim);
  circle_config defaults;
  circle_config_init(&defaults);

  if (invalid) {
    printf("# bench_codec --invalid: one thread, median of %d, JSON numbers %s\n", reps,
           short_numbers ? "with 9 significant digits" : "as Python's repr (float32 tolist)");
    printf("| n | d | body | KB | json decode ms | x valid |\n");
    printf("|---:|---:|---|---:|---:|---:|\n");
  } else if (mem) {
    printf("# bench_codec --mem: peak RSS growth while decoding, bytes per input number;"
           " JSON numbers %s\n",
           short_numbers ? "with 9 significant digits" : "as Python's repr (float32 tolist)");
    printf("| n | d | JSON body bytes/number | JSON decode (fast path) | JSON decode (slow path)"
           " | OIP body bytes/number | OIP decode |\n");
    printf("|---:|---:|---:|---:|---:|---:|---:|\n");
  } else {
    printf("# bench_codec: one thread, median of %d, JSON numbers %s\n", reps,
           short_numbers ? "with 9 significant digits" : "as Python's repr (float32 tolist)");
    printf("| n | d | numbers in | JSON body KB | json decode ms | decode MB/s | decode Mnum/s"
           " | compute ms | json encode ms | response KB | encode MB/s | encode Mnum/s"
           " | oip decode ms | oip encode ms | json decode via the slow path ms"
           " | fast read ms | fast read ns/number |\n");
    printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
           "|---:|\n");
  }
  for (size_t in_ = 0; in_ < nn; in_++)
    for (size_t id = 0; id < nd; id++) {
      size_t n = ns[in_], d = ds[id];
      /* The JSON body. */
      circle_buf body;
      circle_buf_init(&body);
      float *x = malloc(n * d * sizeof *x);
      int64_t *lab = malloc(n * sizeof *lab);
      if (!x || !lab) die("out of memory");
      for (size_t i = 0; i < n; i++) {
        lab[i] = (int64_t)(unif() * 16);
        double ss = 0;
        for (size_t k = 0; k < d; k++) {
          double v = unif() - 0.5 + (k == (size_t)lab[i] % d ? 1.0 : 0);
          x[i * d + k] = (float)v;
          ss += v * v;
        }
        for (size_t k = 0; k < d; k++) x[i * d + k] = (float)(x[i * d + k] / sqrt(ss));
      }
      circle_buf_puts(&body, "{\"labels\": [");
      for (size_t i = 0; i < n; i++) {
        if (i) circle_buf_puts(&body, ", ");
        circle_buf_json_uint(&body, (uint64_t)lab[i]);
      }
      circle_buf_puts(&body, "], \"embeddings\": [");
      for (size_t i = 0; i < n; i++) {
        circle_buf_puts(&body, i ? ", [" : "[");
        for (size_t k = 0; k < d; k++) {
          if (k) circle_buf_puts(&body, ", ");
          if (short_numbers) circle_buf_json_number(&body, x[i * d + k], CIRCLE_DTYPE_FLOAT32);
          else py_repr(&body, (double)x[i * d + k]);
        }
        circle_buf_puts(&body, "]");
      }
      circle_buf_puts(&body, "]}");
      if (body.failed) die("out of memory building the body");
      if (invalid) {
        time_invalid(&body, n, d, reps, &lim, &defaults);
        circle_buf_free(&body);
        free(x);
        free(lab);
        continue;
      }

      /* The OIP body: JSON header + labels + embeddings, as tritonclient. */
      circle_buf oip;
      circle_buf_init(&oip);
      circle_buf_printf(&oip,
                        "{\"inputs\":[{\"name\":\"labels\",\"shape\":[%zu],"
                        "\"datatype\":\"INT64\",\"parameters\":{\"binary_data_size\":%zu}},"
                        "{\"name\":\"embeddings\",\"shape\":[%zu,%zu],\"datatype\":\"FP32\","
                        "\"parameters\":{\"binary_data_size\":%zu}}],"
                        "\"outputs\":[{\"name\":\"loss\",\"parameters\":{\"binary_data\":true}},"
                        "{\"name\":\"embeddings_grad\",\"parameters\":{\"binary_data\":true}}]}",
                        n, n * 8, n, d, n * d * 4);
      size_t oip_hlen = oip.len;
      circle_buf_append(&oip, lab, n * 8);
      circle_buf_append(&oip, x, n * d * 4);
      if (oip.failed) die("out of memory building the OIP body");

      if (mem) {
        double nums = (double)(n * d + n);
        double fast = decode_peak_bytes(0, &body, 0, &lim, &defaults);
        double slow = decode_peak_bytes(1, &body, 0, &lim, &defaults);
        double obin = decode_peak_bytes(2, &oip, oip_hlen, &lim, &defaults);
        printf("| %zu | %zu | %.1f | %.1f | %.1f | %.1f | %.1f |\n", n, d, body.len / nums,
               fast / nums, slow / nums, oip.len / nums, obin / nums);
        fflush(stdout);
        circle_buf_free(&body);
        circle_buf_free(&oip);
        free(x);
        free(lab);
        continue;
      }
      double t_dec[1000], t_cmp[1000], t_enc[1000], t_odec[1000], t_oenc[1000],
          t_slow[1000], t_fast[1000];
      size_t resp_len = 0;
      for (int r = -1; r < reps; r++) {
        circle_request req;
        circle_error err;
        circle_request_init(&req);
        double t0 = now();
        if (circle_json_decode(body.data, body.len, &defaults, "circle", &lim, &req, &err) != 0) {
          fprintf(stderr, "decode: %s\n", err.message);
          return 1;
        }
        double t1 = now();
        circle_input inp = {.n = req.n, .d = req.d, .labels = req.labels, .embeddings = req.x};
        circle_output out = {.want = req.want & ~(unsigned)CIRCLE_OUT_REF_GRAD};
        out.per_sample = malloc(n * 4);
        out.grad = malloc(n * d * 4);
        if (circle_reduction_is_elementwise(req.cfg.reduction)) out.loss_values = malloc(n * 4);
        if (circle_loss_compute(e, &req.cfg, &inp, &out) != CIRCLE_OK) die("compute failed");
        double t2 = now();
        circle_buf resp;
        circle_buf_init(&resp);
        if (circle_json_encode(&req, &out, &resp) != 0) die("encode failed");
        double t3 = now();
        resp_len = resp.len;
        circle_buf_free(&resp);
        circle_request_free(&req);

        circle_request oreq;
        circle_request_init(&oreq);
        double t4 = now();
        if (circle_oip_decode(oip.data, oip.len, oip_hlen, &defaults, &lim, &oreq, &err) != 0) {
          fprintf(stderr, "oip decode: %s\n", err.message);
          return 1;
        }
        double t5 = now();
        circle_buf oresp;
        circle_buf_init(&oresp);
        size_t hl = 0;
        if (circle_oip_encode(&oreq, &out, &oresp, &hl) != 0) die("oip encode failed");
        double t6 = now();
        circle_buf_free(&oresp);
        circle_request_free(&oreq);
        circle__json_fast_enabled = false;
        circle_request_init(&oreq);
        double t7 = now();
        if (circle_json_decode(body.data, body.len, &defaults, "circle", &lim, &oreq, &err) != 0)
          die("decode without the fast path failed");
        double t8 = now();
        circle_request_free(&oreq);
        circle__json_fast_enabled = true;
        circle__json_fast_body fb;
        double t9 = now();
        if (!circle__json_fast_body_read(body.data, body.len, lim.max_depth, lim.max_n,
                                         lim.max_m, lim.max_d, &fb))
          die("the fast path did not read the body");
        double t10 = now();
        circle__json_fast_body_free(&fb);
        free(out.per_sample);
        free(out.grad);
        free(out.loss_values);
        if (r >= 0) {
          t_dec[r] = t1 - t0;
          t_cmp[r] = t2 - t1;
          t_enc[r] = t3 - t2;
          t_odec[r] = t5 - t4;
          t_oenc[r] = t6 - t5;
          t_slow[r] = t8 - t7;
          t_fast[r] = t10 - t9;
        }
      }
      double dec = median(t_dec, reps), cmp = median(t_cmp, reps),
             enc = median(t_enc, reps), odec = median(t_odec, reps),
             oenc = median(t_oenc, reps), slow = median(t_slow, reps),
             fast = median(t_fast, reps);
      double nin = (double)(n * d + n), nout = (double)(n * d + n + 1);
      printf("| %zu | %zu | %.0f | %.0f | %.3f | %.0f | %.1f | %.3f | %.3f | %.0f | %.0f | %.1f"
             " | %.3f | %.3f | %.3f | %.3f | %.1f |\n",
             n, d, nin, body.len / 1e3, dec * 1e3, body.len / dec / 1e6, nin / dec / 1e6,
             cmp * 1e3, enc * 1e3, resp_len / 1e3, resp_len / enc / 1e6, nout / enc / 1e6,
             odec * 1e3, oenc * 1e3, slow * 1e3, fast * 1e3, fast * 1e9 / (double)(n * d));
      fflush(stdout);
      circle_buf_free(&body);
      circle_buf_free(&oip);
      free(x);
      free(lab);
    }
  circle_engine_free(e);
  return 0;
}
