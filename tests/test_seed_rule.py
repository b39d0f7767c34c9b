"""The seed rule against the published test vectors (tests/data/seed_vectors.json), and the seeds it refuses."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ddn.codes import SEED_RULE, codes_from_seed

VECTORS = json.loads((Path(__file__).parent / "data" / "seed_vectors.json").read_text())


def test_vectors_state_the_rule_they_were_made_with() -> None:
    assert VECTORS["seed_rule"] == SEED_RULE


@pytest.mark.parametrize("layout", VECTORS["layouts"], ids=lambda layout: f"L{layout['num_layers']}")
def test_codes_from_seed_reproduces_the_published_vectors(layout: dict) -> None:
    seeds = [int(s) for s in layout["codes"]]
    expected = np.array(list(layout["codes"].values()), dtype=np.int32)
    codes = codes_from_seed(seeds, layout["num_layers"], layout["branch_counts"])
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(codes, expected)
    # Seeds given as numpy int64, as the served step receives them, give the same codes.
    np.testing.assert_array_equal(codes_from_seed(np.array(seeds, np.int64), layout["num_layers"],
                                                  layout["branch_counts"]), expected)


@pytest.mark.parametrize("seeds, message", [
    ([3, -1], "seed -1 is negative; seeds are integers >= 0"),
    (1.5, "seed 1.5 is not an integer"),
    ([True], "seed True is not an integer"),
])
def test_seeds_outside_the_rule_are_refused(seeds, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        codes_from_seed(seeds, 4, 8)
