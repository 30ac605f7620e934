"""The pixel mapping the trainer, the exported generator and the classifier's graph share."""

import torch

from ganaug.pixels import to_uint8, to_unit


def test_every_grey_level_survives_the_round_trip_and_the_range_is_minus_one_to_one():
    levels = torch.arange(256, dtype=torch.uint8)
    unit = to_unit(levels)
    assert unit.dtype == torch.float32 and unit[0] == -1 and unit[255] == 1
    assert torch.equal(to_uint8(unit), levels)


def test_values_outside_the_range_clamp_and_others_round_to_the_nearest_level():
    x = torch.tensor([-3.0, 3.0, -1 + 1.3 / 127.5, -1 + 1.7 / 127.5])  # grey levels 1.3 and 1.7
    assert to_uint8(x).tolist() == [0, 255, 1, 2]
