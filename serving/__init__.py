"""Online serving with KServe: a transformer (Feast lookup + shared transform) and a predictor.

``mlref.serving.predictor`` serves the exported ONNX model (v1 and Open Inference Protocol
v2); ``mlref.serving.transformer`` turns business requests into model inputs, calls the
predictor host through ``predictor_client`` (``v2`` framing, ``batcher`` coalescing) and logs
every scored row (``records``, ``inference_log``); ``mlref.serving.server`` serves either
one with KServe's data plane and endpoints, and ``mlref.serving.requests`` holds request
validation and the one error shape.

KServe parses ``sys.argv`` when ``kserve`` is imported (``parse_known_args``): no mlref
command option may be an ambiguous prefix of one of its options, which
``tests/serving/test_kserve_api.py`` checks for every command.
"""
