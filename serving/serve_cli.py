"""``ddn-serve``: run a local Triton server on a model repository until Ctrl-C."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click

from ddn.cli import CommandError, command
from ddn.repository_contract import EXECUTION_PROVIDERS, RepositoryError
from ddn.serving.repository_view import cpu_repository_view, cpu_settings
from ddn.serving.admin_apis import new_admin_key, usage
from ddn.serving.triton_server import Address, TritonServer

PORT = click.IntRange(1, 65535)
LOOPBACK = "127.0.0.1"
MAX_DEFAULT_INSTANCES = 4
# tritonserver flags --triton-arg refuses (a name, or a prefix ending in "-"), with the ddn-serve option to use:
# each would undo one of the settings that keep the server safe or that ddn-serve relies on.
REFUSED_TRITON_FLAGS = {
    "--allow-http": "--http", "--http-": "--http, --http-host, --http-port",
    "--allow-metrics": "--metrics", "--metrics-": "--metrics, --metrics-host, --metrics-port",
    "--allow-grpc": "--grpc-host, --grpc-port", "--grpc-address": "--grpc-host", "--grpc-port": "--grpc-port",
    "--grpc-restricted-protocol": "--admin-apis", "--grpc-use-ssl": "--tls-cert, --tls-key",
    "--grpc-server-": "--tls-cert, --tls-key", "--grpc-root-cert": "--tls-cert, --tls-key",
    "--model-control-mode": "--model", "--load-model": "--model",
    "--model-repository": "--repository", "--model-store": "--repository",
    "--backend-directory": "none (ddn-serve links the python backend itself)",
    "--exit-on-error": "none (ddn-serve relies on it)", "--strict-readiness": "none (ddn-serve relies on it)",
}


def _address(enabled: bool, flag: str, host: str | None, port: int | None, default_port: int) -> Address | None:
    """The address of an optional port, or None when off; its host or port alone is a usage error."""
    if not enabled:
        if host is not None or port is not None:
            given = f"--{flag}-host" if host is not None else f"--{flag}-port"
            raise click.UsageError(f"{given} needs --{flag} (the {flag} port is off by default)")
        return None
    return Address(host or LOOPBACK, port or default_port)


def check_triton_args(args: tuple[str, ...]) -> list[str]:
    """The --triton-arg flags, or a usage error naming the first refused one and the ddn-serve option instead."""
    for arg in args:
        name = arg.split("=", 1)[0]
        if not name.startswith("--") or name == "--":
            raise click.UsageError(f"--triton-arg takes one tritonserver flag as --NAME=VALUE, not {arg!r}")
        for refused, instead in REFUSED_TRITON_FLAGS.items():
            if name == refused or (refused.endswith("-") and name.startswith(refused)):
                raise click.UsageError(f"--triton-arg {name} is refused: it would undo a setting ddn-serve keeps "
                                       f"the server safe with; use {instead}")
    return list(args)


def host_defaults(instances: int | None, ort_threads: int | None, max_queue_delay_us: int | None,
                  ort_provider: str | None) -> tuple[int | None, int | None, int | None]:
    """Instances, ONNX Runtime threads and queue delay: what was given, else the best on this CPU host.

    On the CPU: one single-threaded instance per core (at most MAX_DEFAULT_INSTANCES)
    and no queue delay (see cpu_settings). On a GPU provider: what the export wrote.
    """
    if ort_provider not in (None, "cpu"):
        return instances, ort_threads, max_queue_delay_us
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return (min(cores, MAX_DEFAULT_INSTANCES) if instances is None else instances,
            1 if ort_threads is None else ort_threads,
            0 if max_queue_delay_us is None else max_queue_delay_us)


@command()
@click.option("--repository", type=click.Path(path_type=Path), default=Path("model_repository"),
              help="Model repository written by ddn-export.")
@click.option("--model", "models", multiple=True,
              help="Serve only this model (repeatable): its generation entry and the entries named after it "
                   "(NAME_encode, NAME_<condition>, NAME_seeds, NAME_seed_codes). A single served name, such as "
                   "NAME_seeds, serves that entry and the steps it runs. Default: every model.")
@click.option("--grpc-host", "--host", "grpc_host", default=LOOPBACK,
              help="Address gRPC binds to (--host is the same option); 0.0.0.0 exposes it to the network.")
@click.option("--grpc-port", type=PORT, default=8001, help="Port of gRPC inference.")
@click.option("--http", "http", is_flag=True,
              help="Serve KServe v2 JSON inference over HTTP, through ddn-serve's checking gateway "
                   "(Triton's own HTTP frontend is never started: single requests crash it).")
@click.option("--http-host", help=f"Address the HTTP gateway binds to (with --http).  [default: {LOOPBACK}]")
@click.option("--http-port", type=PORT, help="Port of the HTTP gateway (with --http).  [default: 8000]")
@click.option("--metrics", "metrics", is_flag=True, help="Serve Prometheus metrics at /metrics.")
@click.option("--metrics-host", help=f"Address /metrics binds to (with --metrics).  [default: {LOOPBACK}]")
@click.option("--metrics-port", type=PORT, help="Port of /metrics (with --metrics).  [default: 8002]")
@click.option("--instances", type=click.IntRange(min=1),
              help="Model instances per graph. Default on the CPU: one per core, at most "
                   f"{MAX_DEFAULT_INSTANCES}; with --ort-provider cuda or tensorrt: as exported.")
@click.option("--ort-threads", type=click.IntRange(min=0),
              help="ONNX Runtime threads per instance (0: one per core). Default on the CPU: 1; with a GPU "
                   "provider: as exported.")
@click.option("--ort-provider", type=click.Choice(list(EXECUTION_PROVIDERS)),
              help="ONNX Runtime execution provider of every instance (default: as exported, cpu); "
                   "cuda and tensorrt run on a GPU and need onnxruntime-gpu.")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0),
              help="Dynamic batching queue delay in microseconds. Default on the CPU: 0 (a lone request "
                   "does not wait for company); with a GPU provider: as exported.")
@click.option("--dynamic-batching/--no-dynamic-batching", default=True,
              help="Keep the exported dynamic batching, or serve every request on its own.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PEM certificate (with the chain to its root): every port speaks only TLS "
                   "(clients need its root, e.g. ddn-generate --tls-root-cert).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PEM private key of --tls-cert.")
@click.option("--triton-arg", "triton_args", multiple=True, metavar="--FLAG=VALUE",
              help="Pass one more flag to tritonserver (repeatable), e.g. --triton-arg=--log-info=false. "
                   "Flags that would undo ddn-serve's settings (ports, protocols, model control, repository) "
                   "are refused.")
@click.option("--verbose", is_flag=True, help="Verbose server log (its path is printed).")
@click.option("--admin-apis", is_flag=True,
              help="Open the shared-memory, logging and trace APIs to requests carrying a fresh key (printed); "
                   "closed by default: any local process could crash the server through them.")
def main(repository: Path, models: tuple[str, ...], grpc_host: str, grpc_port: int, http: bool,
         http_host: str | None, http_port: int | None, metrics: bool, metrics_host: str | None,
         metrics_port: int | None, instances: int | None, ort_threads: int | None, ort_provider: str | None,
         max_queue_delay_us: int | None, dynamic_batching: bool, tls_cert: Path | None, tls_key: Path | None,
         triton_args: tuple[str, ...], verbose: bool, admin_apis: bool) -> None:
    """Start Triton on REPOSITORY's python-backend models, print the endpoints, serve until Ctrl-C.

    gRPC is always on; HTTP inference and metrics only when asked for, on the loopback unless told otherwise.
    When the server fails, its log is kept and its path printed.
    """
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    http_address = _address(http, "http", http_host, http_port, 8000)
    metrics_address = _address(metrics, "metrics", metrics_host, metrics_port, 8002)
    extra_args = check_triton_args(triton_args)
    instances, ort_threads, max_queue_delay_us = host_defaults(instances, ort_threads, max_queue_delay_us,
                                                               ort_provider)
    # SIGTERM (kill, systemd, docker stop) unwinds like Ctrl-C, so the server,
    # which runs in its own process group, is stopped instead of orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    admin_key = new_admin_key() if admin_apis else None
    try:
        # The wheel's server has only the python backend: serve the CPU view, the entries the
        # repository's targets.txt gives the cpu target, under their served names.
        settings = cpu_settings(instances, ort_threads, max_queue_delay_us, dynamic_batching, ort_provider)
        with cpu_repository_view(repository, settings, models) as view, TritonServer(
                view, grpc_port=grpc_port, host=grpc_host, http=http_address, metrics=metrics_address,
                log_verbose=int(verbose), admin_key=admin_key, tls_cert=tls_cert, tls_key=tls_key,
                extra_args=extra_args) as server:
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
    except (RepositoryError, FileNotFoundError) as exc:
        raise CommandError(exc) from None
    except RuntimeError as exc:
        # The first line says what failed and where the log is kept; the log's tail before it helps at once.
        first, _, details = str(exc).partition("\n")
        if details:
            click.echo(details, err=True)
        raise CommandError(first) from None


if __name__ == "__main__":
    main()
