"""Training set, model, training loop, export and the model registry."""
