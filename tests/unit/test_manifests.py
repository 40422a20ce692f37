"""Rendered Kubernetes objects: valid against the upstream schemas (strict, offline),
pinned by golden files, and the k8s/ folder kept in sync with `runner render`."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from runner.backends.manifests import check_name, check_names, config_map_name, derived_names, render, to_yaml
from runner.errors import UserError
from runner.spec import load_spec, to_toml
from tests.helpers import JOBS, REPO, runner_cli

GOLDEN = Path(__file__).parents[1] / "golden"  # tests/golden
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"  # regenerate golden files and k8s/ after a deliberate change
IMAGE = "us-docker.pkg.dev/my-project/ml/runner:0123456789abcdef"
BUCKET = "checkpoint.dir=gs://my-bucket/runs/cnn"
GPU_SPOT = ["resources.gpus=1", "resources.accelerator=nvidia-l4", "resources.spot=true"]

VARIANTS = {
    "job-cpu": [BUCKET],
    "job-gpu-spot": [BUCKET, *GPU_SPOT, "resources.service_account=trainer"],
    "job-gpu-secret": [BUCKET, "resources.gpus=1", "resources.gcs_secret=gcs-key"],
    "cronjob": [BUCKET, "schedule.cron=0 3 * * *"],
    "cronjob-gpu-spot": [BUCKET, *GPU_SPOT, "schedule.cron=0 3 * * *", "schedule.time_zone=Europe/Paris"],
}


def rendered(overrides: list[str]) -> list[dict]:
    spec = load_spec(str(JOBS / "cnn.toml"), overrides)
    return render(spec, to_toml(spec), IMAGE)


def check_golden(path: Path, text: str) -> None:
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.read_text() == text, f"{path} differs from what runner renders; rerun with UPDATE_GOLDEN=1 if meant"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_manifest_passes_strict_validation_against_the_upstream_schemas(variant: str) -> None:
    for manifest in rendered(VARIANTS[variant]):
        kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_golden(variant: str) -> None:
    check_golden(GOLDEN / f"cnn-{variant}.yaml", to_yaml(rendered(VARIANTS[variant])))


def pod_of(manifest: dict) -> dict:
    spec = manifest["spec"]
    return (spec["jobTemplate"]["spec"] if manifest["kind"] == "CronJob" else spec)["template"]["spec"]


def test_preemptions_are_free_bad_input_fails_fast_other_failures_count(tmp_path: Path) -> None:
    config_map, job = rendered(VARIANTS["job-gpu-spot"])
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"]["values"] == [2, 3]
    assert rules[2]["action"] == "Count"
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


# k8s/: what a user reads and applies with `kubectl apply -k k8s/`, rendered by the real CLI.
K8S = {
    "job.yaml": ["--set", BUCKET, "--image", "runner"],
    "cronjob.yaml": ["--set", BUCKET.replace("runs/cnn", "runs/cnn-nightly"), "--set", "name=cnn-nightly",
                     "--schedule", "0 3 * * *", "--image", "runner"],
}  # fmt: skip


@pytest.mark.parametrize("name", K8S)
def test_k8s_folder_is_what_runner_renders(name: str, tmp_path: Path) -> None:
    result = runner_cli("render", "jobs/cnn.toml", *K8S[name], cwd=REPO)
    assert result.returncode == 0, result.stderr
    check_golden(REPO / "k8s" / name, result.stdout)


def test_kustomization_lists_the_rendered_files() -> None:
    kustomization = yaml.safe_load((REPO / "k8s" / "kustomization.yaml").read_text())
    assert kustomization["resources"] == list(K8S)
    assert kustomization["images"][0]["name"] == "runner"


# -- the Job's podFailurePolicy ------------------------------------------------------------


def rendered_job_specs() -> list[dict[str, Any]]:
    """The Job spec of a plain Job and of a CronJob's job template, as runner renders them."""
    from runner.backends.manifests import render
    from runner.spec import load_spec, to_toml

    specs = []
    for extra in ([], ["schedule.cron=0 3 * * *"]):
        spec = load_spec(str(JOBS / "cnn.toml"), ["checkpoint.dir=gs://my-bucket/runs/cnn", *extra])
        _, workload = render(spec, to_toml(spec), IMAGE)
        specs.append(workload["spec"] if workload["kind"] == "Job" else workload["spec"]["jobTemplate"]["spec"])
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
    rule's action "Ignore" -> "Count". Both fail here. No golden file is involved, so
    UPDATE_GOLDEN=1 cannot turn this test into a self-comparison."""
    for job_spec in rendered_job_specs():
        rules = job_spec["podFailurePolicy"]["rules"]
        assert len(rules) == 3
        ignore, fail, count = rules  # the order matters: the first matching rule decides

        assert ignore["action"] == "Ignore"
        assert ignore["onPodConditions"] == [{"type": "DisruptionTarget"}]
        assert "onExitCodes" not in ignore and set(ignore) == {"action", "onPodConditions"}

        assert fail["action"] == "FailJob" and set(fail) == {"action", "onExitCodes"}
        assert fail["onExitCodes"]["containerName"] == "runner"
        assert fail["onExitCodes"]["operator"] == "In"
        assert fail["onExitCodes"]["values"] == [2, 3]  # bad input (2) and a diverged run (3): a retry repeats them
        assert 143 not in fail["onExitCodes"]["values"]

        assert count["action"] == "Count" and set(count) == {"action", "onExitCodes"}
        assert count["onExitCodes"]["containerName"] == "runner"
        assert count["onExitCodes"]["operator"] == "NotIn"
        assert count["onExitCodes"]["values"] == [0, 2, 3]

        containers = {c["name"] for c in job_spec["template"]["spec"]["containers"]}
        assert containers == {"runner"}  # the rules name the container that exists

        # What that means for each way a pod can end, rules evaluated as Kubernetes does.
        assert first_matching_action(rules, 2, set()) == "FailJob"
        assert first_matching_action(rules, 3, set()) == "FailJob"  # diverged: deterministic, a retry diverges again
        # 143 (stopped by SIGTERM, checkpoint saved): never fails the Job; a preempted pod
        # (DisruptionTarget) is free, any other SIGTERM counts as one of `retries`.
        assert first_matching_action(rules, 143, {"DisruptionTarget"}) == "Ignore"
        assert first_matching_action(rules, 143, set()) == "Count"
        assert first_matching_action(rules, 137, {"DisruptionTarget"}) == "Ignore"
        assert first_matching_action(rules, 2, {"DisruptionTarget"}) == "Ignore"  # preempted while starting
        assert first_matching_action(rules, 1, set()) == "Count"
        assert first_matching_action(rules, 137, set()) == "Count"


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


# Every name runner derives, for a Job and for a CronJob: (where it goes, its limit)
DERIVED = {
    "job": {"Job": 63, "label app.kubernetes.io/instance": 63, "ConfigMap": 253},
    "cronjob": {"CronJob": 52, "label app.kubernetes.io/instance": 63, "ConfigMap": 253},
}


@pytest.mark.parametrize(
    ("workload", "kind"), [(w, k) for w, kinds in DERIVED.items() for k in kinds], ids=lambda v: v.split()[-1]
)
def test_each_derived_name_at_its_limit_passes_one_over_is_refused(workload: str, kind: str) -> None:
    """Each rule on its own (one rule can hide another: a 64-character name breaks the Job's and
    the label's at once), with the name derived as runner derives it (the ConfigMap adds -spec)."""
    scheduled, most = WORKLOADS[workload][0], DERIVED[workload][kind]
    assert {d.kind: d.most for d in derived_names(named("a", scheduled))} == DERIVED[workload]
    suffix = len(config_map_name(named("", scheduled))) if kind == "ConfigMap" else 0

    def derived(spec_name: str):
        return next(d for d in derived_names(named(spec_name, scheduled)) if d.kind == kind)

    check_name("a" * (most - suffix), derived("a" * (most - suffix)))
    over = derived("a" * (most - suffix + 1))
    assert len(over.name) == most + 1
    with pytest.raises(UserError) as refused:
        check_name("a" * (most - suffix + 1), over)
    message = str(refused.value)
    assert f"is {most + 1} characters; " in message and f"may have at most {most} (" in message
    assert message.endswith(f"; shorten name to at most {most - suffix} characters")
    if kind == "ConfigMap":
        assert f"makes the ConfigMap name '{'a' * (most - suffix + 1)}-spec', which is 254 characters" in message


def test_a_name_kubernetes_would_refuse_for_its_characters_is_refused() -> None:
    with pytest.raises(UserError, match=r"name: 'Nightly_cnn' is not valid as a Job's name \(Job\): use lowercase"):
        check_names(named("Nightly_cnn", scheduled=False))
