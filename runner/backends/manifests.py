"""Kubernetes objects for a job: pure functions from a spec to plain dicts.

`runner render` prints them as YAML; the Kubernetes backend creates them. A Job
retries failures (up to `resources.retries`) but never counts preemptions (the
DisruptionTarget pod condition) and fails at once on bad input (exit code 2).
Every attempt reads the same spec from a ConfigMap, so it resumes the same
checkpoint directory; each run of a CronJob gets a directory of its own, named by
its Job (read through the downward API). Names the API server would refuse for an
object derived from the spec's name (a CronJob's is limited to 52 characters) are
refused here first, by `check_names`, which `runner validate` calls too.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

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
FAIL_AT_ONCE = [int(Exit.BAD_INPUT), int(Exit.DIVERGED)]  # exit codes a retry cannot change


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


# What the API server accepts for the names runner derives from `spec.name` (the spec
# itself holds it to a DNS label, 63 characters; some derived names must be shorter):
# - ConfigMap `<name>-spec`: a DNS-1123 subdomain, at most 253 characters
#   (ValidateConfigMapName = NameIsDNSSubdomain, pkg/apis/core/validation; apimachinery's
#   IsDNS1123Subdomain; kubernetes.io/docs/concepts/overview/working-with-objects/names/).
# - Label values (`app.kubernetes.io/instance: <name>` on every object and pod): at most
#   63 characters, alphanumeric at both ends (apimachinery's IsValidLabelValue;
#   kubernetes.io/docs/concepts/overview/working-with-objects/labels/).
# - Job `<name>`: a DNS subdomain, and at most 63 characters, because the API server puts
#   the name on its pods as the `job-name` and `batch.kubernetes.io/job-name` label values
#   (ValidateGeneratedSelector, pkg/apis/batch/validation; "must be no more than 63
#   characters" on spec.template.labels; kubernetes.io/docs/concepts/workloads/controllers/job/).
# - CronJob `<name>`: at most 52 = 63 - 11, because its controller names each Job
#   `<name>-<scheduled time in minutes>` and that Job name must fit the 63 above
#   (ValidateCronJobCreate, pkg/apis/batch/validation; kubernetes #50850;
#   kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/).
# - Pods need no rule of their own: a Job's pods get generateName `<job name>-`, which the
#   API server cuts to 58 characters before adding 5 random ones
#   (maxGeneratedNameLength, apiserver/pkg/storage/names/generate.go).
DNS_SUBDOMAIN_MAX = 253
LABEL_VALUE_MAX = 63
JOB_NAME_MAX = 63
CRONJOB_NAME_MAX = 52
DNS_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


class DerivedName(NamedTuple):
    kind: str  # where the name goes: "CronJob", "ConfigMap", "label app.kubernetes.io/instance"
    name: str  # what the spec makes of `spec.name` there
    rule: str  # "a CronJob's name"
    most: int  # characters allowed
    why: str
    pattern: re.Pattern[str]


def derived_names(spec: JobSpec) -> list[DerivedName]:
    """Every name runner derives from the spec, for the objects this spec creates (a CronJob
    only when scheduled), tightest rule first."""
    name = spec.name
    if spec.schedule.cron:
        why = "Kubernetes appends an 11-character suffix to it to name its Jobs"
        workload = DerivedName("CronJob", name, "a CronJob's name", CRONJOB_NAME_MAX, why, DNS_SUBDOMAIN_RE)
    else:
        why = "Kubernetes puts it in its pods' job-name label"
        workload = DerivedName("Job", name, "a Job's name", JOB_NAME_MAX, why, DNS_SUBDOMAIN_RE)
    label = "label app.kubernetes.io/instance"
    return [
        workload,
        DerivedName(label, name, "a label's value", LABEL_VALUE_MAX, f"runner sets the {label} to it", LABEL_VALUE_RE),
        DerivedName("ConfigMap", config_map_name(spec), "a ConfigMap's name", DNS_SUBDOMAIN_MAX, "a DNS subdomain",
                    DNS_SUBDOMAIN_RE),
    ]  # fmt: skip


def check_names(spec: JobSpec) -> None:
    """Refuse, before anything is sent, a name the API server would refuse for an object runner creates."""
    for derived in derived_names(spec):
        check_name(spec.name, derived)


def check_name(spec_name: str, derived: DerivedName) -> None:
    """UserError naming the object, the derived name, its limit and the fix, if `derived` breaks its rule."""
    kind, name, rule, most, why, pattern = derived
    subject = f"name: '{spec_name}'" + (f" makes the {kind} name '{name}', which" if name != spec_name else "")
    if len(name) > most:
        raise UserError(
            f"{subject} is {len(name)} characters; {rule} may have at most {most} ({why}); "
            f"shorten name to at most {most - (len(name) - len(spec_name))} characters"
        )
    if not pattern.fullmatch(name):
        raise UserError(
            f"{subject} is not valid as {rule} ({kind}): use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
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
                # Bad input, and a diverged run (training is deterministic), fail the same way
                # every time: stop now.
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": list(FAIL_AT_ONCE)},
                },
                # Anything else (a crash, an unreachable store) may pass: use a retry.
                {
                    "action": "Count",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "NotIn",
                        "values": [int(Exit.OK), *FAIL_AT_ONCE],
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
    check_names(spec)
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
