"""The torch-free sampler: onnxruntime + numpy only (a test keeps torch out).

    from ganaug.sampler import Sampler
    sampler = Sampler.load("model.onnx")            # provider="auto", threads=0 (physical cores)
    images, labels = sampler.generate(64, seed=0)    # uint8 [64, H, W, C], int64 [64]

`ganaug sample` (entry.py) writes whole sample sets, optionally filtered by a classifier
(`write_samples(sampler, request, filter=ImageFilter.load("classifier.onnx", sampler.meta, 0.9))`);
see docs/sampler.md for the modules and what each owns.
"""

from ganaug.contract import ModelMeta
from ganaug.sampler.filter import ImageFilter
from ganaug.sampler.layout import Shard
from ganaug.sampler.sampler import BLOCK_SIZE, Batch, LatentSource, Sampler
from ganaug.sampler.write import SampleRequest, SampleResult, write_samples

__all__ = ["BLOCK_SIZE", "Batch", "ImageFilter", "LatentSource", "ModelMeta", "SampleRequest", "SampleResult",
           "Sampler", "Shard", "write_samples"]
