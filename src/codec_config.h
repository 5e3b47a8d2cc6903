/* codec_config.h -- the loss configuration codec (codec_config.c): Keras'
 * Circle.get_config() JSON <-> circle_config and loss name, for /v1, the
 * Open Inference Protocol (parameters.config), gRPC and --config.
 */
#ifndef CIRCLE_CODEC_CONFIG_H
#define CIRCLE_CODEC_CONFIG_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "buf.h"
#include "error.h"

/* Parses a Keras get_config()-style object into cfg/name: gamma, margin,
 * remove_diagonal, reduction (string or null), name, dtype (every spelling
 * Keras' Circle takes: a DTypePolicy name, null for floatx = float32, or the
 * serialized DTypePolicy object; into cfg->dtype and cfg->half); also accepts
 * "fn" (Keras' LossFunctionWrapper form, must be circle) and "normalize".
 * cfg and name are in/out: members the object does not mention keep their
 * values (name is written only when the object has a name, and a name
 * that does not fit name_len is an error). Unknown keys are an error.
 * Returns 0 or CIRCLE_EINVAL with *err filled (400 "bad_config",
 * "unknown_key" or "duplicate_key"; 500 "internal" for a NULL obj or cfg);
 * cfg and name are untouched then. */
int circle__config_from_json(const cJSON *obj, circle_config *cfg, char *name,
                             size_t name_len, circle_error *err);

/* Writes the get_config() JSON of cfg/name:
 * {"name": ..., "reduction": ..., "gamma": ..., "margin": ...,
 *  "remove_diagonal": ...} (gamma and margin always with a decimal point,
 * as Python prints floats). A NULL b or cfg writes nothing. */
void circle__config_to_json(circle_buf *b, const circle_config *cfg,
                            const char *name);

#endif /* CIRCLE_CODEC_CONFIG_H */
