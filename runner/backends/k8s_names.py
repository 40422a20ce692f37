"""The names runner gives Kubernetes objects and pod hosts, and the rules the API server holds them to.

Every name is derived from the spec's `name` (a DNS label, at most 63 characters), and some
derived names must be shorter or stricter. `check_names` refuses, before anything is sent, a
name the API server (or JobSet's webhook) would refuse for an object this spec creates;
`runner validate`, `render`, `submit --backend k8s` and `schedule` call it.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from runner.errors import UserError
from runner.spec import JobSpec

REPLICATED_JOB = "node"  # a JobSet's one replicated Job: its pods are the nodes of the job

# What the API server accepts for the names runner derives from `spec.name`:
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
#   An Indexed Job (nodes > 1) also names each pod's host `<name>-<index>`, uncut, and a
#   pod's hostname is a DNS label of at most 63 (pkg/controller/job/job_controller.go:
#   `template.Spec.Hostname = fmt.Sprintf("%s-%d", job.Name, completionIndex)`; KEP-2214):
#   a longer one makes every pod creation fail, so the name must leave room for the index.
# - CronJob `<name>`: at most 52 = 63 - 11, because its controller names each Job
#   `<name>-<scheduled time in minutes>` and that Job name must fit the 63 above
#   (ValidateCronJobCreate, pkg/apis/batch/validation; kubernetes #50850;
#   kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/); less the `-<index>` of
#   its Jobs' pod hostnames when they are Indexed.
# - Service `<name>-nodes` (the headless Service of a multi-node Job): a DNS-1035 label, at
#   most 63 characters, starting with a letter (ValidateServiceName = NameIsDNS1035Label).
# - JobSet `<name>`: JobSet's webhook requires its longest pod name,
#   `<name>-<replicatedJob>-<job index>-<pod index>-<5 random characters>`, to be a DNS-1035
#   label of at most 63 (kubernetes-sigs/jobset pkg/webhooks/jobset_webhook.go,
#   podNameTooLongErrorMsg).
# - Pods of a plain Job need no rule of their own: they get generateName `<job name>-` (an
#   Indexed Job's `<job name>-<index>-`), which the controller and the API server cut to 58
#   characters before adding 5 random ones (maxGeneratedNameLength,
#   apiserver/pkg/storage/names/generate.go; podGenerateNameWithIndex).
DNS_SUBDOMAIN_MAX = 253
LABEL_VALUE_MAX = 63
JOB_NAME_MAX = 63
CRONJOB_NAME_MAX = 52
SERVICE_NAME_MAX = 63
POD_NAME_MAX = 63
RANDOM_SUFFIX = 6  # "-abcde": what generateName adds


class Form(NamedTuple):
    pattern: re.Pattern[str]
    text: str  # what the pattern asks for, in words


DNS_SUBDOMAIN = Form(
    re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"),
    "lowercase letters, digits and '-', starting and ending with a letter or digit",
)
DNS_1035_LABEL = Form(
    re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?"),
    "lowercase letters, digits and '-', starting with a letter and ending with a letter or digit",
)
LABEL_VALUE = Form(re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"), DNS_SUBDOMAIN.text)


class DerivedName(NamedTuple):
    kind: str  # where the name goes: "CronJob", "ConfigMap", "label app.kubernetes.io/instance"
    name: str  # what the spec makes of `spec.name` there
    rule: str  # "a CronJob's name"
    most: int  # characters allowed
    why: str
    form: Form


def config_map_name(spec: JobSpec) -> str:
    return f"{spec.name}-spec"


def service_name(job_name: str) -> str:
    """The headless Service that gives a multi-node Job's pods their DNS names."""
    return f"{job_name}-nodes"


def indexed_host(job_name: str, index: int, subdomain: str) -> str:
    """The DNS name of an Indexed Job's pod: hostname `<job>-<index>` under the pod's subdomain
    (kubernetes.io/docs/concepts/services-networking/dns-pod-service/#pod-s-hostname-and-subdomain-fields)."""
    return f"{job_name}-{index}.{subdomain}"


def job_set_host(job_set_name: str, pod_index: int) -> str:
    """The DNS name of a JobSet pod of the one replicated Job: its child Job is
    `<jobset>-<replicatedJob>-<job index>`, so the host is that Job's Indexed hostname under
    the JobSet's subdomain (jobset.x-k8s.io network.enableDNSHostnames)."""
    return indexed_host(f"{job_set_name}-{REPLICATED_JOB}-0", pod_index, job_set_name)


def derived_names(spec: JobSpec, job_set: bool = False) -> list[DerivedName]:
    """Every name runner derives from the spec, for the objects this spec creates (a CronJob
    only when scheduled, a Service only for several nodes, a JobSet when asked), tightest rule first."""
    name, nodes = spec.name, spec.resources.nodes
    index = f"-{nodes - 1}" if nodes > 1 else ""  # the longest `-<index>` a pod hostname gets
    hosts = ", and names its pods' hosts <name>-<index>" if index else ""
    if job_set:
        pod = f"-{REPLICATED_JOB}-0-{nodes - 1}"  # the longest, before the random suffix
        why = f"JobSet names its pods <name>{pod}-xxxxx, which must be a DNS-1035 label of at most {POD_NAME_MAX}"
        most = POD_NAME_MAX - len(pod) - RANDOM_SUFFIX
        workload = DerivedName("JobSet", name, "a JobSet's name", most, why, DNS_1035_LABEL)
    elif spec.schedule.cron:
        why = "Kubernetes appends an 11-character suffix to it to name its Jobs" + hosts
        workload = DerivedName("CronJob", name, "a CronJob's name", CRONJOB_NAME_MAX - len(index), why, DNS_SUBDOMAIN)
    else:
        why = "Kubernetes puts it in its pods' job-name label" + hosts
        workload = DerivedName("Job", name, "a Job's name", JOB_NAME_MAX - len(index), why, DNS_SUBDOMAIN)
    label = "label app.kubernetes.io/instance"
    names = [
        workload,
        DerivedName(label, name, "a label's value", LABEL_VALUE_MAX, f"runner sets the {label} to it", LABEL_VALUE),
        DerivedName("ConfigMap", config_map_name(spec), "a ConfigMap's name", DNS_SUBDOMAIN_MAX, "a DNS subdomain",
                    DNS_SUBDOMAIN),
    ]  # fmt: skip
    if nodes > 1 and not job_set:
        why = "a DNS-1035 label"
        names.append(DerivedName("Service", service_name(name), "a Service's name", SERVICE_NAME_MAX, why,
                                 DNS_1035_LABEL))  # fmt: skip
    # Tightest first, as the spec's name goes: a name too long for several rules is told the shortest.
    return sorted(names, key=lambda derived: derived.most - (len(derived.name) - len(name)))


def check_names(spec: JobSpec, job_set: bool = False) -> None:
    """Refuse, before anything is sent, a name the API server would refuse for an object runner creates."""
    for derived in derived_names(spec, job_set):
        check_name(spec.name, derived)


def check_name(spec_name: str, derived: DerivedName) -> None:
    """UserError naming the object, the derived name, its limit and the fix, if `derived` breaks its rule."""
    kind, name, rule, most, why, form = derived
    subject = f"name: '{spec_name}'" + (f" makes the {kind} name '{name}', which" if name != spec_name else "")
    if len(name) > most:
        raise UserError(
            f"{subject} is {len(name)} characters; {rule} may have at most {most} ({why}); "
            f"shorten name to at most {most - (len(name) - len(spec_name))} characters"
        )
    if not form.pattern.fullmatch(name):
        raise UserError(f"{subject} is not valid as {rule} ({kind}): use {form.text}")
