"""kfp pipelines: the training pipeline, its compiled IR and how to run it."""
