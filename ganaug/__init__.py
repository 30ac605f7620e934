"""ganaug: GAN-based data augmentation (train with torchrun, export to ONNX, sample with onnxruntime)."""

__version__ = "0.1.0"
