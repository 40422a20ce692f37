"""`runner serve` as a real uvicorn process on loopback, serving a digits run trained by the
real CLI (`trained_runs`): answers over HTTP equal `runner predict`'s, batches equal one
request per image, bad input of every kind is a 4xx with a JSON error and the server goes
on answering, a reload under a steady stream of requests loses none, SIGTERM drains."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import signal
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.e2e.serving import Server
from tests.helpers import runner_cli, upload


def digit_files(folder: Path, n: int) -> list[Path]:
    """Test digits as files: PNG light on dark like the data, and JPEG ink on paper, larger."""
    from runner.data.datasets import load_dataset

    x = load_dataset("digits", "data", False, 0.1, 0).test.x[:n, 0].numpy()
    folder.mkdir(exist_ok=True)
    paths = []
    for i, digit in enumerate(x):
        if i % 2:
            paths.append(folder / f"paper-{i}.jpg")
            Image.fromarray(255 - digit).resize((84, 84), Image.Resampling.BILINEAR).convert("RGB").save(paths[-1])
        else:
            paths.append(folder / f"digit-{i}.png")
            Image.fromarray(digit).save(paths[-1])
    return paths


def bomb_png(width: int, height: int) -> bytes:
    """A PNG of a few bytes whose header declares width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def complete_png(width: int, height: int) -> bytes:
    """A whole, valid 1-bit PNG of width x height (12 KB at 5000x5000): it decodes, so only the
    pixel limit refuses it (bomb_png's data is cut short, so decoding it fails anyway)."""
    buffer = io.BytesIO()
    Image.new("1", (width, height), 1).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served(trained_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cwd = tmp_path_factory.mktemp("serve")
    server = Server(trained_runs["finished"], "--watch", "0", cwd=cwd)
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return digit_files(tmp_path_factory.mktemp("digits"), 8)


def post(server: Server, content: bytes, content_type: str, query: str = "") -> httpx.Response:
    return httpx.post(f"{server.url}/v1/predict{query}", content=content, headers={"Content-Type": content_type})


def test_answers_equal_runner_predicts_and_batches_equal_one_by_one(
    served: Server, files: list[Path], trained_runs: dict[str, Path], tmp_path: Path
) -> None:
    cli = runner_cli("predict", str(trained_runs["finished"]), *map(str, files), "--top", "10", "--json", cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(cli.stdout)
    # One multipart request of every file: one forward pass of the same batch, so the very same numbers.
    upload = [("file", (p.name, p.read_bytes(), "application/octet-stream")) for p in files]
    batch = httpx.post(f"{served.url}/v1/predict?top=10", files=upload).json()
    assert batch["weights"] == expected["weights"] and batch["run"] == str(trained_runs["finished"])
    assert batch["step"] == 41
    names = [Path(p["image"]).name for p in expected["predictions"]]
    assert [p["image"] for p in batch["predictions"]] == names
    assert [{**p, "image": n} for p, n in zip(expected["predictions"], names, strict=True)] == batch["predictions"]
    # The same as JSON of base64 images; and one request per image, raw bytes: the same classes
    # in the same order, probabilities equal to float32 rounding (a batch of 1 sums in another order).
    b64 = {"images": [base64.b64encode(p.read_bytes()).decode() for p in files]}
    as_json = httpx.post(f"{served.url}/v1/predict?top=10", json=b64).json()["predictions"]
    assert [p["top"] for p in as_json] == [p["top"] for p in batch["predictions"]]
    for path, whole in zip(files, batch["predictions"], strict=True):
        one = post(served, path.read_bytes(), "image/png" if path.suffix == ".png" else "image/jpeg", "?top=10")
        (single,) = one.json()["predictions"]
        assert single["inverted"] == whole["inverted"] == path.name.startswith("paper")
        assert [t["class"] for t in single["top"]] == [t["class"] for t in whole["top"]]
        assert [t["probability"] for t in single["top"]] == pytest.approx(
            [t["probability"] for t in whole["top"]], abs=1e-5
        )


def test_pixels_at_the_input_shape_and_concurrent_requests_batched(served: Server, files: list[Path]) -> None:
    from runner.data.datasets import load_dataset

    x = load_dataset("digits", "data", False, 0.1, 0).test.x[:8].numpy()
    grey = [p for p in files if p.suffix == ".png"]  # light on dark, at the model's size: exactly the data
    by_pixels = httpx.post(f"{served.url}/v1/predict", json={"pixels": [x[i].tolist() for i in range(0, 8, 2)]})
    by_2d = httpx.post(f"{served.url}/v1/predict", json={"pixels": [x[i, 0].tolist() for i in range(0, 8, 2)]})
    by_file = [post(served, p.read_bytes(), "image/png").json()["predictions"][0]["top"] for p in grey]
    assert [p["top"] for p in by_pixels.json()["predictions"]] == [p["top"] for p in by_2d.json()["predictions"]]
    for a, b in zip(by_pixels.json()["predictions"], by_file, strict=True):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b]

    async def many() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served.url) as client:
            body = grey[0].read_bytes()
            return await asyncio.gather(
                *(client.post("/v1/predict", content=body, headers={"Content-Type": "image/png"}) for _ in range(64))
            )

    before = httpx.get(f"{served.url}/v1/model").json()["served"]
    answers = asyncio.run(many())
    assert {r.status_code for r in answers} == {200}
    assert len({json.dumps(r.json()["predictions"][0]["top"]) for r in answers}) <= 2  # rounding, batch by batch
    after = httpx.get(f"{served.url}/v1/model").json()["served"]
    assert after["images"] - before["images"] == 64
    assert after["batches"] - before["batches"] < 64  # concurrent requests shared forward passes


def test_a_16_bit_png_is_answered_as_its_8_bit_twin_by_serve_and_predict(
    served: Server, files: list[Path], trained_runs: dict[str, Path], tmp_path: Path
) -> None:
    """16-bit grey (257 x each value) was clipped to mostly white by Pillow's convert("L")."""
    import numpy as np

    eight = np.asarray(Image.open(files[0]).convert("L"))
    deep = tmp_path / "deep.png"
    Image.fromarray(eight.astype(np.uint16) * 257).save(deep)
    assert Image.open(deep).mode == "I;16"
    twin, sixteen = (post(served, path.read_bytes(), "image/png", "?top=10").json() for path in (files[0], deep))
    assert sixteen["predictions"][0]["top"] == twin["predictions"][0]["top"]
    cli = runner_cli("predict", str(trained_runs["finished"]), str(deep), "--top", "10", "--json", cwd=tmp_path)
    assert cli.returncode == 0 and json.loads(cli.stdout)["predictions"][0]["top"] == twin["predictions"][0]["top"]


def test_model_health_readiness_and_page(served: Server, trained_runs: dict[str, Path]) -> None:
    model = httpx.get(f"{served.url}/v1/model").json()
    metrics = [json.loads(line) for line in (trained_runs["finished"] / "metrics.jsonl").read_text().splitlines()]
    assert model["classes"] == [str(d) for d in range(10)] and model["input_shape"] == [1, 28, 28]
    assert model["test_acc"] == metrics[-1]["test_acc"] and model["step"] == 41
    assert model["trained_at"].endswith("+00:00") and model["model"] == "cnn" and model["dataset"] == "digits"
    assert httpx.get(f"{served.url}/healthz").json() == {"status": "alive"}
    assert httpx.get(f"{served.url}/readyz").json()["status"] == "ready"
    page = httpx.get(f"{served.url}/")
    assert page.headers["content-type"].startswith("text/html") and "<canvas" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN


BAD = {
    "empty body": (b"", "image/png", "", 400, "empty body"),
    "not an image": (b"hello, world", "image/png", "", 400, "not an image"),
    "truncated png": (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0", "image/png", "", 400, "cannot use it"),
    "unsupported type": (b"1,2,3", "text/csv", "", 415, "text/csv is not supported"),
    "no content type": (b"abc", "", "", 415, "(none) is not supported"),
    "invalid json": (b"{images: [", "application/json", "", 400, "not valid JSON"),
    "json without images": (b'{"image": "x"}', "application/json", "", 422, 'one of "images"'),
    "empty image list": (b'{"images": []}', "application/json", "", 422, "non-empty list"),
    "not base64": (b'{"images": ["%%%"]}', "application/json", "", 400, "images[0]: not base64"),
    "base64 of text": (b'{"images": ["aGVsbG8="]}', "application/json", "", 400, "images[0]: cannot use it"),
    "wrong shape": (b'{"pixels": [[[0, 1], [2, 3]]]}', "application/json", "", 422, "shape 1x2x2"),
    "ragged pixels": (b'{"pixels": [[[0, 1], [2]]]}', "application/json", "", 422, "not a rectangular array"),
    "pixels out of range": (json.dumps({"pixels": [[[300] * 28] * 28]}).encode(), "application/json", "", 422, "0..255"),
    "huge dimensions": (bomb_png(5000, 5000), "image/png", "", 413, "5000x5000 pixels, more than the 16,777,216"),
    "complete png over the limit": (complete_png(5000, 5000), "image/png", "", 413, "5000x5000 pixels, more than"),
    "decompression bomb": (bomb_png(50_000, 50_000), "image/png", "", 413, "could be decompression bomb"),
    "body too large": (b"\0" * (5 * 1024 * 1024), "image/png", "", 413, "more than the 4,194,304 bytes"),
    "too many images": (json.dumps({"images": ["aGVsbG8="] * 65}).encode(), "application/json", "", 413, "65 images"),
    "top 0": (b"x", "image/png", "?top=0", 422, "top: "),
    "bad invert": (b"x", "image/png", "?invert=maybe", 422, "invert: "),
    "multipart without a file": (b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--b--\r\n",
                                 "multipart/form-data; boundary=b", "", 400, "without a file"),
}  # fmt: skip


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_is_a_4xx_with_a_json_error_and_the_server_goes_on(
    served: Server, files: list[Path], kind: str
) -> None:
    content, content_type, query, status, message = BAD[kind]
    headers = {"Content-Type": content_type} if content_type else {}
    answer = httpx.post(f"{served.url}/v1/predict{query}", content=content, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json" and message in answer.json()["error"]
    assert post(served, files[0].read_bytes(), "image/png").status_code == 200
    assert not [line for line in served.log if "Traceback" in line or "500" in line]


def test_wrong_method_and_path(served: Server) -> None:
    assert httpx.get(f"{served.url}/v1/predict").json() == {"error": "Method Not Allowed"}
    assert httpx.get(f"{served.url}/v2/predict").status_code == 404


# -- reload and drain: servers of their own ----------------------------------------------------------


def install(src: Path, dst: Path) -> None:
    """Replace dst's metrics and final weights with src's, each file by an atomic rename."""
    for name in ("metrics.jsonl", "final/model.safetensors"):
        shutil.copyfile(src / name, dst / f"{name}.new")
        (dst / f"{name}.new").replace(dst / name)


def test_reload_under_a_steady_stream_loses_no_request_and_switches_models(
    trained_runs: dict[str, Path], files: list[Path], tmp_path: Path
) -> None:
    run = tmp_path / "served"
    shutil.copytree(trained_runs["finished"], run)
    server = Server(run, "--watch", "0.2", cwd=tmp_path)
    try:
        server.wait_ready()
        body = files[0].read_bytes()

        async def stream(stop_after_switch: float) -> list[tuple[int, int | None]]:
            """(status, step) of every answer, from 8 clients, until `stop_after_switch` seconds
            after the first answer from the new model."""
            seen: list[tuple[int, int | None]] = []
            switched: list[float] = []
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

                async def client_loop() -> None:
                    while not switched or time.monotonic() < switched[0] + stop_after_switch:
                        r = await client.post("/v1/predict", content=body, headers={"Content-Type": "image/png"})
                        step = r.json().get("step") if r.status_code == 200 else None
                        seen.append((r.status_code, step))
                        if step == 82 and not switched:
                            switched.append(time.monotonic())
                        assert len(seen) < 20000, "the new model never answered"

                async def swap() -> None:
                    await asyncio.sleep(0.5)
                    await asyncio.to_thread(install, trained_runs["resumed"], run)

                await asyncio.gather(swap(), *(client_loop() for _ in range(8)))
            return seen

        seen = asyncio.run(stream(0.5))
        assert {status for status, _ in seen} == {200}, seen
        steps = [step for _, step in seen]
        assert steps[0] == 41 and steps[-1] == 82 and 41 in steps and 82 in steps
        new = post(server, body, "image/png", "?top=10").json()
        resumed = runner_cli(
            "predict", str(trained_runs["resumed"]), str(files[0]), "--top", "10", "--json", cwd=tmp_path
        )
        assert [t["class"] for t in new["predictions"][0]["top"]] == [
            t["class"] for t in json.loads(resumed.stdout)["predictions"][0]["top"]
        ]
        model = httpx.get(f"{server.url}/v1/model").json()
        assert model["reloads"] == 1 and model["step"] == 82
        # SIGHUP reloads even unchanged weights; the server goes on answering.
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/v1/model").json()["reloads"] < 2:
            assert time.monotonic() < deadline, "\n".join(server.log)
            time.sleep(0.05)
        assert post(server, body, "image/png").status_code == 200
        # Weights that do not load: said in the log and in /v1/model; the old model goes on.
        (run / "final" / "broken").write_bytes(b"not safetensors")
        (run / "final" / "broken").replace(run / "final" / "model.safetensors")
        while not (model := httpx.get(f"{server.url}/v1/model").json())["last_reload_error"]:
            assert time.monotonic() < deadline + 30, "\n".join(server.log)
            time.sleep(0.05)
        answer = post(server, body, "image/png")
        assert answer.status_code == 200 and answer.json()["step"] == 82 and model["reloads"] == 2
        assert any("reload of" in line and "still serving the previous model" in line for line in server.log)
    finally:
        server.stop()


def test_a_full_queue_answers_503_with_retry_after_then_sigterm_drains_a_request_in_flight(
    trained_runs: dict[str, Path], files: list[Path], tmp_path: Path
) -> None:
    server = Server(trained_runs["finished"], "--watch", "0", "--max-batch", "1", "--max-queue", "1", cwd=tmp_path)
    server.wait_ready()
    body = files[0].read_bytes()

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/v1/predict", content=body, headers={"Content-Type": "image/png"}) for _ in range(64))
            )

    answers = asyncio.run(burst())
    refused = [r for r in answers if r.status_code == 503]
    assert refused and {r.status_code for r in answers} == {200, 503}
    assert all(r.headers["retry-after"] == "1" and "overloaded" in r.json()["error"] for r in refused)

    def slowly() -> Iterator[bytes]:  # the body arrives over a second: the request is in flight
        for i in range(0, len(body), len(body) // 4 + 1):
            yield body[i : i + len(body) // 4 + 1]
            time.sleep(0.25)

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

            async def chunks():  # type: ignore[no-untyped-def]
                for chunk in slowly():
                    yield chunk
                    await asyncio.sleep(0)

            request = asyncio.create_task(
                client.post("/v1/predict", content=chunks(), headers={"Content-Type": "image/png"})
            )
            await asyncio.sleep(0.3)
            server.signal(signal.SIGTERM)
            return await request

    answer = asyncio.run(run())
    assert answer.status_code == 200 and answer.json()["predictions"][0]["top"]
    assert server.proc.wait(30) == 143  # drained, then ended: stopped by SIGTERM (also as a container's PID 1)
    assert "Shutting down" in "\n".join(server.log)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz")


def test_serves_a_run_in_a_bucket_and_reloads_when_its_weights_change(
    trained_runs: dict[str, Path], files: list[Path], tmp_path: Path, bucket: str
) -> None:
    from runner import storage

    url = upload(trained_runs["finished"], f"{bucket}/runs/digits")
    server = Server(url, "--watch", "0.2", cwd=tmp_path)
    try:
        server.wait_ready()
        body = files[1].read_bytes()
        answer = post(server, body, "image/jpeg", "?top=10").json()
        local = runner_cli(
            "predict", str(trained_runs["finished"]), str(files[1]), "--top", "10", "--json", cwd=tmp_path
        )
        assert answer["run"] == url and answer["weights"] == f"final weights ({url}/final/model.safetensors)"
        assert answer["predictions"][0]["top"] == json.loads(local.stdout)["predictions"][0]["top"]
        assert httpx.get(f"{server.url}/v1/model").json()["trained_at"]
        # A retrained run in the same place: metrics, then the weights (same size, new content).
        for name in ("metrics.jsonl", "final/model.safetensors"):
            storage.write_bytes(f"{url}/{name}", (trained_runs["resumed"] / name).read_bytes())
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/v1/model").json()["step"] != 82:
            assert time.monotonic() < deadline, "\n".join(server.log)
            time.sleep(0.1)
        assert post(server, body, "image/jpeg").status_code == 200
    finally:
        server.stop()


def test_serves_the_promoted_model_and_follows_a_new_promotion(trained_runs: dict[str, Path], tmp_path: Path) -> None:
    job = tmp_path / "job"  # a job's prefix: two runs, and promotion records in job/promoted/
    for name, source in (("a", "finished"), ("b", "resumed")):
        shutil.copytree(trained_runs[source], job / name)
    assert runner_cli("promote", str(job / "a"), "--force", cwd=tmp_path).returncode == 0
    server = Server(job / "promoted", "--watch", "0.2", cwd=tmp_path)
    try:
        server.wait_ready()
        model = httpx.get(f"{server.url}/v1/model").json()
        assert (model["run"], model["step"]) == (str(job / "a"), 41), model
        assert any(f"the promoted model is {job / 'a'}" in line for line in server.log), server.log
        assert runner_cli("promote", str(job / "b"), "--force", cwd=tmp_path).returncode == 0
        deadline = time.monotonic() + 30
        while (model := httpx.get(f"{server.url}/v1/model").json())["step"] != 82:
            assert time.monotonic() < deadline, "\n".join(server.log)
            time.sleep(0.05)
        assert model["run"] == str(job / "b")
    finally:
        server.stop()
