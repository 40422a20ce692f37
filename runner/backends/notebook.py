"""A job as a Jupyter notebook for Colab: the spec embedded, cells that survive a disconnect.

Colab takes a runtime away without warning, and the VM's disk with it. What survives is
the run directory, when it lives on Google Drive or in a bucket: re-running the
notebook (Runtime > Run all) reinstalls runner and `runner submit` resumes from the
newest checkpoint there, saying from which step. The cells that only make sense on
Colab (sign-in, mounting Drive, uploading a file, TensorBoard inline) skip themselves
with a line saying so elsewhere, so the same notebook runs in Jupyter and in tests.

`render` is pure: a spec's TOML in, the notebook (nbformat 4, as plain JSON data) out.
The parameters cell is tagged `parameters`, papermill's convention, so papermill (or a
test) can inject other values after it.
"""

from __future__ import annotations

import json
from typing import Any

from runner.errors import UserError

# Where pip gets runner on a fresh Colab runtime. The project has no published home yet:
# `runner notebook --install` names one (a git URL, a wheel on Drive, a package index).
UNPUBLISHED = "<where pip finds runner: a git URL, a wheel's path or a package name>"

INTRO = """\
# {name}: training with `runner`, resumable on Colab

Run all cells (Runtime > Run all) on a GPU runtime (Runtime > Change runtime type > GPU).
Checkpoints go to `CHECKPOINTS`, on Google Drive or in a `gs://` bucket. Colab may take the
runtime away at any moment (idle timeout, the 12-hour limit, "runtime disconnected"):
**run all cells again** and training resumes from the newest checkpoint, losing at most
the last {every} s of work (runner saves that often on Colab). Everything on the runtime's
own disk is lost, so do not keep checkpoints there.
"""

PARAMETERS = """\
# Parameters (papermill: this cell is tagged "parameters")
SPEC_TOML = {spec}
CHECKPOINTS = {checkpoints!r}  # "drive" (Google Drive), "gs://bucket/prefix", or a local path
EPOCHS = 0  # 0: the spec's
SETS = {sets!r}  # more overrides, e.g. ["lr=0.01", "batch_size=256"]
RUNNER_PIP = {install!r}  # pip's source for runner
"""

GPU = """\
import shutil
import subprocess

if shutil.which("nvidia-smi"):
    subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"], check=False)
else:
    print("no GPU on this runtime: training runs on the CPU (Runtime > Change runtime type > GPU)")
"""

INSTALL = """\
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("runner") is None:
    if RUNNER_PIP.startswith("<"):
        raise SystemExit("runner is not installed: set RUNNER_PIP in the parameters cell to where pip finds it")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", RUNNER_PIP], check=True)
subprocess.run([sys.executable, "-m", "runner", "--version"], check=True)
"""

WHERE = """\
import tomllib

IN_COLAB = importlib.util.find_spec("google.colab") is not None
NAME = tomllib.loads(SPEC_TOML)["name"]
if CHECKPOINTS.startswith("gs://"):
    if IN_COLAB:
        from google.colab import auth

        auth.authenticate_user()  # runner reads the bucket with these credentials
    else:
        print("not on Colab: no sign-in here; the bucket is read with this machine's credentials")
    RUN_DIR = f"{CHECKPOINTS.rstrip('/')}/{NAME}"
elif CHECKPOINTS == "drive":
    if IN_COLAB:
        from google.colab import drive

        drive.mount("/content/drive")
        RUN_DIR = f"/content/drive/MyDrive/runner/{NAME}"
    else:
        print("not on Colab: no Drive to mount; checkpoints go to runs/ on this machine")
        RUN_DIR = f"runs/{NAME}"
else:
    RUN_DIR = f"{CHECKPOINTS.rstrip('/')}/{NAME}" if CHECKPOINTS else f"runs/{NAME}"
print("run directory:", RUN_DIR)
"""

CODE = """\
# Your model's code (the spec's code = [...]), embedded by `runner notebook`: written beside
# job.toml on every run, since the runtime's disk does not survive a disconnect.
from pathlib import Path

CODE_FILES = {files}
for path, text in CODE_FILES.items():
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
SETS = [*SETS, {code_set!r}]  # the spec's code = [...], as it lies here
print("your code:", ", ".join(CODE_FILES))
"""

SPEC = """\
import os
from pathlib import Path

from runner.backends.child import stop_with_parent

Path("job.toml").write_text(SPEC_TOML)
OVERRIDES = [f"checkpoint.dir={RUN_DIR}", *([f"epochs={EPOCHS}"] if EPOCHS else []), *SETS]


def runner(*args):
    \"\"\"Run a runner command, its output streamed into this cell; stop the notebook if it fails.

    It ends with this kernel (a restart, a crash), and an interrupt (Kernel > Interrupt) stops
    it politely and waits for its checkpoint, so a re-run never finds the old one still training.
    \"\"\"
    kernel = os.getpid()
    # Plain text: Colab's environment forces colour (FORCE_COLOR and kin), and a cell's output
    # would show the escape codes as text.
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        env={**env, "NO_COLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: stop_with_parent(kernel),
    )
    try:
        for line in proc.stdout:
            print(line, end="", flush=True)
    except KeyboardInterrupt:
        proc.terminate()  # a polite stop (once more, if the interrupt reached it too, changes nothing)
        for line in proc.stdout:
            print(line, end="", flush=True)
        proc.wait()
        raise
    if proc.wait() != 0:
        raise SystemExit(f"runner {args[0]} exited {proc.returncode}")


runner("validate", "job.toml", *[f"--set={o}" for o in OVERRIDES])
"""

TRAIN = """\
# Re-running this cell (or all of them) after a disconnect resumes: the output says from which step.
# --quiet: a line per epoch; a live progress bar needs a terminal, which a cell's output is not.
runner("submit", "job.toml", "--quiet", *[f"--set={o}" for o in OVERRIDES])
"""

TENSORBOARD = """\
if IN_COLAB:
    get_ipython().run_line_magic("load_ext", "tensorboard")
    get_ipython().run_line_magic("tensorboard", f"--logdir {RUN_DIR}")
else:
    print(f"not on Colab: see the curves with  tensorboard --logdir {RUN_DIR}")
"""

PLOT = """\
from IPython.display import Image, display

runner("plot", RUN_DIR, "-o", "curves.png")
display(Image("curves.png"))
"""

EVAL = """\
runner("eval", RUN_DIR)
"""

PREDICT = """\
if IN_COLAB:
    from google.colab import files

    images = list(files.upload())  # choose image files (PNG, JPEG) of what the model classifies
else:
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits

    print("not on Colab: no upload here; classifying a sample, a scikit-learn digit (a 0)")
    digit = load_digits().images[0] * (255 / 16)
    PILImage.fromarray(digit.astype("uint8")).resize((28, 28)).save("sample.png")
    images = ["sample.png"]
runner("predict", RUN_DIR, *images)
"""


def _string(text: str) -> str:
    """`text` as a Python literal: triple-quoted, to read like the TOML file, where it can be."""
    if '"""' in text or "\\" in text or not text.endswith("\n"):
        return repr(text)
    return '"""\\\n' + text + '"""'


def _files(code: dict[str, str]) -> str:
    """{path: text} as a Python dict literal, one file's text per entry, readable as code."""
    return "{\n" + "".join(f"    {path!r}: {_string(text)},\n" for path, text in code.items()) + "}"


MAX_CODE_BYTES = 1_000_000  # the notebook is uploaded and opened in a browser: code, not data


def embedded_code(files: dict[str, bytes]) -> dict[str, str]:
    """The user's code files as the notebook embeds them (text); UserError for a file that is
    not UTF-8 text, or for more than MAX_CODE_BYTES in all."""
    if (total := sum(map(len, files.values()))) > MAX_CODE_BYTES:
        raise UserError(
            f"code: {total:,} bytes of files, more than the {MAX_CODE_BYTES:,} a notebook embeds; "
            "list only your model's modules in code = [...], or pip-install your package on the runtime"
        )
    texts = {}
    for path, data in files.items():
        try:
            texts[path] = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(
                f"code: {path} is not UTF-8 text; a notebook embeds source files only: list .py files and packages"
            ) from None
    return texts


def _code_set(entries: list[str]) -> str:
    """The override pointing the spec's code at `entries` (names beside job.toml)."""
    return "code=[" + ", ".join(json.dumps(e) for e in entries) + "]"


def _cell(cell_id: str, kind: str, source: str, tags: tuple[str, ...] = ()) -> dict[str, Any]:
    cell: dict[str, Any] = {"cell_type": kind, "id": cell_id, "metadata": {"tags": list(tags)} if tags else {}}
    cell["source"] = source.splitlines(keepends=True)
    if kind == "code":
        cell |= {"execution_count": None, "outputs": []}
    return cell


def render(
    spec_toml: str,
    name: str,
    checkpoints: str,
    install: str,
    sets: list[str],
    every_seconds: float,
    code: dict[str, str] | None = None,
    code_entries: list[str] | None = None,
) -> dict[str, Any]:
    """The notebook that trains `spec_toml` (a spec file's text, job `name`) with `--set`
    overrides `sets`, keeping run directories under `checkpoints` ("drive", a URL or a
    path) and installing runner from `install` (pip's argument), as nbformat 4 data.
    `every_seconds`: the timed-save interval on Colab, quoted as what a disconnect can cost.
    `code`: the user model's files (models.user.code_files, as text) and `code_entries` the
    names of the spec's code entries: a cell writes the files beside job.toml and points
    the spec's `code` at them."""
    cells = [
        _cell("intro", "markdown", INTRO.format(name=name, every=f"{every_seconds:.0f}")),
        _cell(
            "parameters",
            "code",
            PARAMETERS.format(spec=_string(spec_toml), checkpoints=checkpoints, install=install, sets=sets),
            ("parameters",),
        ),
        _cell("gpu", "code", GPU),
        _cell("install", "code", INSTALL),
        _cell("where", "code", WHERE),
        *(
            [_cell("code", "code", CODE.format(files=_files(code), code_set=_code_set(code_entries or [])))]
            if code
            else []
        ),
        _cell("spec", "code", SPEC),
        _cell("train", "code", TRAIN),
        _cell("tensorboard", "code", TENSORBOARD),
        _cell("plot", "code", PLOT),
        _cell("eval", "code", EVAL),
        _cell("predict", "code", PREDICT),
    ]
    metadata = {
        "accelerator": "GPU",  # Colab opens it on a GPU runtime
        "colab": {"provenance": []},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    return {"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}


def to_json(notebook: dict[str, Any]) -> str:
    """The notebook as an .ipynb file's text (Jupyter's own layout: one-space indent)."""
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
