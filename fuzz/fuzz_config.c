/* fuzz_config.c -- libFuzzer harness for the Keras config parser
 * (circle__config_from_json), fed any JSON value cJSON can parse from the
 * input, without circled's pre-scan in front: the parser's contract is any
 * cJSON node.
 *
 * It must keep true: no crash, leak or out-of-bounds read; on failure the
 * caller's config and name are untouched and the error is a 400 with a
 * printable message; on success the config is valid, and writing it with
 * circle__config_to_json and parsing that again gives the same gamma and
 * margin (bit for bit), reduction, remove_diagonal and name. The parse runs
 * twice, with a 128-byte name buffer and a 6-byte one, so the "name does
 * not fit" path is reached too.
 */
#include <stdint.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "codec_config.h"
#include "fuzz_util.h"

static void parse_once(const cJSON *root, size_t name_len) {
  circle_config cfg, before;
  circle_config_init(&cfg);
  /* Non-default values, so "untouched" and "kept" can be told apart. */
  cfg.gamma = 3.25;
  cfg.margin = -0.125;
  cfg.dtype = CIRCLE_DTYPE_FLOAT64;
  cfg.normalize = true;
  before = cfg;
  char name[128], name_before[128];
  memset(name, 'x', sizeof name);
  memcpy(name, "pre", 4);
  memcpy(name_before, name, sizeof name);
  circle_error err;
  memset(&err, 0, sizeof err);

  int rc = circle__config_from_json(root, &cfg, name, name_len, &err);
  if (rc != 0) {
    FUZZ_CHECK(rc < 0, "rc %d", rc);
    fuzz_check_error(&err);
    FUZZ_CHECK(circle_error_http(err.kind) == 400, "status %d",
               circle_error_http(err.kind));
    FUZZ_CHECK(memcmp(&cfg, &before, sizeof cfg) == 0,
               "the config changed on failure");
    FUZZ_CHECK(memcmp(name, name_before, sizeof name) == 0,
               "the name changed on failure");
    return;
  }
  FUZZ_CHECK(circle_config_validate(&cfg) == CIRCLE_OK, "invalid config");
  FUZZ_CHECK(memchr(name, 0, name_len) != NULL, "name not terminated");
  FUZZ_CHECK(memcmp(name + name_len, name_before + name_len,
                    sizeof name - name_len) == 0,
             "wrote past name_len");

  circle_buf b;
  circle_buf_init(&b);
  circle__config_to_json(&b, &cfg, name);
  FUZZ_CHECK(!b.failed, "write failed");
  cJSON *again = fuzz_parse_exact(b.data, b.len);
  FUZZ_CHECK(again != NULL, "get_config() text is not JSON: %s", b.data);
  circle_config back;
  circle_config_init(&back);
  back.dtype = cfg.dtype;
  back.normalize = cfg.normalize;
  char name2[128] = "";
  rc = circle__config_from_json(again, &back, name2, sizeof name2, &err);
  FUZZ_CHECK(rc == 0, "get_config() text does not parse back: %s (%s)",
             err.message, b.data);
  FUZZ_CHECK(memcmp(&back.gamma, &cfg.gamma, sizeof cfg.gamma) == 0,
             "gamma %.17g came back as %.17g (%s)", cfg.gamma, back.gamma,
             b.data);
  FUZZ_CHECK(memcmp(&back.margin, &cfg.margin, sizeof cfg.margin) == 0,
             "margin %.17g came back as %.17g (%s)", cfg.margin, back.margin,
             b.data);
  FUZZ_CHECK(back.reduction == cfg.reduction, "reduction");
  FUZZ_CHECK(back.remove_diagonal == cfg.remove_diagonal, "remove_diagonal");
  FUZZ_CHECK(strcmp(name2, name) == 0, "name %s came back as %s", name, name2);
  cJSON_Delete(again);
  circle_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  cJSON *root = cJSON_ParseWithLengthOpts((const char *)data, size, NULL, 0);
  if (root == NULL) return 0;
  parse_once(root, 128);
  parse_once(root, 6);
  cJSON_Delete(root);
  return 0;
}
