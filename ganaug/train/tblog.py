"""TensorBoard on rank 0, a NullLogger elsewhere, so callers never ask which rank they are on."""

from __future__ import annotations

from pathlib import Path

import torch


class NullLogger:
    def scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        pass

    def text(self, tag: str, text: str, step: int) -> None:
        pass

    def hparams(self, hparams: dict, metrics: dict[str, float], step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(NullLogger):
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """image: uint8 or float in [0, 1], [C, H, W]."""
        self.writer.add_image(tag, image, step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def hparams(self, hparams: dict, metrics: dict[str, float], step: int) -> None:
        """The HParams dashboard's record of this run, in this run's own event file (SummaryWriter's
        add_hparams would start a sub-run), plus the metrics as scalars at `step`."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        plain = {key: value if isinstance(value, (bool, int, float, str)) else _text(value)
                 for key, value in hparams.items()}
        for summary in hparams_summary(plain, metrics):
            self.writer.file_writer.add_summary(summary)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _text(value) -> str:
    if value is None:
        return "auto"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)
