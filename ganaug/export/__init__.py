"""`ganaug export`: a checkpoint's generator -> one verified, self-contained ONNX file.

    source.py       find and safely load the checkpoint, rebuild the generator
    inputs.py       random latents and labels, shared by verification and calibration
    wrapper.py      the generator plus the contract's post-processing (uint8 NHWC images)
    onnx_export.py  torch.onnx (torch.export-based) -> ModelProto; strip the verification output
    reduce.py       fp16 and int8 variants
    verify.py       checker, parity with PyTorch (fp32 and the variants), thresholds
    distance.py     pixel errors and a Fréchet distance between two sets of images
    metadata.py     the ganaug.* metadata keys
    output.py       the --out file: checked first, written atomically last
    card.py         the model card of a bundle (python -m ganaug.export.card)
    api.py          export_model(): wires the steps together (what `ganaug export` calls)
"""


def __getattr__(name: str):
    # `from ganaug.export import export_model` without importing torch and onnx for the light modules
    if name == "export_model":
        from ganaug.export.api import export_model

        return export_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
