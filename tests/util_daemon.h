/* util_daemon.h -- black-box test helpers: start the real circled binary
 * ($CIRCLED_BIN) on 127.0.0.1 with an ephemeral port, talk to it with
 * libcurl or a raw socket, and stop it with a signal.
 *
 * Nothing here uses check, so any test binary can link it; functions report
 * failure through their return value and the caller asserts.
 */
#ifndef TESTS_UTIL_DAEMON_H
#define TESTS_UTIL_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct {
  pid_t pid;
  int port;
  char log_path[256]; /* the daemon's stdout + stderr */
  char base[64];      /* "http://127.0.0.1:PORT" */
} td_daemon;

/* Starts $CIRCLED_BIN --bind 127.0.0.1 --port 0 --grpc-port 0 followed by args (a NULL-
 * terminated list, or NULL), with env (NULL-terminated "K=V" strings, or
 * NULL) added to the environment. Waits up to 30 s for the
 * "circled: listening on 127.0.0.1:PORT" line. Returns 0, or -1 with the
 * reason on stderr (the daemon, if it started, is killed). */
int td_start(td_daemon *d, const char *const *args, const char *const *env);

/* Sends sig and waits up to timeout_s for the exit. Returns the exit status
 * (0..255), 128 + the signal if one killed it, or -1 on timeout (the
 * daemon is then killed with SIGKILL). */
int td_stop(td_daemon *d, int sig, double timeout_s);

/* The daemon's log so far, malloc'd and NUL-terminated (caller frees);
 * NULL if it cannot be read. */
char *td_log(const td_daemon *d);

typedef struct {
  long status;   /* HTTP status; 0 when the request failed */
  char *body;    /* NUL-terminated (extra byte not counted in len) */
  size_t len;
  char *headers; /* the final response's header block */
  size_t hlen;
  double ms;     /* wall time of the whole exchange */
  char error[512]; /* curl's error when status is 0 */
} td_resp;

/* Makes one request with libcurl to d->base + path. body may be NULL for no
 * body; headers is a NULL-terminated list of "Name: value" or NULL.
 * accept_encoding, when not NULL, is sent as Accept-Encoding and the body
 * is decoded by curl. handle, when not NULL, is a CURL* reused across calls
 * (keep-alive). Returns 0 when an HTTP response arrived. */
int td_request(const td_daemon *d, void *handle, const char *method,
               const char *path, const void *body, size_t len,
               const char *const *headers, const char *accept_encoding,
               td_resp *out);

/* Case-insensitive lookup of a response header; copies its value (trimmed)
 * into buf and returns buf, or NULL when absent. */
const char *td_header(const td_resp *r, const char *name, char *buf,
                      size_t len);

void td_resp_free(td_resp *r);

/* Opens a TCP connection to the daemon; returns the socket or -1. */
int td_connect(const td_daemon *d);

/* Sends raw bytes on a fresh connection and reads until the peer closes,
 * out is full, or timeout_s passes. Returns the bytes read (out is NUL-
 * terminated) or -1. */
long td_raw(const td_daemon *d, const void *req, size_t len, char *out,
            size_t out_len, double timeout_s);

/* Seconds on a monotonic clock. */
double td_now(void);

#endif /* TESTS_UTIL_DAEMON_H */
