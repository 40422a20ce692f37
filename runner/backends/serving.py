"""Kubernetes objects that serve a job's trained model: a Deployment of `runner serve` and
the Service in front of it. Pure functions from a spec to plain dicts, like manifests.py.

The pods run the job's own image and read the model from the job's run directory
(`checkpoint.dir`, a bucket) with the job's credentials options (a service account, or a
key Secret). They are ready once the model is loaded (/readyz) and alive while the process
answers (/healthz); a new model in the bucket is picked up without a restart. On SIGTERM
(a rollout, a scale-down, a drained node) a pod first sleeps a few seconds in preStop, so
the Service stops sending it traffic, then uvicorn finishes the requests in flight within
the grace period. Resource requests are the job's cpu and memory, one GPU if it has any.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from runner.backends.k8s_names import DNS_1035_LABEL, SERVICE_NAME_MAX, DerivedName, check_name
from runner.backends.manifests import (
    COMPONENT,
    CONTAINER,
    Manifest,
    add_credentials,
    add_placement,
    check_cluster_ready,
    container_security,
    labels,
    pod_security,
)
from runner.errors import UserError
from runner.rundir.layout import prefix_of
from runner.rundir.promotions import PROMOTED
from runner.spec import JobSpec

PORT = 8080
PRE_STOP_S = 5  # endpoints are removed asynchronously: keep answering while they are


class ServeOptions(NamedTuple):
    replicas: int = 2
    grace_s: int = 30  # SIGTERM to SIGKILL; the server drains for all of it but the preStop sleep


def serve_name(spec: JobSpec) -> str:
    return f"{spec.name}-serve"


def check_serve_names(spec: JobSpec) -> None:
    """The Service's name is a DNS-1035 label of at most 63; the Deployment shares it."""
    why = "a DNS-1035 label"
    check_name(spec.name, DerivedName("Service", serve_name(spec), "a Service's name", SERVICE_NAME_MAX, why,
                                      DNS_1035_LABEL))  # fmt: skip


def _labels(spec: JobSpec) -> dict[str, str]:
    # The component keeps the Service from selecting the job's own training pods.
    return {**labels(spec), COMPONENT: "serve"}


def _probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period_s, "failureThreshold": failures}


def served_model(spec: JobSpec) -> str:
    """What the Deployment serves: the job's promoted model when the job promotes (its
    `PREFIX/promoted`, which the server follows as new runs are promoted), else its run
    directory. A scheduled job's runs each have a directory of their own under
    `checkpoint.dir`, so only its promoted model has a fixed name: UserError if it does not
    promote."""
    where = spec.checkpoint.dir.rstrip("/")
    if spec.schedule.cron:
        if not spec.promote.enabled:
            raise UserError(
                "render --serve: a scheduled job's runs each get a directory of their own, so what to serve is "
                "its promoted model: set promote.enabled = true (the gate promotes a run only if it is better)"
            )
        return f"{where}/{PROMOTED}"
    if spec.promote.enabled:
        prefix = prefix_of(where)
        if prefix is None:
            raise UserError(
                f"render --serve: checkpoint.dir {where} is at a bucket's root, so the job has no prefix to "
                "promote in; put the run in a folder (gs://BUCKET/jobs/NAME/RUN)"
            )
        return f"{prefix}/{PROMOTED}"
    return where


def deployment(spec: JobSpec, image: str, options: ServeOptions) -> Manifest:
    res = spec.resources
    drain_s = max(1, options.grace_s - PRE_STOP_S - 1)
    limits: dict[str, Any] = {"memory": res.memory}
    if res.gpus:
        limits["nvidia.com/gpu"] = "1"  # one replica, one GPU: the batcher keeps it busy
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "args": ["serve", served_model(spec), "--host", "0.0.0.0", "--port", str(PORT), "--grace", str(drain_s)],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "resources": {"requests": {"cpu": res.cpu, "memory": res.memory}, "limits": limits},
        # Ready once the model is loaded (from a bucket: seconds to minutes), not before;
        # alive as long as the event loop answers, loading or not.
        "readinessProbe": _probe("/readyz", 5, 2),
        "livenessProbe": _probe("/healthz", 10, 3),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_S}}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # the root file system is read-only
        "securityContext": container_security(),
    }
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": options.grace_s,
        "securityContext": pod_security(),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    add_credentials(res, pod, container)
    add_placement(res, pod)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": serve_name(spec), "labels": _labels(spec)},
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": _labels(spec)},
            # A new pod must be ready before an old one goes: no moment without a server.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": _labels(spec)}, "spec": pod},
        },
    }


def service(spec: JobSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": serve_name(spec), "labels": _labels(spec)},
        "spec": {
            "selector": _labels(spec),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def render_serving(spec: JobSpec, image: str, options: ServeOptions = ServeOptions()) -> list[Manifest]:
    """What serves the job's model: its Deployment and Service (`runner render --serve`)."""
    check_cluster_ready(spec)
    check_serve_names(spec)
    return [deployment(spec, image, options), service(spec)]
