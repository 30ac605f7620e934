"""export_classifier_onnx: the study's SmallCNN (or any classifier of [-1, 1] images) as an ONNX model of
the sampler's filter contract, checked against PyTorch before it is written."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx_models import make_model
from sampling import sample

import ganaug.evaluate.classifier as classifier_module
from ganaug.errors import UserError
from ganaug.evaluate.classifier import (
    TrainingSet,
    TrainSettings,
    export_classifier_onnx,
    to_input,
    train_classifier,
)
from ganaug.sampler import ImageFilter, Sampler

NAMES = ["cat", "dog", "fox"]
SHAPE = (16, 16, 1)


@pytest.fixture(scope="module")
def trained():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 1, 16, 16), generator=generator, dtype=torch.uint8)
    return train_classifier(TrainingSet(images, torch.arange(60) % 3), 3, TrainSettings(steps=10, batch_size=16),
                            seed=0)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    return export_classifier_onnx(trained, tmp_path_factory.mktemp("c") / "classifier.onnx", SHAPE, NAMES)


def test_the_exported_classifier_meets_the_filter_contract_and_matches_pytorch(trained, exported, tmp_path):
    proto = onnx.load(str(exported))
    assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["logits"]
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(metadata["ganaug.class_names"]) == NAMES and json.loads(metadata["ganaug.image_shape"]) == [16, 16, 1]
    generator = make_model(tmp_path / "g.onnx", class_names=NAMES, shape=SHAPE)
    image_filter = ImageFilter.load(exported, Sampler.load(generator).meta, 0.5)
    assert image_filter.output_kind == "logits"
    images = np.random.default_rng(3).integers(0, 256, (33, *SHAPE), dtype=np.uint8)
    with torch.no_grad():
        expected = trained.float()(to_input(torch.from_numpy(images).permute(0, 3, 1, 2))).softmax(1).double().numpy()
    assert image_filter.probabilities(images) == pytest.approx(expected, abs=1e-5)
    # and `ganaug sample --filter` takes it
    assert sample(generator, tmp_path / "out", "--n", 30, "--filter", exported, "--min-confidence", 0.34) == 0
    info = json.loads((tmp_path / "out" / "sample_info.json").read_text())
    assert info["filter"]["output"] == "logits" and 0 < info["filter"]["images_kept"] <= 30


def test_a_generator_with_the_classes_in_another_order_is_refused(exported, tmp_path):
    generator = make_model(tmp_path / "g.onnx", class_names=NAMES[::-1], shape=SHAPE)
    with pytest.raises(UserError, match=r"class names \['cat', 'dog', 'fox'\] are not the generator's "
                                        r"\['fox', 'dog', 'cat'\] \(same classes in another order\?\)"):
        ImageFilter.load(exported, Sampler.load(generator).meta, 0.5)


def test_nothing_is_written_when_the_export_does_not_match_pytorch(trained, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="3 classes but 2 class names"):
        export_classifier_onnx(trained, tmp_path / "c.onnx", SHAPE, ["a", "b"])
    monkeypatch.setattr(classifier_module, "MAX_LOGIT_ERROR", -1.0)  # no export can pass
    with pytest.raises(UserError, match="the exported classifier differs from PyTorch on a batch of 1"):
        export_classifier_onnx(trained, tmp_path / "c.onnx", SHAPE, NAMES)
    assert list(tmp_path.iterdir()) == []
