"""``ddn-serve``: run a local Triton server on a model repository until Ctrl-C."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from ddn.repository_contract import EXECUTION_PROVIDERS, RepositoryError
from ddn.serving.repository_view import cpu_repository_view, cpu_settings
from ddn.serving.admin_apis import new_admin_key, usage
from ddn.serving.triton_server import Address, TritonServer

PORT = click.IntRange(1, 65535)
LOOPBACK = "127.0.0.1"


def _address(enabled: bool, flag: str, host: str | None, port: int | None, default_port: int) -> Address | None:
    """The address of an optional port, or None when off; its host or port alone is a usage error."""
    if not enabled:
        if host is not None or port is not None:
            given = f"--{flag}-host" if host is not None else f"--{flag}-port"
            raise click.UsageError(f"{given} needs --{flag} (the {flag} port is off by default)")
        return None
    return Address(host or LOOPBACK, port or default_port)


@click.command()
@click.option("--repository", type=click.Path(path_type=Path), default=Path("model_repository"), show_default=True,
              help="Model repository written by ddn-export.")
@click.option("--grpc-host", "--host", "grpc_host", default=LOOPBACK, show_default=True,
              help="Address gRPC binds to (--host is the same option); 0.0.0.0 exposes it to the network.")
@click.option("--grpc-port", type=PORT, default=8001, show_default=True)
@click.option("--http", "http", is_flag=True,
              help="Serve KServe v2 JSON inference over HTTP, through ddn-serve's checking gateway "
                   "(Triton's own HTTP frontend is never started: single requests crash it).")
@click.option("--http-host", help=f"Address the HTTP gateway binds to (with --http)  [default: {LOOPBACK}]")
@click.option("--http-port", type=PORT, help="HTTP gateway port (with --http)  [default: 8000]")
@click.option("--metrics", "metrics", is_flag=True, help="Serve Prometheus metrics at /metrics.")
@click.option("--metrics-host", help=f"Address /metrics binds to (with --metrics)  [default: {LOOPBACK}]")
@click.option("--metrics-port", type=PORT, help="Metrics port (with --metrics)  [default: 8002]")
@click.option("--instances", type=click.IntRange(min=1),
              help="Model instances per graph (default: as exported, 1); one per core suits a CPU host.")
@click.option("--ort-threads", type=click.IntRange(min=0),
              help="ONNX Runtime threads per instance (default: as exported, 0 = one per core).")
@click.option("--ort-provider", type=click.Choice(list(EXECUTION_PROVIDERS)),
              help="ONNX Runtime execution provider of every instance (default: as exported, cpu); "
                   "cuda and tensorrt run on a GPU and need onnxruntime-gpu.")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0),
              help="Dynamic batching queue delay in microseconds (default: as exported); 0 suits a CPU host.")
@click.option("--dynamic-batching/--no-dynamic-batching", default=True, show_default=True,
              help="Keep the exported dynamic batching, or serve every request on its own.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PEM certificate (with the chain to its root): every port speaks only TLS "
                   "(clients need its root, e.g. ddn-generate --tls-root-cert).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PEM private key of --tls-cert.")
@click.option("--verbose", is_flag=True, help="Verbose server log (its path is printed).")
@click.option("--admin-apis", is_flag=True,
              help="Open the shared-memory, logging and trace APIs to requests carrying a fresh key (printed); "
                   "closed by default: any local process could crash the server through them.")
def main(repository: Path, grpc_host: str, grpc_port: int, http: bool, http_host: str | None,
         http_port: int | None, metrics: bool, metrics_host: str | None, metrics_port: int | None,
         instances: int | None, ort_threads: int | None, ort_provider: str | None, max_queue_delay_us: int | None,
         dynamic_batching: bool, tls_cert: Path | None, tls_key: Path | None, verbose: bool,
         admin_apis: bool) -> None:
    """Start Triton on REPOSITORY's python-backend models, print the endpoints, serve until Ctrl-C.

    gRPC is always on; HTTP inference and metrics only when asked for, on the loopback unless told otherwise.
    """
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    http_address = _address(http, "http", http_host, http_port, 8000)
    metrics_address = _address(metrics, "metrics", metrics_host, metrics_port, 8002)
    # SIGTERM (kill, systemd, docker stop) unwinds like Ctrl-C, so the server,
    # which runs in its own process group, is stopped instead of orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    admin_key = new_admin_key() if admin_apis else None
    try:
        # The wheel's server has only the python backend: serve the CPU view, where
        # each G_python twin appears under its production name G.
        settings = cpu_settings(instances, ort_threads, max_queue_delay_us, dynamic_batching, ort_provider)
        with cpu_repository_view(repository, settings) as view, TritonServer(
                view, grpc_port=grpc_port, host=grpc_host, http=http_address, metrics=metrics_address,
                log_verbose=int(verbose), admin_key=admin_key, tls_cert=tls_cert, tls_key=tls_key) as server:
            tls = " (TLS)" if server.tls else ""
            click.echo(f"gRPC     {server.grpc_url}{tls}")
            if http_address:
                click.echo(f"HTTP     {server.http_url}{tls}")
            if metrics_address:
                click.echo(f"metrics  {server.metrics_url}")
            click.echo(f"log      {server.log_path}")
            for name, state in sorted(server.model_states().items()):
                click.echo(f"model    {name}: {state}")
            for line in usage(admin_key) if admin_key else []:
                click.echo(f"admin    {line}")
            click.echo("serving; press Ctrl-C to stop", err=True)
            code = server.wait()
            raise RuntimeError(f"tritonserver exited unexpectedly with code {code}{server.log_report()}")
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    except (RepositoryError, FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
