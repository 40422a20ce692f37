"""`runner render --serve`: the Deployment and Service that serve a job's model, valid against
the upstream schemas (strict, offline), pinned by golden files, probing the server's real
endpoints, with the Jobs' security and credentials."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runner.backends.serving import PRE_STOP_S, ServeOptions, render_serving
from runner.errors import UserError
from runner.spec import load_spec
from tests.helpers import JOBS, REPO, runner_cli
from tests.unit.test_manifests import BUCKET, GOLDEN, GPU_SPOT, IMAGE, check_golden, rendered, validate_strictly

VARIANTS = {
    "serve-cpu": [BUCKET],
    "serve-gpu-spot": [BUCKET, *GPU_SPOT, "resources.service_account=server"],
    "serve-secret": [BUCKET, "resources.gcs_secret=gcs-key"],
}


def served(overrides: list[str], options: ServeOptions = ServeOptions()) -> list[dict]:
    return render_serving(load_spec(str(JOBS / "cnn.toml"), overrides), IMAGE, options)


@pytest.mark.parametrize("variant", VARIANTS)
def test_valid_and_golden(variant: str) -> None:
    from runner.backends.manifests import to_yaml

    manifests = served(VARIANTS[variant])
    for manifest in manifests:
        validate_strictly(manifest)
    check_golden(GOLDEN / f"cnn-{variant}.yaml", to_yaml(manifests))


def routes() -> set[str]:
    """The paths the real app answers."""
    from concurrent.futures import ThreadPoolExecutor

    from runner.serve.app import create_app
    from runner.serve.models import Batching, Models

    app = create_app(Models("unused", "cpu", Batching(), ThreadPoolExecutor(1)))
    return {route.path for route in app.routes}


def test_probes_are_the_servers_endpoints_on_its_port() -> None:
    deployment, service = served([BUCKET])
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"/readyz", "/healthz", "/v1/predict", "/v1/model", "/"} <= routes()
    args = container["args"]
    assert args[:2] == ["serve", "gs://my-bucket/runs/cnn"]
    assert args[args.index("--port") + 1] == str(container["ports"][0]["containerPort"])
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"] == "http"
    # SIGTERM: the preStop sleep, then the drain, both inside the grace period.
    drain = float(args[args.index("--grace") + 1])
    assert PRE_STOP_S + drain < pod["terminationGracePeriodSeconds"]
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] == PRE_STOP_S


def test_non_root_read_only_with_requests_and_the_jobs_credentials() -> None:
    deployment, _ = served(VARIANTS["serve-secret"])
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 1000
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"}
    assert {"name": "gcs-key", "secret": {"secretName": "gcs-key"}} in pod["volumes"]
    assert {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/secrets/google/key.json"} in container["env"]
    # The same as the Job's, by construction.
    job_pod = rendered(VARIANTS["serve-secret"])[-1]["spec"]["template"]["spec"]
    assert job_pod["securityContext"] == pod["securityContext"]
    assert job_pod["containers"][0]["securityContext"] == container["securityContext"]
    spot, _ = served(VARIANTS["serve-gpu-spot"])
    assert spot["spec"]["template"]["spec"]["serviceAccountName"] == "server"
    assert spot["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_the_service_selects_the_servers_not_the_training_pods() -> None:
    deployment, service = served([BUCKET], ServeOptions(replicas=3))
    selector = service["spec"]["selector"]
    assert deployment["spec"]["replicas"] == 3
    assert (
        selector
        == deployment["spec"]["selector"]["matchLabels"]
        == deployment["spec"]["template"]["metadata"]["labels"]
    )
    training_pod = rendered([BUCKET])[-1]["spec"]["template"]["metadata"]["labels"]
    assert not set(selector.items()) <= set(training_pod.items())
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="pod's own disk"):
        served([])
    with pytest.raises(UserError, match="'x{58}-serve'.* at most 63"):
        served([BUCKET, "name=" + "x" * 58])
    served([BUCKET, "name=" + "x" * 57])
    result = runner_cli("render", "jobs/cnn.toml", "--set", BUCKET, "--serve", "--schedule", "0 3 * * *", cwd=REPO)
    assert result.returncode == 2 and "drop --schedule" in result.stderr and not result.stdout


def test_render_serve_through_the_cli() -> None:
    result = runner_cli("render", "jobs/cnn.toml", "--set", BUCKET, "--serve", "--image", IMAGE, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert list(yaml.safe_load_all(result.stdout)) == served([BUCKET])


def test_the_rendezvous_service_of_a_multi_node_job_does_not_select_the_servers() -> None:
    from tests.unit.test_manifests import TWO_NODES

    objects = rendered([BUCKET, *TWO_NODES])
    rendezvous = next(o for o in objects if o["kind"] == "Service")["spec"]["selector"]
    training_pod = objects[-1]["spec"]["template"]["metadata"]["labels"]
    serving_pod = served([BUCKET])[0]["spec"]["template"]["metadata"]["labels"]
    assert set(rendezvous.items()) <= set(training_pod.items())
    assert not set(rendezvous.items()) <= set(serving_pod.items())


def test_a_job_that_promotes_serves_its_promoted_model_and_a_scheduled_one_must() -> None:
    nightly = "schedule.cron=0 3 * * *"

    def args(*overrides: str) -> list[str]:
        return served([BUCKET, *overrides])[0]["spec"]["template"]["spec"]["containers"][0]["args"]

    run_dir = BUCKET.partition("=")[2]  # checkpoint.dir: gs://my-bucket/runs/cnn
    assert args()[:2] == ["serve", run_dir]
    assert args("promote.enabled=true")[:2] == ["serve", "gs://my-bucket/runs/promoted"]  # its prefix's
    assert args(nightly, "promote.enabled=true")[:2] == ["serve", f"{run_dir}/promoted"]  # the runs are below
    with pytest.raises(UserError, match="a scheduled job's runs each get a directory of their own"):
        served([BUCKET, nightly])
