"""A spec with the user's own model: `runner build` bakes its code into the image, the
rendered Job's container trains it, and `runner eval` / `predict` in the image use it."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import numpy as np
import pytest
from filelock import FileLock
from PIL import Image

from tests.e2e.test_user_model import NETS
from tests.helpers import JOBS
from tests.image.conftest import Cluster, build

pytestmark = pytest.mark.usefixtures("engine")

SETS = ["--set=device=cpu", "--set=threads=1", "--set=epochs=1", "--set=resources.gpus=0"]


def test_a_user_model_is_built_into_the_image_trained_by_the_job_and_used_by_eval_and_predict(
    base_image: str, build_lock: FileLock, bucket: str, cluster: Cluster, tmp_path: Path
) -> None:
    (project := tmp_path / "project").mkdir()
    (project / "mynets.py").write_text(NETS)
    spec = project / "job.toml"
    spec.write_text(
        (JOBS / "digits.toml")
        .read_text()
        .replace('model = "cnn"', 'model = "mynets:small"\ncode = ["mynets.py"]\nmodel_options = {hidden = 16}')
    )
    image = build(spec, base_image, build_lock)
    run_dir = f"{bucket}/runs/mine"
    trained = cluster.job(spec, SETS, image, run_dir).run()
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "mynets:small" in trained.stdout

    evaluated = cluster.job(spec, SETS, image, run_dir, args=["eval", run_dir, "--json"]).run()
    assert evaluated.returncode == 0, evaluated.stderr
    with fsspec.open(f"{run_dir}/metrics.jsonl", "rt") as f:
        test_acc = json.loads(f.read().splitlines()[-1])["test_acc"]
    assert json.loads(evaluated.stdout)["accuracy"] == test_acc  # the run's own test split, the same weights

    (pictures := tmp_path / "pictures").mkdir()
    seven = np.zeros((28, 28), np.uint8)
    seven[6:9, 6:22], seven[9:22, 17:20] = 255, 255  # a bar and a stroke down: a 7, light on dark
    Image.fromarray(seven).save(pictures / "seven.png")
    args = ["predict", run_dir, "/data/seven.png", "--json"]
    predicted = cluster.job(spec, SETS, image, run_dir, args=args, mounts={pictures: "/data"}).run()
    assert predicted.returncode == 0, predicted.stderr
    (prediction,) = json.loads(predicted.stdout)["predictions"]
    assert len(prediction["top"]) == 3
