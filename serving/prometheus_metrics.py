"""Triton's per-model Prometheus counters, written from the statistics its gRPC API reports.

Triton's metrics port is an HTTP server like its inference frontend, and a
large POST body crashes it the same way (see :mod:`ddn.serving.http_gateway`),
so it is never started. The counters a scraper or autoscaler uses
(``nv_inference_queue_duration_us`` over ``nv_inference_request_success``,
request and compute durations) are cumulative sums that the statistics API
also reports; this renders them under Triton's names and labels.
"""
from __future__ import annotations

from tritonclient.grpc import service_pb2

# name -> (help text, how to read it from one model's statistics)
_COUNTERS = {
    "nv_inference_request_success": ("Number of successful inference requests, all batch sizes",
                                     lambda s: s.inference_stats.success.count),
    "nv_inference_request_failure": ("Number of failed inference requests, all batch sizes",
                                     lambda s: s.inference_stats.fail.count),
    "nv_inference_count": ("Number of inferences performed (does not include cached requests)",
                           lambda s: s.inference_count),
    "nv_inference_exec_count": ("Number of model executions performed (does not include cached requests)",
                                lambda s: s.execution_count),
    "nv_inference_request_duration_us": ("Cumulative inference request duration in microseconds",
                                         lambda s: s.inference_stats.success.ns // 1000),
    "nv_inference_queue_duration_us": ("Cumulative inference queuing duration in microseconds",
                                       lambda s: s.inference_stats.queue.ns // 1000),
    "nv_inference_compute_input_duration_us": ("Cumulative compute input duration in microseconds",
                                               lambda s: s.inference_stats.compute_input.ns // 1000),
    "nv_inference_compute_infer_duration_us": ("Cumulative compute inference duration in microseconds",
                                               lambda s: s.inference_stats.compute_infer.ns // 1000),
    "nv_inference_compute_output_duration_us": ("Cumulative inference compute output duration in microseconds",
                                                lambda s: s.inference_stats.compute_output.ns // 1000),
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(statistics: service_pb2.ModelStatisticsResponse) -> str:
    """The Prometheus text exposition of every model version's counters in ``statistics``."""
    lines = []
    for name, (help_text, read) in _COUNTERS.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        lines += [f'{name}{{model="{_label(s.name)}",version="{_label(s.version)}"}} {read(s)}'
                  for s in statistics.model_stats]
    return "\n".join(lines) + "\n"
