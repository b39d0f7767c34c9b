"""The repository contract's own round trips (torch-free).

That every reader reads back what ddn-export wrote, through a real server, is
``test_serving.py::test_every_reader_reads_back_what_the_exporter_wrote``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ddn.repository_contract import (ONNX_DIGEST_PARAMETER, ORT_THREADS_PARAMETER, EntryDescription, GraphLayout,
                                     RepositoryError, TensorSpec, identity_parameters, read_description,
                                     write_description)


def test_layout_round_trips_through_config_parameters_and_json() -> None:
    for layout in (GraphLayout("generate", 3, (4, 5, 6), 8, 3), GraphLayout("superres", 2, (7, 7), 16, 1, 4)):
        assert GraphLayout.from_parameters(layout.parameters()) == layout
        assert GraphLayout.from_json(json.loads(json.dumps(layout.to_json()))) == layout


def test_description_round_trips_and_bad_files_are_named(tmp_path: Path) -> None:
    spec = TensorSpec("codes", np.dtype(np.int32), (3,))
    description = EntryDescription(GraphLayout("generate", 3, (4, 4, 4), 8, 1), (spec,),
                                   (TensorSpec("images", np.dtype(np.uint8), (8, 8, 1)),), 16, {"model": "m"})
    write_description(tmp_path, description)
    assert read_description(tmp_path) == description

    data = json.loads((tmp_path / "ddn.json").read_text())
    with pytest.raises(RepositoryError, match="ddn.json not found"):
        read_description(tmp_path / "missing")
    (tmp_path / "ddn.json").write_text(json.dumps({**data, "format": "other/1"}))
    with pytest.raises(RepositoryError, match="not a ddn-export description .*'other/1'"):
        read_description(tmp_path)
    del data["branch_counts"]
    (tmp_path / "ddn.json").write_text(json.dumps(data))
    with pytest.raises(RepositoryError, match="incomplete or malformed: KeyError: 'branch_counts'"):
        read_description(tmp_path)
    with pytest.raises(RepositoryError, match="no parameter 'ddn_image_size'"):
        GraphLayout.from_parameters({k: v for k, v in description.layout.parameters().items()
                                     if k != "ddn_image_size"})


def test_identity_is_the_ddn_parameters_without_server_tuning() -> None:
    layout = GraphLayout("generate", 2, (4, 4), 8, 1).parameters()
    config = {ORT_THREADS_PARAMETER: "1", ONNX_DIGEST_PARAMETER: "ab" * 32, **layout}
    identity = identity_parameters(config)
    assert identity == {**layout, ONNX_DIGEST_PARAMETER: "ab" * 32} and list(identity) == sorted(identity)
    assert identity_parameters({**config, ORT_THREADS_PARAMETER: "4"}) == identity
    assert identity_parameters({**config, ONNX_DIGEST_PARAMETER: "cd" * 32}) != identity
