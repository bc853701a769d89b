"""API client from a kubeconfig, in-cluster service account, or the default kubeconfig."""

from __future__ import annotations

import os

import urllib3
from kubernetes import client, config

# One attempt per call. urllib3 otherwise retries a GET that timed out three more times (and
# any request whose connection timed out), so a call could block four times its timeout
# (controller/kube/timeouts.py): a list over a connection that stopped forwarding took
# 4 x 30 s. Every caller retries by itself, with backoff, and says so.
ONE_ATTEMPT = urllib3.util.Retry(total=0, redirect=False, raise_on_redirect=False)


def api_client(kubeconfig: str | None) -> client.ApiClient:
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig)
        os.environ["KUBECONFIG"] = kubeconfig  # kopf logs in with the same credentials
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    configuration.retries = ONE_ATTEMPT
    return client.ApiClient(configuration)
