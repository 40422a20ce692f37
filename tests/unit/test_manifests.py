"""Rendered Kubernetes objects: valid against the upstream schemas (strict, offline; a JobSet
against its CRD), pinned by golden files, and the k8s/ folder kept in sync with `runner render`."""

from __future__ import annotations

import copy
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from runner.backends.k8s_names import check_name, check_names, derived_names
from runner.backends.manifests import render, to_yaml
from runner.errors import FAIL_AT_ONCE, RETRY_FREE, Exit, UserError
from runner.spec import load_spec, to_toml
from tests.helpers import JOBS, REPO, runner_cli

GOLDEN = Path(__file__).parents[1] / "golden"  # tests/golden
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"  # regenerate golden files and k8s/ after a deliberate change
IMAGE = "us-docker.pkg.dev/my-project/ml/runner:0123456789abcdef"
BUCKET = "checkpoint.dir=gs://my-bucket/runs/cnn"
GPU_SPOT = ["resources.gpus=1", "resources.accelerator=nvidia-l4", "resources.spot=true"]
H100X8 = ["resources.gpus=8", "resources.accelerator=nvidia-h100-80gb", 'resources.cpu="16"', "resources.memory=64Gi"]
TWO_NODES = ["resources.nodes=2", *H100X8]
JOBSET = "jobset"  # a variant rendered with --jobset starts so

VARIANTS = {
    "job-cpu": [BUCKET],
    "job-gpu-spot": [BUCKET, *GPU_SPOT, "resources.service_account=trainer"],
    "job-gpu-secret": [BUCKET, "resources.gpus=1", "resources.gcs_secret=gcs-key"],
    "cronjob": [BUCKET, "schedule.cron=0 3 * * *"],
    "cronjob-gpu-spot": [BUCKET, *GPU_SPOT, "schedule.cron=0 3 * * *", "schedule.time_zone=Europe/Paris"],
    "job-8-gpus": [BUCKET, *H100X8],
    "job-4-cpu-procs": [BUCKET, "resources.procs_per_node=4"],
    "job-2x8-gpus-queue": [BUCKET, *TWO_NODES, "resources.queue=team-a"],
    "cronjob-2x8-gpus": [BUCKET, *TWO_NODES, "schedule.cron=0 3 * * *"],
    "jobset-2x8-gpus-queue": [BUCKET, *TWO_NODES, "resources.queue=team-a"],
}


def rendered(overrides: list[str], jobset: bool = False) -> list[dict]:
    spec = load_spec(str(JOBS / "cnn.toml"), overrides)
    return render(spec, to_toml(spec), IMAGE, jobset)


def rendered_variant(variant: str) -> list[dict]:
    return rendered(VARIANTS[variant], jobset=variant.startswith(JOBSET))


def validate_strictly(manifest: dict) -> None:
    """Core kinds against the upstream OpenAPI schemas, unknown fields refused; a JobSet against
    its CRD, unknown fields refused too, and its Job template as the Job it is."""
    if manifest["kind"] == "JobSet":
        jsonschema.Draft4Validator(jobset_schema()).validate(manifest)
        for replicated in manifest["spec"]["replicatedJobs"]:
            template = replicated["template"]
            validate_strictly({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": replicated["name"],
                               **template.get("metadata", {})}, "spec": template["spec"]})  # fmt: skip
        return
    kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)


def check_golden(path: Path, text: str) -> None:
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.read_text() == text, f"{path} differs from what runner renders; rerun with UPDATE_GOLDEN=1 if meant"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_manifest_passes_strict_validation_against_the_upstream_schemas(variant: str) -> None:
    for manifest in rendered_variant(variant):
        validate_strictly(manifest)


@pytest.mark.parametrize("variant", VARIANTS)
def test_golden(variant: str) -> None:
    check_golden(GOLDEN / f"cnn-{variant}.yaml", to_yaml(rendered_variant(variant)))


def job_spec_of(manifest: dict) -> dict:
    spec = manifest["spec"]
    if manifest["kind"] == "JobSet":
        return spec["replicatedJobs"][0]["template"]["spec"]
    return spec["jobTemplate"]["spec"] if manifest["kind"] == "CronJob" else spec


def pod_of(manifest: dict) -> dict:
    return job_spec_of(manifest)["template"]["spec"]


def test_preemptions_are_free_bad_input_fails_fast_other_failures_count(tmp_path: Path) -> None:
    config_map, job = rendered(VARIANTS["job-gpu-spot"])
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"]["values"] == [2, 3]
    assert rules[2]["action"] == "Ignore" and rules[2]["onExitCodes"]["values"] == [75, 143]
    assert rules[3]["action"] == "Count"
    pod = pod_of(job)
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 6
    assert pod["terminationGracePeriodSeconds"] == 30
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4", "cloud.google.com/gke-spot": "true"}
    assert {t["key"] for t in pod["tolerations"]} == {"nvidia.com/gpu", "cloud.google.com/gke-spot"}
    assert pod["serviceAccountName"] == "trainer"  # Workload Identity: no key anywhere
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["args"] == ["run", "/etc/runner/spec.toml"]  # every retry: same spec, same checkpoint dir
    (tmp_path / "spec.toml").write_text(config_map["data"]["spec.toml"])  # the pod reads back this very spec
    assert load_spec(str(tmp_path / "spec.toml")).checkpoint.dir == "gs://my-bucket/runs/cnn"


def test_credentials_are_referenced_never_inlined() -> None:
    _, job = rendered(VARIANTS["job-gpu-secret"])
    pod = pod_of(job)
    assert {"name": "gcs-key", "secret": {"secretName": "gcs-key"}} in pod["volumes"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == "/var/secrets/google/key.json"


def test_each_scheduled_run_gets_its_own_run_directory() -> None:
    _, cron = rendered(VARIANTS["cronjob-gpu-spot"])
    assert cron["kind"] == "CronJob"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["timeZone"] == "Europe/Paris"
    container = pod_of(cron)["containers"][0]
    assert container["args"][-1] == "checkpoint.dir=gs://my-bucket/runs/cnn/$(RUNNER_RUN_ID)"
    run_id = next(e for e in container["env"] if e["name"] == "RUNNER_RUN_ID")
    assert run_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['job-name']"


def test_render_refuses_a_checkpoint_dir_on_the_pods_disk(tmp_path: Path) -> None:
    result = runner_cli("render", str(JOBS / "cnn.toml"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: checkpoint.dir: 'runs/cnn' is on the pod's own disk")


def test_render_prints_a_cronjob_for_schedule(tmp_path: Path) -> None:
    result = runner_cli(
        "render", str(JOBS / "cnn.toml"), "--set", BUCKET, "--schedule", "0 3 * * *", "--image", IMAGE, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert [m["kind"] for m in yaml.safe_load_all(result.stdout)] == ["ConfigMap", "CronJob"]


# k8s/: what a user reads and applies with `kubectl apply -k k8s/` (or k8s/8-gpus/, k8s/2-nodes/),
# rendered by the real CLI. The image is a placeholder the kustomization sets.
NIGHTLY = ["--set", BUCKET.replace("runs/cnn", "runs/cnn-nightly"), "--set", "name=cnn-nightly",
           "--set", "init_from=promoted", "--set", "promote.enabled=true", "--set", "promote.min_improvement=0.002"]  # fmt: skip
K8S_GPU = ["--set", "resources.gpus=1", "--set", "resources.accelerator=nvidia-l4"]
K8S_H100X8 = [a for o in H100X8 for a in ("--set", o)]
K8S = {
    "job.yaml": ["--set", BUCKET, *K8S_GPU, "--set", "resources.spot=true", "--image", "runner"],
    "cronjob.yaml": [*NIGHTLY, *K8S_GPU, "--schedule", "0 3 * * *", "--image", "runner"],
    "8-gpus/job.yaml": ["--set", BUCKET.replace("runs/cnn", "runs/cnn-8gpu"), "--set", "name=cnn-8gpu",
                        *K8S_H100X8, "--image", "runner"],
    "2-nodes/job.yaml": ["--set", BUCKET.replace("runs/cnn", "runs/cnn-2x8gpu"), "--set", "name=cnn-2x8gpu",
                         "--set", "resources.nodes=2", *K8S_H100X8, "--image", "runner"],
    "serve/serve.yaml": ["--set", BUCKET, "--serve", "--image", "runner"],  # runner serve on job.yaml's run
}  # fmt: skip


@pytest.mark.parametrize("name", K8S)
def test_k8s_folder_is_what_runner_renders(name: str, tmp_path: Path) -> None:
    result = runner_cli("render", "jobs/cnn.toml", *K8S[name], cwd=REPO)
    assert result.returncode == 0, result.stderr
    check_golden(REPO / "k8s" / name, result.stdout)
    for manifest in yaml.safe_load_all(result.stdout):
        validate_strictly(manifest)


def test_the_k8s_examples_are_what_they_say() -> None:
    """One GPU on a spot node; 8 GPUs in one pod; 2 nodes of 8; the nightly retraining on a GPU."""
    examples = {name: list(yaml.safe_load_all((REPO / "k8s" / name).read_text())) for name in K8S}
    one, nightly = examples["job.yaml"][-1], examples["cronjob.yaml"][-1]
    assert pod_of(one)["nodeSelector"]["cloud.google.com/gke-spot"] == "true"
    assert pod_of(one)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert nightly["kind"] == "CronJob" and pod_of(nightly)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    # Gated retraining: each run starts from the promoted model, and is promoted only if better.
    nightly_spec = tomllib.loads(examples["cronjob.yaml"][0]["data"]["spec.toml"])
    assert nightly_spec["init_from"] == "promoted" and nightly_spec["promote"]["enabled"] is True
    eight = examples["8-gpus/job.yaml"]
    assert [m["kind"] for m in eight] == ["ConfigMap", "Job"]
    assert pod_of(eight[-1])["containers"][0]["args"][0] == "launch"
    assert [m["kind"] for m in examples["2-nodes/job.yaml"]] == ["ConfigMap", "Service", "Job"]
    assert job_spec_of(examples["2-nodes/job.yaml"][-1])["completions"] == 2


def test_each_kustomization_lists_the_rendered_files_beside_it() -> None:
    listed = []
    for path in sorted((REPO / "k8s").rglob("kustomization.yaml")):
        kustomization = yaml.safe_load(path.read_text())
        folder = path.parent.relative_to(REPO / "k8s")
        listed += [str(folder / name) if str(folder) != "." else name for name in kustomization["resources"]]
        assert kustomization["images"][0]["name"] == "runner"
    assert sorted(listed) == sorted(K8S)


# -- the Job's podFailurePolicy, and distributed jobs ------------------------------------------


def rendered_job_specs() -> list[dict[str, Any]]:
    """The Job spec of every workload runner renders: a Job and a CronJob's job template, of one
    node and of two, and a JobSet's replicated Job."""
    specs = []
    for extra in ([], ["schedule.cron=0 3 * * *"], TWO_NODES, [*TWO_NODES, "schedule.cron=0 3 * * *"]):
        specs.append(job_spec_of(rendered([BUCKET, *extra])[-1]))
    specs.append(job_spec_of(rendered([BUCKET, *TWO_NODES], jobset=True)[-1]))
    return specs


def first_matching_action(rules: list[dict[str, Any]], exit_code: int, conditions: set[str]) -> str | None:
    """What Kubernetes does with a failed pod: the first rule that matches decides."""
    for rule in rules:
        if "onPodConditions" in rule:
            if any(c["type"] in conditions for c in rule["onPodConditions"]):
                return rule["action"]
            continue
        on = rule["onExitCodes"]
        matched = exit_code in on["values"] if on["operator"] == "In" else exit_code not in on["values"]
        if exit_code != 0 and matched:
            return rule["action"]
    return None


def test_the_pod_failure_policy_rule_by_rule() -> None:
    """Mutations: the FailJob rule's values `[BAD_INPUT]` -> `[1]`; the DisruptionTarget
    rule's action "Ignore" -> "Count"; RETRY_FREE emptied; the Ignore-on-exit rule moved before
    FailJob. Each fails here. No golden file is involved, so UPDATE_GOLDEN=1 cannot turn this
    test into a self-comparison."""
    for job_spec in rendered_job_specs():
        rules = job_spec["podFailurePolicy"]["rules"]
        assert len(rules) == 4
        ignore, fail, free, count = rules  # the order matters: the first matching rule decides

        assert ignore["action"] == "Ignore"
        assert ignore["onPodConditions"] == [{"type": "DisruptionTarget"}]
        assert "onExitCodes" not in ignore and set(ignore) == {"action", "onPodConditions"}

        assert fail["action"] == "FailJob" and set(fail) == {"action", "onExitCodes"}
        assert fail["onExitCodes"] == {"containerName": "runner", "operator": "In", "values": sorted(FAIL_AT_ONCE)}
        assert free["action"] == "Ignore" and set(free) == {"action", "onExitCodes"}
        assert free["onExitCodes"] == {"containerName": "runner", "operator": "In", "values": sorted(RETRY_FREE)}
        assert count["action"] == "Count" and set(count) == {"action", "onExitCodes"}
        not_counted = sorted({Exit.OK, *FAIL_AT_ONCE, *RETRY_FREE})
        assert count["onExitCodes"] == {"containerName": "runner", "operator": "NotIn", "values": not_counted}
        for rule in (fail, free, count):  # what the API server checks beyond the schema
            values = rule["onExitCodes"]["values"]
            assert values == sorted(set(values)) and (0 not in values or rule["onExitCodes"]["operator"] == "NotIn")

        containers = {c["name"] for c in job_spec["template"]["spec"]["containers"]}
        assert containers == {"runner"}  # the rules name the container that exists

        # What that means for each way a pod can end, rules evaluated as Kubernetes does.
        assert first_matching_action(rules, 2, set()) == "FailJob"
        assert first_matching_action(rules, 3, set()) == "FailJob"  # diverged: deterministic, a retry diverges again
        # 143 (stopped by SIGTERM, checkpoint saved) and 75 (a peer lost; the group re-forms)
        # never fail the Job and never use a retry: the next pod resumes from the checkpoint.
        assert first_matching_action(rules, 143, set()) == "Ignore"
        assert first_matching_action(rules, 75, set()) == "Ignore"
        assert first_matching_action(rules, 143, {"DisruptionTarget"}) == "Ignore"
        assert first_matching_action(rules, 137, {"DisruptionTarget"}) == "Ignore"
        assert first_matching_action(rules, 2, {"DisruptionTarget"}) == "Ignore"  # preempted while starting
        assert first_matching_action(rules, 1, set()) == "Count"  # a bug: each attempt uses up a retry
        assert first_matching_action(rules, 137, set()) == "Count"


def test_a_job_of_several_processes_on_one_node_launches_torchrun_in_one_pod() -> None:
    manifests = rendered_variant("job-8-gpus")
    assert [m["kind"] for m in manifests] == ["ConfigMap", "Job"]  # no Service: no peer to find
    job = manifests[-1]
    assert "completionMode" not in job["spec"] and "subdomain" not in pod_of(job)
    container = pod_of(job)["containers"][0]
    assert container["args"] == ["launch", "/etc/runner/spec.toml"]
    assert "RUNNER_RDZV_ENDPOINT" not in {e["name"] for e in container["env"]}  # torchrun --standalone
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    cpu_procs = pod_of(rendered_variant("job-4-cpu-procs")[-1])["containers"][0]
    assert cpu_procs["args"][0] == "launch" and "nvidia.com/gpu" not in cpu_procs["resources"]["limits"]


SHM = {"job-cpu": None, "job-gpu-secret": "8Gi", "job-4-cpu-procs": "8Gi", "job-2x8-gpus-queue": "64Gi",
       "jobset-2x8-gpus-queue": "64Gi"}  # fmt: skip


@pytest.mark.parametrize("variant", SHM)
def test_dev_shm_is_memory_backed_for_gpus_and_several_processes(variant: str) -> None:
    pod = pod_of(rendered_variant(variant)[-1])
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert ("/dev/shm" in mounts) is (SHM[variant] is not None)
    if SHM[variant]:  # RAM, bounded by the container's memory limit
        assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": SHM[variant]}


def env_of(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_several_nodes_are_an_indexed_job_whose_pods_find_node_0_through_a_headless_service() -> None:
    from runner.backends.torchrun import RDZV_PORT

    config_map, service, job = rendered_variant("job-2x8-gpus-queue")
    assert (config_map["kind"], service["kind"], job["kind"]) == ("ConfigMap", "Service", "Job")
    spec, pod = job["spec"], pod_of(job)
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["podReplacementPolicy"] == "Failed"  # no two pods with one hostname
    assert "backoffLimitPerIndex" not in spec  # one budget of retries for the one training
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["ports"] == [{"name": "rendezvous", "port": RDZV_PORT, "protocol": "TCP"}]
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["subdomain"] == service["metadata"]["name"] == "cnn-nodes"
    container = pod["containers"][0]
    assert container["args"] == ["launch", "/etc/runner/spec.toml"]
    # Node 0's name as Kubernetes makes it: hostname <job>-<index> (KEP-2214), under the subdomain.
    endpoint = env_of(container)["RUNNER_RDZV_ENDPOINT"]
    assert endpoint == f"{job['metadata']['name']}-0.{pod['subdomain']}:{RDZV_PORT}" == "cnn-0.cnn-nodes:29400"
    names = [e["name"] for e in container["env"]]
    assert names.index("RUNNER_RUN_ID") < names.index("RUNNER_RDZV_ENDPOINT")


def test_a_scheduled_multi_node_job_finds_node_0_of_each_run() -> None:
    """A CronJob names each Job when it runs it: the endpoint names it through RUNNER_RUN_ID (the
    job-name label), which the kubelet expands because it is defined before."""
    _, service, cron = rendered_variant("cronjob-2x8-gpus")
    container = pod_of(cron)["containers"][0]
    assert env_of(container)["RUNNER_RDZV_ENDPOINT"] == "$(RUNNER_RUN_ID)-0.cnn-nodes:29400"
    assert pod_of(cron)["subdomain"] == service["metadata"]["name"]
    assert container["args"][:2] == ["launch", "/etc/runner/spec.toml"]
    assert container["args"][-1] == "checkpoint.dir=gs://my-bucket/runs/cnn/$(RUNNER_RUN_ID)"


# -- Kueue -------------------------------------------------------------------------------------


def test_a_queue_labels_what_kueue_admits_as_a_whole_and_nothing_else() -> None:
    queue = "kueue.x-k8s.io/queue-name"
    for variant in ("job-2x8-gpus-queue", "jobset-2x8-gpus-queue"):
        *others, workload = rendered_variant(variant)
        assert workload["metadata"]["labels"][queue] == "team-a"
        assert queue not in job_spec_of(workload)["template"]["metadata"]["labels"]
        assert all(queue not in m["metadata"]["labels"] for m in others)  # ConfigMap, Service
    cron = rendered([BUCKET, "resources.queue=team-a", "schedule.cron=@daily"])[-1]
    assert cron["spec"]["jobTemplate"]["metadata"]["labels"][queue] == "team-a"  # on each Job it makes
    assert all(queue not in m["metadata"]["labels"] for m in rendered_variant("job-8-gpus"))


def test_a_job_kueue_suspended_is_still_valid() -> None:
    """Kueue creates a queued Job suspended (its webhook sets spec.suspend) and unsuspends it on admission."""
    for variant in ("job-2x8-gpus-queue", "jobset-2x8-gpus-queue"):
        workload = copy.deepcopy(rendered_variant(variant)[-1])
        workload["spec"]["suspend"] = True
        validate_strictly(workload)
        workload["spec"]["suspended"] = True  # and the check is strict: a misspelt field fails
        with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
            validate_strictly(workload)


# -- JobSet ------------------------------------------------------------------------------------

JOBSET_CRD = REPO / "tests" / "schemas" / "jobset.x-k8s.io_jobsets.yaml"  # tests/schemas/README.md


def jobset_schema() -> dict:
    """The CRD's openAPIV3Schema for v1alpha2, strict: an object with properties allows no others
    (the API server would prune an unknown field silently, and runner never means to send one)."""
    crd = yaml.safe_load(JOBSET_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha2"]

    def strict(node: Any) -> Any:
        if isinstance(node, list):
            return [strict(n) for n in node]
        if not isinstance(node, dict):
            return node
        node = {key: strict(value) for key, value in node.items()}
        if node.get("x-kubernetes-int-or-string"):
            node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
        closed = node.get("type") == "object" and isinstance(node.get("properties"), dict)
        if closed and not node.get("x-kubernetes-preserve-unknown-fields"):
            node.setdefault("additionalProperties", False)
        return node

    return strict(version["schema"]["openAPIV3Schema"])


def test_the_jobset_schema_check_is_strict() -> None:
    job_set = rendered_variant("jobset-2x8-gpus-queue")[-1]
    jsonschema.Draft4Validator(jobset_schema()).validate(job_set)
    for path, bad in ((("spec", "network"), {"enableDNSHostname": True}), (("spec",), {"maxRestarts": 3}),
                      (("spec", "failurePolicy"), {"restartStrategy": "Sometimes"})):  # fmt: skip
        broken = copy.deepcopy(job_set)
        target = broken
        for key in path:
            target = target[key]
        target.update(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft4Validator(jobset_schema()).validate(broken)


def test_a_jobset_restarts_every_node_together_and_stops_on_what_a_restart_repeats() -> None:
    config_map, job_set = rendered_variant("jobset-2x8-gpus-queue")
    assert config_map["kind"] == "ConfigMap"  # the pods read the spec from it, as a Job's do
    spec = job_set["spec"]
    assert spec["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True, "subdomain": "cnn"}
    assert spec["failurePolicy"]["maxRestarts"] == 6  # resources.retries
    assert spec["failurePolicy"]["restartStrategy"] == "BlockingRecreate"
    (rule,) = spec["failurePolicy"]["rules"]
    assert rule["action"] == "FailJobSet"
    assert set(rule["onJobFailureReasons"]) == {"PodFailurePolicy", "DeadlineExceeded"}
    assert spec["ttlSecondsAfterFinished"] == 86400
    (replicated,) = spec["replicatedJobs"]
    assert replicated["replicas"] == 1
    job_spec = replicated["template"]["spec"]
    assert job_spec["backoffLimit"] == 0  # a counted failure restarts the whole JobSet
    assert "ttlSecondsAfterFinished" not in job_spec
    assert (job_spec["completionMode"], job_spec["completions"], job_spec["parallelism"]) == ("Indexed", 2, 2)
    pod = job_spec["template"]["spec"]
    assert "subdomain" not in pod  # JobSet sets it
    # Pod 0 of Job 0 of the replicated Job, as JobSet names it, under the JobSet's subdomain.
    name = f"{job_set['metadata']['name']}-{replicated['name']}-0-0"
    assert env_of(pod["containers"][0])["RUNNER_RDZV_ENDPOINT"] == f"{name}.{spec['network']['subdomain']}:29400"
    assert pod["containers"][0]["args"] == ["launch", "/etc/runner/spec.toml"]


def test_render_jobset_through_the_cli_and_not_with_a_schedule(tmp_path: Path) -> None:
    args = ["render", str(JOBS / "cnn.toml"), "--set", BUCKET, "--set", "resources.nodes=2", "--image", IMAGE]
    result = runner_cli(*args, "--jobset", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [m["kind"] for m in yaml.safe_load_all(result.stdout)] == ["ConfigMap", "JobSet"]
    scheduled = runner_cli(*args, "--jobset", "--schedule", "@daily", cwd=tmp_path)
    assert scheduled.returncode == 2 and scheduled.stderr.startswith("error: --jobset: a JobSet runs once")
    assert scheduled.stderr.count("\n") == 1


# -- names Kubernetes would refuse -----------------------------------------------------------


def named(name: str, scheduled: bool):
    """cnn.toml under `name`. model_copy skips the spec's own rule (a DNS label, at most 63
    characters), so the limits beyond it can be tested too."""
    spec = load_spec(str(JOBS / "cnn.toml"), [BUCKET, *(["schedule.cron=0 3 * * *"] if scheduled else [])])
    return spec.model_copy(update={"name": name})


# (scheduled, the workload's kind, its limit, why): a CronJob only when scheduled
WORKLOADS = {
    "cronjob": (True, "CronJob", 52, "Kubernetes appends an 11-character suffix to it to name its Jobs"),
    "job": (False, "Job", 63, "Kubernetes puts it in its pods' job-name label"),
}


@pytest.mark.parametrize("workload", WORKLOADS)
def test_a_name_at_the_workloads_limit_passes_one_over_is_refused_naming_kind_limit_and_fix(workload: str) -> None:
    scheduled, kind, most, why = WORKLOADS[workload]
    at_limit = named("a" * most, scheduled)
    check_names(at_limit)
    assert [m["kind"] for m in render(at_limit, to_toml(at_limit), IMAGE)] == ["ConfigMap", kind]
    over = named("a" * (most + 1), scheduled)
    expected = (
        f"name: '{'a' * (most + 1)}' is {most + 1} characters; a {kind}'s name may have at most {most} ({why}); "
        f"shorten name to at most {most} characters"
    )
    with pytest.raises(UserError) as refused:
        check_names(over)
    assert str(refused.value) == expected
    with pytest.raises(UserError, match=re.escape(expected)):  # render (and so submit, schedule) checks too
        render(over, to_toml(over), IMAGE)


def test_the_cronjob_limit_applies_only_to_a_scheduled_spec() -> None:
    check_names(load_spec(str(JOBS / "cnn.toml"), [BUCKET, "name=" + "a" * 53]))  # a Job: 63 allowed
    with pytest.raises(UserError, match="a CronJob's name may have at most 52"):
        check_names(load_spec(str(JOBS / "cnn.toml"), [BUCKET, "name=" + "a" * 53, "schedule.cron=@daily"]))


# Every name runner derives, for each kind of workload: (where it goes, its limit). 16 nodes:
# pod hostnames end in -15 (an Indexed Job's <name>-15, a JobSet's <name>-node-0-15-xxxxx).
CONFIGS = {  # the overrides, and whether rendered as a JobSet
    "job": ([], False),
    "cronjob": (["schedule.cron=0 3 * * *"], False),
    "job-16-nodes": (["resources.nodes=16"], False),
    "cronjob-16-nodes": (["resources.nodes=16", "schedule.cron=0 3 * * *"], False),
    "jobset-16-nodes": (["resources.nodes=16"], True),
}
LABEL = "label app.kubernetes.io/instance"
DERIVED = {
    "job": {"Job": 63, LABEL: 63, "ConfigMap": 253},
    "cronjob": {"CronJob": 52, LABEL: 63, "ConfigMap": 253},
    "job-16-nodes": {"Job": 60, "Service": 63, LABEL: 63, "ConfigMap": 253},
    "cronjob-16-nodes": {"CronJob": 49, "Service": 63, LABEL: 63, "ConfigMap": 253},
    "jobset-16-nodes": {"JobSet": 47, LABEL: 63, "ConfigMap": 253},
}


def configured(name: str, config: str):
    overrides, _ = CONFIGS[config]
    return load_spec(str(JOBS / "cnn.toml"), [BUCKET, *overrides]).model_copy(update={"name": name})


@pytest.mark.parametrize(
    ("config", "kind"), [(c, k) for c, kinds in DERIVED.items() for k in kinds], ids=lambda v: v.split()[-1]
)
def test_each_derived_name_at_its_limit_passes_one_over_is_refused(config: str, kind: str) -> None:
    """Each rule on its own (one rule can hide another: a 64-character name breaks the Job's and
    the label's at once), with the name derived as runner derives it (the ConfigMap adds -spec,
    the Service -nodes)."""
    most, job_set = DERIVED[config][kind], CONFIGS[config][1]
    assert {d.kind: d.most for d in derived_names(configured("a", config), job_set)} == DERIVED[config]

    def derived(spec_name: str):
        return next(d for d in derived_names(configured(spec_name, config), job_set) if d.kind == kind)

    suffix = len(derived("").name)  # what runner adds to the spec's name there
    check_name("a" * (most - suffix), derived("a" * (most - suffix)))
    over = derived("a" * (most - suffix + 1))
    assert len(over.name) == most + 1
    with pytest.raises(UserError) as refused:
        check_name("a" * (most - suffix + 1), over)
    message = str(refused.value)
    assert f"is {most + 1} characters; " in message and f"may have at most {most} (" in message
    assert message.endswith(f"; shorten name to at most {most - suffix} characters")
    if kind in ("ConfigMap", "Service"):
        assert f"makes the {kind} name '{over.name}', which is {most + 1} characters" in message


@pytest.mark.parametrize("config", CONFIGS)
def test_a_name_at_the_tightest_limit_renders_one_over_is_told_that_limit(config: str) -> None:
    """A name too long for several rules is told the one that fixes them all (a 58-character
    name of a 2-node job fits the Job's 61 but not the Service's <name>-nodes)."""
    job_set = CONFIGS[config][1]
    tightest = min(d.most - len(d.name) for d in derived_names(configured("", config), job_set))  # "" + suffix
    at_limit = configured("a" * tightest, config)
    rendered_kinds = [m["kind"] for m in render(at_limit, to_toml(at_limit), IMAGE, job_set)]
    assert rendered_kinds[0] == "ConfigMap" and len(rendered_kinds) in (2, 3)
    for length in {tightest + 1, max(63, tightest + 1)}:  # just over; the longest a spec allows, over several
        over = configured("a" * length, config)
        with pytest.raises(UserError, match=f"; shorten name to at most {tightest} characters$"):
            render(over, to_toml(over), IMAGE, job_set)


def test_a_name_kubernetes_would_refuse_for_its_characters_is_refused() -> None:
    with pytest.raises(UserError, match=r"name: 'Nightly_cnn' is not valid as a Job's name \(Job\): use lowercase"):
        check_names(named("Nightly_cnn", scheduled=False))


def test_a_service_or_jobset_name_must_start_with_a_letter() -> None:
    """A DNS-1035 label: '1cnn' is a fine Job name, but not a Service's (2 nodes) or a JobSet's."""
    check_names(configured("1cnn", "job"))
    with pytest.raises(UserError) as refused:
        check_names(configured("1cnn", "job-16-nodes"))
    assert str(refused.value) == (
        "name: '1cnn' makes the Service name '1cnn-nodes', which is not valid as a Service's name (Service): "
        "use lowercase letters, digits and '-', starting with a letter and ending with a letter or digit"
    )
    with pytest.raises(
        UserError, match=r"^name: '1cnn' is not valid as a JobSet's name \(JobSet\): use .* with a letter"
    ):
        check_names(configured("1cnn", "jobset-16-nodes"), job_set=True)
