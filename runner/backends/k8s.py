"""The Kubernetes backend: the objects `runner render` prints, created through the official client.

The client is imported only here, and only when a command asks for this backend, so
local use never needs it configured. Credentials come from the kubeconfig (or the
pod's service account when runner itself runs in a cluster).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from runner.backends import manifests
from runner.backends.api import Submission
from runner.backends.k8s_names import service_name
from runner.errors import RunFailed, UserError


def connect(context: str | None = None) -> Any:
    """An ApiClient from the kubeconfig (optionally one of its contexts), else in-cluster."""
    from kubernetes import config

    try:
        return config.new_client_from_config(context=context)
    except config.ConfigException as kubeconfig_error:
        if context:
            raise UserError(f"--context: {kubeconfig_error}") from None
        try:
            config.load_incluster_config()
        except config.ConfigException:
            raise UserError(f"no Kubernetes cluster configured: {kubeconfig_error}") from None
        from kubernetes import client

        return client.ApiClient()


class K8sBackend:
    def __init__(self, api_client: Any, namespace: str = "default"):
        from kubernetes import client

        self.namespace = namespace
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)

    def submit(self, job: Submission) -> int:
        """Create the spec's ConfigMap, the headless Service of a multi-node job, and its Job (or
        CronJob), named after the spec; if one is refused, delete those created before it."""
        from runner.backends import image as images
        from runner.spec import to_toml

        image = job.image or images.reference(job.spec.image, job.spec.code)
        created: list[dict[str, Any]] = []
        try:
            for manifest in manifests.render(job.spec, to_toml(images.in_image(job.spec)), image):
                self._create(self._api(manifest["kind"], "create"), manifest)
                created.append(manifest)
        except BaseException:
            for manifest in reversed(created):
                self._delete(self._api(manifest["kind"], "delete"), manifest["metadata"]["name"])
            raise
        return 0

    def status(self, name: str) -> dict[str, Any]:
        """The Job's state and its pods (newest first), as plain data."""
        from kubernetes.client import V1JobStatus

        status = self._read_job(name).status or V1JobStatus()  # none yet, before the controller's first pass
        conditions = {c.type: c.status for c in status.conditions or []}
        state = (
            "done" if conditions.get("Complete") == "True"
            else "failed" if conditions.get("Failed") == "True"
            else "running" if status.active
            else "pending"
        )  # fmt: skip
        pods = [{"name": p.metadata.name, "phase": p.status.phase if p.status else None} for p in self._pods(name)]
        return {
            "name": name,
            "namespace": self.namespace,
            "state": state,
            "active": status.active or 0,
            "succeeded": status.succeeded or 0,
            "failed": status.failed or 0,
            "pods": pods,
        }

    def logs(self, name: str, follow: bool = False) -> Iterator[str]:
        """The newest pod's log, line by line; with `follow`, until the pod ends."""
        self._read_job(name)
        pods = self._pods(name)
        if not pods:
            raise RunFailed(f"job {name} has no pod yet; try again when it is scheduled")
        pod = pods[0].metadata.name
        if not follow:
            yield from self.core.read_namespaced_pod_log(
                pod, self.namespace, container=manifests.CONTAINER
            ).splitlines()
            return
        stream = self.core.read_namespaced_pod_log(
            pod, self.namespace, container=manifests.CONTAINER, follow=True, _preload_content=False
        )
        try:
            for line in stream:
                yield line.decode(errors="replace").rstrip("\n")
        finally:
            stream.release_conn()

    def cancel(self, name: str) -> str:
        """Delete the Job (and its pods) or the CronJob, the spec's ConfigMap and the headless Service."""
        from kubernetes.client import V1DeleteOptions

        foreground = V1DeleteOptions(propagation_policy="Foreground")
        deleted = self._delete(self.batch.delete_namespaced_job, name, body=foreground)
        deleted |= self._delete(self.batch.delete_namespaced_cron_job, name, body=foreground)
        if not deleted:
            raise UserError(f"no job or cronjob named '{name}' in namespace {self.namespace}")
        self._delete(self.core.delete_namespaced_config_map, f"{name}-spec")
        self._delete(self.core.delete_namespaced_service, service_name(name))  # a multi-node job's
        return f"cancelled {name} in namespace {self.namespace} (its pods get SIGTERM and save a checkpoint)"

    # -- edges ----------------------------------------------------------------

    def _api(self, kind: str, verb: str) -> Any:
        """The client method that creates or deletes a namespaced object of `kind`."""
        api, resource = {
            "ConfigMap": (self.core, "config_map"),
            "Service": (self.core, "service"),
            "Job": (self.batch, "job"),
            "CronJob": (self.batch, "cron_job"),
        }[kind]
        return getattr(api, f"{verb}_namespaced_{resource}")

    def _create(self, create: Any, manifest: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            create(self.namespace, manifest)
        except ApiException as e:
            kind, name = manifest["kind"], manifest["metadata"]["name"]
            if e.status == 409:
                raise UserError(
                    f"a {kind} named '{name}' already exists in namespace {self.namespace}; "
                    f"cancel it first (runner cancel {name} --backend k8s) or set another name"
                ) from None
            if e.status in (400, 422):  # the API refused what we sent (422: invalid): retrying cannot help
                raise UserError(
                    f"the cluster refused the {kind} '{name}' ({_api_error(e)}); fix the spec and submit again"
                ) from None
            raise RunFailed(f"creating {kind} {name} failed: {_api_error(e)}") from None

    def _delete(self, delete: Any, name: str, **kwargs: Any) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            delete(name, self.namespace, **kwargs)
        except ApiException as e:
            if e.status == 404:
                return False
            raise RunFailed(f"deleting {name} failed: {_api_error(e)}") from None
        return True

    def _read_job(self, name: str) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.batch.read_namespaced_job(name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                raise UserError(f"no job named '{name}' in namespace {self.namespace}") from None
            raise RunFailed(f"reading job {name} failed: {_api_error(e)}") from None

    def _pods(self, job_name: str) -> list[Any]:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"job-name={job_name}").items
        return sorted(pods, key=lambda p: str(p.metadata.creation_timestamp or ""), reverse=True)


def _api_error(error: Any) -> str:
    """'422 Unprocessable Entity: <the API server's reason>' on one line: the `message` of the
    Status object it answers an error with (e.g. 'CronJob.batch "x" is invalid: spec.timeZone: ...')."""
    try:
        status = json.loads(error.body or "")
    except (TypeError, ValueError):
        status = None
    message = status.get("message") if isinstance(status, dict) else None
    return " ".join(f"{error.status} {error.reason or ''}{f': {message}' if message else ''}".split())
