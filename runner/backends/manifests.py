"""Kubernetes objects for a job: pure functions from a spec to plain dicts.

`runner render` prints them as YAML; the Kubernetes backend creates them. A Job
retries failures (up to `resources.retries`) but never counts preemptions (the
DisruptionTarget pod condition), a stop after a saved checkpoint (143) or a lost
peer (75), and fails at once on bad input (2) or a diverged run (3). Every attempt
reads the same spec from a ConfigMap, so it resumes the same checkpoint directory;
each run of a CronJob gets a directory of its own, named by its Job (read through
the downward API). A job of several processes runs `runner launch` (torchrun); one
of several nodes is an Indexed Job, one pod per node, with a headless Service that
gives node 0 (the rendezvous) a DNS name, or with `--jobset` a JobSet, which
restarts its pods together. Names the API server would refuse are refused first,
by `check_names` (k8s_names.py), which `runner validate` calls too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from runner.backends.k8s_names import (
    REPLICATED_JOB,
    check_names,
    config_map_name,
    indexed_host,
    job_set_host,
    service_name,
)
from runner.backends.torchrun import RDZV_PORT
from runner.errors import FAIL_AT_ONCE, RETRY_FREE, Exit, UserError
from runner.spec_tables import JobSpec, ResourcesSpec, ScheduleSpec

CONTAINER = "runner"
SPEC_DIR = "/etc/runner"
SPEC_FILE = f"{SPEC_DIR}/spec.toml"
WORKDIR = "/workspace"  # writable scratch: relative data.root and caches land here
UID = 1000  # the image's non-root user
GKE_SPOT = "cloud.google.com/gke-spot"
GKE_ACCELERATOR = "cloud.google.com/gke-accelerator"
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
RUN_ID = "$(RUNNER_RUN_ID)"  # the env var, expanded by the kubelet in later env values and args

Manifest = dict[str, Any]


COMPONENT = "app.kubernetes.io/component"


def labels(spec: JobSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": "runner", "app.kubernetes.io/instance": spec.name}


def training_labels(spec: JobSpec) -> dict[str, str]:
    """A training pod's: the component keeps the rendezvous Service from selecting the
    serving pods of the same spec (backends/serving.py), and those from selecting these."""
    return {**labels(spec), COMPONENT: "train"}


def container_security() -> dict[str, Any]:
    """Every runner container's: no privilege, nothing written outside its volumes."""
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def pod_security() -> dict[str, Any]:
    """Every runner pod's: the image's non-root user."""
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def add_credentials(res: ResourcesSpec, pod: dict[str, Any], container: dict[str, Any]) -> None:
    """The bucket's credentials, by reference only: the pod's service account (Workload
    Identity), or a Secret holding a service-account key, mounted read-only."""
    if res.service_account:
        pod["serviceAccountName"] = res.service_account
    if res.gcs_secret:
        container["env"].append({"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/secrets/google/key.json"})
        container["volumeMounts"].append({"name": "gcs-key", "mountPath": "/var/secrets/google", "readOnly": True})
        pod["volumes"].append({"name": "gcs-key", "secret": {"secretName": res.gcs_secret}})


def add_placement(res: ResourcesSpec, pod: dict[str, Any]) -> None:
    """Node selector and tolerations: the GPU kind, GPU nodes' taint, spot nodes."""
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


def _metadata(name: str, spec: JobSpec) -> dict[str, Any]:
    return {"name": name, "labels": labels(spec)}


def _workload_metadata(name: str, spec: JobSpec) -> dict[str, Any]:
    """Metadata of what Kueue admits as a whole (a Job, a CronJob's job template, a JobSet):
    the queue label. Kueue's webhook then creates it suspended until admitted
    (kueue.sigs.k8s.io/docs/tasks/run/jobs/, .../run/jobsets/, .../run/run_cronjobs/)."""
    metadata = _metadata(name, spec)
    if spec.resources.queue:
        metadata["labels"][KUEUE_QUEUE] = spec.resources.queue
    return metadata


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


class Pods(NamedTuple):
    """What differs between the pods of a Job, of a CronJob's Jobs and of a JobSet."""

    scheduled: bool = False  # a CronJob's: each run trains from scratch in a directory of its own
    indexed: bool = False  # one pod per node, each told its index (JOB_COMPLETION_INDEX)
    rendezvous: str = ""  # DNS name of node 0, which hosts the c10d rendezvous ("": one node)
    subdomain: str = ""  # the headless Service the pods' hostnames resolve under ("": none of runner's)


def _pods(spec: JobSpec, scheduled: bool) -> Pods:
    """A Job's or a CronJob's pods: several nodes are an Indexed Job, found through a Service."""
    if spec.resources.nodes == 1:
        return Pods(scheduled)
    subdomain = service_name(spec.name)
    job_name = RUN_ID if scheduled else spec.name  # a CronJob names each Job when it runs it
    return Pods(scheduled, True, indexed_host(job_name, 0, subdomain), subdomain)


def _container(spec: JobSpec, image: str, pods: Pods) -> dict[str, Any]:
    res = spec.resources
    # Several processes: `runner launch` runs torchrun, which starts `runner run` once per process.
    args = ["launch" if res.world_size > 1 else "run", SPEC_FILE]
    if pods.scheduled:  # each scheduled run trains from scratch in a directory of its own
        args += ["--set", f"checkpoint.dir={spec.checkpoint.dir.rstrip('/')}/{RUN_ID}"]
    limits: dict[str, Any] = {"memory": res.memory}
    if res.gpus:
        limits["nvidia.com/gpu"] = str(res.gpus)  # a quantity: the API client insists on a string
    env: list[dict[str, Any]] = [
        # The Job's name: the same for every retry of one Job, new for each CronJob run; it
        # also names the rendezvous (torchrun's --rdzv-id).
        {"name": "RUNNER_RUN_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}}},
        {"name": "HOME", "value": WORKDIR},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if pods.rendezvous:  # after RUNNER_RUN_ID, which it may name: the kubelet expands earlier vars only
        env.insert(1, {"name": "RUNNER_RDZV_ENDPOINT", "value": f"{pods.rendezvous}:{RDZV_PORT}"})
    mounts = [
        {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
        {"name": "workspace", "mountPath": WORKDIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if _needs_shm(spec):
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    return {
        "name": CONTAINER,
        "image": image,
        "args": args,
        "workingDir": WORKDIR,
        "env": env,
        "resources": {"requests": {"cpu": res.cpu, "memory": res.memory}, "limits": limits},
        "volumeMounts": mounts,
        "securityContext": container_security(),
    }


def _needs_shm(spec: JobSpec) -> bool:
    """A container's /dev/shm is 64 MB unless a volume replaces it: too little for NCCL's
    buffers between GPUs of one pod and for the DataLoader's workers, which pass batches
    through shared memory (pytorch/pytorch#2244; NCCL troubleshooting, "Shared memory")."""
    return spec.resources.gpus > 0 or spec.resources.world_size > 1


def _pod_template(spec: JobSpec, image: str, pods: Pods) -> dict[str, Any]:
    res = spec.resources
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # the Job retries, in a new pod, under its podFailurePolicy
        "terminationGracePeriodSeconds": res.grace_seconds,
        "securityContext": pod_security(),
        "containers": [_container(spec, image, pods)],
        "volumes": [
            {"name": "spec", "configMap": {"name": config_map_name(spec)}},
            {"name": "workspace", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if pods.subdomain:  # hostname <job>-<index> resolves as <job>-<index>.<subdomain>
        pod["subdomain"] = pods.subdomain
    if _needs_shm(spec):
        # RAM-backed, and counted against the container's memory limit whatever its size
        # (kubernetes.io/docs/concepts/storage/volumes/#emptydir): the limit is the bound.
        pod["volumes"].append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": res.memory}})
    add_credentials(res, pod, pod["containers"][0])
    add_placement(res, pod)
    return {"metadata": {"labels": training_labels(spec)}, "spec": pod}


def _on_exit(action: str, operator: str, codes: Iterable[int]) -> dict[str, Any]:
    # The API server wants the values sorted and unique, and no 0 with In
    # (validatePodFailurePolicyRuleOnExitCodes, pkg/apis/batch/validation).
    requirement = {"containerName": CONTAINER, "operator": operator, "values": sorted({int(c) for c in codes})}
    return {"action": action, "onExitCodes": requirement}


def _job_spec(spec: JobSpec, image: str, pods: Pods) -> dict[str, Any]:
    res = spec.resources
    job_spec: dict[str, Any] = {
        "backoffLimit": res.retries,
        "activeDeadlineSeconds": round(res.deadline_hours * 3600),
        "ttlSecondsAfterFinished": round(res.ttl_hours * 3600),
        # The first rule that matches a failed pod decides
        # (kubernetes.io/docs/concepts/workloads/controllers/job/#pod-failure-policy).
        "podFailurePolicy": {
            "rules": [
                # A preempted or evicted pod saved its checkpoint: retry it, for free, whatever
                # it exited with (kubeflow/trainer #1570, jobset #1117).
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                # Bad input, and a diverged run (training is deterministic), fail the same way
                # every time: stop now, every node.
                _on_exit("FailJob", "In", FAIL_AT_ONCE),
                # Stopped after saving a checkpoint (143), or a peer lost (75): no failure; the
                # new pod resumes. activeDeadlineSeconds still bounds a job that never ends.
                _on_exit("Ignore", "In", RETRY_FREE),
                # Anything else (a crash, an unreachable store) may pass: use a retry.
                _on_exit("Count", "NotIn", (Exit.OK, *FAIL_AT_ONCE, *RETRY_FREE)),
            ]
        },
    }
    if pods.indexed:
        # One pod per node, each with JOB_COMPLETION_INDEX (its node rank) and hostname
        # <job>-<index>. The Job succeeds when every index has (the default): every node's
        # `runner launch` exits 0 when the group finishes. No backoffLimitPerIndex: the nodes
        # train one model, so a failure on any of them spends the job's one budget of
        # `retries`, and a node out of retries must end the job, not leave the others waiting.
        job_spec |= {"completionMode": "Indexed", "completions": res.nodes, "parallelism": res.nodes}
        # A replacement pod only once the pod it replaces has ended (the only value allowed
        # with a podFailurePolicy): two pods never hold one hostname, and the old one's
        # emergency checkpoint is committed before the new one resumes
        # (kubernetes.io/docs/concepts/workloads/controllers/job/#pod-replacement-policy).
        job_spec["podReplacementPolicy"] = "Failed"
    job_spec["template"] = _pod_template(spec, image, pods)
    return job_spec


def job(spec: JobSpec, image: str) -> Manifest:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _workload_metadata(spec.name, spec),
        "spec": _job_spec(spec, image, _pods(spec, scheduled=False)),
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
            "jobTemplate": {
                "metadata": {"labels": _workload_metadata(spec.name, spec)["labels"]},
                "spec": _job_spec(spec, image, _pods(spec, scheduled=True)),
            },
        },
    }


def service(spec: JobSpec) -> Manifest:
    """The headless Service under which a multi-node Job's pods get DNS names: node 0's is the
    rendezvous every node dials."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(service_name(spec.name), spec),
        "spec": {
            "clusterIP": "None",  # headless: a DNS record per pod, no virtual IP
            # Names before readiness: the nodes rendezvous while starting, and runner's pods
            # have no readiness probe (jobset #504, kubernetes #117819).
            "publishNotReadyAddresses": True,
            "selector": training_labels(spec),
            "ports": [{"name": "rendezvous", "port": RDZV_PORT, "protocol": "TCP"}],
        },
    }


def job_set(spec: JobSpec, image: str) -> Manifest:
    """A JobSet (jobset.x-k8s.io, what Kubeflow Trainer v2 runs on): the same Indexed Job as its
    one replicated Job, but on a failure the whole group restarts together."""
    res = spec.resources
    rendezvous = job_set_host(spec.name, 0) if res.nodes > 1 else ""
    nodes = _job_spec(spec, image, Pods(indexed=True, rendezvous=rendezvous))
    # Any counted failure fails the child Job at once and the JobSet recreates every pod: at
    # scale, nodes replaced one by one time out at different moments and never re-form
    # (kubeflow/trainer #2000). `retries` becomes the JobSet's restarts (jobset's examples:
    # simple/max-restarts.yaml). Preemptions, 75 and 143 are still ignored in the child Job.
    nodes["backoffLimit"] = 0
    ttl = nodes.pop("ttlSecondsAfterFinished")  # the JobSet's: it deletes its Jobs with it
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": _workload_metadata(spec.name, spec),
        "spec": {
            # JobSet's own headless Service, named after the JobSet: pods resolve as
            # <jobset>-<replicatedJob>-<job index>-<pod index>.<subdomain>, before they are Ready.
            "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True, "subdomain": spec.name},
            "failurePolicy": {
                "maxRestarts": res.retries,
                # The next attempt starts once every pod of this one is gone: no two pods with one
                # hostname, and the emergency checkpoints are committed before anyone resumes.
                "restartStrategy": "BlockingRecreate",
                # The child Job failed by its podFailurePolicy (bad input, diverged) or ran out
                # of time: a restart would end the same way.
                "rules": [
                    {
                        "name": "failAtOnce",
                        "action": "FailJobSet",
                        "onJobFailureReasons": ["PodFailurePolicy", "DeadlineExceeded"],
                    }
                ],
            },
            "ttlSecondsAfterFinished": ttl,
            "replicatedJobs": [
                {
                    "name": REPLICATED_JOB,
                    "replicas": 1,
                    "template": {"metadata": {"labels": labels(spec)}, "spec": nodes},
                }
            ],
        },
    }


def render(spec: JobSpec, spec_toml: str, image: str, jobset: bool = False) -> list[Manifest]:
    """What `runner submit --backend k8s` applies: the spec's ConfigMap, then the headless Service
    of a multi-node job, then its Job or CronJob; with `jobset`, the ConfigMap and a JobSet."""
    check_cluster_ready(spec)
    if jobset and spec.schedule.cron:
        raise UserError("--jobset: a JobSet runs once and has no schedule; drop --schedule (or --jobset for a CronJob)")
    check_names(spec, jobset)
    if jobset:
        workloads = [job_set(spec, image)]
    else:
        workload = cron_job(spec, image, spec.schedule) if spec.schedule.cron else job(spec, image)
        workloads = [service(spec), workload] if spec.resources.nodes > 1 else [workload]
    return [config_map(spec, spec_toml), *workloads]


def to_yaml(manifests: list[Manifest]) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        # The spec reads as the TOML it is: multi-line strings as `|` blocks.
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump_all(manifests, Dumper=Dumper, sort_keys=False, width=120)
