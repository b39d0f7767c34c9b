"""Serving past one server: several real Triton servers, faults mid-run, hedging, DNS names, shards, TLS.

Every server here is the nvidia-pytriton binary on free loopback ports. One
tiny generator is exported once; three servers on it run for the whole
module, and a local ddn-generate run of the seeds (ONNX Runtime, no server)
is the reference every fleet run must match byte for byte. Tests that need a
server to die, hang or appear start their own.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("pytriton", reason="needs the nvidia-pytriton wheel (pip install 'ddn-serve[serving]')")
grpcclient = pytest.importorskip("tritonclient.grpc")
pytest.importorskip("cryptography")


from ddn.export.stall_guard import FROZEN_LOG  # noqa: E402
from ddn.repository_contract import ONNX_DIGEST_PARAMETER  # noqa: E402
from ddn.serving.client import DDNClient, ServingError  # noqa: E402
from ddn.serving.dns_names import parse_dns_target, system_resolver  # noqa: E402
from ddn.serving.endpoints import EndpointPool, parse_urls, retryable  # noqa: E402
from ddn.serving.generate_cli import generate_pngs, main as generate_main  # noqa: E402
from ddn.serving.repository_view import cpu_repository_view  # noqa: E402
from ddn.serving.serve_cli import main as serve_main  # noqa: E402
from ddn.serving.shards import Shard  # noqa: E402
from ddn.serving.triton_server import TritonServer  # noqa: E402
from cli_helpers import one_line_error, usage_error  # noqa: E402
from tls_helpers import self_signed  # noqa: E402

NAME = "tiny"
SEEDS = range(100, 148)
# Small requests, so a run is many requests and a fault lands in the middle of it.
RUN = ["--n", str(len(SEEDS)), "--seed", str(SEEDS.start), "--batch", "2", "--concurrency", "4", "--no-progress"]
# Runs that a server dies, hangs or joins during: long enough that the fault lands well inside them.
LONG_SEEDS = range(1000, 1400)
LONG_RUN = ["--n", str(len(LONG_SEEDS)), "--seed", str(LONG_SEEDS.start), "--batch", "1", "--concurrency", "8",
            "--no-progress"]


@pytest.fixture(scope="module")
def repository(tiny_generation_repository: Path) -> Path:
    return tiny_generation_repository


@pytest.fixture(scope="module")
def view(repository: Path):
    with cpu_repository_view(repository) as folder:
        yield folder


def stop_all(servers: list[TritonServer]) -> None:
    """Stop servers side by side (each waits for its models to unload)."""
    threads = [threading.Thread(target=server.stop) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.fixture(scope="module")
def fleet(view: Path):
    servers = [TritonServer(view) for _ in range(3)]
    try:
        yield [server.start() for server in servers]  # from this thread: servers die with their starter
    finally:
        stop_all(servers)


def local_run(repository: Path, run: list[str], out: Path) -> dict[str, bytes]:
    """PNG name -> bytes of a ddn-generate run with ONNX Runtime in this process (no server)."""
    result = CliRunner().invoke(generate_main, [*run, "--repository", str(repository), "--model", NAME,
                                                "--out", str(out)])
    assert result.exit_code == 0, result.output
    return pngs(out)


@pytest.fixture(scope="module")
def reference(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The local run of SEEDS."""
    return local_run(repository, RUN, tmp_path_factory.mktemp("local"))


@pytest.fixture(scope="module")
def long_reference(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The local run of LONG_SEEDS."""
    return local_run(repository, LONG_RUN, tmp_path_factory.mktemp("local_long"))


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def served_requests(server: TritonServer) -> int:
    """Successful inference requests the server counted (its Prometheus metrics)."""
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        text = response.read().decode()
    counters = re.findall(r'^nv_inference_request_success\{[^}]*model="tiny"[^}]*\} (\S+)', text, re.MULTILINE)
    return sum(int(float(value)) for value in counters)


@pytest.mark.parametrize("how", ["repeated", "comma"])
def test_servers_share_a_run_and_write_the_one_server_bytes(fleet: list[TritonServer], reference: dict[str, bytes],
                                                            tmp_path: Path, how: str) -> None:
    servers = fleet[:2] if how == "repeated" else fleet
    urls = [arg for s in servers for arg in ("--url", s.grpc_url)] if how == "repeated" else \
        ["--url", ",".join(s.grpc_url for s in servers)]
    before = [served_requests(s) for s in servers]
    result = CliRunner().invoke(generate_main, [*RUN, *urls, "--model", NAME, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert pngs(tmp_path) == reference and len(reference) == len(SEEDS)
    expected = len(SEEDS) // 2  # 2 images per request, none sent twice
    # A server may count a request just after its response reached the client: wait for the last count.
    deadline = time.monotonic() + 5
    while sum(took := [served_requests(s) - b for s, b in zip(servers, before)]) < expected \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(n > 0 for n in took), took  # every server answered part of the run
    assert sum(took) == expected, took


def test_requests_go_to_the_endpoint_with_the_fewest_in_flight(fleet: list[TritonServer]) -> None:
    pool = EndpointPool([s.grpc_url for s in fleet], grpcclient.InferenceServerClient)
    try:
        pool.start()
        deadline = time.monotonic() + 5
        held = [pool.acquire(deadline) for _ in range(5)]  # 1 in flight on each, then a second on two of them
        assert sorted(e.url for e in held[:3]) == sorted(s.grpc_url for s in fleet)
        assert {e.url for e in held[3:]} < {s.grpc_url for s in fleet} and held[3] is not held[4]
        idle = next(e for e in held[:3] if e not in held[3:])
        assert pool.acquire(deadline) is idle  # the only one with 1 in flight
        pool.release(held[0], None)
        assert pool.acquire(deadline) is held[0]
        assert pool.acquire(deadline, avoid=idle) is not idle
    finally:
        pool.close()


def test_endpoints_are_read_from_repeats_and_comma_lists() -> None:
    assert parse_urls(["a:1,b:2", " grpc://c:3 "]) == ("a:1", "b:2", "c:3")
    assert parse_urls("a:1") == ("a:1",)
    with pytest.raises(ValueError, match="endpoint a:1 is given more than once"):
        parse_urls(["a:1", "grpc://a:1"])
    with pytest.raises(ValueError, match="no Triton endpoint given"):
        parse_urls(" , ")


@pytest.mark.parametrize("status, message, resend", [
    ("NOT_FOUND", "Request for unknown model: 'tiny' has no available versions", True),  # a dying server's words
    ("NOT_FOUND", "Request for unknown model: 'tiny' is not found", True),
    ("UNAVAILABLE", "Server is stopping, scheduler for model has stopped accepting new inference requests", True),
    ("INTERNAL", "Failed to process the request(s) for model 'tiny', message: Stub process is not healthy.", True),
    ("INVALID_ARGUMENT", "unexpected shape for input 'codes' for model 'tiny'. Expected [-1,8], got [1,3].", False),
    ("INVALID_ARGUMENT", "inference input 'codes' data-type is 'FP32', but model 'tiny' expects 'INT32'", False),
])
def test_what_a_request_on_a_checked_endpoint_is_resent_for(status: str, message: str, resend: bool) -> None:
    """Requests only go to endpoints checked to serve the model: losing it is the endpoint's fault, a refused
    input is the request's (every endpoint would refuse it). The messages are tritonserver 2.51's."""
    error = grpcclient.InferenceServerException(message, status=f"StatusCode.{status}")
    assert retryable(error) is resend


def signal_when_written(folder: Path, count: int, send: Callable[[], None]) -> tuple[threading.Thread, list[int]]:
    """A started thread that calls ``send`` once ``count`` PNGs are in ``folder``; the list gets how many there were."""
    sent_at: list[int] = []

    def watch() -> None:
        deadline = time.monotonic() + 60
        while len(list(folder.glob("*.png"))) < count and time.monotonic() < deadline:
            time.sleep(0.002)
        sent_at.append(len(list(folder.glob("*.png"))))
        send()

    thread = threading.Thread(target=watch)
    thread.start()
    return thread, sent_at


@pytest.mark.parametrize("death", ["SIGKILL to the process group", "SIGTERM (graceful shutdown)"])
def test_a_server_that_dies_mid_run_costs_nothing(view: Path, fleet: list[TritonServer],
                                                  long_reference: dict[str, bytes], tmp_path: Path,
                                                  death: str) -> None:
    """A dying server first answers "unknown model" / "no available versions" (its models unload, or its stubs die
    first): it is ejected like an unreachable one and the request goes to the other server with the same codes."""
    victim = TritonServer(view).start()  # from this thread: it dies with its starter
    served_before: list[int] = []

    def kill() -> None:
        served_before.append(served_requests(victim))
        if death.startswith("SIGKILL"):
            os.killpg(victim.pid, signal.SIGKILL)  # the server and its backend stubs, no goodbye
        else:
            os.kill(victim.pid, signal.SIGTERM)  # what Kubernetes sends a pod it scales down

    try:
        killer, killed_at = signal_when_written(tmp_path, len(LONG_SEEDS) // 8, kill)
        result = CliRunner().invoke(generate_main, [*LONG_RUN, "--url", f"{victim.grpc_url},{fleet[0].grpc_url}",
                                                    "--model", NAME, "--out", str(tmp_path)])
        killer.join()
        assert victim.wait() != 0 or death.startswith("SIGTERM")  # really gone
    finally:
        victim.stop()
    assert result.exit_code == 0, result.output
    assert served_before[0] > 0 and killed_at[0] < len(LONG_SEEDS)  # it served, and died mid-run
    assert pngs(tmp_path) == long_reference


class Waves:
    """A DDNClient as generate_pngs uses it, recording how long each wave's generate() took.

    ``before(i)`` runs before wave i: what happens to the fleet in the middle of a run.
    """

    def __init__(self, client: DDNClient, before: Callable[[int], None] = lambda i: None):
        self.client, self.before, self.seconds = client, before, []
        self.layout, self.codes_for_seeds, self.close = client.layout, client.codes_for_seeds, client.close

    def generate(self, seeds=None, codes=None, output: str = "images") -> np.ndarray:
        self.before(len(self.seconds))
        start = time.monotonic()
        images = self.client.generate(seeds=seeds, codes=codes, output=output)
        self.seconds.append(time.monotonic() - start)
        return images


def exited(server: TritonServer) -> bool:
    """Whether the server process is gone (a zombie its starter has not reaped yet counts as gone; Linux /proc)."""
    try:
        return Path("/proc", str(server.pid), "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_hung_server_costs_a_fraction_of_a_second_and_rejoins(view: Path, fleet: list[TritonServer],
                                                                long_reference: dict[str, bytes],
                                                                tmp_path: Path) -> None:
    """SIGSTOP: connected, silent. With the default 30 s timeout, its requests are hedged to the other server after
    at most a second, it is ejected as hung, and no wave of the run (each request's wait and more) takes 2 s. After
    SIGCONT it rejoins, or, when the stop froze a batch, its stall guard kills it (or the python backend crashes)
    rather than let that batch's answer reach another request (tests/test_frozen_server.py)."""
    with TritonServer(view) as hung, DDNClient([hung.grpc_url, fleet[0].grpc_url], model=NAME, batch_size=1,
                                               concurrency=4, probe_interval_s=0.2) as client:
        client.generate(seeds=range(64))  # both endpoints learn their latency
        at_ejection: list[dict] = []

        def stop_then_continue_once_ejected(wave: int) -> None:
            if wave == 0:
                os.killpg(hung.pid, signal.SIGSTOP)
            elif not at_ejection and not client.endpoint_stats()[0]["healthy"]:
                at_ejection.append(client.endpoint_stats()[0])
                os.killpg(hung.pid, signal.SIGCONT)

        waves = Waves(client, stop_then_continue_once_ejected)
        try:
            assert generate_pngs(waves, LONG_SEEDS, tmp_path, wave=4, progress=False) == len(LONG_SEEDS)
        finally:
            os.killpg(hung.pid, signal.SIGCONT)
        assert pngs(tmp_path) == long_reference
        assert max(waves.seconds) < 2.0, sorted(waves.seconds)[-5:]
        stats = at_ejection[0]
        assert re.fullmatch(r"hung: \d+ requests in a row overdue, no answer for \d+\.\d s", stats["last_error"]), stats
        assert client.hedged >= stats["hedged"] >= 3 and stats["failed"] == 0, stats  # hedged, never timed out
        # Back in rotation once a probe finds it ready (it may first work off what queued while it was stopped).
        want = client.generate(seeds=SEEDS)
        deadline = time.monotonic() + 30
        while client.endpoint_stats()[0]["succeeded"] == stats["succeeded"] and time.monotonic() < deadline \
                and not exited(hung):
            np.testing.assert_array_equal(client.generate(seeds=SEEDS), want)
        if exited(hung):  # killed by its stall guard, or the backend crashed: nothing left to rejoin; the run went on
            assert re.search(rf"{FROZEN_LOG}|terminate called|Signal \(\d+\) received", hung.log_path.read_text())
            np.testing.assert_array_equal(client.generate(seeds=SEEDS), want)
        else:
            assert client.endpoint_stats()[0]["succeeded"] > stats["succeeded"], str(client.endpoint_stats())


# -- one DNS name for the fleet (a headless Service) ---------------------------------------------------------------
def test_dns_targets_are_parsed() -> None:
    assert parse_urls(["dns:///ddn-triton-headless:8001", "a:1"]) == ("dns:///ddn-triton-headless:8001", "a:1")
    assert (parse_dns_target("dns:///h:8001").host, parse_dns_target("dns:h:8001").port) == ("h", 8001)
    assert parse_dns_target("dns:///[::1]:8001").host == "::1"
    with pytest.raises(ValueError, match=r"^dns://8.8.8.8/h:1: a DNS server authority is not supported"):
        parse_urls("dns://8.8.8.8/h:1")
    for bad in ("dns:///h", "dns:///h:0", "dns:///:1", "dns:///h:x"):
        with pytest.raises(ValueError, match=rf"^{re.escape(bad)}: expected dns:///HOST:PORT with a port 1-65535$"):
            parse_urls(bad)
    assert "127.0.0.1" in system_resolver("localhost", 1)


def test_a_dns_name_that_does_not_resolve_is_named_in_one_line() -> None:
    def nothing(host: str, port: int) -> list[str]:
        raise OSError(f"no address for {host}")

    with DDNClient("dns:///ddn-triton-headless:8001", model=NAME, resolver=nothing) as client, \
            pytest.raises(ServingError, match=r"^cannot reach any Triton server at dns:///ddn-triton-headless:8001 "
                                              r"\(gRPC\): dns:///ddn-triton-headless:8001: cannot resolve "
                                              r"ddn-triton-headless: no address for ddn-triton-headless$"):
        client.generate(seeds=[0])


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def test_a_dns_name_is_every_address_it_resolves_to_now(view: Path, long_reference: dict[str, bytes],
                                                        tmp_path: Path) -> None:
    """Three servers on one port at 127.0.0.1-3, a name the test resolves: two addresses, a third added mid-run (it
    joins and serves), the first removed (drained); every PNG is the local run's."""
    first = TritonServer(view, host="127.0.0.1")
    port = first.grpc_port  # a headless Service: every pod on the same port
    servers = [first, *(TritonServer(view, host=f"127.0.0.{i}", grpc_port=port) for i in (2, 3))]
    answer = ["127.0.0.1", "127.0.0.2"]
    asked: list[str] = []

    def resolver(host: str, _port: int) -> list[str]:
        asked.append(host)
        return list(answer)

    try:
        for server in servers:
            server.start()
        with DDNClient(f"dns:///ddn-triton-headless:{port}", model=NAME, batch_size=2, concurrency=4,
                       probe_interval_s=0.2, resolver=resolver, resolve_interval_s=0.2) as client:
            def urls(healthy_only: bool = False) -> set[str]:
                return {s["url"] for s in client.endpoint_stats() if s["healthy"] or not healthy_only}

            def change_the_answer(wave: int) -> None:
                if wave == 10:
                    answer.append("127.0.0.3")  # a pod scaled up
                    wait_for(lambda: f"127.0.0.3:{port}" in urls(healthy_only=True), "the new address joined")
                elif wave == 40:
                    answer.remove("127.0.0.1")  # a pod scaled down
                    wait_for(lambda: f"127.0.0.1:{port}" not in urls(), "the vanished address was drained")

            waves = Waves(client, change_the_answer)
            assert generate_pngs(waves, LONG_SEEDS, tmp_path, wave=8, progress=False) == len(LONG_SEEDS)
            stats = {s["url"]: s for s in client.endpoint_stats()}
        assert len(waves.seconds) == len(LONG_SEEDS) // 8 and set(asked) == {"ddn-triton-headless"}
        assert pngs(tmp_path) == long_reference
        assert set(stats) == {f"127.0.0.{i}:{port}" for i in (2, 3)}
        assert stats[f"127.0.0.3:{port}"]["succeeded"] > 0, stats  # the server added mid-run got requests
        assert all(served_requests(server) > 0 for server in servers)
    finally:
        stop_all(servers)


def test_ddn_generate_takes_a_dns_name(fleet: list[TritonServer], reference: dict[str, bytes],
                                       tmp_path: Path) -> None:
    """The system's resolver: localhost is 127.0.0.1 here (and ::1 where it has one, which nothing serves)."""
    result = CliRunner().invoke(generate_main, [*RUN, "--url", f"dns:///localhost:{fleet[0].grpc_port}",
                                                "--resolve-interval", "0.5", "--model", NAME, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert pngs(tmp_path) == reference


def test_a_run_whose_only_server_dies_fails_in_one_line_after_the_timeout(view: Path) -> None:
    with TritonServer(view) as only, DDNClient(only.grpc_url, model=NAME, timeout_s=1,
                                               probe_interval_s=0.2) as client:
        client.generate(seeds=[0])
        os.killpg(only.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(ServingError, match=rf"^no Triton server answered within 1 s: {only.grpc_url}: "):
            client.generate(seeds=SEEDS)
        assert time.monotonic() - started < 10


def test_a_server_started_later_joins(view: Path, fleet: list[TritonServer]) -> None:
    late = TritonServer(view)  # its ports are chosen; nothing listens there yet
    seeds = list(SEEDS)
    try:
        with DDNClient([fleet[2].grpc_url, late.grpc_url], model=NAME, batch_size=1, concurrency=4,
                       probe_interval_s=0.2) as client:
            first = client.generate(seeds=seeds)
            assert [s["healthy"] for s in client.endpoint_stats()] == [True, False]
            late.start()
            deadline = time.monotonic() + 30
            while client.endpoint_stats()[1]["succeeded"] == 0 and time.monotonic() < deadline:
                np.testing.assert_array_equal(client.generate(seeds=seeds), first)
            assert client.endpoint_stats()[1]["succeeded"] > 0, client.endpoint_stats()
            np.testing.assert_array_equal(client.generate(seeds=seeds), first)
    finally:
        late.stop()


def another_graph(config) -> None:
    """What another export of the same layout (other weights) looks like to a client: another ONNX digest."""
    config.parameters[ONNX_DIGEST_PARAMETER].string_value = hashlib.sha256(b"other weights").hexdigest()


def test_a_mismatched_server_is_left_out_when_it_joins_later_and_refused_at_start(
        repository: Path, fleet: list[TritonServer], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with cpu_repository_view(repository, another_graph) as other_view:
        other = TritonServer(other_view)
        with DDNClient([fleet[0].grpc_url, other.grpc_url], model=NAME, probe_interval_s=0.2) as client, \
                caplog.at_level(logging.WARNING, logger="ddn.serving.client"):
            served = client.generate(seeds=SEEDS)  # the other server is not up yet
            other.start()
            # Once a probe lets it join it is checked before its first request: left out with a warning.
            deadline = time.monotonic() + 30
            while not caplog.records and time.monotonic() < deadline:
                np.testing.assert_array_equal(client.generate(seeds=SEEDS), served)
            rejoins = time.monotonic() + 1  # several probe intervals: it rejoins, is checked and left out again
            while time.monotonic() < rejoins:
                np.testing.assert_array_equal(client.generate(seeds=SEEDS), served)  # the run goes on
            stats = client.endpoint_stats()[1]
        assert len(caplog.records) == 1, caplog.records  # warned once, not at every rejoin
        mismatch = (rf"endpoints serve different models: 'tiny' has ddn_onnx_sha256 '[0-9a-f]{{64}}' on "
                    rf"{fleet[0].grpc_url} but '[0-9a-f]{{64}}' on {other.grpc_url}; every endpoint must serve the "
                    "same export")
        assert re.fullmatch(rf"warning: {mismatch}; {other.grpc_url} is left out", caplog.records[0].getMessage())
        assert stats["succeeded"] == 0 and re.fullmatch(mismatch, stats["last_error"]), stats
        # Both up from the start: nothing says which is right, so the run is refused before anything is written.
        result = CliRunner().invoke(generate_main, [*RUN, "--url", f"{fleet[0].grpc_url},{other.grpc_url}",
                                                    "--model", NAME, "--out", str(tmp_path / "out")])
        line = one_line_error(result)
        assert re.fullmatch(f"Error: {mismatch}", line), line
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
        # Alone, the other server is fine: the refusal is about mixing.
        with DDNClient(other.grpc_url, model=NAME) as alone:
            assert alone.generate(seeds=[1]).shape == (1, 8, 8, 1)
        other.stop()


def test_shards_write_the_full_set_exactly_once(repository: Path, reference: dict[str, bytes],
                                               tmp_path: Path) -> None:
    local = ["--n", str(len(SEEDS)), "--seed", str(SEEDS.start), "--no-progress", "--repository", str(repository),
             "--model", NAME]
    shards = []
    for index in range(3):
        out = tmp_path / f"shard{index}"
        result = CliRunner().invoke(generate_main, [*local, "--shard", f"{index}/3", "--out", str(out)])
        assert result.exit_code == 0, result.output
        shards.append(pngs(out))
        assert {int(name.split(".")[0]) % 3 for name in shards[-1]} == {index}
    assert sum(len(s) for s in shards) == len(SEEDS)
    assert {name: data for shard in shards for name, data in shard.items()} == reference
    rerun = CliRunner().invoke(generate_main, [*local, "--shard", "1/3", "--out", str(tmp_path / "shard1")])
    assert rerun.exit_code == 0 and f"0 written, {len(shards[1])} already there" in rerun.output
    for bad in ("3/3", "1/0", "a/2", "2"):
        result = CliRunner().invoke(generate_main, [*local, "--shard", bad, "--out", str(tmp_path / "x")])
        assert usage_error(result).startswith("Error: Invalid value for '--shard'")


@pytest.mark.parametrize("seeds", [range(0, 10), range(7, 8), range(5, 5), range(3, 1000)])
@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shard_seeds_partition_any_range(seeds: range, count: int) -> None:
    parts = [Shard(i, count).seeds(seeds) for i in range(count)]
    assert sorted(s for part in parts for s in part) == list(seeds)
    assert all(s % count == i for i, part in enumerate(parts) for s in part)


# -- TLS ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"), "server")


@pytest.fixture(scope="module")
def tls_server(view: Path, certificate: tuple[Path, Path]):
    with TritonServer(view, tls_cert=certificate[0], tls_key=certificate[1]) as server:
        yield server


def test_tls_round_trip(tls_server: TritonServer, certificate: tuple[Path, Path], reference: dict[str, bytes],
                        tmp_path: Path) -> None:
    result = CliRunner().invoke(generate_main, [*RUN, "--url", tls_server.grpc_url, "--tls-root-cert",
                                                str(certificate[0]), "--model", NAME, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert pngs(tmp_path) == reference


def test_plaintext_client_is_refused_by_a_tls_server_with_a_clear_error(tls_server: TritonServer,
                                                                       tmp_path: Path) -> None:
    result = CliRunner().invoke(generate_main, [*RUN, "--url", tls_server.grpc_url, "--model", NAME,
                                                "--connect-timeout", "2", "--out", str(tmp_path / "out")])
    line = one_line_error(result)
    assert line.startswith(f"Error: cannot reach the Triton server at {tls_server.grpc_url} (gRPC): ")
    assert line.endswith(f"{tls_server.grpc_url} speaks TLS and this client does not: give the server's root "
                         "certificate (ddn-generate --tls-root-cert FILE, DDNClient(root_certificates=FILE))"), line


def test_tls_client_names_a_plaintext_server_and_an_untrusted_certificate(
        tls_server: TritonServer, fleet: list[TritonServer], tmp_path: Path) -> None:
    stranger, _ = self_signed(tmp_path, "stranger")
    with DDNClient(fleet[0].grpc_url, model=NAME, root_certificates=stranger, connect_timeout_s=2) as client, \
            pytest.raises(ServingError, match=f"{re.escape(fleet[0].grpc_url)} does not speak TLS: connect without"):
        client.generate(seeds=[0])
    with DDNClient(tls_server.grpc_url, model=NAME, root_certificates=stranger, connect_timeout_s=2) as client, \
            pytest.raises(ServingError, match="CERTIFICATE_VERIFY_FAILED"):
        client.generate(seeds=[0])


def test_tls_options_are_checked(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    only_cert = CliRunner().invoke(serve_main, ["--repository", str(tmp_path), "--tls-cert", str(certificate[0])])
    assert usage_error(only_cert) == "Error: --tls-cert and --tls-key go together"
    missing = CliRunner().invoke(serve_main, ["--repository", str(tmp_path), "--tls-cert", str(certificate[0]),
                                              "--tls-key", str(tmp_path / "nope.key")])
    assert re.fullmatch(r"Error: Invalid value for '--tls-key': File '.*nope.key' does not exist.", usage_error(missing))
    with pytest.raises(ValueError, match="TLS needs both a certificate and its private key"):
        TritonServer(tmp_path, tls_cert=certificate[0])
    with pytest.raises(FileNotFoundError, match="TLS private key not found"):
        TritonServer(tmp_path, tls_cert=certificate[0], tls_key=tmp_path / "nope.key")
    result = CliRunner().invoke(generate_main, [*RUN, "--url", "127.0.0.1:1", "--model", NAME,
                                                "--tls-root-cert", str(tmp_path / "nope.crt"), "--out", str(tmp_path)])
    assert one_line_error(result) == f"Error: root certificate not found: {tmp_path / 'nope.crt'}"
