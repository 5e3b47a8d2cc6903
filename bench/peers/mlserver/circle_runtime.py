"""circle_runtime.py -- MLServer custom runtime serving model `circle`:
inputs labels (INT64 [N]) and embeddings (FP32 [N, D]), outputs loss
(FP32 [1]) and embeddings_grad (FP32 [N, D]), computed by
bench/peers/circle_jax.py (which must be on PYTHONPATH; bench/peers/peers.py
sets it). MLServer finds this class through circle/model-settings.json.
"""

import os

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

import circle_jax


class CircleModel(MLModel):
    async def load(self) -> bool:
        warm = os.environ.get("CIRCLE_PEER_WARM", "")
        if warm:
            circle_jax.compile([tuple(int(v) for v in s.split("x"))
                                for s in warm.split(",")])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        loss, grad = circle_jax.loss_and_grad(inputs["labels"], inputs["embeddings"])
        # NumpyCodec gives a 1-D array a column ([1, 1]); the contract,
        # circled's and Triton's, says [1].
        out_loss = NumpyCodec.encode_output("loss", loss)
        out_loss.shape = [1]
        return InferenceResponse(
            model_name=self.name, id=payload.id,
            outputs=[out_loss, NumpyCodec.encode_output("embeddings_grad", grad)])
