"""The backends by name. Each lives in its own module and is imported only when asked
for, so local use never needs a cluster's client configured. Adding a backend is one
entry here: its name in NAMES (the CLI's --backend choices) and a branch in `open_backend`.
"""

from __future__ import annotations

from runner.backends.api import Backend

NAMES = ("local", "k8s")


def open_backend(name: str, namespace: str = "default", context: str = "") -> Backend:
    """The backend called `name` ("local" or "k8s"); a cluster's client is imported only for "k8s"."""
    if name == "k8s":
        from runner.backends.k8s import K8sBackend, connect

        return K8sBackend(connect(context or None), namespace)
    from runner.backends.local import LocalBackend

    return LocalBackend()
