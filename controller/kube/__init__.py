"""Adapters to the Kubernetes API (the only modules that talk to the API server)."""
