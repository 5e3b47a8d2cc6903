/* codec_config.c -- the loss configuration codec shared by /v1, the Open
 * Inference Protocol and gRPC: Keras' Circle.get_config() JSON (a cJSON
 * object) -> circle_config and loss name, and circle_config -> the
 * get_config() JSON that /v1 responses and GET /v1/config echo. Must keep
 * true: every spelling Keras' Circle takes is read (dtype as a policy
 * name, null or the serialized DTypePolicy); a rejected config names the
 * key and what was expected; the output is not touched on error.
 */
#include "codec_config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "codec_util.h"

/* A value for a message: a string quoted (cut, made printable), anything
 * else by its kind ("a number"). */
static void describe(const cJSON *it, char *q, size_t qlen) {
  if (cJSON_IsString(it)) {
    char t[72];
    circle__json_quote(t, sizeof(t), it->valuestring, 64);
    snprintf(q, qlen, "\"%s\"", t);
  } else {
    snprintf(q, qlen, "%s", circle__json_kind(it));
  }
}

enum {
  CF_NAME, CF_REDUCTION, CF_GAMMA, CF_MARGIN, CF_REMOVE_DIAGONAL, CF_DTYPE,
  CF_FN, CF_NORMALIZE, CF_COUNT
};

static const char *const reduction_list =
    "\"sum_over_batch_size\", \"sum\", \"mean\", \"mean_with_sample_weight\", "
    "\"none\" or null";

/* config.fn as Keras' LossFunctionWrapper serializes it: "circle", or
 * {"module": ..., "class_name": "function", "config": "circle", ...}. */
static int parse_fn(const cJSON *fn, circle_error *err) {
  if (cJSON_IsString(fn) && strcmp(fn->valuestring, "circle") == 0) return 0;
  if (cJSON_IsObject(fn)) {
    circle__json_field f[] = {{"module", NULL}, {"class_name", NULL},
                              {"config", NULL}, {"registered_name", NULL}};
    if (circle__json_fields(fn, "config.fn", f, 4, err) != 0) return -1;
    if (cJSON_IsString(f[2].item) &&
        strcmp(f[2].item->valuestring, "circle") == 0)
      return 0;
  }
  return circle_error_set(err, CIRCLE_ERR_BAD_CONFIG,
                          "config.fn must be \"circle\" (or Keras' "
                          "serialization of it); this service computes only "
                          "the circle loss");
}

static const char *const dtype_list =
    "null (Keras' floatx, float32), \"float16\", \"bfloat16\", \"float32\", "
    "\"float64\", \"mixed_float16\", \"mixed_bfloat16\", or a DTypePolicy "
    "as keras.saving.serialize_keras_object writes it: {\"module\": \"keras\", "
    "\"class_name\": \"DTypePolicy\", \"config\": {\"name\": \"float16\"}, "
    "\"registered_name\": null}";

/* A policy name (string, or null for floatx) into c's dtype and half. */
static int parse_policy_name(const cJSON *it, const char *field,
                             circle_config *c, circle_error *err) {
  if (cJSON_IsNull(it)) {
    c->dtype = CIRCLE_DTYPE_FLOAT32;
    c->half = CIRCLE_HALF_NONE;
    return 0;
  }
  if (cJSON_IsString(it) &&
      circle_dtype_policy_parse(it->valuestring, &c->dtype, &c->half) == 0)
    return 0;
  char q[80];
  describe(it, q, sizeof(q));
  return circle_error_set(err, CIRCLE_ERR_BAD_CONFIG, "%s is %s; expected %s",
                          field, q, dtype_list);
}

/* config.dtype as Keras' Loss takes it: a DTypePolicy name, null, or the
 * policy serialized. Keras' deserializer ignores module and registered_name
 * and knows the class by its current name and its Keras 3.0-3.3 one; its
 * config holds only the name (absent or null: floatx). */
static int parse_dtype(const cJSON *it, circle_config *c, circle_error *err) {
  if (!cJSON_IsObject(it))
    return parse_policy_name(it, "config.dtype", c, err);
  circle__json_field f[] = {{"module", NULL}, {"class_name", NULL},
                            {"config", NULL}, {"registered_name", NULL}};
  if (circle__json_fields(it, "config.dtype", f, 4, err) != 0) return -1;
  const cJSON *cls = f[1].item, *conf = f[2].item;
  for (int k = 0; k < 4; k += 3)
    if (f[k].item && !cJSON_IsNull(f[k].item) && !cJSON_IsString(f[k].item))
      return circle_error_set(err, CIRCLE_ERR_BAD_CONFIG,
                              "config.dtype.%s is %s; expected a string or "
                              "null (config.dtype takes %s)",
                              f[k].name, circle__json_kind(f[k].item),
                              dtype_list);
  if (!cJSON_IsString(cls) || (strcmp(cls->valuestring, "DTypePolicy") != 0 &&
                               strcmp(cls->valuestring, "FloatDTypePolicy") != 0)) {
    char q[80];
    if (cls) describe(cls, q, sizeof(q));
    else snprintf(q, sizeof(q), "missing");
    return circle_error_set(err, CIRCLE_ERR_BAD_CONFIG,
                            "config.dtype.class_name is %s; expected "
                            "\"DTypePolicy\" (config.dtype takes %s)",
                            q, dtype_list);
  }
  if (!cJSON_IsObject(conf))
    return circle_error_set(err, CIRCLE_ERR_BAD_CONFIG,
                            "config.dtype.config is %s; expected an object "
                            "{\"name\": ...} (config.dtype takes %s)",
                            conf ? circle__json_kind(conf) : "missing",
                            dtype_list);
  circle__json_field nf[] = {{"name", NULL}};
  if (circle__json_fields(conf, "config.dtype.config", nf, 1, err) != 0)
    return -1;
  static const cJSON null_item = {.type = cJSON_NULL};
  return parse_policy_name(nf[0].item ? nf[0].item : &null_item,
                           "config.dtype.config.name", c, err);
}

int circle__config_from_json(const cJSON *obj, circle_config *cfg, char *name,
                             size_t name_len, circle_error *err) {
  if (obj == NULL || cfg == NULL || err == NULL ||
      (name == NULL && name_len != 0))
    return err ? circle_error_set(err, CIRCLE_ERR_INTERNAL,
                                  "circle__config_from_json: bad argument")
               : CIRCLE_EINVAL;
  if (!cJSON_IsObject(obj))
    return circle_error_set(err, CIRCLE_ERR_BAD_CONFIG,
                            "config is %s; expected an object like Keras' "
                            "Circle.get_config()",
                            circle__json_kind(obj));
  circle__json_field f[CF_COUNT] = {
      {"name", NULL},   {"reduction", NULL}, {"gamma", NULL},
      {"margin", NULL}, {"remove_diagonal", NULL}, {"dtype", NULL},
      {"fn", NULL},     {"normalize", NULL}};
  if (circle__json_fields(obj, "config", f, CF_COUNT, err) != 0)
    return CIRCLE_EINVAL;

  circle_config c = *cfg;
  char nm[128] = "";
  bool has_name = false;
  char vb[40];
  const cJSON *it;

  if ((it = f[CF_NAME].item) != NULL && !cJSON_IsNull(it)) {
    if (!cJSON_IsString(it))
      return circle_error_set(err, CIRCLE_ERR_BAD_CONFIG,
                              "config.name is %s; expected a string",
                              circle__json_kind(it));
    /* The name is echoed in get_config(): it must come back as sent, and
     * bytes that are not UTF-8 would come back as U+FFFD. */
    if (!circle__utf8_valid(it->valuestring))
      return circle_error_set(err, CIRCLE_ERR_BAD_CONFIG,
                              "config.name is not valid UTF-8; send the name "
                              "as UTF-8 text");
    size_t l = strlen(it->valuestring);
    if (l == 0 || l >= sizeof(nm) || l >= name_len)
      return circle_error_set(err, CIRCLE_ERR_BAD_CONFIG,
                              "config.name has %zu bytes; expected 1 to %zu",
                              l, (name_len < sizeof(nm) ? name_len : sizeof(nm)) - 1);
    memcpy(nm, it->valuestring, l + 1);
    has_name = true;
  }
  if ((it = f[CF_REDUCTION].item) != NULL) {
    if (cJSON_IsNull(it)) {
      c.reduction = CIRCLE_REDUCTION_NULL;
    } else if (!cJSON_IsString(it) ||
               circle_reduction_parse(it->valuestring, &c.reduction) != 0) {
      char q[80];
      describe(it, q, sizeof(q));
      return circle_error_set(err, CIRCLE_ERR_BAD_CONFIG,
                              "config.reduction is %s; expected %s", q,
                              reduction_list);
    }
  }
  if ((it = f[CF_GAMMA].item) != NULL) {
    if (!cJSON_IsNumber(it))
      return circle_error_set(err, CIRCLE_ERR_BAD_CONFIG,
                              "config.gamma is %s; expected a number > 0",
                              circle__json_kind(it));
    if (!(it->valuedouble > 0) || !isfinite(it->valuedouble))
      return circle_error_set(err, CIRCLE_ERR_BAD_CONFIG,
                              "config.gamma is %s; expected a finite number "
                              "> 0 (Keras' default is 80.0)",
                              circle__short_number(vb, it->valuedouble));
    c.gamma = it->valuedouble;
  }
  if ((it = f[CF_MARGIN].item) != NULL) {
    if (!cJSON_IsNumber(it))
      return circle_error_set(err, CIRCLE_ERR_BAD_CONFIG,
                              "config.margin is %s; expected a number",
                              circle__json_kind(it));
    if (!isfinite(it->valuedouble))
      return circle_error_set(err, CIRCLE_ERR_BAD_CONFIG,
                              "config.margin overflows a double; expected a "
                              "finite number (Keras' default is 0.4)");
    c.margin = it->valuedouble;
  }
  if ((it = f[CF_REMOVE_DIAGONAL].item) != NULL &&
      circle__bool_parse(it, &c.remove_diagonal, "config.remove_diagonal",
                         CIRCLE_ERR_BAD_CONFIG, err) != 0)
    return CIRCLE_EINVAL;
  if ((it = f[CF_DTYPE].item) != NULL && parse_dtype(it, &c, err) != 0)
    return CIRCLE_EINVAL;
  if ((it = f[CF_FN].item) != NULL && parse_fn(it, err) != 0)
    return CIRCLE_EINVAL;
  if ((it = f[CF_NORMALIZE].item) != NULL &&
      circle__bool_parse(it, &c.normalize, "config.normalize",
                         CIRCLE_ERR_BAD_CONFIG, err) != 0)
    return CIRCLE_EINVAL;
  if (circle_config_validate(&c) != 0)
    return circle_error_set(err, CIRCLE_ERR_BAD_CONFIG,
                            "config is out of range (gamma must be > 0 and "
                            "finite, margin finite)");
  *cfg = c;
  if (has_name && name && name_len) snprintf(name, name_len, "%s", nm);
  return 0;
}

void circle__config_to_json(circle_buf *b, const circle_config *cfg,
                            const char *name) {
  if (b == NULL || cfg == NULL) return;
  circle_buf_puts(b, "{\"name\": ");
  circle_buf_json_string(b, name ? name : "circle");
  circle_buf_puts(b, ", \"reduction\": ");
  const char *r = circle_reduction_name(cfg->reduction);
  if (r) circle_buf_json_string(b, r);
  else circle_buf_puts(b, "null");
  circle_buf_puts(b, ", \"gamma\": ");
  circle_buf_python_float(b, cfg->gamma);
  circle_buf_puts(b, ", \"margin\": ");
  circle_buf_python_float(b, cfg->margin);
  circle_buf_puts(b, ", \"remove_diagonal\": ");
  circle_buf_puts(b, cfg->remove_diagonal ? "true}" : "false}");
}
