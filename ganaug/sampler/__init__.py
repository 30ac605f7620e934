"""The torch-free sampler: onnxruntime + numpy + pillow only (a test keeps torch out).

    from ganaug.sampler import Sampler
    sampler = Sampler.load("model.onnx")            # provider="auto", threads=0 (physical cores)
    images, labels = sampler.generate(64, seed=0)    # uint8 [64, H, W, C], int64 [64]
    sampler.meta.class_names, sampler.meta.image_shape, sampler.meta.sha256

`ganaug sample` (entry.py) writes whole sample sets, optionally filtered by a classifier
(`write_samples(sampler, request, filter=ImageFilter.load("classifier.onnx", sampler.meta, 0.9))`);
see docs/sampler.md.
"""

from ganaug.contract import ModelMeta
from ganaug.sampler.filter import ImageFilter
from ganaug.sampler.job import SampleRequest, SampleResult, write_samples
from ganaug.sampler.rng import BLOCK_SIZE, LatentSource
from ganaug.sampler.sampler import Batch, Sampler
from ganaug.sampler.shards import Shard

__all__ = [
    "BLOCK_SIZE",
    "Batch",
    "ImageFilter",
    "LatentSource",
    "ModelMeta",
    "SampleRequest",
    "SampleResult",
    "Sampler",
    "Shard",
    "write_samples",
]
