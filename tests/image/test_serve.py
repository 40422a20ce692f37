"""The serve Deployment's container, run as its pod runs: ready on its probe, answering a
prediction for a run in a bucket, drained by `docker stop` inside its grace period."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers import JOBS, REPO, Process, runner_cli
from tests.image.conftest import Cluster, render

pytestmark = pytest.mark.usefixtures("engine")


def wait_ready(url: str, container: Process, timeout: float = 180) -> float:
    """Seconds until `url` answers 200, as a readiness probe would see it."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        assert container.proc.poll() is None, f"the container ended ({container.proc.returncode}):\n{container.out}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{url} was not ready in {timeout} s:\n{container.out}")


def test_the_serve_container_becomes_ready_answers_and_drains_on_stop(
    image: str, bucket: str, cluster: Cluster, tmp_path: Path
) -> None:
    run_dir = f"{bucket}/runs/digits"
    trained = runner_cli(
        "run", str(JOBS / "digits.toml"), "--set=device=cpu", "--set=threads=1", "--set=epochs=1",
        f"--set=checkpoint.dir={run_dir}", "--quiet", cwd=REPO,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    manifests = render(JOBS / "digits.toml", "--serve", f"--set=checkpoint.dir={run_dir}", f"--image={image}")
    server = cluster.pod(manifests, "Deployment", image, downward={})
    running = server.start()
    wait_ready(server.probes["readinessProbe"], running)
    assert httpx.get(server.probes["livenessProbe"], timeout=5).status_code == 200

    png = io.BytesIO()
    Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(png, format="PNG")
    url = server.probes["readinessProbe"].rsplit("/", 1)[0] + "/v1/predict"
    answer = httpx.post(url, content=png.getvalue(), headers={"Content-Type": "image/png"}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["run"] and len(answer.json()["predictions"][0]["top"]) == 3
    base = url.removesuffix("/v1/predict")
    docs = httpx.get(f"{base}/docs", timeout=10)  # the API's page, its scripts from the image itself
    assert docs.status_code == 200 and httpx.get(f"{base}/static-offline-docs/swagger-ui-bundle.js").status_code == 200

    start = time.monotonic()
    server.stop()
    took = time.monotonic() - start
    code = running.finish(30)
    assert code == 143 and took < server.grace_seconds - 1, (code, took, running.out)  # PID 1 exited 0
    assert "Shutting down" in running.out
