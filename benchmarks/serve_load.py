"""Load test of the CPU serving path: a real local Triton server, gRPC clients, JSON out.

Every variant runs in alternating rounds so load from other work hits each alike; the sweeps ``fleet``
and ``stop`` measure a client's routing and failover over several servers. docs/benchmarks.md says what
each point measures.

Usage: python -m benchmarks.serve_load [--point-seconds 6 --rounds 3 --soak-seconds 60 --out result.json]
       python -m benchmarks.serve_load --sweep fleet [--point-seconds 6 --rounds 3 --out fleet.json]
       python -m benchmarks.serve_load --sweep stop [--point-seconds 10 --out stop.json]
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import click
import numpy as np
from google.protobuf.json_format import MessageToDict
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from ddn.codes import codes_from_seed
from ddn.export.exporter import ModelExport
from ddn.export.stall_guard import FROZEN_LOG
from ddn.repository_contract import ORT_THREADS_PARAMETER, PYTHON_SUFFIX, entry_name
from ddn.serving.client import DDNClient, ServingError
from ddn.serving.onnx_model import OnnxModel
from ddn.serving.repository_view import cpu_repository_view, cpu_settings, read_config
from ddn.serving.triton_server import TritonServer
from ddn.training.checkpoint import save_checkpoint
from benchmarks.measure import BenchmarkRun, interleaved, write_report
from benchmarks.measured_model import MODEL_CONFIG, measured_model

NAME = "mnist"
TARGET_GAP_MS = 2.0
TARGET_BATCHING_GAIN = 2.0
MODEL_SHAPE = (MODEL_CONFIG["image_size"], MODEL_CONFIG["image_size"], MODEL_CONFIG["image_channels"])


def merge(parts: list[dict]) -> dict:
    """Stats over measurement slices ``{"latencies": [s], "failures": [str], "elapsed": s}``."""
    latencies = [x for p in parts for x in p["latencies"]]
    failures = [x for p in parts for x in p["failures"]]
    elapsed = sum(p["elapsed"] for p in parts)
    ms = np.asarray(latencies or [np.nan]) * 1e3
    stats = {"requests": len(latencies) + len(failures), "failed": len(failures),
             "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
             "max_ms": round(float(np.max(ms)), 3), "images_per_s": round(len(latencies) / elapsed, 1)}
    for side in ("server", "client"):
        if latencies and all(f"{side}_cpu" in p for p in parts):
            stats[f"{side}_cpu_ms_per_image"] = round(1e3 * sum(p[f"{side}_cpu"] for p in parts) / len(latencies), 3)
    return {**stats, "first_failure": failures[0]} if failures else stats


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every live process in process group ``pgid`` (Linux /proc)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[2]) == pgid:  # fields after the command: state ppid pgrp ... utime(11) stime(12)
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_loop(call: Callable[[int], None], seconds: float) -> dict:
    """One caller calling ``call(i)`` back to back for ``seconds`` (a :func:`merge` slice)."""
    latencies = []
    begin, cpu = time.perf_counter(), own_cpu_seconds()
    while time.perf_counter() - begin < seconds:
        start = time.perf_counter()
        call(len(latencies))
        latencies.append(time.perf_counter() - start)
    return {"latencies": latencies, "failures": [], "elapsed": time.perf_counter() - begin,
            "client_cpu": own_cpu_seconds() - cpu}


async def _closed_loop(url: str, codes: np.ndarray, concurrency: int, seconds: float, model: str = NAME,
                       image_shape: tuple[int, ...] = MODEL_SHAPE) -> dict:
    """``concurrency`` clients, each sending one-image requests of ``model`` back to back for ``seconds``."""
    client = aioclient.InferenceServerClient(url)
    latencies: list[float] = []
    failures: list[str] = []

    async def user(first: int) -> None:
        i = first
        while time.perf_counter() < deadline:
            tensor = grpcclient.InferInput("codes", [1, codes.shape[1]], "INT32")
            tensor.set_data_from_numpy(codes[i % len(codes)][None])
            start = time.perf_counter()
            try:
                result = await client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput("images")],
                                            client_timeout=30)
                shape = result.as_numpy("images").shape
                if shape != (1, *image_shape):
                    failures.append(f"wrong shape {shape}")
                else:
                    latencies.append(time.perf_counter() - start)
            except InferenceServerException as exc:
                failures.append(exc.message() or str(exc))
            i += concurrency

    begin = time.perf_counter()
    deadline = begin + seconds
    try:
        await asyncio.gather(*(user(u) for u in range(concurrency)))
    finally:
        await client.close()
    return {"latencies": latencies, "failures": failures, "elapsed": time.perf_counter() - begin}


def closed_loop(server: TritonServer, codes: np.ndarray, concurrency: int, seconds: float, model: str = NAME,
                image_shape: tuple[int, ...] = MODEL_SHAPE) -> dict:
    """One :func:`merge` slice against ``server``, with the CPU time it and this client spent."""
    server_cpu, client_cpu = group_cpu_seconds(server.pid), own_cpu_seconds()
    part = asyncio.run(_closed_loop(server.grpc_url, codes, concurrency, seconds, model, image_shape))
    part["server_cpu"] = group_cpu_seconds(server.pid) - server_cpu
    part["client_cpu"] = own_cpu_seconds() - client_cpu
    return part


def interleaved_slices(slices: dict[str, Callable[[], dict]], rounds: int) -> dict[str, list[dict]]:
    """Every :func:`merge` slice ``rounds`` times, in the measuring core's interleaved rounds; slices per name."""
    parts: dict[str, list[dict]] = {name: [] for name in slices}
    interleaved({name: lambda name=name, measure=measure: parts[name].append(measure())
                 for name, measure in slices.items()}, seconds=0, rounds=rounds, warmup_calls=0, min_calls=1)
    return parts


def point(variant: str, concurrency: int) -> str:
    """The name of a sweep's slices: ``variant`` at ``concurrency`` clients."""
    return f"{variant}@{concurrency}"


def sweep(servers: dict[str, TritonServer], codes: np.ndarray, concurrencies: list[int], seconds: float,
          rounds: int, extra: dict[str, Callable[[], dict]] | None = None, model: str = NAME,
          image_shape: tuple[int, ...] = MODEL_SHAPE) -> dict[str, list[dict]]:
    """``seconds`` slices of every server at every concurrency (named by :func:`point`) and of ``extra``,
    in ``rounds`` interleaved rounds."""
    slices = {point(variant, c): lambda server=server, c=c: closed_loop(server, codes, c, seconds, model, image_shape)
              for c in concurrencies for variant, server in servers.items()}
    return interleaved_slices({**slices, **(extra or {})}, rounds)


def sweep_results(parts: dict[str, list[dict]], variants: list[str],
                  concurrencies: list[int]) -> dict[str, list[dict]]:
    """Server name -> merged stats per concurrency, from the slices :func:`sweep` collected."""
    return {v: [{"concurrency": c, **merge(parts[point(v, c)])} for c in concurrencies] for v in variants}


def server_settings(config) -> dict:
    """The parts of the python twin's config that decide throughput."""
    as_dict = MessageToDict(config)
    return {"max_batch_size": config.max_batch_size, "dynamic_batching": as_dict.get("dynamicBatching"),
            "instance_group": as_dict.get("instanceGroup"),
            ORT_THREADS_PARAMETER: config.parameters[ORT_THREADS_PARAMETER].string_value}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def export_measured(work: Path) -> tuple[Path, np.ndarray, dict]:
    """The measured model exported into ``work``: the repository, 4096 codes and the report's opening."""
    model = measured_model()
    checkpoint = work / "mnist.safetensors"
    save_checkpoint(checkpoint, model)
    repository = work / "model_repository"
    log("exporting ...")
    ModelExport(checkpoint, NAME, repository, max_batch=64).write_onnx(["generate"])
    codes = codes_from_seed(range(4096), model.num_layers, model.branch_counts)
    report: dict = {
        "model": {"config": MODEL_CONFIG, "num_layers": model.num_layers, "k": MODEL_CONFIG["k"],
                  "image_shape": list(MODEL_SHAPE)},
        "server_config": server_settings(read_config(repository / entry_name(NAME, "generate", PYTHON_SUFFIX))),
    }
    return repository, codes, report


def measure(work: Path, point_seconds: float, rounds: int, soak_seconds: float, concurrencies: list[int]) -> dict:
    """Export the model into the folder ``work``, start every server variant, measure; the report."""
    repository, codes, report = export_measured(work)

    # "exported": the twin's config as ddn-export wrote it; "cpu_tuned": one
    # single-threaded instance per core and no queue delay (the profile showed
    # ORT's per-image cost does not shrink with batch size on this CPU, and two
    # ORT threads of one instance spin against each other on a busy machine).
    configs = {"exported": {}, "cpu_tuned": {"instances": os.cpu_count(), "ort_threads": 1, "max_queue_delay_us": 0}}
    report["cpu_tuned_settings"] = configs["cpu_tuned"]
    locals_ = {"exported": OnnxModel.from_repository(repository, NAME),
               "cpu_tuned": OnnxModel.from_repository(repository, NAME, threads=1)}
    for local in locals_.values():
        local.generate(codes=codes[:64])
    variants = {f"{name}/{mode}": cpu_settings(**settings, dynamic_batching=mode == "dynamic_batching")
                for name, settings in configs.items() for mode in ("dynamic_batching", "no_batching")}

    # All servers run side by side and every point is measured in rounds that
    # alternate between them (and the in-process baselines), so load drifting on
    # a shared machine hits every variant alike.
    with contextlib.ExitStack() as stack:
        servers: dict[str, TritonServer] = {}
        for variant, edit in variants.items():
            log(f"starting {variant} ...")
            view = stack.enter_context(cpu_repository_view(repository, edit))
            servers[variant] = stack.enter_context(TritonServer(view))
            closed_loop(servers[variant], codes, 4, 1.0)  # warm up connections and instances
        ddn_client = stack.enter_context(DDNClient(servers["exported/dynamic_batching"].grpc_url, NAME))
        slice_s = point_seconds / rounds
        in_process = {name: lambda m=local: timed_loop(lambda i: m.generate(codes=codes[i % len(codes)][None]),
                                                       slice_s) for name, local in locals_.items()}
        in_process["ddn_client"] = lambda: timed_loop(
            lambda i: ddn_client.generate(codes=codes[i % len(codes)][None]), slice_s)
        log(f"{rounds} interleaved rounds ...")
        parts = sweep(servers, codes, concurrencies, slice_s, rounds, extra=in_process)
        report["in_process_onnxruntime_batch1"] = {name: merge(parts[name]) for name in configs}
        report["ddn_client_batch1_exported_dynamic_batching"] = merge(parts["ddn_client"])
        sweeps = sweep_results(parts, list(variants), concurrencies)
        report["grpc_one_image_per_request"] = sweeps

        best_variant = max((v for v in variants if v.endswith("/dynamic_batching")),
                           key=lambda v: max(r["images_per_s"] for r in sweeps[v]))
        best = max(r["images_per_s"] for r in sweeps[best_variant])
        saturating = min(r["concurrency"] for r in sweeps[best_variant] if r["images_per_s"] >= 0.95 * best)
        log(f"soak: {soak_seconds:g} s, {best_variant}, {saturating} clients ...")
        soak = closed_loop(servers[best_variant], codes, saturating, soak_seconds)
        report["soak"] = {"variant": best_variant, "seconds": soak_seconds, "concurrency": saturating,
                          **merge([soak])}
    add_targets(report, sweeps, list(configs), concurrencies)
    return report


def add_targets(report: dict, sweeps: dict[str, list[dict]], configs: list[str], concurrencies: list[int]) -> None:
    """The configs sweep's targets per server config, and the CPU-time comparisons a busy machine does not distort."""

    def at(variant: str, concurrency: int, key: str) -> float | None:
        return next((r[key] for r in sweeps[variant] if r["concurrency"] == concurrency), None)

    targets: dict = {}
    for name in configs:
        grpc_p50, gain = at(f"{name}/dynamic_batching", 1, "p50_ms"), None
        on, off = at(f"{name}/dynamic_batching", 16, "images_per_s"), at(f"{name}/no_batching", 16, "images_per_s")
        if grpc_p50 is not None:
            gap = round(grpc_p50 - report["in_process_onnxruntime_batch1"][name]["p50_ms"], 3)
            targets[f"{name}: batch-1 gRPC p50 minus in-process ORT p50 (ms)"] = {
                "value": gap, "target": f"<= {TARGET_GAP_MS}", "met": gap <= TARGET_GAP_MS}
            # The same comparison in CPU time, which a busy machine does not distort:
            # what the round trip costs beyond running the graph.
            served = at(f"{name}/dynamic_batching", 1, "server_cpu_ms_per_image") + \
                at(f"{name}/dynamic_batching", 1, "client_cpu_ms_per_image")
            report.setdefault("batch1_serving_cpu_overhead_ms", {})[name] = round(
                served - report["in_process_onnxruntime_batch1"][name]["client_cpu_ms_per_image"], 3)
        if on and off:
            gain = round(on / off, 2)
            targets[f"{name}: images/s at 16 clients, dynamic batching / off"] = {
                "value": gain, "target": f">= {TARGET_BATCHING_GAIN}", "met": gain >= TARGET_BATCHING_GAIN}
    # CPU time per image does not depend on how much of the machine others take,
    # so it shows what batching saves even where wall-clock throughput is noisy.
    report["server_cpu_ms_per_image_at_16_clients"] = {
        v: at(v, 16, "server_cpu_ms_per_image") for v in sweeps} if 16 in concurrencies else None
    targets["soak failed requests"] = {"value": report["soak"]["failed"], "target": 0,
                                       "met": report["soak"]["failed"] == 0}
    report["targets"] = targets


# -- several servers behind one DDNClient ------------------------------------------------------------------------
FLEET_SIZES = (1, 2, 3)
FLEET_CLIENTS = (16, 64)
# One single-threaded ORT instance per server, no queue delay: each server is one core's worth of work, so
# 2 or 3 servers on this machine are what 2 or 3 instances of one server would be, spread over processes.
FLEET_SERVER = {"instances": 1, "ort_threads": 1, "max_queue_delay_us": 0}


def fleet_loop(client: DDNClient, servers: list[TritonServer], codes: np.ndarray, clients: int, seconds: float,
               halfway: Callable[[], None] | None = None) -> dict:
    """``clients`` threads sharing ``client``, one-image requests back to back for ``seconds`` (a merge slice).

    ``halfway`` runs once, halfway through (the fault of the killed-server runs).
    A request that raises counts as failed: with a healthy endpoint left there should be none.
    """
    latencies: list[float] = []
    failures: list[str] = []
    live = [s for s in servers if s.pid]
    server_cpu, client_cpu = sum(group_cpu_seconds(s.pid) for s in live), own_cpu_seconds()
    begin = time.perf_counter()
    deadline = begin + seconds

    def user(first: int) -> None:
        i = first
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                shape = client.generate(codes=codes[i % len(codes)][None]).shape
                if shape != (1, *MODEL_SHAPE):
                    failures.append(f"wrong shape {shape}")
                else:
                    latencies.append(time.perf_counter() - start)  # list.append is atomic
            except ServingError as exc:
                failures.append(str(exc))
            i += clients

    threads = [threading.Thread(target=user, args=(u,)) for u in range(clients)]
    for thread in threads:
        thread.start()
    if halfway is not None:
        time.sleep(seconds / 2)
        halfway()
    for thread in threads:
        thread.join()
    part = {"latencies": latencies, "failures": failures, "elapsed": time.perf_counter() - begin,
            "client_cpu": own_cpu_seconds() - client_cpu}
    if halfway is None:  # a killed server's CPU time can no longer be read
        part["server_cpu"] = sum(group_cpu_seconds(s.pid) for s in live) - server_cpu
    return part


def kill(server: TritonServer) -> None:
    """SIGKILL to the server and its backend stubs: no goodbye, in-flight requests are lost."""
    os.killpg(server.pid, signal.SIGKILL)


def measure_fleet(work: Path, point_seconds: float, rounds: int) -> dict:
    """1, 2, 3 servers at 16 and 64 clients, then 2 and 3 servers with one killed halfway; the report."""
    repository, codes, report = export_measured(work)
    report["fleet_server_settings"] = FLEET_SERVER
    slice_s = point_seconds / rounds
    with contextlib.ExitStack() as stack:
        view = stack.enter_context(cpu_repository_view(repository, cpu_settings(**FLEET_SERVER)))
        log(f"starting {max(FLEET_SIZES)} servers ...")
        servers = [stack.enter_context(TritonServer(view)) for _ in range(max(FLEET_SIZES))]
        clients = {n: stack.enter_context(DDNClient([s.grpc_url for s in servers[:n]], NAME, batch_size=1))
                   for n in FLEET_SIZES}
        for n, client in clients.items():
            fleet_loop(client, servers[:n], codes, max(FLEET_CLIENTS), 1.0)  # warm up connections and instances
        # What one core does in this process, measured between the points: how busy the machine is.
        local = OnnxModel.from_repository(repository, NAME, threads=1)
        slices = {point(f"{n}_servers", c): lambda n=n, c=c: fleet_loop(clients[n], servers[:n], codes, c, slice_s)
                  for c in FLEET_CLIENTS for n in FLEET_SIZES}
        slices["baseline"] = lambda: timed_loop(lambda i: local.generate(codes=codes[i % len(codes)][None]), slice_s)
        log(f"{rounds} interleaved rounds ...")
        parts = interleaved_slices(slices, rounds)
        report["in_process_onnxruntime_batch1_one_thread"] = merge(parts["baseline"])
        report["fleet"] = sweep_results(parts, [f"{n}_servers" for n in FLEET_SIZES], list(FLEET_CLIENTS))
        report["fleet_requests_per_server"] = {
            f"{n}_servers": [e["succeeded"] for e in clients[n].endpoint_stats()] for n in FLEET_SIZES}

    killed: dict[str, list[dict]] = {}
    for n in FLEET_SIZES[1:]:
        for c in FLEET_CLIENTS:
            log(f"{n} servers, {c} clients, one killed halfway ...")
            with contextlib.ExitStack() as stack:
                view = stack.enter_context(cpu_repository_view(repository, cpu_settings(**FLEET_SERVER)))
                servers = [stack.enter_context(TritonServer(view)) for _ in range(n)]
                client = stack.enter_context(DDNClient([s.grpc_url for s in servers], NAME, batch_size=1))
                fleet_loop(client, servers, codes, c, 1.0)  # warm-up
                resent = client.retried
                part = fleet_loop(client, servers, codes, c, point_seconds, halfway=lambda: kill(servers[0]))
                killed.setdefault(f"{n}_servers", []).append({
                    "concurrency": c, **merge([part]), "requests_resent": client.retried - resent,
                    "killed_server": {k: v for k, v in client.endpoint_stats()[0].items()
                                      if k in ("healthy", "failed", "last_error")}})
    report["fleet_one_server_killed_halfway"] = killed
    failed = sum(r["failed"] for rows in killed.values() for r in rows)
    report["targets"] = {"failed requests with one server killed mid-run": {"value": failed, "target": 0,
                                                                           "met": failed == 0}}
    return report


STOP_CLIENTS = 32
TARGET_STOPPED_FRACTION = 0.4
TARGET_LONGEST_WAIT_S = 2.0


def stopped_server_fate(server: TritonServer) -> str:
    """Why a SIGSTOPped server exited after SIGCONT."""
    return "killed by its stall guard" if FROZEN_LOG in server.log_path.read_text() else "crashed"


def measure_stop(work: Path, phase_seconds: float) -> dict:
    """Two servers, STOP_CLIENTS threads on one DDNClient (default timeout): unstopped, one SIGSTOPped, unstopped.

    Each phase runs ``phase_seconds``; the stopped server gets SIGCONT after
    its phase and the last phase starts once a probe let it back in, or once it
    exited: when the stop froze a batch, its stall guard kills it (as it must:
    export/stall_guard.py), and the last phase runs on the other server alone.
    The stopped phase's images/s is compared with the mean of the phases around
    it when the server came back, with the first phase's when it did not.
    """
    repository, codes, report = export_measured(work)
    report["fleet_server_settings"] = FLEET_SERVER
    with contextlib.ExitStack() as stack:
        view = stack.enter_context(cpu_repository_view(repository, cpu_settings(**FLEET_SERVER)))
        log("starting 2 servers ...")
        servers = [stack.enter_context(TritonServer(view)) for _ in range(2)]
        client = stack.enter_context(DDNClient([s.grpc_url for s in servers], NAME, batch_size=1))
        report["client"] = {"timeout_s": client.timeout_s, "clients": STOP_CLIENTS}
        fleet_loop(client, servers, codes, STOP_CLIENTS, 2.0)  # warm up: connections, instances, latencies
        phases: dict[str, dict] = {}
        log(f"unstopped {phase_seconds:g} s ...")
        phases["before"] = merge([fleet_loop(client, servers, codes, STOP_CLIENTS, phase_seconds)])
        hedged = client.hedged
        log(f"one server stopped {phase_seconds:g} s ...")
        os.killpg(servers[0].pid, signal.SIGSTOP)
        try:
            phases["stopped"] = merge([fleet_loop(client, servers[1:], codes, STOP_CLIENTS, phase_seconds)])
            phases["stopped"]["requests_hedged"] = client.hedged - hedged
            phases["stopped"]["endpoints"] = [{k: v for k, v in stats.items() if k != "in_flight"}
                                              for stats in client.endpoint_stats()]  # the first one was stopped
        finally:
            os.killpg(servers[0].pid, signal.SIGCONT)
        continued = time.monotonic()
        while not client.endpoint_stats()[0]["healthy"] and time.monotonic() - continued < 30 \
                and servers[0].poll() is None:
            client.generate(codes=codes[:1])
        came_back = servers[0].poll() is None
        phases["stopped"]["after_sigcont"] = "rejoined" if came_back else stopped_server_fate(servers[0])
        phases["stopped"]["after_sigcont_s"] = round(time.monotonic() - continued, 2)
        log(f"unstopped again {phase_seconds:g} s ({phases['stopped']['after_sigcont']}) ...")
        phases["after"] = merge([fleet_loop(client, servers if came_back else servers[1:], codes, STOP_CLIENTS,
                                            phase_seconds)])
        if came_back and servers[0].poll() is not None:  # its guard may fire after a probe let it back in
            phases["stopped"]["after_sigcont"] = f"rejoined, then {stopped_server_fate(servers[0])}"
    report["phases"] = phases
    unstopped = (phases["before"]["images_per_s"] + phases["after"]["images_per_s"]) / 2 if came_back \
        else phases["before"]["images_per_s"]
    fraction = round(phases["stopped"]["images_per_s"] / unstopped, 3)
    longest = round(max(phase["max_ms"] for phase in phases.values()) / 1e3, 3)
    report["targets"] = {
        "images/s while one server is stopped / unstopped": {
            "value": fraction, "target": f">= {TARGET_STOPPED_FRACTION}", "met": fraction >= TARGET_STOPPED_FRACTION},
        "longest request wait (s)": {"value": longest, "target": f"<= {TARGET_LONGEST_WAIT_S}",
                                     "met": longest <= TARGET_LONGEST_WAIT_S},
        "failed requests": {"value": sum(p["failed"] for p in phases.values()), "target": 0,
                            "met": all(p["failed"] == 0 for p in phases.values())},
    }
    return report


@click.command(context_settings={"show_default": True})
@click.option("--point-seconds", type=float, default=6.0, help="measuring time per point, split over the rounds")
@click.option("--rounds", type=click.IntRange(min=1), default=3, help="alternating rounds per point")
@click.option("--soak-seconds", type=float, default=60.0, help="length of the soak at the saturating concurrency")
@click.option("--concurrency", "levels", default="1,4,16,64", help="client concurrency levels")
@click.option("--sweep", "kind", type=click.Choice(["configs", "fleet", "stop"]), default="configs",
              help="configs: server configurations on one server; fleet: 1-3 servers behind one client, with kills; "
                   "stop: 2 servers, one SIGSTOPped for --point-seconds (10 s is the target's measurement)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="also write the JSON here")
def main(point_seconds: float, rounds: int, soak_seconds: float, levels: str, kind: str, out: Path | None) -> None:
    run = BenchmarkRun()
    with tempfile.TemporaryDirectory(prefix="ddn-serve-load-") as work:
        if kind == "fleet":
            report = measure_fleet(Path(work), point_seconds, rounds)
        elif kind == "stop":
            report = measure_stop(Path(work), point_seconds)
        else:
            report = measure(Path(work), point_seconds, rounds, soak_seconds, [int(c) for c in levels.split(",")])
    report = run.report(**report)
    print(write_report(out, report) if out else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
