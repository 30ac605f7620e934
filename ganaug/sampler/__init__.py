"""The torch-free sampler (onnxruntime and numpy only; a test keeps torch out): `Sampler` turns a ganaug
ONNX model into images, `write_samples` (`ganaug sample`) into a sample set, optionally filtered by an
`ImageFilter`. docs/sampler.md has the command, the output and the module that owns each part.
"""

from ganaug.contract import ModelMeta
from ganaug.sampler.filter import ImageFilter
from ganaug.sampler.layout import Shard
from ganaug.sampler.sampler import BLOCK_SIZE, Batch, LatentSource, Sampler
from ganaug.sampler.write import SampleRequest, SampleResult, write_samples

__all__ = ["BLOCK_SIZE", "Batch", "ImageFilter", "LatentSource", "ModelMeta", "SampleRequest", "SampleResult",
           "Sampler", "Shard", "write_samples"]
