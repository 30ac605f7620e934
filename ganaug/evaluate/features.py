"""The feature network behind FD and KID: a small classifier trained on the real data, cached.

Inception weights cannot be downloaded here and would describe 8x8 digits poorly anyway, so the
default is domain-specific: a SmallCNN trained (deterministically, from a seed) to classify the
real images; its penultimate layer is the feature space. It is cached under a key made of the data
and the settings, so it is trained once per dataset and every later evaluation of the same data
measures in the same space. Unlabelled data gets the same net untrained (random features still
separate distributions, only less sharply); a warning says so.

`--features PATH` swaps in another network for numbers comparable elsewhere (see `load_features`).

Every extractor follows torchmetrics' contract for a custom `feature=` module: images as uint8
0..255 (or float 0..1), [N, C, H, W], in; float32 [N, num_features] out. So
`FrechetInceptionDistance(feature=extractor)` works as it is; `normalize=` changes nothing for a
custom module (torchmetrics passes the images through untouched).
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ganaug.errors import UserError
from ganaug.evaluate.classifier import SmallCNN, TrainingSet, TrainSettings, accuracy, train_classifier
from ganaug.train.checkpoint import safe_load, save_atomic

log = logging.getLogger(__name__)

FEATURE_NET_FORMAT = 1
TORCHVISION_INPUT_SIZE = {"inception_v3": 299}  # other torchvision classifiers take 224
FEATURE_NET_STEPS = 300  # a few seconds on a CPU; ~99% training accuracy on the digits


@dataclass(frozen=True)
class FeatureNetSpec:
    channels: int
    resolution: int
    num_classes: int  # 0: unlabelled data, the net stays at its seeded random initialisation
    widths: tuple[int, ...] = (32, 64, 64)
    steps: int = FEATURE_NET_STEPS
    seed: int = 0


def _as_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 or float 0..1 -> float32 0..1 (torchmetrics' two image conventions)."""
    return images.float().div(255.0) if images.dtype == torch.uint8 else images.float()


def _match(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Float images to the network's channels (grey repeated, colour to luma) and square size."""
    have = images.shape[1]
    if have == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1)
    elif have == 3 and channels == 1:
        images = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif have != channels:
        raise UserError(f"the feature network takes {channels}-channel images, got {have} channels")
    if images.shape[-1] != size or images.shape[-2] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return images


class FeatureExtractor(nn.Module):
    """The domain feature net as a torchmetrics feature module: images -> [N, num_features]."""

    def __init__(self, net: SmallCNN, spec: FeatureNetSpec, name: str = "domain"):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.spec = spec
        self.name = name
        self.num_features = net.num_features  # read by torchmetrics instead of probing with a 299x299 image

    def _run(self, images: torch.Tensor, layer) -> torch.Tensor:
        device = next(self.net.parameters()).device
        out = []
        for chunk in images.split(2048):
            x = _match(_as_unit_float(chunk.to(device)), self.spec.channels, self.spec.resolution) * 2 - 1
            out.append(layer(x).float())  # fp32: cheap at this size, and distances want the precision
        return torch.cat(out)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(images, self.net.features)

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """The net's predicted class of each image, int64 [N]."""
        return self._run(images, self.net).argmax(1)


class ExternalExtractor(nn.Module):
    """A user's network (TorchScript, or a torchvision architecture with its state dict)."""

    def __init__(self, module: nn.Module, name: str, channels: int | None, size: int | None,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None):
        super().__init__()
        self.module = module.eval()
        self.name, self.channels, self.size = name, channels, size
        self.mean = None if mean is None else torch.tensor(mean).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std).view(1, -1, 1, 1)
        self.num_features = 0  # known after the first call; torchmetrics gets it from `probe`

    def probe(self, channels: int, resolution: int) -> None:
        self.num_features = int(self(torch.zeros(2, channels, resolution, resolution, dtype=torch.uint8)).shape[1])

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in images.split(256):
            x = _as_unit_float(chunk)
            x = _match(x, self.channels or x.shape[1], self.size or x.shape[-1])
            if self.mean is not None:
                x = (x - self.mean) / self.std
            features = self.module(x)
            if isinstance(features, (tuple, list)):  # e.g. torchvision Inception's (logits, aux) in train mode
                features = features[0]
            out.append(features.float().flatten(1))
        return torch.cat(out)


# ------------------------------------------------------------------------------ the domain net


def data_key(images: torch.Tensor, labels: torch.Tensor | None, spec: FeatureNetSpec) -> str:
    """A short hash of the training images, labels and settings: the cache file's name."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": FEATURE_NET_FORMAT, **asdict(spec)}, sort_keys=True).encode())
    digest.update(images.contiguous().numpy().tobytes())
    if labels is not None:
        digest.update(labels.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def train_feature_net(images: torch.Tensor, labels: torch.Tensor | None, spec: FeatureNetSpec) -> SmallCNN:
    """Deterministic: the same images, labels and spec give bit-identical weights (on one machine)."""
    if not spec.num_classes or labels is None:
        torch.manual_seed(spec.seed)
        return SmallCNN(spec.channels, max(spec.num_classes, 1), spec.widths).eval()
    settings = TrainSettings(steps=spec.steps, widths=spec.widths)
    # Classical augmentation makes the features vary smoothly under small shifts instead of
    # memorising pixel positions, which is what a distance between image sets needs.
    return train_classifier(TrainingSet(images, labels), spec.num_classes, settings, spec.seed, augment=True)


def load_or_train_domain_features(images: torch.Tensor, labels: torch.Tensor | None, num_classes: int,
                                  cache_dir: Path, seed: int = 0) -> FeatureExtractor:
    """The feature extractor for this data, trained on first use and then read from cache_dir."""
    spec = FeatureNetSpec(int(images.shape[1]), int(images.shape[-1]), num_classes if labels is not None else 0,
                          steps=FEATURE_NET_STEPS, seed=seed)
    path = Path(cache_dir) / f"feature_net_{data_key(images, labels, spec)}.pt"
    if path.is_file():
        try:
            state = safe_load(path, f"cached feature network {path}")
            net = SmallCNN(spec.channels, max(spec.num_classes, 1), spec.widths)
            net.load_state_dict(state["state_dict"])
            log.info("feature network: %s (cached)", path)
            return FeatureExtractor(net.eval(), spec)
        except (UserError, KeyError, TypeError, RuntimeError) as exc:  # a cache is rebuilt, never trusted
            log.warning("%s; training the feature network again", exc)
    if spec.num_classes:
        log.info("training the feature network on %d labelled images (once; cached in %s)", len(images), cache_dir)
    else:
        log.warning("the data has no labels: FD/KID use an untrained (seeded random) feature network")
    net = train_feature_net(images, labels, spec)
    train_acc = accuracy(net, images, labels) if spec.num_classes else None
    save_atomic({"format": FEATURE_NET_FORMAT, "spec": {**asdict(spec), "widths": list(spec.widths)},
                 "state_dict": net.state_dict(), "train_accuracy": train_acc}, path)
    return FeatureExtractor(net, spec)


# ------------------------------------------------------------------------------ --features PATH

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_features(spec_text: str, channels: int, resolution: int) -> nn.Module:
    """A feature network named on the command line:

    - `PATH.pt` written by ganaug (a cached feature_net_*.pt): the domain net of another run;
    - `PATH` of a TorchScript module: called with float32 [N, C, H, W] in [0, 1] at the data's
      resolution and channels, returning [N, D] (resize/normalise inside the module if it needs to);
    - `ARCH:PATH` with ARCH a torchvision classifier (inception_v3, resnet18, ...) and PATH its
      state dict: the layer before `fc` is the feature space; images are resized to the arch's input
      size, grey repeated to RGB and ImageNet-normalised.
    """
    arch, sep, path_text = spec_text.partition(":")
    if not sep or len(arch) == 1:  # no arch, or a Windows drive letter
        arch, path_text = "", spec_text
    path = Path(path_text)
    if not path.is_file():
        raise UserError(f"--features: {path} is not a file")
    if arch:
        extractor = _torchvision_extractor(arch, path)
    else:
        extractor = _ganaug_or_torchscript(path)
    if isinstance(extractor, ExternalExtractor):
        try:
            extractor.probe(channels, resolution)
        except RuntimeError as exc:
            raise UserError(f"--features {spec_text}: the network fails on {channels}x{resolution}x{resolution} "
                            f"images: {str(exc).splitlines()[0]}") from None
    return extractor


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives carry compiled code (constants.pkl, code/); torch.save files do not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _ganaug_or_torchscript(path: Path) -> nn.Module:
    if _is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as exc:
            raise UserError(f"--features: cannot load TorchScript module {path}: {str(exc).splitlines()[0]}") from None
        return ExternalExtractor(module, f"torchscript:{path.name}", channels=None, size=None)
    state = safe_load(path, f"--features: {path}")
    if not (isinstance(state, dict) and state.get("format") == FEATURE_NET_FORMAT and "spec" in state):
        raise UserError(f"--features: {path} is neither a ganaug feature net nor a TorchScript module; "
                        "for a state dict, name its architecture: --features inception_v3:PATH")
    values = dict(state["spec"])
    spec = FeatureNetSpec(**{**values, "widths": tuple(values["widths"])})
    net = SmallCNN(spec.channels, max(spec.num_classes, 1), spec.widths)
    net.load_state_dict(state["state_dict"])
    return FeatureExtractor(net.eval(), spec, name=f"domain:{path.name}")


def _torchvision_extractor(arch: str, path: Path) -> ExternalExtractor:
    import torchvision

    builder = getattr(torchvision.models, arch, None)
    if builder is None or not callable(builder):
        raise UserError(f"--features: {arch!r} is not a torchvision model (e.g. inception_v3, resnet18)")
    extra = {"aux_logits": True, "init_weights": False, "transform_input": False} if arch == "inception_v3" else {}
    model = builder(weights=None, **extra)
    state = safe_load(path, f"--features: {path}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise UserError(f"--features: {path} is not a state dict for torchvision's {arch}: "
                        f"{str(exc).splitlines()[0]}") from None
    if not hasattr(model, "fc"):
        raise UserError(f"--features: {arch} has no `fc` layer to take the features before")
    model.fc = nn.Identity()
    size = TORCHVISION_INPUT_SIZE.get(arch, 224)
    return ExternalExtractor(model, f"{arch}:{path.name}", channels=3, size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
