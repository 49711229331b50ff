"""``python -m tests.serving.run_transformer``: the transformer over a test Feast store.

Arguments: settings JSON, Feast store root, port, predictor URL. Everything else is the
production code path (:func:`mlref.serving.server.run_transformer`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlref.serving.server import run_transformer
from mlref.settings import Settings
from tests.serving.feast_store import FeastLookup

if __name__ == "__main__":
    settings_json, feast_root, port, predictor_url = sys.argv[1:5]
    settings = Settings.model_validate_json(settings_json)
    run_transformer(settings, "127.0.0.1", int(port), predictor_url, FeastLookup(Path(feast_root)))
