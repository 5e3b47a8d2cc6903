/* engine_server.h -- libcircle's two entries for a caller whose decoders
 * already refused non-finite values and negative sample weights: the
 * server, whose codecs test every value as they store it
 * (circle__store_finite, copy_floats_ok in codec_oip_tensor.c). Not a
 * public header; libcircle.a exports them to circled, libcircle.so does
 * not.
 *
 * Finiteness is checked in one place on the server's path, the codec that
 * stored the value. circle_input_check and circle_loss_compute keep their
 * own scans as the library's contract with every other caller; these two
 * skip them and make every other check the same way, with the same
 * messages.
 */
#ifndef CIRCLE_ENGINE_SERVER_H
#define CIRCLE_ENGINE_SERVER_H

#include <stddef.h>

#include "circle/circle.h"

/* circle_input_check without the scans for values that are not finite:
 * the shape, config, range (row norms, weight bounds) and negative-weight
 * checks, with circle_input_check's codes and sentences. For an input
 * whose embeddings, reference embeddings and weights are all finite. */
int circle__input_check_decoded(const circle_config *cfg,
                                const circle_input *in, char *where,
                                size_t where_len);

/* circle_loss_compute for an input circle__input_check_decoded accepted
 * with this cfg: the same results and errors, without checking the input
 * a second time. */
int circle__loss_compute_checked(circle_engine *engine,
                                 const circle_config *cfg,
                                 const circle_input *in, circle_output *out);

#endif /* CIRCLE_ENGINE_SERVER_H */
