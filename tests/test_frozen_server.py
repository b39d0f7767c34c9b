"""A Triton server frozen in the middle of a batch (its whole process group SIGSTOPped, as a paused container or a
starved node freezes it) never hands a plain tritonclient a wrong image: the python backend would pass the frozen
batch's late answer to the next batch, so the models' stall guard kills the server instead (export/stall_guard.py).

Measured before the guard, with this test's traffic and freeze: 4 of 25 servers answered a request with another
request's image (docs/serving.md, "A frozen python backend").
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="needs the nvidia-pytriton wheel (pip install 'ddn-serve[serving]')")
grpcclient = pytest.importorskip("tritonclient.grpc")

from ddn.export.stall_guard import FROZEN_LOG  # noqa: E402
from ddn.serving.onnx_model import OnnxModel  # noqa: E402
from ddn.serving.repository_view import cpu_repository_view  # noqa: E402
from ddn.serving.triton_server import TritonServer  # noqa: E402

NAME = "tiny"
FREEZE_S = 1.5  # past the 1 s the backend waits for a sign of life
TRIALS = 6  # a freeze can land between batches (nothing to guard); six such trials in a row are < 0.1 % likely


@pytest.fixture(scope="module")
def repository(tiny_generation_repository: Path) -> Path:
    return tiny_generation_repository


class Traffic:
    """Four threads sending one-image requests back to back with plain tritonclient, every answer checked."""

    def __init__(self, url: str, codes: np.ndarray, want: np.ndarray):
        self.url, self.codes, self.want = url, codes, want
        self.right = self.wrong = self.failed = 0
        self._lock, self._running = threading.Lock(), True
        self._threads = [threading.Thread(target=self._send, args=(i,), daemon=True) for i in range(4)]
        for thread in self._threads:
            thread.start()

    def _send(self, first: int) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        row = first
        while self._running:
            row = (row + 4) % len(self.codes)
            codes = grpcclient.InferInput("codes", [1, self.codes.shape[1]], "INT32")
            codes.set_data_from_numpy(self.codes[row:row + 1])
            try:
                result = client.infer(NAME, [codes], outputs=[grpcclient.InferRequestedOutput("images")],
                                      client_timeout=10)
            except grpcclient.InferenceServerException:
                with self._lock:
                    self.failed += 1
                time.sleep(0.01)
                continue
            with self._lock:
                if np.array_equal(result.as_numpy("images")[0], self.want[row]):
                    self.right += 1
                else:
                    self.wrong += 1

    def stop(self) -> None:
        self._running = False
        for thread in self._threads:
            thread.join(15)


def test_a_server_frozen_mid_batch_is_stopped_and_never_answers_wrong(repository: Path) -> None:
    local = OnnxModel.from_repository(repository, NAME)
    codes = local.codes_for_seeds(range(200))
    want = local.generate(codes=codes)
    guarded = 0
    with cpu_repository_view(repository) as view:
        for _ in range(TRIALS):
            with TritonServer(view) as server:
                traffic = Traffic(server.grpc_url, codes, want)
                try:
                    time.sleep(0.5)
                    os.killpg(server.pid, signal.SIGSTOP)
                    time.sleep(FREEZE_S)
                    os.killpg(server.pid, signal.SIGCONT)
                    time.sleep(1.5)
                finally:
                    os.killpg(server.pid, signal.SIGCONT)
                    traffic.stop()
                log = server.log_path.read_text()
                assert traffic.wrong == 0, f"{traffic.wrong} wrong images of {traffic.wrong + traffic.right}"
                assert traffic.right > 0
                if FROZEN_LOG in log:
                    assert server.wait(timeout=10) == -signal.SIGKILL
                    assert f"ddn: model {NAME}: {FROZEN_LOG}" in log
                    guarded += 1
                    break
    assert guarded, f"no freeze of {TRIALS} landed in a batch"
