/* util_daemon.c -- starts the real circled on an ephemeral loopback port and
 * talks to it (libcurl, raw sockets); see util_daemon.h. It must keep true:
 * a daemon it started never outlives a failed start.
 */
#include "util_daemon.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

double td_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

char *td_log(const td_daemon *d) {
  FILE *f = fopen(d->log_path, "rb");
  if (!f) return NULL;
  size_t cap = 4096, len = 0;
  char *s = malloc(cap);
  for (;;) {
    if (!s) break;
    if (len + 1024 + 1 > cap) {
      char *n = realloc(s, cap *= 2);
      if (!n) {
        free(s);
        s = NULL;
        break;
      }
      s = n;
    }
    size_t r = fread(s + len, 1, cap - len - 1, f);
    len += r;
    if (r == 0) break;
  }
  fclose(f);
  if (s) s[len] = '\0';
  return s;
}

int td_start(td_daemon *d, const char *const *args, const char *const *env) {
  memset(d, 0, sizeof *d);
  const char *bin = getenv("CIRCLED_BIN");
  if (!bin || !*bin) bin = "build/circled";
  snprintf(d->log_path, sizeof d->log_path, "/tmp/circled-test-XXXXXX");
  int fd = mkstemp(d->log_path);
  if (fd < 0) {
    fprintf(stderr, "td_start: mkstemp: %s\n", strerror(errno));
    return -1;
  }

  const char *argv[64];
  size_t n = 0;
  argv[n++] = bin;
  argv[n++] = "--bind";
  argv[n++] = "127.0.0.1";
  argv[n++] = "--port";
  argv[n++] = "0";
  argv[n++] = "--grpc-port";
  argv[n++] = "0";
  for (size_t i = 0; args && args[i] && n < 63; i++) argv[n++] = args[i];
  argv[n] = NULL;

  pid_t pid = fork();
  if (pid < 0) {
    close(fd);
    return -1;
  }
  if (pid == 0) {
    dup2(fd, 1);
    dup2(fd, 2);
    close(fd);
    for (size_t i = 0; env && env[i]; i++) putenv((char *)env[i]);
    /* The test process may block signals; the daemon must start clean. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execv(bin, (char *const *)argv);
    fprintf(stderr, "td_start: exec %s: %s\n", bin, strerror(errno));
    _exit(127);
  }
  close(fd);
  d->pid = pid;

  double deadline = td_now() + 30;
  while (td_now() < deadline) {
    char *log = td_log(d);
    const char *p = log ? strstr(log, "circled: listening on 127.0.0.1:") : NULL;
    if (p) {
      d->port = atoi(p + strlen("circled: listening on 127.0.0.1:"));
      free(log);
      snprintf(d->base, sizeof d->base, "http://127.0.0.1:%d", d->port);
      return d->port > 0 ? 0 : -1;
    }
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      fprintf(stderr, "td_start: circled exited before listening:\n%s\n",
              log ? log : "");
      free(log);
      d->pid = 0;
      return -1;
    }
    free(log);
    usleep(10000);
  }
  fprintf(stderr, "td_start: circled did not listen within 30 s\n");
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  d->pid = 0;
  return -1;
}

int td_stop(td_daemon *d, int sig, double timeout_s) {
  if (d->pid <= 0) return -1;
  kill(d->pid, sig);
  double deadline = td_now() + timeout_s;
  int st = 0;
  for (;;) {
    pid_t r = waitpid(d->pid, &st, WNOHANG);
    if (r == d->pid) break;
    if (td_now() > deadline) {
      kill(d->pid, SIGKILL);
      waitpid(d->pid, NULL, 0);
      d->pid = 0;
      return -1;
    }
    usleep(5000);
  }
  d->pid = 0;
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  return -1;
}

/* ---- libcurl ------------------------------------------------------------ */

typedef struct {
  char *p;
  size_t len, cap;
} grow;

static int grow_add(grow *g, const void *data, size_t n) {
  if (g->len + n + 1 > g->cap) {
    size_t cap = g->cap ? g->cap : 1024;
    while (cap < g->len + n + 1) cap *= 2;
    char *p = realloc(g->p, cap);
    if (!p) return -1;
    g->p = p;
    g->cap = cap;
  }
  memcpy(g->p + g->len, data, n);
  g->len += n;
  g->p[g->len] = '\0';
  return 0;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp) {
  return grow_add(userp, data, size * nmemb) ? 0 : size * nmemb;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userp) {
  grow *g = userp;
  size_t n = size * nmemb;
  /* A new status line (after 100 Continue) starts a new header block. */
  if (n >= 5 && !strncmp(data, "HTTP/", 5)) g->len = 0;
  return grow_add(g, data, n) ? 0 : n;
}

int td_request(const td_daemon *d, void *handle, const char *method,
               const char *path, const void *body, size_t len,
               const char *const *headers, const char *accept_encoding,
               td_resp *out) {
  memset(out, 0, sizeof *out);
  CURL *h = handle ? handle : curl_easy_init();
  if (!h) return -1;
  grow b = {0}, hd = {0};
  grow_add(&b, "", 0);
  grow_add(&hd, "", 0);
  char url[1024];
  snprintf(url, sizeof url, "%s%s", d->base, path);
  struct curl_slist *list = NULL;
  for (size_t i = 0; headers && headers[i]; i++)
    list = curl_slist_append(list, headers[i]);
  /* Never let curl wait a second for 100 Continue unless asked. */
  bool expect_given = false;
  for (size_t i = 0; headers && headers[i]; i++)
    if (!strncasecmp(headers[i], "Expect:", 7)) expect_given = true;
  if (!expect_given) list = curl_slist_append(list, "Expect:");

  curl_easy_setopt(h, CURLOPT_URL, url);
  /* Reset what an earlier call on a reused handle may have set. */
  curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
  curl_easy_setopt(h, CURLOPT_NOBODY, 0L);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, NULL);
  if (!strcmp(method, "HEAD")) {
    curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  } else if (body || !strcmp(method, "POST")) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body ? body : "");
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE,
                     (curl_off_t)(body ? len : 0));
    if (strcmp(method, "POST")) curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  } else if (strcmp(method, "GET")) {
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  }
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, list);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &hd);
  curl_easy_setopt(h, CURLOPT_TIMEOUT, 120L);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, accept_encoding);
  char err[CURL_ERROR_SIZE] = "";
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, err);

  double t0 = td_now();
  CURLcode rc = curl_easy_perform(h);
  out->ms = (td_now() - t0) * 1e3;
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
  curl_slist_free_all(list);
  out->body = b.p;
  out->len = b.len;
  out->headers = hd.p;
  out->hlen = hd.len;
  if (rc == CURLE_OK) {
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &out->status);
  } else {
    snprintf(out->error, sizeof out->error, "%.200s: %.256s", curl_easy_strerror(rc),
             err);
  }
  if (!handle) curl_easy_cleanup(h);
  return rc == CURLE_OK ? 0 : -1;
}

const char *td_header(const td_resp *r, const char *name, char *buf,
                      size_t len) {
  size_t nl = strlen(name);
  const char *p = r->headers;
  while (p && *p) {
    const char *eol = strstr(p, "\r\n");
    if (!eol) eol = p + strlen(p);
    if ((size_t)(eol - p) > nl && !strncasecmp(p, name, nl) && p[nl] == ':') {
      const char *v = p + nl + 1;
      while (v < eol && (*v == ' ' || *v == '\t')) v++;
      size_t vl = (size_t)(eol - v);
      while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) vl--;
      if (vl >= len) vl = len - 1;
      memcpy(buf, v, vl);
      buf[vl] = '\0';
      return buf;
    }
    p = *eol ? eol + 2 : eol;
  }
  return NULL;
}

void td_resp_free(td_resp *r) {
  free(r->body);
  free(r->headers);
  memset(r, 0, sizeof *r);
}

/* ---- raw sockets -------------------------------------------------------- */

int td_connect(const td_daemon *d) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0) return -1;
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)d->port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
    close(s);
    return -1;
  }
  return s;
}

long td_raw(const td_daemon *d, const void *req, size_t len, char *out,
            size_t out_len, double timeout_s) {
  int s = td_connect(d);
  if (s < 0) return -1;
  const char *p = req;
  size_t sent = 0;
  while (sent < len) {
    ssize_t w = send(s, p + sent, len - sent, MSG_NOSIGNAL);
    if (w <= 0) {
      close(s);
      return -1;
    }
    sent += (size_t)w;
  }
  size_t got = 0;
  double deadline = td_now() + timeout_s;
  while (got + 1 < out_len) {
    int left = (int)((deadline - td_now()) * 1000);
    if (left <= 0) break;
    struct pollfd pfd = {.fd = s, .events = POLLIN};
    if (poll(&pfd, 1, left) <= 0) break;
    ssize_t r = recv(s, out + got, out_len - 1 - got, 0);
    if (r <= 0) break;
    got += (size_t)r;
  }
  out[got] = '\0';
  close(s);
  return (long)got;
}
