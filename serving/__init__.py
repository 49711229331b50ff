"""Online serving with KServe: a transformer (Feast lookup + shared transform) and a predictor.

``mlref.serving.predictor`` serves the exported ONNX model (v1 and Open Inference Protocol
v2); ``mlref.serving.transformer`` turns business requests into model inputs, calls the
predictor over HTTP and logs every scored row (``mlref.serving.inference_log``);
``mlref.serving.server`` starts either one on KServe's ModelServer, bound to the configured
address, and ``mlref.serving.requests`` holds request validation and the one error shape.
"""

import sys

# kserve.model_server parses sys.argv when imported; an mlref option that happens to prefix
# one of its options (``--grpc`` vs ``--grpc_port``) would make it exit. Import it with a
# bare argv: our servers pass every setting explicitly.
_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    import kserve.model_server  # noqa: F401
finally:
    sys.argv = _argv
