"""The bad-input catalogue: every bad input tried on train, export, sample and evaluate, as one table.

Each case builds one bad input under tmp_path, runs the real command line in-process
(`ganaug.cli.main`) and checks what the user sees: exit status 2 and exactly one
`ganaug <command>: error: ...` line holding the expected fragment, no traceback, and nothing that
existed before the command lost or changed (every file under tmp_path keeps its bytes, the named
survivors exist, no temporary file is left). A few inputs are rightly accepted: skipped with a
documented WARNING (exit 0), or handled (odd image modes and sizes train normally).

docs/reliability.md's catalogue table is generated from CASES (scripts/reliability_catalogue.py
--write) and `test_the_catalogue_in_the_docs_matches_the_cases` keeps the two equal.

Cases marked `fails=...` are bugs found by this catalogue and not yet fixed: they run as strict
xfails. When the bug is fixed the case passes, the strict xfail turns into an error, and `fails=`
becomes `found=` (the record of what used to happen; the case then runs as a normal one).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import resource
import shutil
import struct
import subprocess
import sys
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from onnx import TensorProto, helper
from onnx_models import make_classifier, make_model
from PIL import Image

from ganaug.evaluate.study import PROTOCOL

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
TABLE_START, TABLE_END = "<!-- bad-inputs:start -->", "<!-- bad-inputs:end -->"
COMMANDS = ("train", "export", "sample", "augment", "evaluate")
OUTCOMES = ("error", "warning", "accepted")
CLASSES = ["cat", "dog", "fox"]
META_KEYS = ["ganaug.schema", "ganaug.z_dim", "ganaug.num_classes", "ganaug.class_names", "ganaug.image_shape",
             "ganaug.precision", "ganaug.train_step", "ganaug.checkpoint_sha256"]
# sysfs refuses new entries even to root (permission bits do not stop root, and CI runs as root).
READ_ONLY = Path("/sys")


@dataclass(frozen=True)
class Case:
    id: str
    command: str  # train | export | sample | augment | evaluate
    bad_input: str  # what is wrong, in the catalogue's words
    setup: Callable  # setup(env) builds the bad input under env.tmp and returns the argv
    expect: str  # fragment of the error line (of the WARNING line for outcome="warning"); {tmp} = tmp_path
    survives: tuple[str, ...] = ()  # paths under tmp_path that must exist before and be unchanged after
    outcome: str = "error"  # error: exit 2, one error line | warning: exit 0 + WARNING | accepted: exit 0
    fails: str | None = None  # a bug this case found: what happens today (the case runs as a strict xfail)
    found: str | None = None  # a bug this case found that is fixed: what used to happen (kept for the record)
    check: Callable | None = None  # check(env): more assertions after the command
    may_change: tuple[str, ...] = ()  # files the command may rewrite with the same meaning (config.yaml)
    isolate: bool = False  # run in a subprocess with an 8 GiB address-space limit (inputs that exhaust memory)
    environ: dict = field(default_factory=dict)  # with isolate: environment changes ({tmp} = tmp_path; None unsets)


CASES: list[Case] = []


def case(id: str, command: str, bad_input: str, expect: str, **options):  # noqa: A002
    def register(setup):
        CASES.append(Case(id, command, bad_input, setup, expect, **options))
        return setup

    return register


class _RunsCode:
    """Pickles to a call of os.system: a checkpoint that would run code when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Env:
    """Builders for bad inputs under one case's tmp_path."""

    def __init__(self, tmp: Path, trained_run):
        self.tmp = tmp
        self._trained_run = trained_run
        self.stderr = ""  # what the command printed, for the checks

    # ---------------------------------------------------------------- train
    def train(self, *overrides: str, run: str = "run") -> list[str]:
        # One thread: on a shared two-core machine, faster than two for these tiny networks.
        return ["train", "--run-dir", str(self.tmp / run), *TINY, "train.threads=1", *overrides]

    def source(self, name: str) -> str:
        return f"data.source={self.tmp / name}"

    def class_folder(self, name: str = "data", classes=("cat", "dog"), per_class: int = 3) -> Path:
        root = self.tmp / name
        rng = np.random.default_rng(0)
        for label in classes:
            (root / label).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (8, 8), dtype=np.uint8)
                Image.fromarray(pixels, "L").save(root / label / f"{label}_{i}.png")
        return root

    def npz(self, name: str, **arrays) -> Path:
        path = self.tmp / name
        np.savez(path, **arrays)
        return path

    def run_copy(self, name: str = "run") -> Path:
        target = self.tmp / name
        shutil.copytree(self._trained_run(), target)
        return target

    def checkpoint_state(self) -> dict:
        return torch.load(self._trained_run() / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)

    def tampered_checkpoint(self, name: str, **changes) -> Path:
        """The trained run's last.pt with top-level entries replaced (None deletes one)."""
        state = self.checkpoint_state()
        for key, value in changes.items():
            if value is None:
                del state[key]
            else:
                state[key] = value
        torch.save(state, self.tmp / name)
        return self.tmp / name

    def hostile_pickle(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"schema": 1, "step": 1, "payload": _RunsCode(self.marker)}, path, pickle_module=pickle)
        return path

    @property
    def marker(self) -> Path:
        return self.tmp / "code_ran"

    # ---------------------------------------------------------------- export / sample / evaluate
    def export(self, source: Path | str, *args: str, out: str = "g.onnx") -> list[str]:
        return ["export", str(source), "--out", str(self.tmp / out), *args]

    def model(self, name: str = "g.onnx", **kw) -> str:
        kw.setdefault("class_names", CLASSES)
        return make_model(self.tmp / name, **kw)

    def classifier(self, name: str = "c.onnx", **kw) -> str:
        """A classifier for --filter, of the contract unless kw breaks it (onnx_models.make_classifier)."""
        return make_classifier(self.tmp / name, **kw)

    def sample(self, model, *args: str, out: str | Path = "out") -> list[str]:
        out = out if isinstance(out, Path) else self.tmp / out
        return ["sample", str(model), "--out", str(out), "--no-progress", "--provider", "cpu", *args]

    def digits_model(self, name: str = "digits.onnx", **kw) -> str:
        kw.setdefault("class_names", [str(i) for i in range(10)])
        kw.setdefault("shape", (16, 16, 1))
        return make_model(self.tmp / name, **kw)

    def metrics(self, *args: str, model: str | None = None, out: str = "eval") -> list[str]:
        model = model or self.digits_model()
        return ["evaluate", "metrics", "--model", str(model), "--data", "digits", "--out", str(self.tmp / out),
                "--n", "30", *args]

    def study(self, *args: str, out: str = "study") -> list[str]:
        return ["evaluate", "study", "--out", str(self.tmp / out), "--quick", *args]

    # ---------------------------------------------------------------- augment
    def labelled(self, name: str = "labelled.npz", per_class: int = 3, classes: int = 3) -> Path:
        rng = np.random.default_rng(0)
        return self.npz(name, images=rng.integers(0, 256, (per_class * classes, 8, 8), dtype=np.uint8),
                        labels=np.repeat(np.arange(classes), per_class), class_names=np.array(CLASSES[:classes]))

    def augment(self, *args: str, out: str = "set", labelled: str | None = None) -> list[str]:
        """A tiny augment run (2 folds, 4-step classifiers, no generator unless args ask for one)."""
        if labelled is None:
            labelled = str(self.labelled())
        quick = ["--folds", "2", "--policy", "affine", "--classifier-steps", "4", "--teacher-steps", "4",
                 "--no-progress"]
        if "--model" not in args and "--synthetic" not in args:
            quick += ["--synthetic", "never"]
        return ["augment", "--labelled", labelled, "--out", str(self.tmp / out), *quick, *args,
                "data.resolution=8", "train.threads=1"]


def _run_quietly(argv: list[str]) -> int:
    """A set-up command (e.g. the first run that a bad resume then continues), its output dropped."""
    import io
    from contextlib import redirect_stderr

    from ganaug.cli import main

    with redirect_stderr(io.StringIO()):
        return main(argv)


def png_bytes(width: int, height: int, body: bytes = b"") -> bytes:
    """A grey PNG's signature and header for any claimed size, then `body` as its only IDAT data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


# ============================================================================== train: data

@case("train-image-random-bytes", "train", "an image file of random bytes in a class folder",
      "data: cannot read image {tmp}/data/cat/zz.png", survives=("data",))
def _train_image_random_bytes(env):
    env.class_folder()
    (env.tmp / "data" / "cat" / "zz.png").write_bytes(np.random.default_rng(1).bytes(600))
    return env.train(env.source("data"))


@case("train-image-truncated", "train", "a PNG cut off half-way",
      "data: cannot read image {tmp}/data/cat/zz.png", survives=("data",))
def _train_image_truncated(env):
    root = env.class_folder()
    whole = (root / "cat" / "cat_0.png").read_bytes()
    (root / "cat" / "zz.png").write_bytes(whole[: len(whole) // 2])
    return env.train(env.source("data"))


@case("train-image-zero-bytes", "train", "a zero-byte .png",
      "data: cannot read image {tmp}/data/dog/empty.png", survives=("data",))
def _train_image_zero_bytes(env):
    env.class_folder()
    (env.tmp / "data" / "dog" / "empty.png").write_bytes(b"")
    return env.train(env.source("data"))


@case("train-image-text-named-jpg", "train", "a text file named .jpg",
      "data: cannot read image {tmp}/data/dog/notes.jpg", survives=("data",))
def _train_image_text_named_jpg(env):
    env.class_folder()
    (env.tmp / "data" / "dog" / "notes.jpg").write_text("not a picture\n")
    return env.train(env.source("data"))


@case("train-image-decompression-bomb", "train", "a PNG whose header claims 60000x60000 pixels",
      "could be decompression bomb", survives=("data",))
def _train_image_decompression_bomb(env):
    env.class_folder()
    (env.tmp / "data" / "cat" / "huge.png").write_bytes(png_bytes(60000, 60000, zlib.compress(b"\0" * 64)))
    return env.train(env.source("data"))


@case("train-image-truncated-skipped", "train", "a truncated PNG with data.skip_bad=true",
      "data: cannot read image {tmp}/data/cat/zz.png", outcome="warning", survives=("data",),
      check=lambda env: _assert_trained(env, steps=1, images_seen=6))
def _train_image_truncated_skipped(env):
    root = env.class_folder()
    whole = (root / "cat" / "cat_0.png").read_bytes()
    (root / "cat" / "zz.png").write_bytes(whole[:40])
    return env.train(env.source("data"), "data.skip_bad=true", "train.batch_size=2", "train.steps=1",
                     "ckpt.every=1")


@case("train-non-image-files", "train", "a flat image folder that also holds notes.txt and data.csv",
      "data: ignored 2 files under", outcome="warning", survives=("flat",),
      check=lambda env: _assert_trained(env, steps=1, images_seen=4))
def _train_non_image_files(env):
    root = env.tmp / "flat"
    root.mkdir()
    for i in range(4):
        Image.new("L", (8, 8), 40 * i).save(root / f"{i}.png")
    (root / "notes.txt").write_text("hello")
    (root / "data.csv").write_text("a,b\n")
    return env.train(env.source("flat"), "train.batch_size=2", "train.steps=1", "ckpt.every=1")


def _odd_modes(root: Path) -> None:
    """One image of each odd mode and bit depth PIL writes, all in one class folder."""
    folder = root / "odd"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 255, (12, 12), dtype=np.uint8)
    Image.fromarray(grey).convert("1").save(folder / "bilevel.png")
    Image.fromarray(grey).convert("LA").save(folder / "grey_alpha.png")
    palette = Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).convert("P")
    palette.save(folder / "palette_transparent.png", transparency=0)
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "grey16.png")  # I;16
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 255, (12, 12, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    frames = [Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)) for _ in range(3)]
    # multi-frame TIFF: ImageFolder does not read .gif (docs/reliability.md, "One rule for class folders")
    frames[0].save(folder / "animated.tif", save_all=True, append_images=frames[1:])


@case("train-image-odd-modes", "train",
      "1-bit, grey+alpha, transparent palette, 16-bit, CMYK, RGBA and animated images",
      "odd modes are converted: colour (3 channels) because CMYK/RGBA/palette are present",
      outcome="accepted", survives=("data",),
      check=lambda env: _assert_trained(env, steps=1, images_seen=7, channels=3))
def _train_image_odd_modes(env):
    _odd_modes(env.tmp / "data")
    return env.train(env.source("data"), "train.batch_size=2", "train.steps=1", "ckpt.every=1")


@case("train-image-float-tiff", "train", "a float TIFF with values in [0, 1] among grey PNGs",
      "has floating-point pixels (mode F), whose range the file does not give", survives=("data",),
      found="trained: its pixels were read on a 0..255 scale, so the image trained as black")
def _train_image_float_tiff(env):
    root = env.class_folder()
    Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), "F").save(root / "cat" / "float.tif")
    return env.train(env.source("data"), "train.steps=1", "train.batch_size=2")


@case("train-image-int32-tiff", "train", "a 32-bit integer TIFF among grey PNGs",
      "has 32-bit integer pixels (mode I), whose range the file does not give", survives=("data",),
      found="trained, its range guessed per image (0..255 unless a pixel was above 255, then 0..65535)")
def _train_image_int32_tiff(env):
    root = env.class_folder()
    Image.fromarray(np.arange(64, dtype=np.int32).reshape(8, 8), "I").save(root / "cat" / "int32.tif")
    return env.train(env.source("data"), "train.steps=1", "train.batch_size=2")


@case("train-image-one-colour-among-grey", "train", "one colour image among 200 grey ones (data.channels=auto)",
      "every image's header is read: one colour image makes the set colour", outcome="accepted", survives=("data",),
      check=lambda env: _assert_trained(env, steps=1, images_seen=201, channels=3),
      found="trained grey: the channels were guessed from a sample of 64 images, which missed the colour one")
def _train_image_one_colour_among_grey(env):
    root = env.class_folder(per_class=100)
    colour = np.random.default_rng(3).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(colour, "RGB").save(root / "dog" / "dog_zcolour.png")
    return env.train(env.source("data"), "train.steps=1")


@case("train-image-mixed-sizes", "train", "images of 1x1, 2x300, 300x2, 64x48 and 17x17 pixels",
      "sizes are centre-cropped to a square and resized to data.resolution",
      outcome="accepted", survives=("data",),
      check=lambda env: _assert_trained(env, steps=1, images_seen=5, channels=1))
def _train_image_mixed_sizes(env):
    folder = env.tmp / "data" / "only"
    folder.mkdir(parents=True)
    for w, h in ((1, 1), (2, 300), (300, 2), (64, 48), (17, 17)):
        Image.fromarray(np.full((h, w), (w * 7 + h) % 255, np.uint8)).save(folder / f"{w}x{h}.png")
    return env.train(env.source("data"), "train.batch_size=2", "train.steps=1", "ckpt.every=1")


@case("train-hidden-class-folder", "train", "a hidden folder (.ipynb_checkpoints) beside the class folders",
      "is a hidden folder, which torchvision's ImageFolder takes for a class", survives=("data",),
      found="trained without it (ganaug skipped hidden folders), so its labels were ImageFolder's shifted by one")
def _train_hidden_class_folder(env):
    root = env.class_folder("data")
    (root / ".ipynb_checkpoints").mkdir()
    Image.new("L", (8, 8)).save(root / ".ipynb_checkpoints" / "x.png")
    return env.train(env.source("data"), "train.steps=1", "train.batch_size=2", "ckpt.every=1")


@case("train-class-folder-link-to-another-class", "train", "a class folder holding a link to another class's folder",
      "leads out of its class folder", survives=("data",),
      found="trained on the linked images under this class's label")
def _train_class_folder_link_to_another_class(env):
    root = env.class_folder("data")
    (root / "dog" / "cats").symlink_to(root / "cat", target_is_directory=True)
    return env.train(env.source("data"), "train.steps=1", "train.batch_size=2", "ckpt.every=1")


@case("train-class-folder-latin1-name", "train", "a class folder whose name is Latin-1 bytes, not UTF-8",
      "has a name that is not valid UTF-8", survives=("data",),
      found="trained (exit 0); an outside pass saw ganaug sample then refuse the exported model's class name")
def _train_class_folder_latin1_name(env):
    root = env.class_folder("data")
    latin1 = os.fsencode(root) + b"/caf\xe9"
    os.mkdir(latin1)
    Image.new("L", (8, 8)).save(os.fsdecode(latin1 + b"/x.png"))
    return env.train(env.source("data"), "train.steps=1", "train.batch_size=2", "ckpt.every=1")


@case("train-class-folder-empty", "train", "an empty class folder beside full ones",
      "class folder {tmp}/data/emu has no images", survives=("data",))
def _train_class_folder_empty(env):
    env.class_folder()
    (env.tmp / "data" / "emu").mkdir()
    return env.train(env.source("data"))


@case("train-class-folder-no-images", "train", "a class folder holding only non-image files",
      "class folder {tmp}/data/emu has no images", survives=("data",))
def _train_class_folder_no_images(env):
    env.class_folder()
    (env.tmp / "data" / "emu").mkdir()
    (env.tmp / "data" / "emu" / "README.txt").write_text("no pictures yet")
    return env.train(env.source("data"))


@case("train-folder-empty", "train", "an empty data folder", "no images found in {tmp}/data", survives=("data",))
def _train_folder_empty(env):
    (env.tmp / "data").mkdir()
    return env.train(env.source("data"))


@case("train-folder-mixed-layout", "train", "loose images beside class sub-folders",
      "has both image files and class sub-folders; use one layout (e.g. move stray.png into a class folder)",
      survives=("data",),
      found="exit 2 and one line, but the line reads '(e.g. move {loose[0].name} into a class folder)': "
            "the second half of the message in data/folder.py scan_folder lacks its f prefix")
def _train_folder_mixed_layout(env):
    env.class_folder()
    Image.new("L", (8, 8)).save(env.tmp / "data" / "stray.png")
    return env.train(env.source("data"))


@case("train-source-missing", "train", "data.source naming nothing that exists",
      "is not a known dataset name, a folder or a .npz file")
def _train_source_missing(env):
    return env.train(env.source("nowhere"))


@case("train-torchvision-not-downloaded", "train", "data.source=mnist with an empty data.root",
      "mnist not found under data.root", survives=("root",))
def _train_torchvision_not_downloaded(env):
    (env.tmp / "root").mkdir()
    return env.train("data.source=mnist", f"data.root={env.tmp / 'root'}")


# A proxy on a closed local port: no network, on any machine (nothing may download in a test).
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": None, "NO_PROXY": None}


@case("train-torchvision-download-offline", "train", "data.source=mnist data.download=true without network access",
      "mnist is not under data.root='{tmp}/root' and downloading it failed (", isolate=True, environ=OFFLINE,
      found="one 'error' of six lines (torchvision's 'Error downloading ...: Tried https://..., got: <urlopen "
            "error ...>' for each mirror), exit 2")
def _train_torchvision_download_offline(env):
    return env.train("data.source=mnist", f"data.root={env.tmp / 'root'}", "data.download=true")


@case("train-torchvision-download-offline-cifar10", "train", "data.source=cifar10 data.download=true without network",
      "cifar10 is not under data.root='{tmp}/root' and downloading it failed (", isolate=True, environ=OFFLINE,
      found="URLError traceback from urllib (80 lines), exit 1")
def _train_torchvision_download_offline_cifar10(env):
    return env.train("data.source=cifar10", f"data.root={env.tmp / 'root'}", "data.download=true")


def _mnist_files(root: Path, images: bytes, labels: bytes) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(images)
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(labels)


@case("train-torchvision-corrupt", "train", "MNIST files of random bytes in data.root",
      "mnist under data.root='{tmp}/root' is unreadable (AssertionError", survives=("root",),
      found="AssertionError traceback from torchvision's idx reader (a bare assert on the header), exit 1")
def _train_torchvision_corrupt(env):
    _mnist_files(env.tmp / "root", np.random.default_rng(5).bytes(1000), np.random.default_rng(6).bytes(100))
    return env.train("data.source=mnist", f"data.root={env.tmp / 'root'}")


@case("train-torchvision-truncated", "train", "an MNIST image file whose header promises 5 images and holds 3 bytes",
      "mnist under data.root='{tmp}/root' is unreadable (RuntimeError: shape '[5, 28, 28]'", survives=("root",),
      found="reported as a missing dataset: 'mnist not found under data.root=... (set data.download=true to fetch "
            "it): shape '[5, 28, 28]' is invalid for input of size 3'")
def _train_torchvision_truncated(env):
    header = struct.pack(">IIII", 0x0803, 5, 28, 28)
    _mnist_files(env.tmp / "root", header + b"abc", struct.pack(">II", 0x0801, 5) + bytes(5))
    return env.train("data.source=mnist", f"data.root={env.tmp / 'root'}")


@case("train-image-unreadable-streamed", "train",
      "an image of random bytes streamed by a DataLoader worker (data.in_memory=false, data.num_workers=1)",
      "data: cannot read image {tmp}/data/cat/zz.png: cannot identify image file", survives=("data",), isolate=True,
      check=lambda env: _assert_streamed(env, 21),
      found="the line went on with DataLoader's text, 'Caught UserError in DataLoader worker process 0. Original "
            "Traceback (most recent call last): ...' (18 more lines), exit 2")
def _train_image_unreadable_streamed(env):
    env.class_folder(per_class=10)
    (env.tmp / "data" / "cat" / "zz.png").write_bytes(np.random.default_rng(1).bytes(600))
    # data.channels=1: no channel guess, which would read every file in this process first.
    return env.train(env.source("data"), "data.in_memory=false", "data.num_workers=1", "data.channels=1",
                     "train.steps=20")


@case("train-npz-past-memory-at-resolution", "train", "100,000 8x8 images in an .npz at data.resolution=1024 (98 GiB)",
      "data.source: holding 100000 images of 1x1024x1024 needs about 97.7 GiB of memory", survives=("d.npz",),
      isolate=True,
      found="RuntimeError traceback from torch's allocator in data/convert.py resize_batch (its chunks of 4096 images "
            "are 16 GiB of floats at this resolution), exit 1; without a memory limit the kernel kills the process")
def _train_npz_past_memory_at_resolution(env):
    env.npz("d.npz", images=np.zeros((100_000, 8, 8), np.uint8))
    return env.train(env.source("d.npz"), "data.resolution=1024")


@case("train-folder-in-memory-past-memory", "train", "data.in_memory=true for 1,500 colour images at data.resolution=1024",
      "holding 1500 images of 3x1024x1024 in memory needs about", survives=("data",), isolate=True,
      found="numpy ArrayMemoryError traceback ('Unable to allocate 4.39 GiB') after every image was decoded and "
            "upscaled, exit 1")
def _train_folder_in_memory_past_memory(env):
    root = env.tmp / "data" / "cat"
    root.mkdir(parents=True)
    for i in range(1500):
        Image.new("RGB", (4, 4), (i % 256, 0, 0)).save(root / f"{i}.png")
    return env.train(env.source("data"), "data.in_memory=true", "data.resolution=1024", "data.channels=3")


@case("train-batch-past-memory", "train", "a batch whose activations need more memory than there is "
      "(train.batch_size=1024 at data.resolution=512)",
      "ganaug train: error: out of host memory (it asked for", isolate=True,
      found="RuntimeError traceback from torch's CPU allocator in a batch-norm layer of the generator, exit 1")
def _train_batch_past_memory(env):
    return env.train("data.source=digits", "data.resolution=512", "train.batch_size=1024", "data.in_memory=false")


@case("train-npz-class-without-images", "train", ".npz whose class_names name a class no label uses",
      "names classes without any image (fox)", survives=("c.npz",),
      found="trained without a word: the generator learnt a class it never saw")
def _train_npz_class_without_images(env):
    env.npz("c.npz", images=np.zeros((40, 8, 8), np.uint8), labels=np.arange(40) % 2, class_names=np.array(CLASSES))
    return env.train(env.source("c.npz"), "train.steps=1")


@case("train-npz-no-images", "train", ".npz without an 'images' array", "has no 'images' array (found: pictures)",
      survives=("d.npz",))
def _train_npz_no_images(env):
    env.npz("d.npz", pictures=np.zeros((4, 8, 8), np.uint8))
    return env.train(env.source("d.npz"))


@case("train-npz-float-images", "train", ".npz with float32 images", "'images' must be uint8, got float32",
      survives=("d.npz",))
def _train_npz_float_images(env):
    env.npz("d.npz", images=np.zeros((4, 8, 8), np.float32))
    return env.train(env.source("d.npz"))


@case("train-npz-bad-shape", "train", ".npz images of shape [N, H, W, 5]", "must be NHW or NHWC with 1, 3 or 4 channels",
      survives=("d.npz",))
def _train_npz_bad_shape(env):
    env.npz("d.npz", images=np.zeros((4, 8, 8, 5), np.uint8))
    return env.train(env.source("d.npz"))


@case("train-npz-zero-size-images", "train", ".npz images of shape [40, 0, 0, 3] (no pixels)",
      "'images'", survives=("d.npz",),
      found="RuntimeError traceback from F.interpolate (data/convert.py resize_batch): 'Input and output sizes "
            "should be greater than 0', exit 1")
def _train_npz_zero_size_images(env):
    env.npz("d.npz", images=np.zeros((40, 0, 0, 3), np.uint8))
    return env.train(env.source("d.npz"))


@case("train-npz-empty", "train", ".npz with zero images", "holds no images", survives=("d.npz",))
def _train_npz_empty(env):
    env.npz("d.npz", images=np.zeros((0, 8, 8), np.uint8))
    return env.train(env.source("d.npz"))


@case("train-npz-labels-wrong-length", "train", ".npz with 4 images and 3 labels", "'labels' must be 4 integers",
      survives=("d.npz",))
def _train_npz_labels_wrong_length(env):
    env.npz("d.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 0]))
    return env.train(env.source("d.npz"))


@case("train-npz-float-labels", "train", ".npz with float labels", "'labels' must be 4 integers, got float64",
      survives=("d.npz",))
def _train_npz_float_labels(env):
    env.npz("d.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0.0, 1.0, 0.0, 1.0]))
    return env.train(env.source("d.npz"))


@case("train-npz-negative-label", "train", ".npz with a label of -1", "'labels' has negative values",
      survives=("d.npz",))
def _train_npz_negative_label(env):
    env.npz("d.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, -1, 1]))
    return env.train(env.source("d.npz"))


@case("train-npz-label-beyond-class-names", "train", ".npz with label 2 but two class_names",
      "label 2 has no entry in 'class_names' (2 names)", survives=("d.npz",))
def _train_npz_label_beyond_class_names(env):
    env.npz("d.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 2, 1]),
            class_names=np.array(["a", "b"]))
    return env.train(env.source("d.npz"))


@case("train-npz-label-huge", "train", ".npz with one label of 2**40 and no class_names",
      "'labels'", survives=("d.npz",), isolate=True,
      found="MemoryError traceback (data/npz.py builds [str(i) for i in range(labels.max() + 1)]: a trillion "
            "class names); without a memory limit it eats all RAM first")
def _train_npz_label_huge(env):
    env.npz("d.npz", images=np.zeros((40, 8, 8), np.uint8), labels=np.array([0] * 39 + [2**40]))
    return env.train(env.source("d.npz"))


@case("train-npz-object-array", "train", ".npz holding a pickled object array (would run code on load)",
      "Object arrays cannot be loaded when allow_pickle=False", survives=("d.npz",))
def _train_npz_object_array(env):
    env.npz("d.npz", images=np.array([None, {"a": 1}], dtype=object))
    return env.train(env.source("d.npz"))


@case("train-npz-not-a-zip", "train", "a text file named .npz", "is not a readable .npz file", survives=("d.npz",))
def _train_npz_not_a_zip(env):
    (env.tmp / "d.npz").write_text("images")
    return env.train(env.source("d.npz"))


@case("train-npz-zero-bytes", "train", "a zero-byte .npz", "is not a readable .npz file", survives=("d.npz",))
def _train_npz_zero_bytes(env):
    (env.tmp / "d.npz").write_bytes(b"")
    return env.train(env.source("d.npz"))


@case("train-npz-truncated", "train", "an .npz cut off half-way", "is not a readable .npz file", survives=("d.npz",))
def _train_npz_truncated(env):
    whole = env.npz("whole.npz", images=np.zeros((40, 8, 8), np.uint8)).read_bytes()
    (env.tmp / "d.npz").write_bytes(whole[: len(whole) // 2])
    return env.train(env.source("d.npz"))


@case("train-batch-larger-than-data", "train", "train.batch_size=16 for a 10-image dataset",
      "train.batch_size: 16 per process is larger than each process's share of the dataset (10 images",
      survives=("d.npz",))
def _train_batch_larger_than_data(env):
    env.npz("d.npz", images=np.zeros((10, 8, 8), np.uint8))
    return env.train(env.source("d.npz"))


@case("train-conditional-without-labels", "train", "model.conditional=true on unlabelled data",
      "model.conditional=true but the training data has no labels", survives=("d.npz",))
def _train_conditional_without_labels(env):
    env.npz("d.npz", images=np.zeros((40, 8, 8), np.uint8))
    return env.train(env.source("d.npz"), "model.conditional=true")


# ============================================================================== train: config

@case("train-config-typo", "train", "a misspelt key on the command line (train.stpes=5)",
      "unknown config key 'train.stpes' (did you mean train.steps?)")
def _train_config_typo(env):
    return env.train("train.stpes=5")


@case("train-config-not-key-value", "train", "an override without '=' (train.steps 5)",
      "override 'train.steps 5' is not of the form dotted.key=value")
def _train_config_not_key_value(env):
    return env.train("train.steps 5")


@case("train-config-wrong-type", "train", "a word for an int (train.steps=many)",
      "train.steps: expected int, got str 'many'")
def _train_config_wrong_type(env):
    return env.train("train.steps=many")


@case("train-config-wrong-bool", "train", "a word for a bool (data.download=maybe)",
      "data.download: expected bool, got str 'maybe'")
def _train_config_wrong_bool(env):
    return env.train("data.download=maybe")


@case("train-config-below-minimum", "train", "train.batch_size=0", "train.batch_size: 0 is below the minimum 1")
def _train_config_below_minimum(env):
    return env.train("train.batch_size=0")


@case("train-config-bad-choice", "train", "train.precision=fp64", "train.precision: 'fp64' is not one of")
def _train_config_bad_choice(env):
    return env.train("train.precision=fp64")


@case("train-config-bad-channels", "train", "data.channels=2", "data.channels: 2 is not one of 0, 1, 3")
def _train_config_bad_channels(env):
    return env.train("data.channels=2")


@case("train-config-ema-decay-one", "train", "train.ema_decay=1", "train.ema_decay: 1.0 must be below 1")
def _train_config_ema_decay_one(env):
    return env.train("train.ema_decay=1")


@case("train-config-lr-nan", "train", "train.lr_g=.nan (YAML's NaN)", "train.lr_g",
      found="ValueError traceback from torch.optim.Adam ('Invalid learning rate: nan'), exit 1: "
            "NaN passes the `value < min` check in Config.validate")
def _train_config_lr_nan(env):
    return env.train("train.lr_g=.nan")


@case("train-config-lr-inf", "train", "train.lr_g=.inf (YAML's infinity)", "train.lr_g",
      found="accepted: the run exits 0 and its checkpoint's generator weights are all NaN "
            "(3 steps, fewer than train.max_nonfinite_steps)")
def _train_config_lr_inf(env):
    return env.train("train.lr_g=.inf", "train.steps=3", "ckpt.every=3")


@case("train-config-resolution-unsupported", "train", "data.resolution=36 (9 times a power of two)",
      "data.resolution: 36 is not 4..7 times a power of two")
def _train_config_resolution_unsupported(env):
    return env.train("data.resolution=36")


@case("train-config-resolution-huge", "train", "data.resolution=16777216 (4 x 2**22, valid in form)",
      "data.resolution",
      found="RuntimeError traceback: DefaultCPUAllocator cannot allocate the resized dataset (data/convert.py "
            "resize_batch); there is no upper bound on data.resolution")
def _train_config_resolution_huge(env):
    return env.train("data.resolution=16777216")


@case("train-config-article28-arch-resolution", "train", "model.arch=article28 at data.resolution=32",
      "model.arch=article28 is a 28x28 network, got 32")
def _train_config_seed_arch_resolution(env):
    return env.train("model.arch=article28", "data.resolution=32")


@case("train-config-diffaug-unknown", "train", "train.diffaug=colour,translation (misspelt policy)",
      "train.diffaug: unknown entry 'colour'")
def _train_config_diffaug_unknown(env):
    return env.train("train.diffaug=colour,translation")


@case("train-config-code-as-value", "train", "train.diffaug=__import__('os').system('touch ...')",
      "train.diffaug: unknown entry \"__import__('os').system('touch",
      check=lambda env: _assert_no_code_ran(env))
def _train_config_code_as_value(env):
    return env.train(f"train.diffaug=__import__('os').system('touch {env.marker}')")


@case("train-config-yaml-python-tag", "train", "an override with a YAML python tag (!!python/object/apply:os.system)",
      "train.steps: cannot read value", check=lambda env: _assert_no_code_ran(env))
def _train_config_yaml_python_tag(env):
    return env.train(f"train.steps=!!python/object/apply:os.system ['touch {env.marker}']")


@case("train-config-unhashable-key", "train", "a config file whose key is a list (? [a, b])",
      "a key must be a plain name, not a sequence (line 1)", survives=("list_key.yaml",),
      found="TypeError traceback (unhashable type: 'list'), exit 1")
def _train_config_unhashable_key(env):
    (env.tmp / "list_key.yaml").write_text("? [a, b]\n: 1\n")
    return [*env.train(), "--config", str(env.tmp / "list_key.yaml")]


@case("train-config-huge-integer", "train", "a config file with a 100,000-digit train.steps",
      "Exceeds the limit (4300 digits) for integer string conversion", survives=("huge.yaml",),
      found="ValueError traceback from Python's integer parser, exit 1")
def _train_config_huge_integer(env):
    (env.tmp / "huge.yaml").write_text("train:\n  steps: " + "9" * 100_000 + "\n")
    return [*env.train(), "--config", str(env.tmp / "huge.yaml")]


@case("train-npz-big-endian-labels", "train", "an .npz whose labels are big-endian int64",
      "big-endian labels are read as the file says", outcome="accepted", survives=("d.npz",),
      found="ValueError traceback from torch (byte order different from the native one), exit 1",
      check=lambda env: _assert_trained(env, steps=1, images_seen=4))
def _train_npz_big_endian_labels(env):
    env.npz("d.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 0, 1], dtype=">i8"))
    return env.train(env.source("d.npz"), "train.steps=1", "train.batch_size=2", "ckpt.every=1")


@case("train-config-file-missing", "train", "--config naming a missing file", "cannot read config file {tmp}/nope.yaml")
def _train_config_file_missing(env):
    return [*env.train(), "--config", str(env.tmp / "nope.yaml")]


@case("train-config-file-not-yaml", "train", "--config file that is not YAML", "is not valid YAML",
      survives=("bad.yaml",))
def _train_config_file_not_yaml(env):
    (env.tmp / "bad.yaml").write_text("train: [steps: 3\n")
    return [*env.train(), "--config", str(env.tmp / "bad.yaml")]


@case("train-config-file-python-tag", "train", "--config file with a !!python/object/apply tag",
      "is not valid YAML", survives=("evil.yaml",), check=lambda env: _assert_no_code_ran(env))
def _train_config_file_python_tag(env):
    (env.tmp / "evil.yaml").write_text(f"train:\n  steps: !!python/object/apply:os.system ['touch {env.marker}']\n")
    return [*env.train(), "--config", str(env.tmp / "evil.yaml")]


@case("train-config-file-unknown-section", "train", "--config file with a misspelt section (trian:)",
      "unknown config key 'trian'", survives=("typo.yaml",))
def _train_config_file_unknown_section(env):
    (env.tmp / "typo.yaml").write_text("trian:\n  steps: 3\n")
    return [*env.train(), "--config", str(env.tmp / "typo.yaml")]


@case("train-config-file-not-mapping", "train", "--config file holding a list", "config: expected a mapping, got list",
      survives=("list.yaml",))
def _train_config_file_not_mapping(env):
    (env.tmp / "list.yaml").write_text("- train.steps=3\n")
    return [*env.train(), "--config", str(env.tmp / "list.yaml")]


@case("train-config-file-wrong-type", "train", "--config file with steps: 3.5", "train.steps: expected int, got float 3.5",
      survives=("float.yaml",))
def _train_config_file_wrong_type(env):
    (env.tmp / "float.yaml").write_text("train:\n  steps: 3.5\n")
    return [*env.train(), "--config", str(env.tmp / "float.yaml")]


@case("train-compile-cxx-missing", "train", "train.compile=true with CXX naming a compiler that does not exist",
      "train.compile=true: torch.compile cannot run here: it builds CPU kernels with a C++ compiler and found none",
      isolate=True, environ={"CXX": "/nonexistent/g++"}, check=lambda env: _assert_no_run_dir(env),
      found="InductorError traceback (90 lines) at the first compiled step, after the run directory was made, "
            "exit 1")
def _train_compile_cxx_missing(env):
    return env.train("train.compile=true", "train.steps=2")


@case("train-compile-no-compiler-on-path", "train", "train.compile=true with no compiler on PATH",
      "train.compile=true: torch.compile cannot run here:", isolate=True,
      environ={"PATH": "{tmp}/bin", "CXX": None, "CC": None}, check=lambda env: _assert_no_run_dir(env),
      found="InductorError traceback (InvalidCxxCompiler) at the first compiled step, exit 1")
def _train_compile_no_compiler_on_path(env):
    (env.tmp / "bin").mkdir()
    return env.train("train.compile=true", "train.steps=2")


# ============================================================================== train: run dir, checkpoints

@case("train-run-dir-missing", "train", "no --run-dir", "--run-dir is required")
def _train_run_dir_missing(env):
    return ["train", *TINY]


@case("train-run-dir-is-file", "train", "--run-dir naming an existing file", "is a file, not a directory",
      survives=("notes.txt",))
def _train_run_dir_is_file(env):
    (env.tmp / "notes.txt").write_text("precious")
    return ["train", "--run-dir", str(env.tmp / "notes.txt"), *TINY]


@case("train-run-dir-under-file", "train", "--run-dir inside a regular file", "is not a writable directory",
      survives=("notes.txt",))
def _train_run_dir_under_file(env):
    (env.tmp / "notes.txt").write_text("precious")
    return ["train", "--run-dir", str(env.tmp / "notes.txt" / "run"), *TINY]


@case("train-run-dir-read-only", "train", "--run-dir on a read-only file system (/sys)",
      "--run-dir /sys/ganaug-run is not a writable directory")
def _train_run_dir_read_only(env):
    return ["train", "--run-dir", str(READ_ONLY / "ganaug-run"), *TINY]


@case("train-run-dir-holds-own-config", "train",
      "--run-dir . --config config.yaml: a fresh run directory that holds the user's own config.yaml",
      "config.yaml", survives=("proj/config.yaml",),
      found="accepted: the run trains and replaces the user's config.yaml (comments and all) with the resolved "
            "config (train/entry.py wrote run_dir/config.yaml unconditionally)")
def _train_run_dir_holds_own_config(env):
    project = env.tmp / "proj"
    project.mkdir()
    (project / "config.yaml").write_text("# tuned by hand: keep\ntrain:\n  steps: 1\n  batch_size: 2\n")
    return [*env.train("ckpt.every=1", run="proj"), "--config", str(project / "config.yaml")]


@case("train-run-dir-foreign-config", "train", "a fresh --run-dir holding a config.yaml that ganaug did not write",
      "{tmp}/run/config.yaml was not written by ganaug train", survives=("run/config.yaml",))
def _train_run_dir_foreign_config(env):
    (env.tmp / "run").mkdir()
    (env.tmp / "run" / "config.yaml").write_text("# my experiment notes\nlr: 0.1\n")
    return env.train()


RESUMED = ("run/config.yaml", "run/checkpoints/last.pt", "run/checkpoints/steps.json")  # what a resumed run rewrites


def _resumed_with_foreign_step_names(env, make) -> list[str]:
    """A trained run without step files, `make(path)` under the name of the step it saves next,
    then a resume that saves every step and keeps one step file."""
    run = env.run_copy()
    _drop_step_files(run)
    step = env.checkpoint_state()["step"]
    make(run / "checkpoints" / f"step_{step + 1:07d}.pt")
    return ["train", "--run-dir", str(run), "ckpt.every=1", "ckpt.keep=1", f"train.steps={step + 3}"]


@case("train-checkpoints-foreign-step-file", "train",
      "a step_NNNNNNN.pt of the user's, named like the step a resumed run saves next (ckpt.keep=1)",
      "exists and ganaug did not write it: left alone", outcome="warning",
      survives=("run/checkpoints/step_0000000.pt", "run/checkpoints/step_0000005.pt"),  # the trained run is at 4
      may_change=RESUMED,
      found="replaced by the run's checkpoint of that step, then deleted by retention")
def _train_checkpoints_foreign_step_file(env):
    def make(path):
        path.write_bytes(b"the user's own")
        shutil.copyfile(path, path.with_name("step_0000000.pt"))  # and an older one of the user's
    return _resumed_with_foreign_step_names(env, make)


@case("train-checkpoints-step-name-is-a-folder", "train", "a folder named like the step file a resumed run saves next",
      "exists and ganaug did not write it: left alone", outcome="warning",
      survives=("run/checkpoints/step_0000005.pt/notes.txt",), may_change=RESUMED,
      found="IsADirectoryError traceback when the run saved that step, exit 1")
def _train_checkpoints_step_name_is_a_folder(env):
    def make(path):
        path.mkdir()
        (path / "notes.txt").write_text("mine")
    return _resumed_with_foreign_step_names(env, make)


@case("train-grid-name-is-a-folder", "train", "a folder named like the sample grid the run writes",
      "training goes on without this grid", outcome="warning",
      survives=("run/samples/step_0000001.png/notes.txt",),
      check=lambda env: _assert_trained(env, steps=2, images_seen=1797),
      found="IsADirectoryError traceback from torchvision's save_image at the first grid, exit 1")
def _train_grid_name_is_a_folder(env):
    folder = env.tmp / "run" / "samples" / "step_0000001.png"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    return env.train("log.image_every=1", "train.steps=2")


@case("train-run-dir-tb-is-a-file", "train", "RUN/tb exists as a file", "{tmp}/run/tb exists and is not a directory",
      survives=("run/tb",))
def _train_run_dir_tb_is_a_file(env):
    (env.tmp / "run").mkdir()
    (env.tmp / "run" / "tb").write_text("not a folder")
    return env.train()


@case("train-run-dir-samples-is-a-file", "train", "RUN/samples exists as a file",
      "{tmp}/run/samples exists and is not a directory", survives=("run/samples",))
def _train_run_dir_samples_is_a_file(env):
    (env.tmp / "run").mkdir()
    (env.tmp / "run" / "samples").write_text("not a folder")
    return env.train()


@case("train-run-dir-checkpoints-is-a-file", "train", "RUN/checkpoints exists as a file",
      "{tmp}/run/checkpoints exists and is not a directory", survives=("run/checkpoints",))
def _train_run_dir_checkpoints_is_a_file(env):
    (env.tmp / "run").mkdir()
    (env.tmp / "run" / "checkpoints").write_text("not a folder")
    return env.train()


@case("train-run-dir-last-is-a-folder", "train", "RUN/checkpoints/last.pt exists as a folder",
      "{tmp}/run/checkpoints/last.pt exists and is not a file", survives=("run/checkpoints/last.pt/keep.txt",))
def _train_run_dir_last_is_a_folder(env):
    (env.tmp / "run" / "checkpoints" / "last.pt").mkdir(parents=True)
    (env.tmp / "run" / "checkpoints" / "last.pt" / "keep.txt").write_text("mine")
    return env.train()


@case("train-resume-class-renamed", "train", "resume after a class folder was renamed (cat -> kitten)",
      "was trained on classes ['cat', 'dog'] and the data now has ['dog', 'kitten'] (added 'kitten'; removed 'cat')",
      survives=("run/checkpoints/last.pt", "data"))
def _train_resume_class_renamed(env):
    data = env.class_folder(per_class=4)
    first = env.train(env.source("data"), "train.batch_size=4", "train.steps=1", "ckpt.every=1")
    assert _run_quietly(first) == 0
    (data / "cat").rename(data / "kitten")
    return env.train(env.source("data"), "train.batch_size=4", "train.steps=2")


@case("train-resume-class-added", "train", "resume after a class folder was added",
      "(added 'emu')", survives=("run/checkpoints/last.pt", "data"))
def _train_resume_class_added(env):
    env.class_folder(per_class=4)
    assert _run_quietly(env.train(env.source("data"), "train.batch_size=4", "train.steps=1", "ckpt.every=1")) == 0
    env.class_folder(classes=("emu",), per_class=4)
    return env.train(env.source("data"), "train.batch_size=4", "train.steps=2")


@case("train-resume-classes-reordered", "train", "resume from an .npz whose class_names changed order",
      "the same names in another order", survives=("run/checkpoints/last.pt", "d.npz"))
def _train_resume_classes_reordered(env):
    images, labels = np.zeros((8, 8, 8), np.uint8), np.arange(8) % 2
    env.npz("d.npz", images=images, labels=labels, class_names=np.array(["a", "b"]))
    assert _run_quietly(env.train(env.source("d.npz"), "train.batch_size=4", "train.steps=1", "ckpt.every=1")) == 0
    env.npz("d.npz", images=images, labels=labels, class_names=np.array(["b", "a"]))
    return env.train(env.source("d.npz"), "train.batch_size=4", "train.steps=2")


@case("train-npz-duplicate-class-names", "train", "an .npz whose class_names name one class twice",
      "class name 'cat' appears twice in 'class_names'", survives=("d.npz",))
def _train_npz_duplicate_class_names(env):
    env.npz("d.npz", images=np.zeros((8, 8, 8), np.uint8), labels=np.arange(8) % 2,
            class_names=np.array(["cat", "cat"]))
    return env.train(env.source("d.npz"), "train.batch_size=4")


@case("train-npz-class-names-not-utf8", "train", "an .npz whose class_names are bytes that are not UTF-8",
      "'class_names' holds bytes that are not UTF-8 text", survives=("d.npz",))
def _train_npz_class_names_not_utf8(env):
    env.npz("d.npz", images=np.zeros((8, 8, 8), np.uint8), labels=np.arange(8) % 2,
            class_names=np.array([b"\xff\xfe", b"dog"]))
    return env.train(env.source("d.npz"), "train.batch_size=4")


@case("train-source-empty", "train", "data.source= (empty)", "data.source: is empty; name a dataset")
def _train_source_empty(env):
    return env.train("data.source=")


@case("train-unlabelled-missing", "train", "data.unlabelled naming a folder that does not exist",
      "data.unlabelled: '{tmp}/nowhere' is not a known dataset name")
def _train_unlabelled_missing(env):
    return env.train(f"data.unlabelled={env.tmp / 'nowhere'}")


@case("train-config-yaml-alias-bomb", "train", "a 1 KB config file of nested YAML aliases (a billion laughs)",
      "YAML aliases (*name) are not allowed", survives=("bomb.yaml",))
def _train_config_yaml_alias_bomb(env):
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i, name in enumerate("bcdefghi"):
        previous = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    (env.tmp / "bomb.yaml").write_text("\n".join(lines) + "\n")
    return [*env.train(), "--config", str(env.tmp / "bomb.yaml")]


@case("train-config-duplicate-section", "train", "a config file with two train: sections",
      "duplicate key 'train' (line 3)", survives=("dup.yaml",))
def _train_config_duplicate_section(env):
    (env.tmp / "dup.yaml").write_text("train:\n  steps: 3\ntrain:\n  lr_g: 0.5\n")
    return [*env.train(), "--config", str(env.tmp / "dup.yaml")]


@case("train-config-not-utf8", "train", "a config file in Latin-1", "is not UTF-8 text", survives=("latin.yaml",))
def _train_config_not_utf8(env):
    (env.tmp / "latin.yaml").write_bytes("data:\n  source: caf\xe9\n".encode("latin-1"))
    return [*env.train(), "--config", str(env.tmp / "latin.yaml")]


@case("train-config-adam-beta-one", "train", "train.beta1=1", "train.beta1: 1.0 must be below 1")
def _train_config_adam_beta_one(env):
    return env.train("train.beta1=1")


@case("train-config-seed-past-int64", "train", "train.seed=2^63", "train.seed: 9223372036854775808 is above the maximum")
def _train_config_seed_past_int64(env):
    return env.train(f"train.seed={2**63}")


@case("train-config-z-dim-huge", "train", "model.z_dim=10^10", "model.z_dim: 10000000000 is above the maximum 4096")
def _train_config_z_dim_huge(env):
    return env.train("model.z_dim=10000000000")


@case("train-config-threads-huge", "train", "train.threads=100000", "train.threads: 100000 is above the maximum 1024")
def _train_config_threads_huge(env):
    return env.train("train.threads=100000")


@case("train-checkpoint-truncated", "train", "resume from a truncated last.pt (no step files)",
      "no loadable checkpoint in {tmp}/run/checkpoints", survives=("run/checkpoints/last.pt",))
def _train_checkpoint_truncated(env):
    run = env.run_copy()
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:5000])
    _drop_step_files(run)
    return ["train", "--run-dir", str(run)]


@case("train-checkpoint-zero-bytes", "train", "resume from a zero-byte last.pt",
      "no loadable checkpoint in {tmp}/run/checkpoints", survives=("run/checkpoints/last.pt",))
def _train_checkpoint_zero_bytes(env):
    run = env.run_copy()
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    _drop_step_files(run)
    return ["train", "--run-dir", str(run)]


@case("train-checkpoint-not-a-checkpoint", "train", "resume from a last.pt that is a PNG",
      "no loadable checkpoint in {tmp}/run/checkpoints", survives=("run/checkpoints/last.pt",))
def _train_checkpoint_not_a_checkpoint(env):
    run = env.run_copy()
    Image.new("L", (4, 4)).save(run / "checkpoints" / "last.pt", format="PNG")
    _drop_step_files(run)
    return ["train", "--run-dir", str(run)]


@case("train-checkpoint-hostile-pickle", "train", "resume from a last.pt whose pickle calls os.system",
      "no loadable checkpoint in {tmp}/run/checkpoints", survives=("run/checkpoints/last.pt",),
      check=lambda env: _assert_no_code_ran(env))
def _train_checkpoint_hostile_pickle(env):
    folder = env.tmp / "run" / "checkpoints"
    env.hostile_pickle(folder / "last.pt")
    return env.train()


@case("train-checkpoint-not-a-dict", "train", "resume from a last.pt holding a list",
      "checkpoint {tmp}/run/checkpoints/last.pt is not a ganaug checkpoint (got list)", survives=("run/checkpoints/last.pt",))
def _train_checkpoint_not_a_dict(env):
    folder = env.tmp / "run" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save([1, 2, 3], folder / "last.pt")
    return env.train()


@case("train-checkpoint-other-schema", "train", "resume from a checkpoint of schema 3",
      "has schema 3; this ganaug reads schema 2", survives=("run/checkpoints/last.pt",))
def _train_checkpoint_other_schema(env):
    run = env.run_copy()
    _drop_step_files(run)
    env.tampered_checkpoint("run/checkpoints/last.pt", schema=3)
    return ["train", "--run-dir", str(run)]


@case("train-checkpoint-missing-entries", "train", "resume from a last.pt of {'schema': 2} alone",
      "{tmp}/run/checkpoints/last.pt", survives=("run/checkpoints/last.pt",),
      found="KeyError: 'step' traceback (train/entry.py find_resume_state logs state['step']), exit 1")
def _train_checkpoint_missing_entries(env):
    folder = env.tmp / "run" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"schema": 2}, folder / "last.pt")
    return env.train()


@case("train-checkpoint-model-not-a-mapping", "train", "resume from a checkpoint whose 'model' entry is a string",
      "{tmp}/run/checkpoints/last.pt", survives=("run/checkpoints/last.pt",),
      found="TypeError traceback from ModelSpec.from_dict ('argument after ** must be a mapping, not str'), "
            "exit 1 (the same for a 'model' dict with missing fields)")
def _train_checkpoint_model_not_a_mapping(env):
    run = env.run_copy()
    _drop_step_files(run)
    env.tampered_checkpoint("run/checkpoints/last.pt", model="dcgan")
    return ["train", "--run-dir", str(run)]


# A checkpoint's resume-only entries tampered one at a time: each is a file ganaug reads back, so
# each is one line naming it (these were TypeError, KeyError and AttributeError tracebacks, or a run
# that went on from a negative image count or an empty RNG list as if resumed on another world size).
TAMPERED_RESUME_ENTRIES = [
    ("data", "x", "'data' is not a data position", "TypeError traceback ('string indices must be integers')"),
    ("data", {"epoch": 0, "batch": 10**9}, "does not fit this run (ValueError: data position",
     "trained on (exit 0) from a position past the epoch's end"),
    ("ada_pending", "many", "'ada_pending' is not ADA's pending signs", "TypeError traceback ('string indices must be integers')"),
    ("objective", {}, "'objective' is not the objective's state", "KeyError: 'augment' traceback"),
    ("images_seen", -5, "'images_seen' is not a count of images", "trained on from -5 images seen"),
    ("rng", [], "'rng' is not a list of each rank's random state",
     "trained on, reseeded as if resumed by another number of processes"),
    ("opt_g", 3, "does not fit this run (AttributeError", "AttributeError traceback from the optimiser"),
    ("G", {}, "does not fit this run (RuntimeError: Error(s) in loading state_dict for Generator",
     "RuntimeError traceback listing every missing key"),
    ("class_names", 7, "'class_names' is not a list of names", "TypeError traceback ('int' object is not iterable)"),
]


def _tampered_resume_case(key, value, expect, found):
    def setup(env):
        run = env.run_copy()
        _drop_step_files(run)
        env.tampered_checkpoint("run/checkpoints/last.pt", **{key: value})
        return ["train", "--run-dir", str(run)]

    slug = f"{key.replace('_', '-')}-{'huge-batch' if isinstance(value, dict) and value else type(value).__name__}"
    case(f"train-checkpoint-tampered-{slug}", "train", f"resume from a checkpoint whose {key!r} is {value!r}",
         expect, survives=("run/checkpoints/last.pt",), found=found)(setup)


for _entry in TAMPERED_RESUME_ENTRIES:
    _tampered_resume_case(*_entry)


@case("train-checkpoint-other-architecture", "train", "resume a dcgan run with model.arch=dcgan_tconv",
      "trained with another model or data shape (arch: dcgan -> dcgan_tconv)", survives=("run",))
def _train_checkpoint_other_architecture(env):
    run = env.run_copy()
    return ["train", "--run-dir", str(run), "model.arch=dcgan_tconv"]


@case("train-checkpoint-other-data-shape", "train", "resume a 16x16 grey run on 3-channel data",
      "trained with another model or data shape (channels: 1 -> 3)", survives=("run", "rgb.npz"))
def _train_checkpoint_other_data_shape(env):
    run = env.run_copy()
    env.npz("rgb.npz", images=np.zeros((40, 8, 8, 3), np.uint8), labels=np.arange(40) % 10)
    return ["train", "--run-dir", str(run), env.source("rgb.npz")]


@case("train-checkpoint-truncated-fallback", "train", "a truncated last.pt beside an intact step_0000004.pt",
      "last.pt is not a PyTorch checkpoint, or is truncated; trying an older checkpoint", outcome="warning",
      survives=("run/checkpoints/step_0000004.pt", "run/checkpoints/last.pt"), may_change=("run/config.yaml",))
def _train_checkpoint_truncated_fallback(env):
    run = env.run_copy()
    last = run / "checkpoints" / "last.pt"
    last.unlink()  # a hard link to step_0000004.pt: break it before cutting
    last.write_bytes((run / "checkpoints" / "step_0000004.pt").read_bytes()[:5000])
    return ["train", "--run-dir", str(run), "train.steps=4"]


def _drop_step_files(run: Path) -> None:
    for path in (run / "checkpoints").glob("step_*.pt"):
        path.unlink()


# ============================================================================== export

@case("export-source-missing", "export", "a source path that does not exist",
      "{tmp}/nope does not exist (expected a run directory or a checkpoint file)")
def _export_source_missing(env):
    return env.export(env.tmp / "nope")


@case("export-source-dir-without-checkpoint", "export", "a directory without checkpoints/last.pt",
      "is a directory without checkpoints/last.pt", survives=("empty_run",))
def _export_source_dir_without_checkpoint(env):
    (env.tmp / "empty_run" / "samples").mkdir(parents=True)
    return env.export(env.tmp / "empty_run")


@case("export-checkpoint-text", "export", "a text file passed as the checkpoint",
      "checkpoint {tmp}/notes.pt is not a PyTorch checkpoint, or is truncated", survives=("notes.pt",))
def _export_checkpoint_text(env):
    (env.tmp / "notes.pt").write_text("weights go here")
    return env.export(env.tmp / "notes.pt")


@case("export-checkpoint-is-onnx", "export", "an ONNX model passed as the checkpoint",
      "checkpoint {tmp}/m.onnx is not a PyTorch checkpoint, or is truncated", survives=("m.onnx",))
def _export_checkpoint_is_onnx(env):
    return env.export(env.model("m.onnx"))


@case("export-checkpoint-truncated", "export", "a checkpoint cut off half-way",
      "checkpoint {tmp}/run/checkpoints/last.pt is not a PyTorch checkpoint, or is truncated",
      survives=("run/checkpoints/last.pt",))
def _export_checkpoint_truncated(env):
    run = env.run_copy()
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    return env.export(run)


@case("export-checkpoint-zero-bytes", "export", "a zero-byte checkpoint",
      "checkpoint {tmp}/last.pt is not a PyTorch checkpoint, or is truncated", survives=("last.pt",))
def _export_checkpoint_zero_bytes(env):
    (env.tmp / "last.pt").write_bytes(b"")
    return env.export(env.tmp / "last.pt")


@case("export-checkpoint-hostile-pickle", "export", "a checkpoint whose pickle calls os.system",
      "was refused by the safe loader (weights_only=True): Trying to load unsupported GLOBAL posix.system",
      survives=("evil.pt",), check=lambda env: _assert_no_code_ran(env))
def _export_checkpoint_hostile_pickle(env):
    return env.export(env.hostile_pickle(env.tmp / "evil.pt"))


@case("export-checkpoint-not-a-dict", "export", "a checkpoint holding a list",
      "checkpoint {tmp}/list.pt is not a ganaug checkpoint (got list)", survives=("list.pt",))
def _export_checkpoint_not_a_dict(env):
    torch.save([1, 2, 3], env.tmp / "list.pt")
    return env.export(env.tmp / "list.pt")


@case("export-checkpoint-huge-z-dim", "export", "a checkpoint whose model description says z_dim = 10^10",
      "model field z_dim is 10000000000, outside 1..4096", survives=("huge.pt",),
      found="MemoryError traceback while building a 10^10-wide generator, exit 1 (an outside pass)")
def _export_checkpoint_huge_z_dim(env):
    model = dict(env.checkpoint_state()["model"], z_dim=10**10)
    return env.export(env.tampered_checkpoint("huge.pt", model=model))


@case("export-checkpoint-other-schema", "export", "a checkpoint of schema 3",
      "has schema 3; this ganaug reads schema 2", survives=("c.pt",))
def _export_checkpoint_other_schema(env):
    return env.export(env.tampered_checkpoint("c.pt", schema=3))


@case("export-checkpoint-no-ema", "export", "a checkpoint without its G_ema entry",
      "lacks G_ema: not a complete ganaug checkpoint", survives=("c.pt",))
def _export_checkpoint_no_ema(env):
    return env.export(env.tampered_checkpoint("c.pt", G_ema=None))


@case("export-checkpoint-other-architecture", "export", "dcgan weights in a checkpoint that says dcgan_tconv",
      "the G_ema weights do not fit the dcgan_tconv generator at 16x16", survives=("c.pt",))
def _export_checkpoint_other_architecture(env):
    model = {**env.checkpoint_state()["model"], "arch": "dcgan_tconv"}
    return env.export(env.tampered_checkpoint("c.pt", model=model))


@case("export-checkpoint-unknown-architecture", "export", "a checkpoint of a 'stylegan' generator",
      "unknown architecture 'stylegan' (this ganaug builds dcgan, dcgan_tconv, resnet, article28)", survives=("c.pt",))
def _export_checkpoint_unknown_architecture(env):
    model = {**env.checkpoint_state()["model"], "arch": "stylegan"}
    return env.export(env.tampered_checkpoint("c.pt", model=model))


@case("export-checkpoint-unsupported-resolution", "export", "a checkpoint that records resolution 36",
      "cannot build its generator: 36 is not 4..7 times a power of two", survives=("c.pt",))
def _export_checkpoint_unsupported_resolution(env):
    model = {**env.checkpoint_state()["model"], "resolution": 36}
    return env.export(env.tampered_checkpoint("c.pt", model=model))


@case("export-checkpoint-model-not-a-mapping", "export", "a checkpoint whose 'model' entry is a string",
      "'model' is not a model description", survives=("c.pt",))
def _export_checkpoint_model_not_a_mapping(env):
    return env.export(env.tampered_checkpoint("c.pt", model="dcgan"))


@case("export-checkpoint-model-unknown-field", "export", "a checkpoint whose model description has an unknown field",
      "the model description does not fit this ganaug", survives=("c.pt",))
def _export_checkpoint_model_unknown_field(env):
    model = {**env.checkpoint_state()["model"], "style_layers": 8}
    return env.export(env.tampered_checkpoint("c.pt", model=model))


@case("export-checkpoint-class-names-mismatch", "export", "one class name for a 10-class generator",
      "1 class names for a generator of 10 classes", survives=("c.pt",))
def _export_checkpoint_class_names_mismatch(env):
    return env.export(env.tampered_checkpoint("c.pt", class_names=["a"]))


@case("export-checkpoint-step-not-a-number", "export", "a checkpoint whose step is the string 'many'",
      "'step' is 'many', not a step number", survives=("c.pt",))
def _export_checkpoint_step_not_a_number(env):
    return env.export(env.tampered_checkpoint("c.pt", step="many"))


@case("export-checkpoint-nan-weights", "export", "a checkpoint whose generator weights are all NaN",
      "parity check failed", survives=("c.pt",))
def _export_checkpoint_nan_weights(env):
    weights = {k: v * float("nan") if v.is_floating_point() else v for k, v in env.checkpoint_state()["G_ema"].items()}
    return env.export(env.tampered_checkpoint("c.pt", G_ema=weights))


@case("export-out-exists", "export", "--out naming an existing file, without --force",
      "--out {tmp}/g.onnx already exists; pass --force to replace it", survives=("g.onnx",))
def _export_out_exists(env):
    run = env.run_copy()
    (env.tmp / "g.onnx").write_bytes(b"someone's model")
    return env.export(run)


@case("export-out-is-directory", "export", "--out naming a directory", "is a directory; give the path of the .onnx file",
      survives=("models",))
def _export_out_is_directory(env):
    run = env.run_copy()
    (env.tmp / "models").mkdir()
    return env.export(run, out="models")


@case("export-out-under-file", "export", "--out inside a regular file", "cannot be created: {tmp}/notes.txt is a file",
      survives=("notes.txt",))
def _export_out_under_file(env):
    run = env.run_copy()
    (env.tmp / "notes.txt").write_text("precious")
    return env.export(run, out="notes.txt/g.onnx")


@case("export-out-parent-missing", "export", "--out in a directory that does not exist",
      "cannot be created: directory {tmp}/missing does not exist")
def _export_out_parent_missing(env):
    return env.export(env.run_copy(), out="missing/g.onnx")


@case("export-out-read-only", "export", "--out on a read-only file system (/sys)", "--out /sys/g.onnx cannot be written")
def _export_out_read_only(env):
    return ["export", str(env.run_copy()), "--out", str(READ_ONLY / "g.onnx")]


@case("export-out-is-the-checkpoint", "export", "--out naming the checkpoint being exported, with --force",
      "is the checkpoint being exported", survives=("run/checkpoints/last.pt",))
def _export_out_is_the_checkpoint(env):
    last = env.run_copy() / "checkpoints" / "last.pt"
    return ["export", str(last), "--out", str(last), "--force"]


@case("export-precision-unknown", "export", "--precision int4", "argument --precision: invalid choice: 'int4'")
def _export_precision_unknown(env):
    return env.export(env.tmp / "run", "--precision", "int4")


@case("export-opset-unsupported", "export", "--opset 3", "--opset 3 is not supported")
def _export_opset_unsupported(env):
    return env.export(env.run_copy(), "--opset", "3")


@case("export-opset-huge", "export", "--opset 10**9", "--opset 1000000000 is not supported")
def _export_opset_huge(env):
    return env.export(env.run_copy(), "--opset", str(10**9))


# ============================================================================== sample

@case("sample-model-random-bytes", "sample", "a model file of random bytes", "cannot load {tmp}/m.onnx as an ONNX model",
      survives=("m.onnx",))
def _sample_model_random_bytes(env):
    (env.tmp / "m.onnx").write_bytes(np.random.default_rng(3).bytes(4096))
    return env.sample(env.tmp / "m.onnx", "--n", "3")


@case("sample-model-zero-bytes", "sample", "a zero-byte model file", "model file {tmp}/m.onnx is empty",
      survives=("m.onnx",))
def _sample_model_zero_bytes(env):
    (env.tmp / "m.onnx").write_bytes(b"")
    return env.sample(env.tmp / "m.onnx", "--n", "3")


@case("sample-model-truncated", "sample", "an ONNX model cut off half-way", "cannot load {tmp}/m.onnx as an ONNX model",
      survives=("m.onnx",))
def _sample_model_truncated(env):
    whole = Path(env.model("whole.onnx")).read_bytes()
    (env.tmp / "m.onnx").write_bytes(whole[: len(whole) // 2])
    return env.sample(env.tmp / "m.onnx", "--n", "3")


@case("sample-model-is-checkpoint", "sample", "a PyTorch checkpoint passed as the model",
      "cannot load {tmp}/run/checkpoints/last.pt as an ONNX model", survives=("run/checkpoints/last.pt",))
def _sample_model_is_checkpoint(env):
    run = env.run_copy()
    return env.sample(run / "checkpoints" / "last.pt", "--n", "3")


@case("sample-model-missing", "sample", "a model path that does not exist", "model file {tmp}/nope.onnx does not exist")
def _sample_model_missing(env):
    return env.sample(env.tmp / "nope.onnx", "--n", "3")


@case("sample-model-is-directory", "sample", "a directory passed as the model", "is a directory, not an .onnx file")
def _sample_model_is_directory(env):
    (env.tmp / "models").mkdir()
    return env.sample(env.tmp / "models", "--n", "3")


@case("sample-model-without-metadata", "sample", "an ONNX model without ganaug metadata",
      "has no ganaug metadata (missing 'ganaug.schema'", survives=("m.onnx",))
def _sample_model_without_metadata(env):
    return env.sample(env.model("m.onnx", meta_overrides=dict.fromkeys(META_KEYS)), "--n", "3")


@case("sample-model-metadata-not-json", "sample", "metadata ganaug.class_names that is not JSON",
      "ganaug.class_names='cat,dog,fox' is not valid JSON", survives=("m.onnx",))
def _sample_model_metadata_not_json(env):
    return env.sample(env.model("m.onnx", meta_overrides={"ganaug.class_names": "cat,dog,fox"}), "--n", "3")


@case("sample-model-other-schema", "sample", "a model of ganaug.schema 2", "unsupported ganaug.schema '2'",
      survives=("m.onnx",))
def _sample_model_other_schema(env):
    return env.sample(env.model("m.onnx", meta_overrides={"ganaug.schema": "2"}), "--n", "3")


@case("sample-model-float-output", "sample", "a model whose output is float, not uint8",
      "output 'images' is tensor(float); the contract is uint8", survives=("m.onnx",))
def _sample_model_float_output(env):
    return env.sample(env.model("m.onnx", output_dtype=TensorProto.FLOAT), "--n", "3")


@case("sample-model-labels-but-no-classes", "sample", "a conditional model whose metadata says 0 classes",
      "the model has a 'labels' input but ganaug.num_classes is 0", survives=("m.onnx",))
def _sample_model_labels_but_no_classes(env):
    return env.sample(env.model("m.onnx", meta_overrides={"ganaug.num_classes": "0"}), "--n", "3")


@case("sample-model-two-channels", "sample", "metadata image_shape with 2 channels",
      "images with 2 channels are not supported (1, 3 or 4)", survives=("m.onnx",))
def _sample_model_two_channels(env):
    return env.sample(env.model("m.onnx", meta_overrides={"ganaug.image_shape": "[8, 8, 2]"}), "--n", "3")


@case("sample-model-z-dim-zero", "sample", "metadata ganaug.z_dim=0", "metadata ganaug.z_dim=0 must be at least 1",
      survives=("m.onnx",))
def _sample_model_z_dim_zero(env):
    return env.sample(env.model("m.onnx", meta_overrides={"ganaug.z_dim": "0"}), "--n", "3")


@case("sample-model-class-names-not-strings", "sample", "metadata class_names [\"a\", 1, null]",
      "ganaug.class_names must be a JSON list of strings", survives=("m.onnx",))
def _sample_model_class_names_not_strings(env):
    return env.sample(env.model("m.onnx", meta_overrides={"ganaug.class_names": '["a", 1, null]'}), "--n", "3")


@case("sample-model-image-shape-mismatch", "sample", "metadata image_shape [100000, 100000, 1] on an 8x8 model",
      "output 'images' has size 8 on axis 1 but ganaug.image_shape says [100000, 100000, 1]", survives=("m.onnx",))
def _sample_model_image_shape_mismatch(env):
    return env.sample(env.model("m.onnx", meta_overrides={"ganaug.image_shape": "[100000, 100000, 1]"}), "--n", "3")


def _edit_model(path: str, edit) -> str:
    """Load a test model with onnx, apply edit(model), save it back; returns the path."""
    import onnx

    model = onnx.load(path)
    edit(model)
    onnx.save(model, path)
    return path


def _dims(value_info):
    return value_info.type.tensor_type.shape.dim


@case("sample-model-external-data", "sample",
      "a model whose weight W keeps its data in the external file .ssh/id_rsa (relative to the current directory)",
      "tensor 'W' keeps its data in an external file ('.ssh/id_rsa')", survives=("m.onnx",),
      found="accepted where that file exists under the current directory: onnxruntime, given the model as bytes, "
            "read it into W and its bytes shaped every PNG, exit 0 (tests/test_sampler_hostile_models.py shows it "
            "with a real file)")
def _sample_model_external_data(env):
    from onnx import TensorProto as Tensor
    from onnx.external_data_helper import set_external_data

    def externalise(model):
        weight = next(t for t in model.graph.initializer if t.name == "W")
        set_external_data(weight, ".ssh/id_rsa", offset=0, length=len(weight.raw_data))
        weight.ClearField("raw_data")
        weight.data_location = Tensor.EXTERNAL

    return env.sample(_edit_model(env.model("m.onnx"), externalise), "--n", "3")


@case("sample-model-static-batch", "sample", "a model whose inputs have a fixed batch size of 1",
      "'z' has a fixed batch size of 1; the contract is a dynamic N", survives=("m.onnx",),
      found="InvalidArgument traceback from onnxruntime ('Got invalid dimensions for input: z ... Got: 3 Expected: 1'), "
            "exit 1, sample_info.json left behind")
def _sample_model_static_batch(env):
    def fix_batch(model):
        for value_info in model.graph.input:
            _dims(value_info)[0].dim_value = 1

    return env.sample(_edit_model(env.model("m.onnx"), fix_batch), "--n", "3")


@case("sample-model-embedding-smaller-than-classes", "sample",
      "metadata num_classes 5 (5 names) on a model with 3 label embeddings",
      "the model cannot generate label 4 although ganaug.num_classes is 5", survives=("m.onnx",),
      found="InvalidArgument traceback from onnxruntime's Gather ('indices element out of data bounds') after the "
            "first batch, exit 1, sample_info.json left behind")
def _sample_model_embedding_smaller_than_classes(env):
    names = json.dumps(["a", "b", "c", "d", "e"])
    return env.sample(env.model("m.onnx", num_classes=3, class_names=["a", "b", "c"],
                                meta_overrides={"ganaug.num_classes": "5", "ganaug.class_names": names}), "--n", "6")


@case("sample-model-z-dim-wrong-dynamic", "sample", "metadata z_dim 16 on a model taking 8 (its z width not declared)",
      "the model fails on a batch of 2 latents of ganaug.z_dim=16 values", survives=("m.onnx",),
      found="InvalidArgument traceback from onnxruntime ('GEMM: Dimension mismatch'), exit 1, sample_info.json left "
            "behind")
def _sample_model_z_dim_wrong_dynamic(env):
    def dynamic_width(model):
        _dims(model.graph.input[0])[1].dim_param = "Z"

    model = env.model("m.onnx", meta_overrides={"ganaug.z_dim": "16"})
    return env.sample(_edit_model(model, dynamic_width), "--n", "3")


@case("sample-model-z-dim-huge", "sample", "metadata z_dim 10**10 on a model whose z width is not declared",
      "metadata ganaug.z_dim=10000000000 is out of range (at most 65536)", survives=("m.onnx",), isolate=True)
def _sample_model_z_dim_huge(env):
    def dynamic_width(model):
        _dims(model.graph.input[0])[1].dim_param = "Z"

    model = env.model("m.onnx", meta_overrides={"ganaug.z_dim": str(10**10)})
    return env.sample(_edit_model(model, dynamic_width), "--n", "3")


@case("sample-model-classes-huge", "sample", "metadata num_classes 10**9", "ganaug.num_classes=1000000000 is out of range",
      survives=("m.onnx",))
def _sample_model_classes_huge(env):
    return env.sample(env.model("m.onnx", meta_overrides={"ganaug.num_classes": str(10**9)}), "--n", "3")


@case("sample-model-image-huge", "sample", "metadata image_shape [10**6, 10**6, 1] on a model whose output size is "
      "not declared", "ganaug.image_shape=[1000000, 1000000, 1] is too large", survives=("m.onnx",), isolate=True)
def _sample_model_image_huge(env):
    def undeclared_output(model):
        for dim in _dims(model.graph.output[0])[1:]:
            dim.dim_param = "S"
        shape = next(t for t in model.graph.initializer if t.name == "out_shape")
        model.graph.input.append(helper.make_tensor_value_info("out_shape", TensorProto.INT64, [4]))
        model.graph.initializer.remove(shape)  # the shape is now an input: nothing for inference to read
        model.graph.initializer.append(shape)

    model = env.model("m.onnx", meta_overrides={"ganaug.image_shape": "[1000000, 1000000, 1]"})
    return env.sample(_edit_model(model, undeclared_output), "--n", "3")


@case("sample-model-metadata-deeply-nested", "sample", "metadata class_names nested 100,000 lists deep",
      "ganaug.class_names must be a JSON list of strings, not nested", survives=("m.onnx",),
      found="RecursionError traceback from json.loads, exit 1")
def _sample_model_metadata_deeply_nested(env):
    return env.sample(env.model("m.onnx", meta_overrides={"ganaug.class_names": "[" * 100_000 + "]" * 100_000}),
                      "--n", "3")


@case("sample-model-metadata-huge-number", "sample", "metadata image_shape holding a 5,000-digit number",
      "metadata ganaug.image_shape is 5008 characters long (at most 1024)", survives=("m.onnx",),
      found="ValueError traceback ('Exceeds the limit (4300 digits) for integer string conversion'), exit 1")
def _sample_model_metadata_huge_number(env):
    return env.sample(env.model("m.onnx", meta_overrides={"ganaug.image_shape": "[" + "9" * 5000 + ", 8, 1]"}),
                      "--n", "3")


@case("sample-model-image-shape-bool", "sample", "metadata image_shape [8, 8, true]",
      "ganaug.image_shape='[8, 8, true]' must be [H, W, C] with positive integers", survives=("m.onnx",),
      found="accepted (exit 0): true taken for 1 channel, and written into sample_info.json as image_shape "
            "[8, 8, true]")
def _sample_model_image_shape_bool(env):
    return env.sample(env.model("m.onnx", meta_overrides={"ganaug.image_shape": "[8, 8, true]"}), "--n", "3")


@case("sample-model-z-dim-other-digits", "sample", "metadata z_dim '٨' (an Arabic-Indic eight)",
      "metadata ganaug.z_dim='٨' is not a whole number", survives=("m.onnx",),
      found="accepted (exit 0): int() reads '٨' as 8")
def _sample_model_z_dim_other_digits(env):
    return env.sample(env.model("m.onnx", meta_overrides={"ganaug.z_dim": "٨"}), "--n", "3")


@case("sample-model-class-name-lone-surrogate", "sample", "a class name holding a lone surrogate (JSON \\ud800)",
      "ganaug.class_names[1] is not valid Unicode (a lone surrogate)", survives=("m.onnx",),
      found="UnicodeEncodeError traceback ('surrogates not allowed') while naming the class directories, exit 1")
def _sample_model_class_name_lone_surrogate(env):
    return env.sample(env.model("m.onnx", class_names=["cat", "\ud800", "fox"]), "--n", "3")


@case("sample-classes-ambiguous", "sample", "--classes dup on a model with two classes named 'dup'",
      "the model has 2 classes named 'dup' (labels 0, 2)",
      found="accepted (exit 0): --classes dup silently took the second class named 'dup' (label 2)")
def _sample_classes_ambiguous(env):
    return env.sample(env.model(class_names=["dup", "x", "dup"]), "--n", "3", "--classes", "dup")


@case("sample-class-unknown", "sample", "--classes naming a class the model lacks",
      "unknown class 'zebra'; the model's classes are: 'cat', 'dog', 'fox'")
def _sample_class_unknown(env):
    return env.sample(env.model(), "--n", "3", "--classes", "cat,zebra")


@case("sample-classes-trailing-space", "sample", "--classes 'cat ' (a trailing space)",
      "unknown class 'cat '; the model's classes are", found="sampled class 'cat' without a word (names were stripped)")
def _sample_classes_trailing_space(env):
    return env.sample(env.model(), "--n", "3", "--classes", "cat ")


@case("sample-n-past-int64", "sample", "--n 10^20", "argument --n: 100000000000000000000 is not in 1..2^63-1",
      found="OverflowError traceback ('Python int too large to convert to C ssize_t'), exit 1")
def _sample_n_past_int64(env):
    return env.sample(env.model(), "--n", str(10**20))


@case("sample-per-class-past-int64", "sample", "--per-class 2^62 with 3 classes (past int64 in all)",
      "image indices are int64, so at most", found="OverflowError traceback, exit 1")
def _sample_per_class_past_int64(env):
    return env.sample(env.model(), "--per-class", str(2**62))


@case("sample-class-twice", "sample", "--classes naming a class twice", "class 'cat' is named twice in --classes")
def _sample_class_twice(env):
    return env.sample(env.model(), "--n", "3", "--classes", "cat,cat")


@case("sample-classes-empty", "sample", "--classes ','", "--classes is empty")
def _sample_classes_empty(env):
    return env.sample(env.model(), "--n", "3", "--classes", ",")


@case("sample-classes-unconditional", "sample", "--classes with an unconditional model",
      "--classes needs a class-conditional model")
def _sample_classes_unconditional(env):
    return env.sample(env.model(conditional=False, class_names=None), "--n", "3", "--classes", "a")


@case("sample-n-zero", "sample", "--n 0", "argument --n: 0 must be positive")
def _sample_n_zero(env):
    return env.sample(env.model(), "--n", "0")


@case("sample-n-negative", "sample", "--n -5", "argument --n: -5 must be positive")
def _sample_n_negative(env):
    return env.sample(env.model(), "--n", "-5")


@case("sample-n-not-a-number", "sample", "--n ten", "argument --n: 'ten' is not a whole number")
def _sample_n_not_a_number(env):
    return env.sample(env.model(), "--n", "ten")


@case("sample-n-and-per-class", "sample", "--n with --per-class", "--n and --per-class exclude each other")
def _sample_n_and_per_class(env):
    return env.sample(env.model(), "--n", "3", "--per-class", "2")


@case("sample-no-count", "sample", "neither --n nor --per-class", "say how many images: --n N (in total) or --per-class K")
def _sample_no_count(env):
    return env.sample(env.model())


@case("sample-batch-size-zero", "sample", "--batch-size 0", "argument --batch-size: 0 must be positive")
def _sample_batch_size_zero(env):
    return env.sample(env.model(), "--n", "3", "--batch-size", "0")


@case("sample-threads-negative", "sample", "--threads -1", "argument --threads: -1 is not in 0..1024")
def _sample_threads_negative(env):
    return env.sample(env.model(), "--n", "3", "--threads", "-1")


@case("sample-threads-huge", "sample", "--threads 100000", "argument --threads: 100000 is not in 0..1024")
def _sample_threads_huge(env):
    return env.sample(env.model(), "--n", "3", "--threads", "100000")


@case("sample-truncation-negative", "sample", "--truncation -0.5", "--truncation must be 0 (off) or at least")
def _sample_truncation_negative(env):
    return env.sample(env.model(), "--n", "3", "--truncation", "-0.5")


@case("sample-truncation-nan", "sample", "--truncation nan", "--truncation",
      found="accepted (exit 0, truncation silently off, NaN written into sample_info.json); re-running the same "
            "command then fails with 'holds samples made with other settings (truncation nan there, nan now)', "
            "so an interrupted run can never be resumed")
def _sample_truncation_nan(env):
    return env.sample(env.model(), "--n", "3", "--truncation", "nan")


@case("sample-npz-shard-too-big", "sample", "--format npz --n 10**15 --shard-size 10**15 (a shard of 8 PB)",
      "--shard-size",
      found="numpy ArrayMemoryError traceback ('Unable to allocate 7.11 PiB', sampler/job.py _write_shards "
            "allocates a whole shard), exit 1; sample_info.json is left behind")
def _sample_npz_shard_too_big(env):
    return env.sample(env.model(), "--format", "npz", "--n", str(10**15), "--shard-size", str(10**15))


@case("sample-out-is-file", "sample", "--out naming an existing file", "--out {tmp}/notes.txt exists and is not a directory",
      survives=("notes.txt",))
def _sample_out_is_file(env):
    (env.tmp / "notes.txt").write_text("precious")
    return env.sample(env.model(), "--n", "3", out="notes.txt")


@case("sample-out-under-file", "sample", "--out inside a regular file", "--out {tmp}/notes.txt/out is not a writable directory",
      survives=("notes.txt",))
def _sample_out_under_file(env):
    (env.tmp / "notes.txt").write_text("precious")
    return env.sample(env.model(), "--n", "3", out="notes.txt/out")


@case("sample-out-read-only", "sample", "--out on a read-only file system (/sys)",
      "--out /sys/ganaug-out is not a writable directory")
def _sample_out_read_only(env):
    return env.sample(env.model(), "--n", "3", out=READ_ONLY / "ganaug-out")


@case("sample-out-foreign-files", "sample", "--out that already holds someone's photos",
      "is not empty and has no sample_info.json (e.g. 'holiday.jpg'); refusing to mix synthetic images into it",
      survives=("out",))
def _sample_out_foreign_files(env):
    (env.tmp / "out").mkdir()
    (env.tmp / "out" / "holiday.jpg").write_bytes(b"\xff\xd8 a photo")
    return env.sample(env.model(), "--n", "3")


@case("sample-out-other-settings", "sample", "--out holding a sample set made with another seed",
      "holds samples made with other settings (seed 1 there, 2 now)", survives=("out",))
def _sample_out_other_settings(env):
    model = env.model()
    assert _quiet_main(env.sample(model, "--n", "6", "--seed", "1")) == 0
    return env.sample(model, "--n", "6", "--seed", "2")


@case("sample-out-corrupt-info", "sample", "--out whose sample_info.json is not JSON",
      "cannot read {tmp}/out/sample_info.json", survives=("out",))
def _sample_out_corrupt_info(env):
    model = env.model()
    assert _quiet_main(env.sample(model, "--n", "3")) == 0
    (env.tmp / "out" / "sample_info.json").write_text("{broken")
    return env.sample(model, "--n", "3")


@case("sample-overwrite-foreign-ganaug-names", "sample",
      "--overwrite into a folder ganaug never wrote, holding a manifest.csv and a shard_00000.npz of the user's",
      "is not empty and has no sample_info.json", survives=("out/manifest.csv", "out/shard_00000.npz"),
      found="deleted the user's manifest.csv and shard_00000.npz (ganaug's file names), then wrote a sample set there")
def _sample_overwrite_foreign_ganaug_names(env):
    (env.tmp / "out").mkdir()
    (env.tmp / "out" / "manifest.csv").write_text("my,own,manifest\n")
    (env.tmp / "out" / "shard_00000.npz").write_bytes(b"my own data")
    return env.sample(env.model(), "--n", "3", "--overwrite")


@case("sample-overwrite-corrupt-info", "sample", "--overwrite where sample_info.json is not JSON",
      "ganaug cannot tell which files there it wrote, so it deletes none", survives=("out",),
      found="deleted manifest.csv and sample_info.json by their names, then refused over the class folder it "
            "could no longer tell was its own")
def _sample_overwrite_corrupt_info(env):
    model = env.model()
    assert _quiet_main(env.sample(model, "--n", "3")) == 0
    (env.tmp / "out" / "sample_info.json").write_text("{broken")
    return env.sample(model, "--n", "3", "--overwrite")


@case("sample-overwrite-info-class-dirs-number", "sample",
      "--overwrite with another seed where sample_info.json says class_dirs: 5",
      "is not a ganaug sample_info.json (no identity object, or class_dirs not a list of names)", survives=("out",),
      found="TypeError traceback ('int' object is not iterable), exit 1")
def _sample_overwrite_info_class_dirs_number(env):
    model = env.model()
    assert _quiet_main(env.sample(model, "--n", "3")) == 0
    info = json.loads((env.tmp / "out" / "sample_info.json").read_text())
    (env.tmp / "out" / "sample_info.json").write_text(json.dumps(info | {"class_dirs": 5}))
    return env.sample(model, "--n", "3", "--seed", "2", "--overwrite")


@case("sample-out-class-dir-symlink", "sample", "an interrupted set whose class folder became a symlink out of --out",
      "{tmp}/out/cat is a symbolic link; refusing to write through it", survives=("out", "elsewhere"))
def _sample_out_class_dir_symlink(env):
    model = env.model()
    assert _quiet_main(env.sample(model, "--n", "6")) == 0
    info_path = env.tmp / "out" / "sample_info.json"  # as an interrupted run leaves it: incomplete, no manifest
    info_path.write_text(info_path.read_text().replace('"complete": true', '"complete": false'))
    (env.tmp / "out" / "manifest.csv").unlink()
    shutil.rmtree(env.tmp / "out" / "cat")
    (env.tmp / "elsewhere").mkdir()
    (env.tmp / "elsewhere" / "keep.txt").write_text("not yours")
    (env.tmp / "out" / "cat").symlink_to(env.tmp / "elsewhere", target_is_directory=True)
    return env.sample(model, "--n", "6")


@case("sample-out-info-deeply-nested", "sample", "--out whose sample_info.json is a list nested 100,000 deep",
      "cannot read {tmp}/out/sample_info.json (nested 100000 levels deep (at most 8))", survives=("out",),
      found="RecursionError traceback from json.load, exit 1")
def _sample_out_info_deeply_nested(env):
    model = env.model()
    assert _quiet_main(env.sample(model, "--n", "3")) == 0
    (env.tmp / "out" / "sample_info.json").write_text("[" * 100_000 + "]" * 100_000)
    return env.sample(model, "--n", "3")


@case("sample-resume-directory-as-image", "sample", "a finished set where a directory took an image's name",
      "{tmp}/out/cat/cat_00000000.png is a directory, not a file", survives=("out",),
      found="accepted (exit 0): the directory was counted as the image, so the set said complete with an image "
            "missing (ImageFolder skips it silently)")
def _sample_resume_directory_as_image(env):
    model = env.model()
    assert _quiet_main(env.sample(model, "--n", "6")) == 0
    (env.tmp / "out" / "cat" / "cat_00000000.png").unlink()
    (env.tmp / "out" / "cat" / "cat_00000000.png").mkdir()
    return env.sample(model, "--n", "6")


def _whole_png(env):
    from ganaug.sampler.layout import PngCheck

    assert PngCheck((8, 8, 1), 10_000).is_whole(str(env.tmp / "out" / "cat" / "cat_00000000.png"))


@case("sample-resume-empty-png", "sample", "a set re-run after a power cut left one PNG empty",
      "rewrote 1 damaged or incomplete files left by an interrupted run", outcome="warning", survives=("g.onnx",),
      may_change=("out/cat/cat_00000000.png",), check=_whole_png,
      found="accepted (exit 0): the empty file was counted as done, so the set said complete with an image missing")
def _sample_resume_empty_png(env):
    model = env.model()
    assert _quiet_main(env.sample(model, "--n", "6")) == 0
    (env.tmp / "out" / "cat" / "cat_00000000.png").write_bytes(b"")
    return env.sample(model, "--n", "6")


def _whole_npz(env):
    from ganaug.sampler.layout import npz_is_whole

    assert npz_is_whole(str(env.tmp / "out" / "shard_00001.npz"), (8, 8, 1), np.array([2, 0]))


@case("sample-resume-truncated-npz", "sample", "an .npz set re-run with one file cut short",
      "rewrote 1 damaged or incomplete files left by an interrupted run", outcome="warning", survives=("g.onnx",),
      may_change=("out/shard_00001.npz",), check=_whole_npz,
      found="accepted (exit 0): the cut file was counted as done; np.load fails on it later")
def _sample_resume_truncated_npz(env):
    model = env.model()
    args = ("--n", "6", "--format", "npz", "--shard-size", "2")
    assert _quiet_main(env.sample(model, *args)) == 0
    path = env.tmp / "out" / "shard_00001.npz"
    path.write_bytes(path.read_bytes()[:100])
    return env.sample(model, *args)


@case("sample-shard-count-zero", "sample", "--shard 0/0", "--shard 0/0: COUNT must be 1 .. 1048576, got 0")
def _sample_shard_count_zero(env):
    return env.sample(env.model(), "--n", "3", "--shard", "0/0")


@case("sample-shard-index-too-big", "sample", "--shard 3/2", "--shard 3/2: INDEX must be 0 .. 1 (COUNT - 1), got 3")
def _sample_shard_index_too_big(env):
    return env.sample(env.model(), "--n", "3", "--shard", "3/2")


@case("sample-shard-negative", "sample", "--shard=-1/4", "--shard '-1/4' is not INDEX/COUNT")
def _sample_shard_negative(env):
    return env.sample(env.model(), "--n", "3", "--shard=-1/4")


@case("sample-shard-not-numbers", "sample", "--shard a/b", "--shard 'a/b' is not INDEX/COUNT")
def _sample_shard_not_numbers(env):
    return env.sample(env.model(), "--n", "3", "--shard", "a/b")


@case("sample-shard-other-settings", "sample", "--shard 1/2 with --seed 2 into a set that shard 0/2 began with --seed 1",
      "holds samples made with other settings (seed 1 there, 2 now)", survives=("out",))
def _sample_shard_other_settings(env):
    model = env.model()
    assert _quiet_main(env.sample(model, "--n", "6", "--seed", "1", "--shard", "0/2")) == 0
    return env.sample(model, "--n", "6", "--seed", "2", "--shard", "1/2")


@case("sample-filter-class-count", "sample", "--filter with a classifier of 4 classes for a 3-class generator",
      "the classifier has 4 classes but the generator has 3", survives=("g.onnx", "c.onnx"))
def _sample_filter_class_count(env):
    return env.sample(env.model(), "--n", "3", "--filter", env.classifier(num_classes=4), "--min-confidence", "0.9")


@case("sample-filter-image-shape", "sample", "--filter with a classifier of 8x8 RGB images for a generator of 8x8 grey",
      "classifier input 'images' has size 3 on axis 3 but the generator's images are [8, 8, 1]",
      survives=("g.onnx", "c.onnx"))
def _sample_filter_image_shape(env):
    return env.sample(env.model(), "--n", "3", "--filter", env.classifier(shape=(8, 8, 3)), "--min-confidence", "0.9")


@case("sample-filter-image-shape-undeclared", "sample",
      "--filter with a classifier of 4x4 images whose input sizes are not declared",
      "the classifier fails on a batch of 2 uint8 images of [8, 8, 1] (H, W, C): the classifier returned float32 [8, 3]",
      survives=("g.onnx", "c.onnx"))
def _sample_filter_image_shape_undeclared(env):
    classifier = env.classifier(shape=(4, 4, 1), input_shape=["N", "H", "W", "C"])
    return env.sample(env.model(), "--n", "3", "--filter", classifier, "--min-confidence", "0.9")


@case("sample-filter-static-batch", "sample", "--filter with a classifier whose batch size is fixed to 1",
      "classifier input 'images' has a fixed batch size of 1; the contract is a dynamic N", survives=("g.onnx", "c.onnx"))
def _sample_filter_static_batch(env):
    return env.sample(env.model(), "--n", "3", "--filter", env.classifier(batch=1), "--min-confidence", "0.9")


@case("sample-filter-output-name", "sample", "--filter with a classifier whose output is named 'scores'",
      "the classifier's output is named 'scores'; name it 'logits' (the sampler applies the softmax) or 'probabilities'",
      survives=("g.onnx", "c.onnx"))
def _sample_filter_output_name(env):
    return env.sample(env.model(), "--n", "3", "--filter", env.classifier(output="scores"), "--min-confidence", "0.9")


@case("sample-filter-is-a-generator", "sample", "--filter naming a generator instead of a classifier",
      "the classifier must have one input, uint8 [N, 8, 8, 1] (N, H, W, C: the generator's images); it has 2: 'z', "
      "'labels'", survives=("g.onnx",))
def _sample_filter_is_a_generator(env):
    model = env.model()
    return env.sample(model, "--n", "3", "--filter", model, "--min-confidence", "0.9")


@case("sample-filter-classes-reordered", "sample", "--filter with a classifier whose metadata lists the classes in "
      "another order", "the classifier's class names ['fox', 'dog', 'cat'] are not the generator's ['cat', 'dog', "
      "'fox'] (same classes in another order?)", survives=("g.onnx", "c.onnx"))
def _sample_filter_classes_reordered(env):
    classifier = env.classifier(metadata={"ganaug.class_names": json.dumps(CLASSES[::-1])})
    return env.sample(env.model(), "--n", "3", "--filter", classifier, "--min-confidence", "0.9")


@case("sample-filter-external-data", "sample", "--filter with a classifier whose weight W keeps its data in the "
      "external file .ssh/id_rsa", "tensor 'W' keeps its data in an external file ('.ssh/id_rsa')",
      survives=("g.onnx", "c.onnx"))
def _sample_filter_external_data(env):
    from onnx import TensorProto as Tensor
    from onnx.external_data_helper import set_external_data

    def externalise(model):
        weight = next(t for t in model.graph.initializer if t.name == "W")
        set_external_data(weight, ".ssh/id_rsa", offset=0, length=len(weight.raw_data))
        weight.ClearField("raw_data")
        weight.data_location = Tensor.EXTERNAL

    classifier = _edit_model(env.classifier(), externalise)
    return env.sample(env.model(), "--n", "3", "--filter", classifier, "--min-confidence", "0.9")


@case("sample-filter-nan-output", "sample", "--filter with a classifier whose weights are NaN",
      "the classifier returned NaN or infinite logits for 2 of 2 images", survives=("g.onnx", "c.onnx"))
def _sample_filter_nan_output(env):
    from onnx import numpy_helper

    def poison(model):
        weight = next(t for t in model.graph.initializer if t.name == "W")
        weight.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(weight).shape, np.nan, np.float32), "W"))

    classifier = _edit_model(env.classifier(), poison)
    return env.sample(env.model(), "--n", "3", "--filter", classifier, "--min-confidence", "0.9")


@case("sample-filter-missing", "sample", "--filter naming a file that does not exist",
      "classifier file {tmp}/nope.onnx does not exist", survives=("g.onnx",))
def _sample_filter_missing(env):
    return env.sample(env.model(), "--n", "3", "--filter", str(env.tmp / "nope.onnx"), "--min-confidence", "0.9")


@case("sample-filter-without-min-confidence", "sample", "--filter without --min-confidence",
      "--filter needs --min-confidence TAU")
def _sample_filter_without_min_confidence(env):
    return env.sample(env.model(), "--n", "3", "--filter", env.classifier())


@case("sample-min-confidence-without-filter", "sample", "--min-confidence without --filter",
      "--min-confidence needs --filter CLASSIFIER.onnx")
def _sample_min_confidence_without_filter(env):
    return env.sample(env.model(), "--n", "3", "--min-confidence", "0.9")


@case("sample-min-confidence-zero", "sample", "--min-confidence 0 (it would keep every image)",
      "--min-confidence must be in (0, 1] (a probability above 0), got 0.0")
def _sample_min_confidence_zero(env):
    return env.sample(env.model(), "--n", "3", "--filter", env.classifier(), "--min-confidence", "0")


@case("sample-min-confidence-above-one", "sample", "--min-confidence 1.5",
      "--min-confidence must be in (0, 1] (a probability above 0), got 1.5")
def _sample_min_confidence_above_one(env):
    return env.sample(env.model(), "--n", "3", "--filter", env.classifier(), "--min-confidence", "1.5")


@case("sample-min-confidence-nan", "sample", "--min-confidence nan", "argument --min-confidence: 'nan' is not a finite number")
def _sample_min_confidence_nan(env):
    return env.sample(env.model(), "--n", "3", "--filter", env.classifier(), "--min-confidence", "nan")


@case("sample-filter-other-tau-on-resume", "sample", "--out holding a set filtered with --min-confidence 0.5, "
      "re-run with 0.8", "holds samples made with other settings (filter.min_confidence 0.5 there, 0.8 now)",
      survives=("out",))
def _sample_filter_other_tau_on_resume(env):
    model, classifier = env.model(), env.classifier()
    assert _quiet_main(env.sample(model, "--n", "6", "--filter", classifier, "--min-confidence", "0.5")) == 0
    return env.sample(model, "--n", "6", "--filter", classifier, "--min-confidence", "0.8")


# ============================================================================== evaluate

@case("evaluate-no-subcommand", "evaluate", "`ganaug evaluate` alone", "the following arguments are required: COMMAND")
def _evaluate_no_subcommand(env):
    return ["evaluate"]


@case("evaluate-unknown-subcommand", "evaluate", "`ganaug evaluate fly`", "invalid choice: 'fly'")
def _evaluate_unknown_subcommand(env):
    return ["evaluate", "fly"]


@case("evaluate-metrics-no-model", "evaluate", "metrics without --model", "the following arguments are required: --model")
def _evaluate_metrics_no_model(env):
    return ["evaluate", "metrics", "--data", "digits", "--out", str(env.tmp / "eval")]


@case("evaluate-metrics-n-zero", "evaluate", "metrics --n 0", "argument --n: 0 must be positive")
def _evaluate_metrics_n_zero(env):
    return [*env.metrics(), "--n", "0"]


@case("evaluate-metrics-model-missing", "evaluate", "metrics --model naming nothing",
      "model file {tmp}/nope.onnx does not exist")
def _evaluate_metrics_model_missing(env):
    return env.metrics(model=str(env.tmp / "nope.onnx"))


@case("evaluate-metrics-model-random-bytes", "evaluate", "metrics --model of random bytes",
      "cannot load {tmp}/m.onnx as an ONNX model", survives=("m.onnx",))
def _evaluate_metrics_model_random_bytes(env):
    (env.tmp / "m.onnx").write_bytes(np.random.default_rng(4).bytes(2048))
    return env.metrics(model=str(env.tmp / "m.onnx"))


@case("evaluate-metrics-model-without-metadata", "evaluate", "metrics --model without ganaug metadata",
      "has no ganaug metadata", survives=("m.onnx",))
def _evaluate_metrics_model_without_metadata(env):
    return env.metrics(model=env.digits_model("m.onnx", meta_overrides=dict.fromkeys(META_KEYS)))


@case("evaluate-metrics-classes-not-in-data", "evaluate", "a cat/dog/fox model measured against the digits",
      "classes ['cat', 'dog', 'fox'] are not in the data's classes", survives=("m.onnx",))
def _evaluate_metrics_classes_not_in_data(env):
    return env.metrics(model=env.model("m.onnx"))


@case("evaluate-metrics-data-missing", "evaluate", "metrics --data naming nothing",
      "--data: '{tmp}/nowhere' is not a known dataset")
def _evaluate_metrics_data_missing(env):
    argv = env.metrics()
    argv[argv.index("digits")] = str(env.tmp / "nowhere")
    return argv


@case("evaluate-metrics-out-is-file", "evaluate", "metrics --out naming an existing file",
      "--out {tmp}/notes.txt exists and is not a directory", survives=("notes.txt",))
def _evaluate_metrics_out_is_file(env):
    (env.tmp / "notes.txt").write_text("precious")
    return env.metrics(out="notes.txt")


@case("evaluate-metrics-out-read-only", "evaluate", "metrics --out on a read-only file system (/sys)",
      "--out /sys/ganaug-eval is not a writable directory")
def _evaluate_metrics_out_read_only(env):
    argv = env.metrics()
    argv[argv.index("--out") + 1] = str(READ_ONLY / "ganaug-eval")
    return argv


@case("evaluate-metrics-truncation-negative", "evaluate", "metrics --truncation -1",
      "--truncation must be 0 (off) or at least 0.01, got -1.0")
def _evaluate_metrics_truncation_negative(env):
    return [*env.metrics(), "--truncation", "-1"]


@case("evaluate-metrics-truncation-nan", "evaluate", "metrics --truncation nan (with --out a file, so that today's "
      "acceptance fails fast on the --out check instead of running the metrics)", "--truncation",
      survives=("notes.txt",),
      found="accepted: NaN passes `args.truncation < 0`; the run goes on (here to the --out error, otherwise to "
            "the whole measurement with truncation silently off)")
def _evaluate_metrics_truncation_nan(env):
    (env.tmp / "notes.txt").write_text("precious")
    return [*env.metrics(out="notes.txt"), "--truncation", "nan"]


@case("evaluate-metrics-features-missing", "evaluate", "--features naming nothing", "--features: {tmp}/net.pt is not a file")
def _evaluate_metrics_features_missing(env):
    return [*env.metrics(), "--features", str(env.tmp / "net.pt")]


@case("evaluate-metrics-features-random-bytes", "evaluate", "--features file of random bytes",
      "--features: {tmp}/net.pt is not a PyTorch checkpoint, or is truncated", survives=("net.pt",),
      found="struct.error traceback from torch's weights-only unpickler ('unpack requires a buffer of 4 bytes'), "
            "exit 1: evaluate/features.py catches UnpicklingError, RuntimeError, ValueError, OSError, EOFError only")
def _evaluate_metrics_features_random_bytes(env):
    (env.tmp / "net.pt").write_bytes(b"junk")
    return [*env.metrics(), "--features", str(env.tmp / "net.pt")]


@case("evaluate-metrics-features-hostile-pickle", "evaluate", "--features file whose pickle calls os.system",
      "GLOBAL posix.system", survives=("evil.pt",), check=lambda env: _assert_no_code_ran(env),
      found="refused without running (exit 2, one line), but the line is torch's text advising to re-run "
            "torch.load with weights_only=False ('will likely succeed') and does not name the blocked global")
def _evaluate_metrics_features_hostile_pickle(env):
    return [*env.metrics(), "--features", str(env.hostile_pickle(env.tmp / "evil.pt"))]


@case("evaluate-metrics-features-unknown-arch", "evaluate", "--features notamodel:PATH",
      "--features: 'notamodel' is not a torchvision model", survives=("net.pt",))
def _evaluate_metrics_features_unknown_arch(env):
    torch.save({"w": torch.zeros(2)}, env.tmp / "net.pt")
    return [*env.metrics(), "--features", f"notamodel:{env.tmp / 'net.pt'}"]


@case("evaluate-study-k-zero", "evaluate", "study --k 0", "--k: 0 must be positive")
def _evaluate_study_k_zero(env):
    return env.study("--k", "0")


@case("evaluate-study-k-not-a-number", "evaluate", "study --k five", "--k: 'five' is not a whole number or 'all'")
def _evaluate_study_k_not_a_number(env):
    return env.study("--k", "five")


@case("evaluate-study-k-repeated", "evaluate", "study --k 5,5", "--k: '5,5' must list distinct values")
def _evaluate_study_k_repeated(env):
    return env.study("--k", "5,5")


@case("evaluate-study-test-fraction-above-one", "evaluate", "study --test-fraction 1.5",
      "argument --test-fraction: 1.5 is not between 0 and 1")
def _evaluate_study_test_fraction_above_one(env):
    return env.study("--test-fraction", "1.5")


@case("evaluate-study-test-fraction-zero", "evaluate", "study --test-fraction 0",
      "--test-fraction must be strictly between 0 and 1")
def _evaluate_study_test_fraction_zero(env):
    return env.study("--test-fraction", "0")


@case("evaluate-study-seeds-zero", "evaluate", "study --seeds 0", "argument --seeds: 0 must be positive")
def _evaluate_study_seeds_zero(env):
    return env.study("--seeds", "0")


@case("evaluate-study-truncation-nan", "evaluate", "study --truncation nan (with --out a file, so that today's "
      "acceptance fails fast on the --out check instead of running the study)", "--truncation",
      survives=("notes.txt",),
      found="accepted: NaN passes `args.truncation < 0`; the run goes on (here to the --out error, otherwise to "
            "minutes of GAN training, then `ganaug sample --truncation nan`)")
def _evaluate_study_truncation_nan(env):
    (env.tmp / "notes.txt").write_text("precious")
    return env.study("--truncation", "nan", out="notes.txt")


@case("evaluate-study-config-typo", "evaluate", "study with a misspelt GAN override (train.stpes=3)",
      "unknown config key 'train.stpes' (did you mean train.steps?)")
def _evaluate_study_config_typo(env):
    return env.study("train.stpes=3")


@case("evaluate-study-config-file-missing", "evaluate", "study --config naming a missing file",
      "cannot read config file {tmp}/nope.yaml")
def _evaluate_study_config_file_missing(env):
    return env.study("--config", str(env.tmp / "nope.yaml"))


@case("evaluate-study-data-missing", "evaluate", "study --data naming nothing", "'{tmp}/nowhere' is not a known dataset")
def _evaluate_study_data_missing(env):
    return env.study("--data", str(env.tmp / "nowhere"))


@case("evaluate-study-data-unlabelled", "evaluate", "study --data of unlabelled images",
      "the study needs labelled images", survives=("d.npz",))
def _evaluate_study_data_unlabelled(env):
    env.npz("d.npz", images=np.zeros((40, 8, 8), np.uint8))
    return env.study("--data", str(env.tmp / "d.npz"))


@case("evaluate-study-out-is-file", "evaluate", "study --out naming an existing file",
      "--out {tmp}/notes.txt exists and is not a directory", survives=("notes.txt",))
def _evaluate_study_out_is_file(env):
    (env.tmp / "notes.txt").write_text("precious")
    return env.study(out="notes.txt")


@case("evaluate-study-state-corrupt", "evaluate", "study --out whose state.json is not JSON",
      "{tmp}/study/state.json is unreadable", survives=("study",))
def _evaluate_study_state_corrupt(env):
    (env.tmp / "study").mkdir()
    (env.tmp / "study" / "state.json").write_text("{half a state")
    return env.study()


@case("evaluate-study-state-not-a-mapping", "evaluate", "study --out whose state.json is a JSON list",
      "{tmp}/study/state.json", survives=("study",),
      found="AttributeError traceback ('list' object has no attribute 'get', evaluate/study.py StudyState), exit 1")
def _evaluate_study_state_not_a_mapping(env):
    (env.tmp / "study").mkdir()
    (env.tmp / "study" / "state.json").write_text("[1, 2]")
    return env.study()


@case("evaluate-study-other-settings", "evaluate", "study --out holding a study made with other settings",
      "holds a study with other settings", survives=("study",))
def _evaluate_study_other_settings(env):
    (env.tmp / "study").mkdir()
    settings = {"ks": [7], "protocol": PROTOCOL}
    (env.tmp / "study" / "state.json").write_text(json.dumps({"format": 1, "settings": settings, "units": {}}))
    return env.study()


@case("evaluate-study-older-protocol", "evaluate", "study --out holding a study of an older protocol (no protocol mark)",
      "holds a study of protocol unknown (it names none), whose arms mean other things", survives=("study",))
def _evaluate_study_older_protocol(env):
    (env.tmp / "study").mkdir()
    settings = {"ks": [5], "filter_path": "teacher.onnx"}  # protocol 2's mark
    (env.tmp / "study" / "state.json").write_text(json.dumps({"format": 1, "settings": settings, "units": {}}))
    return env.study()


@case("evaluate-metrics-max-real-zero", "evaluate", "metrics --max-real 0", "argument --max-real: 0 must be positive")
def _evaluate_metrics_max_real_zero(env):
    return [*env.metrics(), "--max-real", "0"]


@case("evaluate-metrics-seed-past-int64", "evaluate", "metrics --seed 2^63",
      "argument --seed: 9223372036854775808 is not in 0..2^63-1")
def _evaluate_metrics_seed_past_int64(env):
    return [*env.metrics(), "--seed", str(2**63)]


@case("evaluate-metrics-n-past-memory", "evaluate", "metrics --n 10^10 (2.3 TiB of 16x16 images)",
      "--n 10000000000: measuring 10000000000 generated and 1797 real images of 16x16x1 needs about", isolate=True,
      found="numpy traceback ('Unable to allocate 2.33 TiB for an array with shape (10000000000, 16, 16, 1)'), "
            "exit 1; a count that numpy can reserve but the machine cannot hold would be killed by the kernel instead")
def _evaluate_metrics_n_past_memory(env):
    return [*env.metrics(), "--n", str(10**10)]


@case("evaluate-metrics-truncation-below-floor", "evaluate", "metrics --truncation 0.001 (the sampler's floor is 0.01)",
      "--truncation must be 0 (off) or at least 0.01, got 0.001",
      found="one line, but after the model and the data were loaded, and without the flag's name ('truncation must "
            "be ...')")
def _evaluate_metrics_truncation_below_floor(env):
    return [*env.metrics(), "--truncation", "0.001"]


@case("evaluate-study-truncation-below-floor", "evaluate", "study --truncation 0.001",
      "--truncation must be 0 (off) or at least 0.01, got 0.001",
      found="accepted until the first GAN had been trained and exported, then the sampler's line without the flag's "
            "name")
def _evaluate_study_truncation_below_floor(env):
    return env.study("--truncation", "0.001")


@case("evaluate-study-split-seed-past-2-32", "evaluate", "study --split-seed 2^32 (scikit-learn's split takes less)",
      "argument --split-seed: 4294967296 is not in 0..2^32-1",
      found="scikit-learn InvalidParameterError traceback ('random_state ... must be an int in the range [0, "
            "4294967295]'), exit 1")
def _evaluate_study_split_seed_past_2_32(env):
    return env.study("--split-seed", str(2**32))


@case("evaluate-study-split-seeds-past-2-32", "evaluate", "study --split-seeds 1,2^32",
      "--split-seeds: 4294967296 is not in 0..2^32-1",
      found="the whole study of split 1 ran (GAN trained, classifiers), then a scikit-learn traceback for the second "
            "seed, exit 1")
def _evaluate_study_split_seeds_past_2_32(env):
    return env.study("--split-seeds", f"1,{2**32}")


@case("evaluate-study-test-fraction-tiny", "evaluate", "study --test-fraction 1e-9 (one held-out image, ten classes)",
      "--test-fraction 1e-09 splits the 1797 images into 1796 for training and 1 held out",
      found="ValueError traceback from scikit-learn ('The test_size = 1 should be greater or equal to the number of "
            "classes = 10'), exit 1")
def _evaluate_study_test_fraction_tiny(env):
    return env.study("--test-fraction", "1e-9")


@case("evaluate-study-test-fraction-near-one", "evaluate", "study --test-fraction 0.9999999 (no training image)",
      "splits the 1797 images into 0 for training and 1797 held out",
      found="ValueError traceback from scikit-learn ('... the resulting train set will be empty'), exit 1")
def _evaluate_study_test_fraction_near_one(env):
    return env.study("--test-fraction", "0.9999999")


@case("evaluate-study-class-of-one-image", "evaluate", "study --data whose class 2 has a single image",
      "class 2 has a single image", survives=("d.npz",),
      found="ValueError traceback from scikit-learn ('The least populated classes in y have only 1 member'), exit 1")
def _evaluate_study_class_of_one_image(env):
    env.npz("d.npz", images=np.zeros((21, 8, 8), np.uint8), labels=np.array([0] * 10 + [1] * 10 + [2]))
    return env.study("--data", str(env.tmp / "d.npz"))


@case("evaluate-study-one-class", "evaluate", "study --data whose images are all of one class",
      "has 1 class; the study measures a classifier and needs at least 2", survives=("one.npz",),
      found="an outside pass saw it run to a verdict")
def _evaluate_study_one_class(env):
    env.npz("one.npz", images=np.zeros((20, 8, 8), np.uint8), labels=np.zeros(20, np.int64))
    return env.study("--data", str(env.tmp / "one.npz"))


@case("evaluate-study-gan-steps-huge", "evaluate", "study --gan-steps 10^10",
      "argument --gan-steps: 10000000000 is not in 1..10^9",
      found="one line naming train.steps instead of --gan-steps, after the data was split and written")
def _evaluate_study_gan_steps_huge(env):
    return env.study("--gan-steps", str(10**10))


@case("evaluate-study-classifier-steps-huge", "evaluate", "study --classifier-steps 10^30",
      "argument --classifier-steps: 1000000000000000000000000000000 is not in 1..10^9",
      found="accepted: the study went on to train a GAN, then each classifier for 10^30 steps (it never ends)")
def _evaluate_study_classifier_steps_huge(env):
    return env.study("--classifier-steps", str(10**30))


@case("evaluate-study-classifier-epochs-huge", "evaluate", "study --classifier-min-epochs 10^5",
      "argument --classifier-min-epochs: 100000 is not in 0..10^4")
def _evaluate_study_classifier_epochs_huge(env):
    return env.study("--classifier-min-epochs", str(10**5))


@case("evaluate-study-synthetic-past-memory", "evaluate", "study --synthetic-per-class 10^10 (10^11 images in memory)",
      "--synthetic-per-class 10000000000: a synthetic set of 10000000000 x 10 classes needs about", isolate=True,
      found="accepted: once the first GAN was trained the sampler set out to write 10^11 images (still running "
            "after 4 minutes here), which the study would then read whole into memory")
def _evaluate_study_synthetic_past_memory(env):
    return env.study("--synthetic-per-class", str(10**10))


# ------------------------------------------------------------------------------ augment

@case("augment-labelled-missing", "augment", "--labelled nowhere.npz", "--labelled: ")
def _augment_labelled_missing(env):
    return env.augment(labelled=str(env.tmp / "nowhere.npz"))


@case("augment-labelled-without-labels", "augment", "--labelled: an .npz of images without labels",
      "has no labels", survives=("flat.npz",))
def _augment_labelled_without_labels(env):
    env.npz("flat.npz", images=np.zeros((12, 8, 8), np.uint8))
    return env.augment(labelled=str(env.tmp / "flat.npz"))


@case("augment-labelled-class-without-images", "augment", "--labelled: class_names names a class no image has",
      "names classes without any image (fox)", survives=("l.npz",))
def _augment_labelled_class_without_images(env):
    env.npz("l.npz", images=np.zeros((6, 8, 8), np.uint8), labels=np.array([0, 0, 0, 1, 1, 1]),
            class_names=np.array(CLASSES))
    return env.augment(labelled=str(env.tmp / "l.npz"))


@case("augment-one-class", "augment", "--labelled: every image of one class", "needs at least 2",
      survives=("one.npz",))
def _augment_one_class(env):
    env.npz("one.npz", images=np.zeros((6, 8, 8), np.uint8), labels=np.zeros(6, np.int64))
    return env.augment(labelled=str(env.tmp / "one.npz"))


@case("augment-teacher-steps-zero", "augment", "--teacher-steps 0",
      "argument --teacher-steps: 0 must be positive")
def _augment_teacher_steps_zero(env):
    return env.augment("--teacher-steps", "0")


@case("augment-gan-processes-zero", "augment", "--gan-processes 0",
      "argument --gan-processes: 0 must be positive")
def _augment_gan_processes_zero(env):
    return env.augment("--gan-processes", "0")


@case("augment-folds-past-class-size", "augment", "--folds 4 with 3 labelled images per class",
      "has 3 labelled images; --folds 4 holds one out per fold")
def _augment_folds_past_class_size(env):
    return env.augment("--folds", "4")


@case("augment-out-foreign-folder", "augment", "--out: a non-empty folder augment did not write",
      "is not empty and was not written by ganaug augment", survives=("set/notes.txt",))
def _augment_out_foreign_folder(env):
    (env.tmp / "set").mkdir()
    (env.tmp / "set" / "notes.txt").write_text("mine")
    return env.augment()


@case("augment-out-is-file", "augment", "--out: an existing file", "exists and is not a directory",
      survives=("set",))
def _augment_out_is_file(env):
    (env.tmp / "set").write_text("mine")
    return env.augment()


@case("augment-out-unwritable", "augment", "--out under a directory no one may write (sysfs)", "cannot create it")
def _augment_out_unwritable(env):
    return ["augment", "--labelled", str(env.labelled()), "--out", str(READ_ONLY / "ganaug-set"), "--synthetic",
            "never", "--folds", "2"]


@case("augment-model-other-classes", "augment", "--model: a generator of other classes than the labelled images",
      "a generator of the same classes, in the same order, is needed", survives=("g.onnx", "labelled.npz"))
def _augment_model_other_classes(env):
    model = env.model(class_names=["x", "y", "z"], shape=(8, 8, 1))
    return env.augment("--model", model)


@case("augment-model-not-onnx", "augment", "--model: a text file", "g.onnx", survives=("g.onnx",))
def _augment_model_not_onnx(env):
    (env.tmp / "g.onnx").write_text("not a model")
    return env.augment("--model", str(env.tmp / "g.onnx"))


@case("augment-unlabelled-missing", "augment", "--unlabelled nowhere/", "--unlabelled: ")
def _augment_unlabelled_missing(env):
    return env.augment("--unlabelled", str(env.tmp / "nowhere"))


@case("augment-shard-out-of-range", "augment", "--shard 2/2", "--shard")
def _augment_shard_out_of_range(env):
    return env.augment("--shard", "2/2")


@case("augment-synthetic-share-one", "augment", "--synthetic-share 1 (no real image in a batch)",
      "--synthetic-share must be in (0, 1)")
def _augment_synthetic_share_one(env):
    return env.augment("--synthetic-share", "1")


@case("augment-synthetic-past-memory", "augment", "--synthetic-per-class 10^6 of 3 classes at 1024x1024",
      "--synthetic-per-class 1000000: 1000000 x 3 classes of synthetic images needs about", isolate=True)
def _augment_synthetic_past_memory(env):
    argv = env.augment("--synthetic", "auto", "--synthetic-per-class", str(10**6))
    return [*argv[:-2], "data.resolution=1024", "train.threads=1"]


@case("augment-state-corrupt", "augment", "the work directory's state.json is not JSON",
      "is not a ganaug augment state", survives=("set.work/state.json",))
def _augment_state_corrupt(env):
    (env.tmp / "set.work").mkdir()
    (env.tmp / "set.work" / "state.json").write_text("{not json")
    return env.augment()


@case("augment-fold-teacher-corrupt", "augment",
      "a fold's FixMatch teacher in the work directory overwritten by text, read by an estimate worker process",
      "fixmatch-seed0.pt is not a PyTorch checkpoint",
      survives=("set/manifest.csv", "set.work/folds/fold1/fixmatch-seed0.pt"),
      may_change=("set.work/state.json",))  # rewritten on start, the same units in another layout
def _augment_fold_teacher_corrupt(env):
    env.npz("u.npz", images=np.zeros((6, 8, 8), np.uint8))
    assert _run_quietly(env.augment("--unlabelled", str(env.tmp / "u.npz"), "--jobs", "1")) == 0  # the same estimate
    state = env.tmp / "set.work" / "state.json"
    saved = json.loads(state.read_text())  # as if stopped before the fold's student was measured
    saved["units"] = {key: value for key, value in saved["units"].items() if key.startswith("policy/")}
    state.write_text(json.dumps(saved))
    (env.tmp / "set.work" / "folds" / "fold0" / "fixmatch-seed0.pt").write_text("not a classifier")
    return env.augment("--unlabelled", str(env.tmp / "u.npz"), "--jobs", "2")


@case("augment-other-settings-same-out", "augment", "a finished --out rerun with another --seed",
      "holds a run of ganaug augment with other settings", survives=("set/manifest.csv", "set.work/state.json"))
def _augment_other_settings_same_out(env):
    assert _run_quietly(env.augment()) == 0
    return env.augment("--seed", "1")


def _augment_with_pseudo_labels(env, *args: str) -> None:
    """A finished tiny augment run over 6 unlabelled images (u.npz) that keeps their pseudo-labels,
    whatever its tiny estimate says: the output stage's files exist to be damaged."""
    from ganaug.augment.api import _Job

    env.npz("u.npz", images=np.zeros((6, 8, 8), np.uint8))
    original = _Job.decide
    _Job.decide = staticmethod(lambda estimate: {"recipe": "self-training", "pseudo": True, "synthetic": False,
                                                 "rules": {}, "differences": {}})
    try:
        assert _run_quietly(env.augment("--unlabelled", str(env.tmp / "u.npz"), *args)) == 0
    finally:
        _Job.decide = staticmethod(original)


@case("augment-part-manifest-damaged", "augment",
      "a shard's part manifest in the work directory replaced by other columns", "pool_part_0_of_1.csv is unreadable")
def _augment_part_manifest_damaged(env):
    _augment_with_pseudo_labels(env)
    (env.tmp / "set.work" / "pool_part_0_of_1.csv").write_text("path,label\nx,1\n")
    (env.tmp / "set" / "manifest.csv").unlink()
    return env.augment("--unlabelled", str(env.tmp / "u.npz"))


@case("augment-shard-teacher-corrupt", "augment",
      "the teacher.pt that shards reload, overwritten by text before the second shard runs",
      "teacher.pt is not a PyTorch checkpoint", survives=("set.work/pool_part_1_of_2.csv",),
      found="a traceback: torch's UnpicklingError got past the teacher's loader, which caught OSError, "
            "RuntimeError and ValueError only")
def _augment_shard_teacher_corrupt(env):
    _augment_with_pseudo_labels(env, "--shard", "1/2")
    (env.tmp / "set.work" / "teacher.pt").write_text("not a classifier")
    return env.augment("--unlabelled", str(env.tmp / "u.npz"), "--shard", "0/2")


# ============================================================================== helpers for the checks

def _assert_trained(env: Env, steps: int, images_seen: int, channels: int | None = None) -> None:
    state = torch.load(env.tmp / "run" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["step"] == steps
    assert all(torch.isfinite(t).all() for t in state["G"].values() if t.is_floating_point())
    if channels is not None:
        assert state["model"]["channels"] == channels
    # The log names how many images were kept.
    assert f"{images_seen} images" in env.stderr, env.stderr


def _assert_streamed(env: Env, images: int) -> None:
    """The error came from a DataLoader worker while training, not from a scan before it."""
    assert f"streaming {images} images" in env.stderr and "INFO training dcgan" in env.stderr, env.stderr[-3000:]


def _assert_no_run_dir(env: Env) -> None:
    assert not (env.tmp / "run").exists(), "the run directory was made before the error"


def _assert_no_code_ran(env: Env) -> None:
    assert not env.marker.exists(), "the hostile input ran code"


def _quiet_main(argv: list[str]) -> int:
    from ganaug.cli import main

    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
        return main(argv)


# ============================================================================== the runner

def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file (bytes), symlink (target) and directory ('<dir>') under root, by relative path."""
    found: dict[str, bytes | str] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = f"<link to {os.readlink(path)}>"
            elif path.is_dir():
                found[key] = "<dir>"
            else:
                found[key] = path.read_bytes()
    return found


def _is_temporary(name: str) -> bool:
    return name.endswith(".tmp") or name.startswith(".ganaug-")


def run_in_process(argv: list[str], capsys) -> tuple[int, str]:
    from ganaug.cli import main

    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses bad flags before our code runs
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception:  # what the user would see: a traceback and exit status 1
        sys.stderr.write(traceback.format_exc())
        code = 1
    return code, capsys.readouterr().err


def run_isolated(argv: list[str], environ: dict | None = None) -> tuple[int, str]:
    """A fresh `python -m ganaug` with an 8 GiB address-space limit: runaway memory is a MemoryError, not an OOM.

    Importing torch alone maps about 3.2 GiB of address space (its CUDA build), hence 8 and not less.
    `environ` changes its environment (a value of None unsets the variable).
    """

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name, value in (environ or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    result = subprocess.run([sys.executable, "-m", "ganaug", *argv], capture_output=True, text=True, timeout=120,
                            env=env, cwd=ROOT, preexec_fn=limit)
    return result.returncode, result.stderr


def error_lines(stderr: str, command: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"ganaug {command}: error: ")]


def params():
    for item in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=item.fails)] if item.fails else []
        yield pytest.param(item, id=item.id, marks=marks)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("item", list(params()))
def test_bad_input(item: Case, tmp_path, trained_run, capsys):
    env = Env(tmp_path, trained_run)
    argv = item.setup(env)
    assert argv[0] == item.command
    expect = item.expect.replace("{tmp}", str(tmp_path))
    before = snapshot(tmp_path)
    for survivor in item.survives:
        assert survivor in before, f"survivor {survivor} does not exist before the command"

    environ = {name: None if value is None else value.replace("{tmp}", str(tmp_path))
               for name, value in item.environ.items()}
    code, stderr = run_isolated(argv, environ) if item.isolate else run_in_process(argv, capsys)
    env.stderr = stderr

    assert "Traceback" not in stderr, stderr[-3000:]
    errors = error_lines(stderr, item.command)
    if item.outcome == "error":
        assert code == 2, f"exit status {code}\n{stderr[-3000:]}"
        assert len(errors) == 1, stderr[-3000:]
        assert expect in errors[0], f"{expect!r} not in {errors[0]!r}"
    else:
        assert code == 0, f"exit status {code}\n{stderr[-3000:]}"
        assert errors == [], errors
        if item.outcome == "warning":
            warnings = [line for line in stderr.splitlines() if " WARNING " in line and expect in line]
            assert warnings, stderr[-3000:]

    after = snapshot(tmp_path)
    for path, content in before.items():
        assert path in after, f"{path} was lost"
        if path not in item.may_change:
            assert after[path] == content, f"{path} was changed"
    for survivor in item.survives:
        prefix = survivor + os.sep
        assert {p: c for p, c in after.items() if p.startswith(prefix)} == {
            p: c for p, c in before.items() if p.startswith(prefix)}, f"{survivor} changed"
    left = [p for p in set(after) - set(before) if _is_temporary(Path(p).name)]
    assert not left, f"temporary files left behind: {left}"
    if item.check:
        item.check(env)


# ============================================================================== the catalogue

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _sees(item: Case) -> str:
    fragment = _cell(item.expect)
    if item.fails:
        return f"**fails today:** {_cell(item.fails)}"
    fixed = f" (fixed; it used to fail: {_cell(item.found)})" if item.found else ""
    return _sees_now(item, fragment) + fixed


def _sees_now(item: Case, fragment: str) -> str:
    if item.outcome == "error":
        return f"`ganaug {item.command}: error: …{fragment}…`, exit 2"
    if item.outcome == "warning":
        return f"`WARNING …{fragment}…`, exit 0 (skipped)"
    return f"exit 0: {fragment}"


def catalogue_markdown() -> str:
    """The catalogue table in docs/reliability.md (between the bad-inputs markers)."""
    rows = ["| # | case | command | bad input | what the user sees | what survives |",
            "|---|---|---|---|---|---|"]
    for number, item in enumerate(CASES, start=1):
        survives = ", ".join(f"`{s}`" for s in item.survives) or "—"
        rows.append(f"| {number} | `{item.id}` | {item.command} | {_cell(item.bad_input)} | {_sees(item)} | "
                    f"{survives} |")
    return "\n".join(rows)


def catalogue_counts() -> str:
    by_command = {command: sum(c.command == command for c in CASES) for command in COMMANDS}
    failing = sum(c.fails is not None for c in CASES)
    fixed = sum(c.found is not None for c in CASES)
    return (f"{len(CASES)} bad inputs tried ({', '.join(f'{n} {c}' for c, n in by_command.items())}); "
            f"{failing + fixed} failures found by them: {fixed} fixed, {failing} open (strict xfail).")


def render_section() -> str:
    return f"{TABLE_START}\n{catalogue_counts()}\n\n{catalogue_markdown()}\n{TABLE_END}"


def test_the_catalogue_in_the_docs_matches_the_cases():
    text = DOC.read_text()
    assert TABLE_START in text and TABLE_END in text, "docs/reliability.md lost its catalogue markers"
    section = text[text.index(TABLE_START): text.index(TABLE_END) + len(TABLE_END)]
    assert section == render_section(), "regenerate it: python scripts/reliability_catalogue.py --write"


def test_the_faults_and_tests_the_docs_name_exist():
    """docs/reliability.md counts its fault rows right, and every test it names exists."""
    text = DOC.read_text()
    faults = text[text.index("## Faults"): text.index("## Bad inputs")]
    rows = [line for line in faults.splitlines() if line.startswith("| ") and not line.startswith("| fault |")]
    assert f"{len(rows)} faults survived" in text
    named = re.findall(r"(tests/[\w/]+\.py)::(test_\w+)", text)
    assert len(named) >= len(rows)
    for path, test in named:
        assert f"def {test}(" in (ROOT / path).read_text(), f"{path}::{test} named in the docs does not exist"
    for test in re.findall(r"`(test_\w+)`", text):  # short references name a test of a file named nearby
        assert any(f"def {test}(" in p.read_text() for p in (ROOT / "tests").glob("test_*.py")), test


def test_the_cases_are_well_formed():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(CASES) >= 30
    for item in CASES:
        assert item.command in COMMANDS and item.outcome in OUTCOMES, item.id
        assert item.id.startswith(item.command + "-"), item.id
        assert item.expect.strip(), item.id
        assert not (item.fails and item.found), f"{item.id}: open or fixed, not both"
        assert item.isolate or not item.environ, f"{item.id}: an environment needs a process of its own (isolate)"


def test_the_runner_catches_what_it_must():
    """The checks above can fail: a traceback, a lost file and a second error line are all caught."""
    assert error_lines("ganaug train: error: a\nganaug train: error: b\n", "train") == [
        "ganaug train: error: a", "ganaug train: error: b"]
    assert error_lines("[rank0] INFO ganaug train: error: quoted\n", "train") == []
    assert _is_temporary(".last.pt.abc.tmp") and _is_temporary(".ganaug-0123.tmp") and not _is_temporary("x.png")


@pytest.fixture
def snapshot_dir(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"1")
    (tmp_path / "l").symlink_to(tmp_path / "a")
    return tmp_path


def test_snapshot_sees_bytes_dirs_and_links(snapshot_dir):
    shot = snapshot(snapshot_dir)
    assert shot == {"a": "<dir>", "a/f": b"1", "l": f"<link to {snapshot_dir / 'a'}>"}
    (snapshot_dir / "a" / "f").write_bytes(b"2")
    assert snapshot(snapshot_dir)["a/f"] == b"2"

