"""mlref: a Kubernetes-native MLOps reference deployment for ad click-through-rate prediction."""

__version__ = "0.1.0"
