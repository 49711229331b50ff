"""A fixed delay in front of every model run of a predictor process: a slow candidate whose
added latency is known exactly, instead of a model whose slowness depends on the CPU.

This folder goes on the PYTHONPATH of the predictors a test wants slow (see
``tests.serving.conftest.predict_delay_env``), with $MLREF_TEST_PREDICT_DELAY_MS set: each
``OnnxModel.predict`` then sleeps that long before scoring, inside the time the predictor
reports as its own latency, so the canary analysis measures it like any slow model.
"""

import os
import time

DELAY_MS = os.environ.get("MLREF_TEST_PREDICT_DELAY_MS")

if DELAY_MS:
    from mlref.onnx_model import OnnxModel

    seconds = float(DELAY_MS) / 1000
    predict = OnnxModel.predict

    def delayed(self, cat, num):
        time.sleep(seconds)
        return predict(self, cat, num)

    OnnxModel.predict = delayed
