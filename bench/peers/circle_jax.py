"""circle_jax.py -- the computation both peers serve: Keras 3's Circle loss
and its gradient w.r.t. the embeddings, jax.jit(jax.value_and_grad(...)).

Imported by triton_model.py and mlserver_model/model.py, each in its own
virtual environment. KERAS_BACKEND must be "jax" before keras is imported
(the peers' launchers set it). gamma 80, margin 0.4 and the
sum_over_batch_size reduction are Keras' defaults and circled's, so all three
servers compute the same number from the same request.

jax.jit compiles once per input shape; compile() warms the shapes the
benchmark sends so no timed request pays for a compilation.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

_LOSS = keras.losses.Circle(gamma=80.0, margin=0.4)


def _loss(embeddings, labels):
    return _LOSS(labels, embeddings)


_STEP = jax.jit(jax.value_and_grad(_loss))


def loss_and_grad(labels, embeddings):
    """Returns (loss as a float32 array of shape [1], gradient N x D float32)."""
    loss, grad = _STEP(jax.numpy.asarray(embeddings, dtype=np.float32),
                       jax.numpy.asarray(labels))
    return (np.asarray(loss, dtype=np.float32).reshape(1),
            np.asarray(grad, dtype=np.float32))


def compile(shapes):
    """Runs one computation for every (n, d) in shapes."""
    for n, d in shapes:
        loss_and_grad(np.arange(n, dtype=np.int64) % 8, np.ones((n, d), np.float32))


def versions():
    return {"jax": jax.__version__, "keras": keras.__version__,
            "numpy": np.__version__}
