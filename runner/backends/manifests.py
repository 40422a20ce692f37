"""Kubernetes objects for a job: pure functions from a spec to plain dicts.

`runner render` prints them as YAML; the Kubernetes backend creates them. A Job
retries failures (up to `resources.retries`) but never counts preemptions (the
DisruptionTarget pod condition) and fails at once on bad input (exit code 2).
Every attempt reads the same spec from a ConfigMap, so it resumes the same
checkpoint directory; each run of a CronJob gets a directory of its own, named by
its Job (read through the downward API).
"""

from __future__ import annotations

from typing import Any

from runner.errors import Exit, UserError
from runner.spec import JobSpec, ScheduleSpec

CONTAINER = "runner"
SPEC_DIR = "/etc/runner"
SPEC_FILE = f"{SPEC_DIR}/spec.toml"
WORKDIR = "/workspace"  # writable scratch: relative data.root and caches land here
UID = 1000  # the image's non-root user
GKE_SPOT = "cloud.google.com/gke-spot"
GKE_ACCELERATOR = "cloud.google.com/gke-accelerator"

Manifest = dict[str, Any]


def _labels(spec: JobSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": "runner", "app.kubernetes.io/instance": spec.name}


def _metadata(name: str, spec: JobSpec) -> dict[str, Any]:
    return {"name": name, "labels": _labels(spec)}


def config_map_name(spec: JobSpec) -> str:
    return f"{spec.name}-spec"


def check_cluster_ready(spec: JobSpec) -> None:
    """A pod's disk dies with the pod: checkpoints on a cluster must go to a bucket."""
    if "://" not in spec.checkpoint.dir or spec.checkpoint.dir.startswith(("file://", "memory://")):
        raise UserError(
            f"checkpoint.dir: '{spec.checkpoint.dir}' is on the pod's own disk, which a preemption deletes; "
            "use a bucket, e.g. --set checkpoint.dir=gs://my-bucket/runs/" + spec.name
        )


def config_map(spec: JobSpec, spec_toml: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(config_map_name(spec), spec),
        "data": {"spec.toml": spec_toml},
    }


def _container(spec: JobSpec, image: str, scheduled: bool) -> dict[str, Any]:
    res = spec.resources
    args = ["run", SPEC_FILE]
    if scheduled:  # each scheduled run trains from scratch in a directory of its own
        args += ["--set", f"checkpoint.dir={spec.checkpoint.dir.rstrip('/')}/$(RUNNER_RUN_ID)"]
    limits: dict[str, Any] = {"memory": res.memory}
    if res.gpus:
        limits["nvidia.com/gpu"] = str(res.gpus)  # a quantity: the API client insists on a string
    env: list[dict[str, Any]] = [
        # The Job's name: the same for every retry of one Job, new for each CronJob run.
        {"name": "RUNNER_RUN_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}}},
        {"name": "HOME", "value": WORKDIR},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    mounts = [
        {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
        {"name": "workspace", "mountPath": WORKDIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if res.gcs_secret:
        env.append({"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/secrets/google/key.json"})
        mounts.append({"name": "gcs-key", "mountPath": "/var/secrets/google", "readOnly": True})
    return {
        "name": CONTAINER,
        "image": image,
        "args": args,
        "workingDir": WORKDIR,
        "env": env,
        "resources": {"requests": {"cpu": res.cpu, "memory": res.memory}, "limits": limits},
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _pod_template(spec: JobSpec, image: str, scheduled: bool) -> dict[str, Any]:
    res = spec.resources
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # the Job retries, in a new pod, under its podFailurePolicy
        "terminationGracePeriodSeconds": res.grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(spec, image, scheduled)],
        "volumes": [
            {"name": "spec", "configMap": {"name": config_map_name(spec)}},
            {"name": "workspace", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if res.service_account:
        pod["serviceAccountName"] = res.service_account
    if res.gcs_secret:
        pod["volumes"].append({"name": "gcs-key", "secret": {"secretName": res.gcs_secret}})
    selector, tolerations = {}, []
    if res.accelerator:
        selector[GKE_ACCELERATOR] = res.accelerator
    if res.gpus:
        tolerations.append({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
    if res.spot:
        selector[GKE_SPOT] = "true"
        tolerations.append({"key": GKE_SPOT, "operator": "Equal", "value": "true", "effect": "NoSchedule"})
    if selector:
        pod["nodeSelector"] = selector
    if tolerations:
        pod["tolerations"] = tolerations
    return {"metadata": {"labels": _labels(spec)}, "spec": pod}


def _job_spec(spec: JobSpec, image: str, scheduled: bool) -> dict[str, Any]:
    res = spec.resources
    return {
        "backoffLimit": res.retries,
        "activeDeadlineSeconds": round(res.deadline_hours * 3600),
        "ttlSecondsAfterFinished": round(res.ttl_hours * 3600),
        "podFailurePolicy": {
            "rules": [
                # A preempted or evicted pod saved its checkpoint: retry it, for free.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                # Bad input fails the same way every time: stop now.
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [int(Exit.BAD_INPUT)]},
                },
                # Anything else (a crash, an unreachable store) may pass: use a retry.
                {
                    "action": "Count",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "NotIn",
                        "values": [int(Exit.OK), int(Exit.BAD_INPUT)],
                    },
                },
            ]
        },
        "template": _pod_template(spec, image, scheduled),
    }


def job(spec: JobSpec, image: str) -> Manifest:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(spec.name, spec),
        "spec": _job_spec(spec, image, scheduled=False),
    }


def cron_job(spec: JobSpec, image: str, schedule: ScheduleSpec) -> Manifest:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": _metadata(spec.name, spec),
        "spec": {
            "schedule": schedule.cron,
            "timeZone": schedule.time_zone,
            "concurrencyPolicy": "Forbid",  # a retraining still running is not started twice
            "startingDeadlineSeconds": schedule.starting_deadline_s,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"metadata": {"labels": _labels(spec)}, "spec": _job_spec(spec, image, scheduled=True)},
        },
    }


def render(spec: JobSpec, spec_toml: str, image: str) -> list[Manifest]:
    """What `runner submit --backend k8s` applies: the spec's ConfigMap, then its Job or CronJob."""
    check_cluster_ready(spec)
    workload = cron_job(spec, image, spec.schedule) if spec.schedule.cron else job(spec, image)
    return [config_map(spec, spec_toml), workload]


def to_yaml(manifests: list[Manifest]) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        # The spec reads as the TOML it is: multi-line strings as `|` blocks.
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump_all(manifests, Dumper=Dumper, sort_keys=False, width=120)
