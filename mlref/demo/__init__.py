"""The closed loop on one machine: generate, train, serve, drift, retrain, canary, report."""
