"""Which cluster the tasks act on, and with which kubectl: the settings, else the local cluster.

The generic Kubernetes layer (twotier.kube) knows nothing of the local cluster; this module is
where the project says "when nothing is configured, use the local cluster built by
`invoke cluster.up`" (precedence: task flag, twotier.kubeconfig, $KUBECONFIG, the local cluster).
"""
from __future__ import annotations

from localcluster import layout as localcluster
from twotier.kube import client as kube
from twotier.settings import Settings


def target(settings: Settings) -> kube.Target:
    kubeconfig = kube.resolve_kubeconfig(settings.kubeconfig, str(localcluster.KUBECONFIG))
    return kube.Target(kubeconfig=kubeconfig, context=settings.context, namespace=settings.namespace,
                       allowed_contexts=settings.allowed_contexts, field_manager=settings.field_manager,
                       api_timeout=settings.timeouts.api)


def connect(settings: Settings, allow_context: str | None = None, check_namespace: bool = True):
    """The configured cluster (safety rule applied, API and namespace checked within seconds)."""
    return kube.connect(target(settings), allow_context=[allow_context] if allow_context else (),
                        check_namespace=check_namespace)


def kubectl() -> str:
    """kubectl for rendering, logs and interactive shells: the local cluster's pinned build, else PATH's."""
    return kube.kubectl_binary(str(localcluster.kubectl_path()))
