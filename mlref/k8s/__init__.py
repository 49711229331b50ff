"""Offline rendering and verification of the Kubernetes manifests and the Helm chart."""
