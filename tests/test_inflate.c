/* test_inflate.c -- gzip / deflate request bodies: every wrapper decodes,
 * corrupt and truncated streams are 400, unknown encodings 415, and a
 * deflate bomb is refused with 413 after inflating no more than the cap.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <zlib.h>

#include "inflate.h"

/* Compresses src with the given zlib window bits (31 gzip, 15 zlib, -15
 * raw) into a malloc'd buffer. */
static unsigned char *compress_wbits(const void *src, size_t n, int wbits,
                                     size_t *out_n) {
  z_stream zs;
  memset(&zs, 0, sizeof(zs));
  ck_assert_int_eq(deflateInit2(&zs, 9, Z_DEFLATED, wbits, 9, Z_DEFAULT_STRATEGY), Z_OK);
  size_t cap = deflateBound(&zs, n) + 64;
  unsigned char *out = malloc(cap);
  zs.next_in = (Bytef *)src;
  zs.avail_in = (uInt)n;
  zs.next_out = out;
  zs.avail_out = (uInt)cap;
  ck_assert_int_eq(deflate(&zs, Z_FINISH), Z_STREAM_END);
  *out_n = cap - zs.avail_out;
  deflateEnd(&zs);
  return out;
}

/* A gzip stream of n zero bytes, compressed chunk by chunk (n may be far
 * larger than what we want in memory). */
static unsigned char *gzip_zeros(size_t n, size_t *out_n) {
  z_stream zs;
  memset(&zs, 0, sizeof(zs));
  /* Level 1: fast to make, and still ~230:1 on zeros. */
  ck_assert_int_eq(deflateInit2(&zs, 1, Z_DEFLATED, 31, 9, Z_DEFAULT_STRATEGY), Z_OK);
  static unsigned char zeros[1 << 20];
  size_t cap = n / 512 + 65536, used = 0;
  unsigned char *out = malloc(cap);
  size_t left = n;
  int flush;
  do {
    size_t take = left < sizeof(zeros) ? left : sizeof(zeros);
    left -= take;
    flush = left ? Z_NO_FLUSH : Z_FINISH;
    zs.next_in = zeros;
    zs.avail_in = (uInt)take;
    do { /* zlib's zpipe loop, into a growing buffer */
      if (cap - used < 65536) {
        cap *= 2;
        out = realloc(out, cap);
      }
      zs.next_out = out + used;
      zs.avail_out = 65536;
      deflate(&zs, flush);
      used += 65536 - zs.avail_out;
    } while (zs.avail_out == 0);
  } while (flush != Z_FINISH);
  deflateEnd(&zs);
  *out_n = used;
  return out;
}

static const char text[] =
    "{\"labels\": [1, 2, 1], \"embeddings\": [[0.1, 0.2], [0.3, 0.4], [0.5, "
    "0.6]]} and some more text to make it compress: aaaaaaaaaaaaaaaaaaaaaaaa";

static void check_round_trip(const char *encoding, int wbits) {
  size_t zn;
  unsigned char *z = compress_wbits(text, sizeof(text), wbits, &zn);
  char *out = NULL;
  size_t out_n = 0;
  circle_error err;
  ck_assert_int_eq(circle_inflate(encoding, (const char *)z, zn, 1 << 20, &out,
                                  &out_n, &err),
                   0);
  ck_assert_uint_eq(out_n, sizeof(text));
  ck_assert_mem_eq(out, text, sizeof(text));
  free(out);
  free(z);
}

START_TEST(inflate_should_decode_gzip) {
  check_round_trip("gzip", 31);
  check_round_trip("GZip", 31);
  check_round_trip("x-gzip", 31);
}
END_TEST

START_TEST(inflate_should_decode_zlib_and_raw_deflate) {
  check_round_trip("deflate", 15);  /* RFC 1950, what zlib.compress makes */
  check_round_trip("deflate", -15); /* raw RFC 1951, what some clients send */
  check_round_trip("Deflate", 9);
}
END_TEST

START_TEST(inflate_should_decode_concatenated_gzip_members) {
  size_t n1, n2;
  unsigned char *a = compress_wbits("hello ", 6, 31, &n1);
  unsigned char *b = compress_wbits("world", 5, 31, &n2);
  unsigned char *both = malloc(n1 + n2);
  memcpy(both, a, n1);
  memcpy(both + n1, b, n2);
  char *out;
  size_t out_n;
  circle_error err;
  ck_assert_int_eq(circle_inflate("gzip", (char *)both, n1 + n2, 100, &out, &out_n, &err), 0);
  ck_assert_uint_eq(out_n, 11);
  ck_assert_mem_eq(out, "hello world", 11);
  ck_assert_int_eq(out[11], '\0');
  free(out);
  free(a);
  free(b);
  free(both);
}
END_TEST

/* CPU seconds this process has used. */
static double cpu_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Inflates all of a gzip stream into one reused 1 MiB buffer, as a
 * decoder that read past its cap and threw the output away would; returns
 * the bytes it produced. */
static size_t inflate_all_discarding(const unsigned char *z, size_t zn) {
  z_stream zs;
  memset(&zs, 0, sizeof(zs));
  ck_assert_int_eq(inflateInit2(&zs, 31), Z_OK);
  static unsigned char sink[1 << 20];
  zs.next_in = (Bytef *)z;
  zs.avail_in = (uInt)zn;
  size_t total = 0;
  int rc;
  do {
    zs.next_out = sink;
    zs.avail_out = sizeof(sink);
    rc = inflate(&zs, Z_NO_FLUSH);
    total += sizeof(sink) - zs.avail_out;
  } while (rc == Z_OK);
  ck_assert_int_eq(rc, Z_STREAM_END);
  inflateEnd(&zs);
  return total;
}

START_TEST(inflate_should_refuse_a_bomb_without_inflating_it) {
  /* 256 MiB of zeros compress to about 1.1 MiB; the cap is 1 MiB. Were
   * the bomb inflated, the peak memory would grow by 256 MiB. */
  size_t zn;
  unsigned char *z = gzip_zeros((size_t)256 << 20, &zn);
  ck_assert_uint_lt(zn, (size_t)2 << 20);
  struct rusage before, after;
  getrusage(RUSAGE_SELF, &before);
  double t0 = cpu_s();
  char *out = (char *)0x1;
  size_t out_n = 77;
  circle_error err;
  ck_assert_int_eq(circle_inflate("gzip", (char *)z, zn, (size_t)1 << 20, &out, &out_n, &err),
                   CIRCLE_EINVAL);
  double refused_s = cpu_s() - t0;
  getrusage(RUSAGE_SELF, &after);
  ck_assert_int_eq(circle_error_http(err.kind), 413);
  ck_assert_str_eq(circle_error_code(err.kind), "limit_exceeded");
  ck_assert_msg(strstr(err.message, "more than 1048576 bytes") != NULL, "%s", err.message);
  /* Outputs untouched on failure. */
  ck_assert_ptr_eq(out, (char *)0x1);
  ck_assert_uint_eq(out_n, 77);
  /* Work: inflating the 1 MiB cap is 1/256 of inflating the bomb. The
   * refusal must cost less than an eighth of inflating it all, measured in
   * the same run in CPU time, so no machine's speed or load decides. */
  t0 = cpu_s();
  ck_assert_uint_eq(inflate_all_discarding(z, zn), (size_t)256 << 20);
  double all_s = cpu_s() - t0;
  ck_assert_msg(refused_s < all_s / 8, "the refusal took %.4f s of CPU, inflating it all %.4f s",
                refused_s, all_s);
  /* ru_maxrss is in KiB: the peak grew by far less than 64 MiB. */
  ck_assert_int_lt(after.ru_maxrss - before.ru_maxrss, 64 * 1024);
  free(z);
}
END_TEST

START_TEST(inflate_should_accept_exactly_the_cap_and_refuse_one_more) {
  char data[1000];
  memset(data, 'x', sizeof(data));
  size_t zn;
  unsigned char *z = compress_wbits(data, sizeof(data), 31, &zn);
  char *out;
  size_t out_n;
  circle_error err;
  ck_assert_int_eq(circle_inflate("gzip", (char *)z, zn, 1000, &out, &out_n, &err), 0);
  ck_assert_uint_eq(out_n, 1000);
  free(out);
  ck_assert_int_eq(circle_inflate("gzip", (char *)z, zn, 999, &out, &out_n, &err), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_error_http(err.kind), 413);
  ck_assert_str_eq(circle_error_code(err.kind), "limit_exceeded");
  free(z);
}
END_TEST

START_TEST(inflate_should_reject_truncated_streams) {
  size_t zn;
  unsigned char *z = compress_wbits(text, sizeof(text), 31, &zn);
  char *out;
  size_t out_n;
  circle_error err;
  for (size_t cut = 1; cut < zn; cut += 7) {
    ck_assert_int_eq(circle_inflate("gzip", (char *)z, zn - cut, 1 << 20, &out, &out_n, &err),
                     CIRCLE_EINVAL);
    ck_assert_int_eq(circle_error_http(err.kind), 400);
    ck_assert_str_eq(circle_error_code(err.kind), "bad_encoding");
  }
  ck_assert_int_eq(circle_inflate("gzip", (char *)z, zn - 1, 1 << 20, &out, &out_n, &err),
                   CIRCLE_EINVAL);
  ck_assert_msg(strstr(err.message, "ends early") != NULL, "%s", err.message);
  free(z);
}
END_TEST

START_TEST(inflate_should_reject_corrupt_streams) {
  size_t zn;
  unsigned char *z = compress_wbits(text, sizeof(text), 31, &zn);
  char *out;
  size_t out_n;
  circle_error err;
  /* A flipped byte in the middle breaks the data or the CRC. */
  z[zn / 2] ^= 0x55;
  ck_assert_int_eq(circle_inflate("gzip", (char *)z, zn, 1 << 20, &out, &out_n, &err),
                   CIRCLE_EINVAL);
  ck_assert_int_eq(circle_error_http(err.kind), 400);
  ck_assert_str_eq(circle_error_code(err.kind), "bad_encoding");
  ck_assert_msg(strstr(err.message, "gzip") != NULL, "%s", err.message);
  /* Not gzip at all. */
  ck_assert_int_eq(circle_inflate("gzip", "{\"a\": 1}", 8, 1 << 20, &out, &out_n, &err),
                   CIRCLE_EINVAL);
  ck_assert_str_eq(circle_error_code(err.kind), "bad_encoding");
  ck_assert_int_eq(circle_inflate("deflate", "\xff\xff\xff\xff", 4, 1 << 20, &out, &out_n, &err),
                   CIRCLE_EINVAL);
  ck_assert_str_eq(circle_error_code(err.kind), "bad_encoding");
  free(z);
  /* Garbage after a complete stream. */
  z = compress_wbits(text, sizeof(text), 15, &zn);
  unsigned char *g = malloc(zn + 3);
  memcpy(g, z, zn);
  memcpy(g + zn, "xyz", 3);
  ck_assert_int_eq(circle_inflate("deflate", (char *)g, zn + 3, 1 << 20, &out, &out_n, &err),
                   CIRCLE_EINVAL);
  ck_assert_msg(strstr(err.message, "3 bytes of garbage") != NULL, "%s", err.message);
  free(g);
  free(z);
  /* An empty body is not a gzip stream. */
  ck_assert_int_eq(circle_inflate("gzip", "", 0, 1 << 20, &out, &out_n, &err), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_error_http(err.kind), 400);
  ck_assert_str_eq(circle_error_code(err.kind), "bad_encoding");
}
END_TEST

START_TEST(inflate_should_answer_415_for_unknown_encodings) {
  char *out;
  size_t out_n;
  circle_error err;
  ck_assert_int_eq(circle_inflate("br", "abc", 3, 100, &out, &out_n, &err), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_error_http(err.kind), 415);
  ck_assert_str_eq(circle_error_code(err.kind), "bad_encoding");
  ck_assert_msg(strstr(err.message, "\"br\"") != NULL, "%s", err.message);
  ck_assert_int_eq(circle_inflate("gzip, br", "abc", 3, 100, &out, &out_n, &err), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_error_http(err.kind), 415);
}
END_TEST

START_TEST(inflate_should_copy_identity_bodies_under_the_cap) {
  char *out;
  size_t out_n;
  circle_error err;
  ck_assert_int_eq(circle_inflate("identity", "abc", 3, 3, &out, &out_n, &err), 0);
  ck_assert_uint_eq(out_n, 3);
  ck_assert_mem_eq(out, "abc", 3);
  free(out);
  ck_assert_int_eq(circle_inflate("identity", "abc", 3, 2, &out, &out_n, &err), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_error_http(err.kind), 413);
}
END_TEST

START_TEST(inflate_should_refuse_bad_arguments) {
  char *out;
  size_t out_n;
  circle_error err;
  ck_assert_int_eq(circle_inflate(NULL, "a", 1, 10, &out, &out_n, &err), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_error_http(err.kind), 500);
  ck_assert_int_eq(circle_inflate("gzip", NULL, 1, 10, &out, &out_n, &err), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_inflate("gzip", "a", 1, 10, NULL, &out_n, &err), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_inflate("gzip", "a", 1, 10, &out, NULL, &err), CIRCLE_EINVAL);
  ck_assert_int_eq(circle_inflate("gzip", "a", 1, 10, &out, &out_n, NULL), CIRCLE_EINVAL);
}
END_TEST

int main(void) {
  Suite *s = suite_create("inflate");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, inflate_should_decode_gzip);
  tcase_add_test(tc, inflate_should_decode_zlib_and_raw_deflate);
  tcase_add_test(tc, inflate_should_decode_concatenated_gzip_members);
  tcase_add_test(tc, inflate_should_refuse_a_bomb_without_inflating_it);
  tcase_add_test(tc, inflate_should_accept_exactly_the_cap_and_refuse_one_more);
  tcase_add_test(tc, inflate_should_reject_truncated_streams);
  tcase_add_test(tc, inflate_should_reject_corrupt_streams);
  tcase_add_test(tc, inflate_should_answer_415_for_unknown_encodings);
  tcase_add_test(tc, inflate_should_copy_identity_bodies_under_the_cap);
  tcase_add_test(tc, inflate_should_refuse_bad_arguments);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
