"""Point the Kubernetes client at a plain-HTTP test server of a unit test's own."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes.config import kube_config


def use_server(tmp_path: Path, port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default kubeconfig now names http://127.0.0.1:<port>, with no credentials."""
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: u, user: {}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    # The client reads $KUBECONFIG once, when imported.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
