"""API client from a kubeconfig, in-cluster service account, or the default kubeconfig."""

from __future__ import annotations

import os

from kubernetes import client, config


def api_client(kubeconfig: str | None) -> client.ApiClient:
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig)
        os.environ["KUBECONFIG"] = kubeconfig  # kopf logs in with the same credentials
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
    return client.ApiClient()
