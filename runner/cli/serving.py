"""`runner serve`: a run's model over HTTP, with a page to draw digits on."""

from __future__ import annotations

from typing import Annotated

import typer

from runner.cli.app import command
from runner.cli.options import ModelRunArg
from runner.cli.output import note


@command()
def serve(
    run: ModelRunArg,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="Port to listen on.")] = 8080,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    threads: Annotated[int, typer.Option("--threads", min=0, help="CPU threads for torch; 0: the cores allowed.")] = 0,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="Images per forward pass; 1 turns batching off.")
    ] = 32,
    wait_ms: Annotated[
        float, typer.Option("--wait-ms", min=0, help="How long a batch's first image waits for others.")
    ] = 2.0,
    max_queue: Annotated[
        int, typer.Option("--max-queue", min=1, help="Images waiting for the model, past which requests get 503.")
    ] = 512,
    watch: Annotated[
        float, typer.Option("--watch", min=0, help="Seconds between looks for new weights (0: only on SIGHUP).")
    ] = 10.0,
    grace: Annotated[float, typer.Option("--grace", min=0, help="On SIGTERM, seconds requests in flight get.")] = 25.0,
    request_timeout: Annotated[
        float,
        typer.Option(
            "--request-timeout",
            min=0.1,
            help="Seconds a client has to send a request's headers, and its body (plus 1 s per 16 KiB); "
            "slower ones get 408.",
        ),
    ] = 10.0,
) -> None:
    """Serve a run's model over HTTP: POST /v1/predict, GET /v1/model, /healthz, /readyz, and a drawing page at /.

    Reloads without downtime on SIGHUP and when the run's final weights change; drains on SIGTERM.
    """
    from runner.serve.guard import Guard
    from runner.serve.models import Batching
    from runner.serve.server import Options, serve

    batching = Batching(max_batch, wait_ms / 1000 if max_batch > 1 else 0.0, max_queue)
    guard = Guard(head_s=request_timeout, body_s=request_timeout)
    options = Options(host, port, device, threads, batching, watch_s=watch, grace_s=grace, guard=guard)
    code = serve(run, options, note)
    if code:
        raise typer.Exit(code)
