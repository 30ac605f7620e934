"""Bring images of any mode, bit depth and size to the model's channels and square resolution."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

GREY_MODES = {"1", "L", "LA", "I;16", "I;16B", "I;16L", "I;16N"}
# 32-bit integer and float pixels carry no range in the file (is 1.0 white, or 255, or 65535?):
# refused by name rather than guessed (open_image), so a float image in [0, 1] never trains as black.
RANGELESS_MODES = {"I": "32-bit integer", "F": "floating-point"}


def is_grey(image: Image.Image) -> bool:
    if image.mode == "P":  # a palette is grey when every entry has R == G == B
        palette = np.asarray(image.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
        return bool((palette[:, 0] == palette[:, 1]).all() and (palette[:, 1] == palette[:, 2]).all())
    return image.mode in GREY_MODES


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit greys are scaled from their full range, 0..65535, to 0..255 (PIL's convert('L') would clip)."""
    if image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(values * (255.0 / 65535.0) + 0.5, 0, 255).astype(np.uint8), "L")
    return image


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite transparent pixels onto black, so alpha never leaks into colours as garbage."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image


def center_crop_square(image: Image.Image) -> Image.Image:
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def pil_to_array(image: Image.Image, channels: int, resolution: int) -> np.ndarray:
    """Any PIL image -> uint8 [C, resolution, resolution]: center square crop, then bicubic resize."""
    image = _flatten_alpha(_to_8bit(image))
    image = image.convert("L" if channels == 1 else "RGB")
    image = center_crop_square(image)
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


CHUNK_BYTES = 256 * 2**20  # the float copies made while converting: bounded, whatever N and the resolution


def to_model_images(images: torch.Tensor, resolution: int, channels: int = 0) -> torch.Tensor:
    """uint8 [N, c, h, w] -> uint8 [N, channels (0: c), resolution, resolution], the way `resize_batch`
    and `match_channels` convert, in chunks of bounded memory written into one tensor. A result that
    cannot fit in the memory available is a DataError before it is allocated."""
    from ganaug.data import DataError
    from ganaug.memory import check_fits

    n, have = images.shape[:2]
    out_channels = channels or have
    check_fits(n, out_channels * resolution**2,
               f"holding {n} images of {out_channels}x{resolution}x{resolution}",
               lambda fits: f"lower data.resolution, use fewer images (at most {fits} fit), or stream an image "
                            "folder from disk (data.in_memory=false)", error=DataError)
    out = torch.empty((n, out_channels, resolution, resolution), dtype=torch.uint8)
    side = max(resolution, *images.shape[2:])
    step = max(1, CHUNK_BYTES // (4 * max(have, out_channels) * side * side))
    for start in range(0, n, step):
        part = match_channels(resize_batch(images[start : start + step], resolution), out_channels)
        out[start : start + len(part)] = part
    return out


def resize_batch(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 [N, C, h, w] -> uint8 [N, C, resolution, resolution] (antialiased bilinear, center crop)."""
    h, w = images.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    images = images[..., top : top + side, left : left + side]
    if side == resolution:
        return images.contiguous()
    out = []
    for chunk in images.split(4096):  # bounded float copies for big datasets
        resized = F.interpolate(chunk.float(), size=(resolution, resolution), mode="bilinear",
                                antialias=True, align_corners=False)
        out.append(resized.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 [N, c, H, W] -> [N, channels, H, W]: grey is repeated, colour goes to luma (ITU-R 601)."""
    have = images.shape[1]
    if channels in (0, have):
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise ValueError(f"cannot convert {have} channels to {channels}")


def array_to_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 NHW or NHWC (C in 1, 3, 4) -> uint8 tensor NCHW; alpha is dropped."""
    if images.ndim == 3:
        images = images[:, :, :, None]
    if images.shape[-1] == 4:
        images = images[..., :3]
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
