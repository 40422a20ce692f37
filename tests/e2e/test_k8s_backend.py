"""The k8s backend over real HTTP against a Kubernetes API emulator, with the official
client: submit, schedule, status, logs, cancel — in-process and through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubernetes import client

from runner.backends.api import Submission
from runner.backends.k8s import K8sBackend
from runner.backends.manifests import render
from runner.errors import RunFailed, UserError
from runner.spec import load_spec, to_toml
from tests.helpers import JOBS, runner_cli
from tests.k8s_emulator import K8sEmulatorHandle

NS = "default"
IMAGE = "us-docker.pkg.dev/p/ml/runner:0123456789abcdef"
BUCKET = "checkpoint.dir=gs://my-bucket/runs/cnn"
TEXT = {"Content-Type": "text/plain; charset=utf-8"}


def cnn(*overrides: str):
    return load_spec(str(JOBS / "cnn.toml"), [BUCKET, *overrides])


def submission(spec) -> Submission:
    return Submission(str(JOBS / "cnn.toml"), (), spec, image=IMAGE)


@pytest.fixture
def backend(k8s_emulator: K8sEmulatorHandle) -> K8sBackend:
    return K8sBackend(k8s_emulator.api_client(), NS)


def stored(k8s: K8sEmulatorHandle, resource: str, name: str) -> dict:
    return dict(k8s.kmock.objects[resource, NS, name])


def test_submit_creates_exactly_the_rendered_objects(k8s_emulator: K8sEmulatorHandle, backend: K8sBackend) -> None:
    spec = cnn("resources.gpus=1", "resources.spot=true")
    assert backend.submit(submission(spec)) == 0
    config_map, job = render(spec, to_toml(spec), IMAGE)
    assert stored(k8s_emulator, "v1/configmaps", "cnn-spec")["data"] == config_map["data"]
    created = stored(k8s_emulator, "batch/v1/jobs", "cnn")
    assert created["spec"] == job["spec"]


def test_a_second_submit_is_a_clear_conflict_and_leaves_no_debris(
    k8s_emulator: K8sEmulatorHandle, backend: K8sBackend
) -> None:
    spec = cnn()
    batch = client.BatchV1Api(k8s_emulator.api_client())
    batch.create_namespaced_job(NS, render(spec, to_toml(spec), IMAGE)[1])  # a Job of that name already runs
    with pytest.raises(UserError, match="a Job named 'cnn' already exists in namespace default; cancel it first"):
        backend.submit(submission(spec))
    core = client.CoreV1Api(k8s_emulator.api_client())
    assert [c.metadata.name for c in core.list_namespaced_config_map(NS).items] == []  # rolled back


def test_schedule_creates_a_cronjob(k8s_emulator: K8sEmulatorHandle, backend: K8sBackend) -> None:
    spec = cnn("schedule.cron=0 3 * * *")
    backend.submit(submission(spec))
    cron = stored(k8s_emulator, "batch/v1/cronjobs", "cnn")
    assert cron["spec"]["schedule"] == "0 3 * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"


def plant_pod(k8s: K8sEmulatorHandle, name: str, job: str, phase: str, created: str) -> None:
    core = client.CoreV1Api(k8s.api_client())
    core.create_namespaced_pod(
        NS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"job-name": job}, "creationTimestamp": created},
            "spec": {"containers": [{"name": "runner", "image": IMAGE}]},
            "status": {"phase": phase},
        },
    )


def test_status_follows_the_job_and_its_pods(k8s_emulator: K8sEmulatorHandle, backend: K8sBackend) -> None:
    spec = cnn()
    backend.submit(submission(spec))
    assert backend.status("cnn")["state"] == "pending"
    batch = client.BatchV1Api(k8s_emulator.api_client())
    batch.patch_namespaced_job_status("cnn", NS, {"status": {"active": 1}})
    plant_pod(k8s_emulator, "cnn-a", "cnn", "Failed", "2026-11-22T10:00:00Z")  # preempted attempt
    plant_pod(k8s_emulator, "cnn-b", "cnn", "Running", "2026-11-22T10:05:00Z")
    plant_pod(k8s_emulator, "other-x", "other", "Running", "2026-11-22T10:05:00Z")
    info = backend.status("cnn")
    assert info["state"] == "running" and info["active"] == 1
    assert info["pods"] == [{"name": "cnn-b", "phase": "Running"}, {"name": "cnn-a", "phase": "Failed"}]
    batch.patch_namespaced_job_status(
        "cnn", NS, {"status": {"active": None, "succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
    )
    assert backend.status("cnn")["state"] == "done"
    with pytest.raises(UserError, match="no job named 'nope'"):
        backend.status("nope")


def test_logs_of_the_newest_pod_plain_and_followed(k8s_emulator: K8sEmulatorHandle, backend: K8sBackend) -> None:
    spec = cnn()
    backend.submit(submission(spec))
    plant_pod(k8s_emulator, "cnn-a", "cnn", "Failed", "2026-11-22T10:00:00Z")
    plant_pod(k8s_emulator, "cnn-b", "cnn", "Running", "2026-11-22T10:05:00Z")
    km = k8s_emulator.kmock
    path = f"/api/v1/namespaces/{NS}/pods/cnn-b/log"

    async def stream():
        for i in (1, 2):
            yield f"epoch {i}/2\n".encode()

    km["get", path, km.params({"follow": "true"})] << km.headers(TEXT) << stream
    km["get", path] << km.headers(TEXT) << b"epoch 1/2\nresumed from step 40\n"
    assert list(backend.logs("cnn")) == ["epoch 1/2", "resumed from step 40"]
    assert list(backend.logs("cnn", follow=True)) == ["epoch 1/2", "epoch 2/2"]


def test_cancel_deletes_the_job_and_its_spec(k8s_emulator: K8sEmulatorHandle, backend: K8sBackend) -> None:
    spec = cnn()
    backend.submit(submission(spec))
    assert backend.cancel("cnn").startswith("cancelled cnn in namespace default")
    api = k8s_emulator.api_client()
    assert client.BatchV1Api(api).list_namespaced_job(NS).items == []
    assert client.CoreV1Api(api).list_namespaced_config_map(NS).items == []
    with pytest.raises(UserError, match="no job or cronjob named 'cnn'"):
        backend.cancel("cnn")


TWO_NODES = ("resources.nodes=2", "resources.gpus=8")


def names(k8s: K8sEmulatorHandle) -> dict[str, list[str]]:
    """What the cluster holds of ours: ConfigMaps, Services and Jobs, by name."""
    api = k8s.api_client()
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    return {
        "configmaps": [c.metadata.name for c in core.list_namespaced_config_map(NS).items],
        "services": [s.metadata.name for s in core.list_namespaced_service(NS).items],
        "jobs": [j.metadata.name for j in batch.list_namespaced_job(NS).items],
    }


def test_a_two_node_job_is_its_spec_a_headless_service_and_an_indexed_job_and_cancel_removes_all(
    k8s_emulator: K8sEmulatorHandle, backend: K8sBackend
) -> None:
    spec = cnn(*TWO_NODES)
    assert backend.submit(submission(spec)) == 0
    assert names(k8s_emulator) == {"configmaps": ["cnn-spec"], "services": ["cnn-nodes"], "jobs": ["cnn"]}
    _, service, job = render(spec, to_toml(spec), IMAGE)
    assert stored(k8s_emulator, "v1/services", "cnn-nodes")["spec"] == service["spec"]
    created = stored(k8s_emulator, "batch/v1/jobs", "cnn")["spec"]
    assert created == job["spec"] and created["completionMode"] == "Indexed"
    assert backend.cancel("cnn").startswith("cancelled cnn")
    assert names(k8s_emulator) == {"configmaps": [], "services": [], "jobs": []}


def test_a_refused_indexed_job_leaves_neither_its_spec_nor_its_service(
    k8s_emulator: K8sEmulatorHandle, backend: K8sBackend
) -> None:
    refuse(k8s_emulator, "jobs", 422, "Invalid", 'Job.batch "cnn" is invalid')
    with pytest.raises(UserError, match="the cluster refused the Job 'cnn'"):
        backend.submit(submission(cnn(*TWO_NODES)))
    left = names(k8s_emulator)  # (the emulator keeps even a Job it answered 422 to: not runner's to delete)
    assert (left["configmaps"], left["services"]) == ([], [])  # rolled back, newest first


def test_a_single_node_job_has_no_service_and_cancel_does_not_need_one(
    k8s_emulator: K8sEmulatorHandle, backend: K8sBackend
) -> None:
    backend.submit(submission(cnn("resources.gpus=8")))  # 8 processes, one pod
    assert names(k8s_emulator) == {"configmaps": ["cnn-spec"], "services": [], "jobs": ["cnn"]}
    backend.cancel("cnn")
    assert names(k8s_emulator) == {"configmaps": [], "services": [], "jobs": []}


def test_validate_refuses_a_name_too_long_for_the_service_of_a_two_node_job(tmp_path: Path) -> None:
    name = "a" * 58  # a Job may have 61 with 2 nodes; the Service <name>-nodes only 63
    result = runner_cli("validate", str(JOBS / "cnn.toml"), "--set", f"name={name}", "--set", "resources.nodes=2",
                        cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and one_line(result.stderr) == (
        f"error: name: '{name}' makes the Service name '{name}-nodes', which is 64 characters; a Service's name "
        "may have at most 63 (a DNS-1035 label); shorten name to at most 57 characters"
    )


def kubeconfig(tmp_path: Path, url: str) -> dict[str, str]:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
        "current-context": "emulator",
    }
    (tmp_path / "kubeconfig").write_text(json.dumps(config))
    return {"KUBECONFIG": str(tmp_path / "kubeconfig")}


def test_the_cli_end_to_end(k8s_emulator: K8sEmulatorHandle, tmp_path: Path) -> None:
    env = kubeconfig(tmp_path, k8s_emulator.url)
    spec = str(JOBS / "cnn.toml")
    submitted = runner_cli("submit", spec, "--backend", "k8s", "--set", BUCKET, "--image", IMAGE, cwd=tmp_path, env=env)
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.startswith("submitted job cnn to namespace default")
    again = runner_cli("submit", spec, "--backend", "k8s", "--set", BUCKET, "--image", IMAGE, cwd=tmp_path, env=env)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    status = runner_cli("status", "cnn", "--backend", "k8s", "--json", cwd=tmp_path, env=env)
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "pending"
    scheduled = runner_cli("schedule", spec, "--cron", "0 3 * * *", "--set", BUCKET, "--set", "name=cnn-nightly",
                           "--image", IMAGE, cwd=tmp_path, env=env)  # fmt: skip
    assert scheduled.returncode == 0 and "submitted cronjob cnn-nightly" in scheduled.stdout
    for name in ("cnn", "cnn-nightly"):
        cancelled = runner_cli("cancel", name, "--backend", "k8s", cwd=tmp_path, env=env)
        assert cancelled.returncode == 0 and cancelled.stdout.startswith(f"cancelled {name}"), cancelled.stderr
    api = k8s_emulator.api_client()
    assert client.BatchV1Api(api).list_namespaced_job(NS).items == []
    assert client.BatchV1Api(api).list_namespaced_cron_job(NS).items == []
    assert client.CoreV1Api(api).list_namespaced_config_map(NS).items == []


def test_no_cluster_configured_is_a_clear_error(tmp_path: Path) -> None:
    result = runner_cli("status", "cnn", "--backend", "k8s", cwd=tmp_path, env={"KUBECONFIG": str(tmp_path / "none")})
    assert result.returncode == 2 and result.stderr.startswith("error: no Kubernetes cluster configured")


# -- names and objects the API server refuses ----------------------------------------------

LONG = "a" * 53  # a valid DNS label, but one over a CronJob's 52


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    return stderr.rstrip("\n")


def test_validate_refuses_a_name_too_long_for_the_cronjob_it_would_create(tmp_path: Path) -> None:
    spec = str(JOBS / "cnn.toml")
    scheduled = runner_cli("validate", spec, "--set", f"name={LONG}", "--set", "schedule.cron=0 3 * * *", cwd=tmp_path)
    assert scheduled.returncode == 2 and scheduled.stdout == ""
    assert one_line(scheduled.stderr) == (
        f"error: name: '{LONG}' is 53 characters; a CronJob's name may have at most 52 (Kubernetes appends "
        "an 11-character suffix to it to name its Jobs); shorten name to at most 52 characters"
    )
    unscheduled = runner_cli("validate", spec, "--set", f"name={LONG}", cwd=tmp_path)  # a Job: 63 allowed
    assert unscheduled.returncode == 0 and unscheduled.stdout.startswith("ok: "), unscheduled.stderr


def test_schedule_refuses_the_name_before_anything_is_sent(k8s_emulator: K8sEmulatorHandle, tmp_path: Path) -> None:
    env = kubeconfig(tmp_path, k8s_emulator.url)
    result = runner_cli("schedule", str(JOBS / "cnn.toml"), "--cron", "0 3 * * *", "--set", BUCKET,
                        "--set", f"name={LONG}", "--image", IMAGE, cwd=tmp_path, env=env)  # fmt: skip
    assert result.returncode == 2
    assert one_line(result.stderr).startswith(f"error: name: '{LONG}' is 53 characters; a CronJob's name")
    assert list(k8s_emulator.kmock.objects) == []  # nothing was created


# What a real API server answers a CronJob whose time zone it does not know (runner does not
# check time zones; the server does), and a user without the right to create Jobs.
TIME_ZONE = "Mars/Olympus"
INVALID = 'CronJob.batch "cnn" is invalid: spec.timeZone: Invalid value: "Mars/Olympus": unknown time zone Mars/Olympus'
FORBIDDEN = 'jobs.batch is forbidden: User "tester" cannot create resource "jobs" in API group "batch" in the namespace "default"'


def refuse(k8s: K8sEmulatorHandle, resource: str, code: int, reason: str, message: str) -> None:
    """The emulator answers every create of `resource` with `code` and a Kubernetes Status body."""
    status = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
              "message": message, "reason": reason, "code": code}  # fmt: skip
    k8s.kmock["post", f"/apis/batch/v1/namespaces/{NS}/{resource}"] << code << status


def test_an_invalid_object_is_refused_with_the_apis_reason_and_leaves_no_debris(
    k8s_emulator: K8sEmulatorHandle, backend: K8sBackend
) -> None:
    refuse(k8s_emulator, "cronjobs", 422, "Invalid", INVALID)
    with pytest.raises(UserError) as refused:
        backend.submit(submission(cnn("schedule.cron=0 3 * * *", f"schedule.time_zone={TIME_ZONE}")))
    assert str(refused.value) == (
        f"the cluster refused the CronJob 'cnn' (422 Unprocessable Entity: {INVALID}); fix the spec and submit again"
    )
    core = client.CoreV1Api(k8s_emulator.api_client())
    assert core.list_namespaced_config_map(NS).items == []  # its ConfigMap rolled back


def test_another_refusal_is_a_failure_with_the_apis_reason(
    k8s_emulator: K8sEmulatorHandle, backend: K8sBackend
) -> None:
    refuse(k8s_emulator, "jobs", 403, "Forbidden", FORBIDDEN)
    with pytest.raises(RunFailed) as failed:
        backend.submit(submission(cnn()))
    assert str(failed.value) == f"creating Job cnn failed: 403 Forbidden: {FORBIDDEN}"


REFUSALS = {  # resource, code, reason, message, the command's extra arguments, its exit code and its line
    "invalid": ("cronjobs", 422, "Invalid", INVALID, ["schedule", "--cron", "0 3 * * *", "--set",
                f"schedule.time_zone={TIME_ZONE}"], 2, f"error: the cluster refused the CronJob 'cnn' "
                f"(422 Unprocessable Entity: {INVALID}); fix the spec and submit again"),
    "forbidden": ("jobs", 403, "Forbidden", FORBIDDEN, ["submit", "--backend", "k8s"], 1,
                  f"failed: creating Job cnn failed: 403 Forbidden: {FORBIDDEN}"),
}  # fmt: skip


@pytest.mark.parametrize("refusal", REFUSALS)
def test_the_cli_shows_the_apis_reason_on_one_line(
    refusal: str, k8s_emulator: K8sEmulatorHandle, tmp_path: Path
) -> None:
    resource, code, reason, message, args, exit_code, line = REFUSALS[refusal]
    refuse(k8s_emulator, resource, code, reason, message)
    command, *rest = args
    result = runner_cli(command, str(JOBS / "cnn.toml"), *rest, "--set", BUCKET, "--image", IMAGE,
                        cwd=tmp_path, env=kubeconfig(tmp_path, k8s_emulator.url))  # fmt: skip
    assert result.returncode == exit_code and one_line(result.stderr) == line
