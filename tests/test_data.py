"""Every data source on tiny generated files, the conversions, bad files, and per-rank sharding."""

from __future__ import annotations

import logging
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganaug.config import DataConfig
from ganaug.data import ImageData, load_dataset
from ganaug.data.convert import pil_to_array
from ganaug.data.loader import ShardedBatches, epoch_shard
from ganaug.errors import UserError

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


def data_cfg(source, **kw) -> DataConfig:
    return DataConfig(source=str(source), resolution=kw.pop("resolution", 8), **kw)


def write_class_folder(root, modes=("L", "RGB")):
    """Two classes with images of several modes and sizes; returns the expected count per class."""
    rng = np.random.default_rng(0)
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    Image.fromarray(rng.integers(0, 255, (20, 12, 3), dtype=np.uint8), "RGB").save(root / "cat" / "a.png")
    Image.fromarray(rng.integers(0, 255, (9, 9), dtype=np.uint8), "L").save(root / "cat" / "b.jpg")
    rgba = rng.integers(0, 255, (10, 10, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / "cat" / "c.png")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), "RGB").convert("P").save(root / "dog" / "d.png")
    Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).save(root / "dog" / "e.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    return {"cat": 3, "dog": 2}


def test_digits_is_the_embedded_default():
    data = load_dataset(DataConfig(resolution=16))
    assert data.images.shape == (1797, 1, 16, 16) and data.images.dtype == torch.uint8
    assert data.class_names == [str(i) for i in range(10)]
    assert torch.bincount(data.labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert data.images.max() > 200  # ink levels scaled from 0..16 to 0..255


def test_class_folder_of_mixed_modes_and_sizes(tmp_path, caplog):
    expected = write_class_folder(tmp_path)
    with caplog.at_level(logging.WARNING):
        data = load_dataset(data_cfg(tmp_path, resolution=8))
    assert data.class_names == ["cat", "dog"]
    assert data.channels == 3  # colour images present
    assert data.images.shape == (5, 3, 8, 8)
    assert torch.bincount(data.labels).tolist() == list(expected.values())
    assert "ignored 1 files" in caplog.text and "that ImageFolder does not read" in caplog.text
    # 16-bit grey is scaled into 0..255, not clipped at 255: its bright corner stays below white
    sixteen_bit = data.images[4]
    assert 0 < sixteen_bit.float().mean() < 255 and (sixteen_bit[0] == sixteen_bit[1]).all()


def test_grey_folder_gives_one_channel_and_channels_can_be_forced(tmp_path):
    (tmp_path / "a").mkdir()
    for i in range(3):
        Image.fromarray(np.full((5, 7), 40 * i, np.uint8), "L").save(tmp_path / "a" / f"{i}.png")
    assert load_dataset(data_cfg(tmp_path)).images.shape == (3, 1, 8, 8)
    forced = load_dataset(data_cfg(tmp_path, channels=3))
    assert forced.images.shape == (3, 3, 8, 8) and (forced.images[:, 0] == forced.images[:, 2]).all()


def test_flat_folder_trains_unconditionally(tmp_path):
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), i * 50, np.uint8), "RGB").save(tmp_path / f"{i}.png")
    data = load_dataset(data_cfg(tmp_path))
    assert data.labels is None and data.num_classes == 0 and len(data) == 4


@pytest.mark.parametrize("layout", ["NHWC", "NHW"])
def test_npz_with_labels_and_class_names(tmp_path, layout):
    images = np.random.default_rng(1).integers(0, 255, (6, 12, 12, 3) if layout == "NHWC" else (6, 12, 12), dtype=np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, images=images, labels=np.array([0, 1, 2, 0, 1, 2]), class_names=np.array(["x", "y", "z"]))
    data = load_dataset(data_cfg(path, resolution=8))
    assert data.images.shape == (6, 3 if layout == "NHWC" else 1, 8, 8)
    assert data.class_names == ["x", "y", "z"] and data.labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_npz_without_labels_is_unconditional(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((3, 8, 8, 1), np.uint8))
    data = load_dataset(data_cfg(path))
    assert data.labels is None and data.images.shape == (3, 1, 8, 8)


def write_idx(path, array: np.ndarray):
    dims = array.shape
    magic = 0x0800 | len(dims)
    path.write_bytes(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + array.tobytes())


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_format_files_from_root(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 4)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    data = load_dataset(DataConfig(source=name, root=str(tmp_path), resolution=16))
    assert data.images.shape == (12, 1, 16, 16) and data.num_classes == 10
    assert data.labels.tolist() == [i % 10 for i in range(12)]


def test_cifar10_format_files_from_root(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10, cifar

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 255, (10, 3072), dtype=np.uint8), "labels": list(range(10))}  # every class
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    # Hand-made files cannot match torchvision's MD5 list; the format is what this test is about.
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: True)
    data = load_dataset(DataConfig(source="cifar10", root=str(tmp_path), resolution=16))
    assert data.images.shape == (50, 3, 16, 16) and data.class_names[7] == "c7"
    assert data.labels.tolist() == list(range(10)) * 5


def test_missing_torchvision_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="mnist not found under data.root=.*set data.download=true"):
        load_dataset(DataConfig(source="mnist", root=str(tmp_path)))


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\nbroken", b"plain text"])
def test_bad_image_file_is_an_error_naming_it(tmp_path, content):
    write_class_folder(tmp_path)
    bad = tmp_path / "cat" / "zz_bad.png"
    bad.write_bytes(content)
    with pytest.raises(UserError, match=f"cannot read image {bad}"):
        load_dataset(data_cfg(tmp_path, channels=3))


def test_truncated_image_is_an_error_or_skipped_with_a_warning(tmp_path, caplog):
    write_class_folder(tmp_path)
    good = (tmp_path / "cat" / "a.png").read_bytes()
    bad = tmp_path / "cat" / "a_truncated.png"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="a_truncated.png"):
        load_dataset(data_cfg(tmp_path))
    with caplog.at_level(logging.WARNING):
        data = load_dataset(data_cfg(tmp_path, skip_bad=True))
    assert len(data) == 5 and "a_truncated.png" in caplog.text and "skipped 1 unreadable images of 6" in caplog.text


def test_bad_folders_and_npz_files(tmp_path):
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "full").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "full" / "x.png")
    with pytest.raises(UserError, match="class folder .*empty_class has no images"):
        load_dataset(data_cfg(tmp_path))
    with pytest.raises(UserError, match="not a known dataset name, a folder or a .npz file"):
        load_dataset(data_cfg(tmp_path / "nowhere"))
    cases = {
        "nokey.npz": ({"pictures": np.zeros((2, 4, 4), np.uint8)}, "has no 'images' array"),
        "float.npz": ({"images": np.zeros((2, 4, 4), np.float32)}, "'images' must be uint8, got float32"),
        "shape.npz": ({"images": np.zeros((2, 4, 4, 5), np.uint8)}, "must be NHW or NHWC"),
        "labels.npz": ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0])}, "'labels' must be 2 integers"),
        "negative.npz": ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, -1])}, "negative"),
        "empty.npz": ({"images": np.zeros((0, 4, 4), np.uint8)}, "holds no images"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(UserError, match=message):
            load_dataset(data_cfg(tmp_path / name))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable .npz file"):
        load_dataset(data_cfg(tmp_path / "junk.npz"))


def test_ranks_draw_disjoint_shards_reseeded_each_epoch():
    shards = [epoch_shard(11, seed=3, epoch=0, rank=r, world=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5  # the uneven tail is dropped so ranks step together
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    assert not torch.equal(epoch_shard(11, 3, 1, 0, 2), shards[0])  # a new order every epoch
    assert torch.equal(epoch_shard(11, 3, 0, 0, 2), shards[0])  # and the same one when asked again


def test_batches_resume_mid_epoch_exactly():
    data = load_dataset(DataConfig(resolution=8))
    reference = ShardedBatches(data, 64, rank=1, world=2, seed=0, device=CPU)
    drawn = [next(reference) for _ in range(20)]  # crosses an epoch boundary (14 batches per epoch)
    resumed = ShardedBatches(data, 64, rank=1, world=2, seed=0, device=CPU)
    for _ in range(9):
        next(resumed)
    state = resumed.state_dict()
    fresh = ShardedBatches(data, 64, rank=1, world=2, seed=0, device=CPU)
    fresh.load_state_dict(state)
    for images, labels in drawn[9:]:
        again_images, again_labels = next(fresh)
        assert torch.equal(images, again_images) and torch.equal(labels, again_labels)


def test_streaming_from_disk_matches_the_in_memory_batches(tmp_path):
    write_class_folder(tmp_path)
    in_memory = ShardedBatches(load_dataset(data_cfg(tmp_path)), 2, 0, 1, 0, CPU)
    streamed = ShardedBatches(load_dataset(data_cfg(tmp_path, in_memory=False)), 2, 0, 1, 0, CPU, num_workers=1)
    assert not streamed.data.in_memory
    for _ in range(5):  # more than one epoch (2 batches of 2 per epoch)
        (a, la), (b, lb) = next(in_memory), next(streamed)
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_batch_larger_than_the_data_is_a_clear_error():
    data = load_dataset(DataConfig(resolution=8))
    with pytest.raises(UserError, match="train.batch_size: 1000 per process is larger than each process's share"):
        ShardedBatches(data, 1000, 0, 2, 0, CPU)


def test_class_folders_are_read_exactly_as_imagefolder_reads_them(tmp_path):
    """torchvision's own rules: images at any depth, hidden sub-folders and files included, its
    extensions only (a .gif is not read); the same files in the same order with the same labels."""
    from torchvision.datasets import ImageFolder

    root = tmp_path / "data"
    for relative in ("cat/a.png", "cat/indoor/b.png", "cat/indoor/deep/c.png", "dog/d.png", "dog/.hidden/e.png",
                     "dog/.f.png", "dog/g.gif", "dog/H.PNG"):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), 200 if relative.startswith("cat") else 50).save(path, format="PNG")
    data = load_dataset(data_cfg(root, in_memory=False))
    reference = ImageFolder(str(root))
    assert data.class_names == reference.classes == ["cat", "dog"]
    assert [str(path) for path in data.files] == [path for path, _ in reference.samples]
    assert data.labels.tolist() == [label for _, label in reference.samples] == [0, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("make", ["loop", "other_class", "hidden_class"])
def test_what_imagefolder_would_read_wrongly_is_refused_in_one_line(tmp_path, make):
    root = tmp_path / "data"
    for relative in ("cat/a.png", "dog/b.png"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8)).save(root / relative)
    if make == "loop":  # ImageFolder walks it until the path is too long, labelling every copy a dog
        (root / "dog" / "loop").symlink_to(root / "dog", target_is_directory=True)
        message = "dog/loop leads out of its class folder"
    elif make == "other_class":  # the cats behind the link would be labelled dogs
        (root / "dog" / "cats").symlink_to(root / "cat", target_is_directory=True)
        message = "dog/cats leads out of its class folder"
    else:  # ImageFolder takes it for a class
        (root / ".ipynb_checkpoints").mkdir()
        message = ".ipynb_checkpoints is a hidden folder, which torchvision's ImageFolder takes for a class"
    with pytest.raises(UserError, match=re.escape(message)):
        load_dataset(data_cfg(root))


def test_npz_class_names_as_bytes_are_decoded(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 1, 0]),
             class_names=np.array([b"caf\xc3\xa9", b"dog"]))
    assert load_dataset(data_cfg(tmp_path / "d.npz")).class_names == ["café", "dog"]


def test_the_unlabelled_source_is_named_in_its_errors_and_loses_its_labels(tmp_path):
    from ganaug.data import load_unlabelled

    labelled = load_dataset(data_cfg("digits"))
    with pytest.raises(UserError, match=r"^data.unlabelled: .*nowhere. is not a known dataset"):
        load_unlabelled(data_cfg("digits", unlabelled=str(tmp_path / "nowhere")), labelled)
    extra = load_unlabelled(data_cfg("digits", unlabelled="digits", channels=3), labelled)
    assert extra.labels is None and extra.class_names == [] and extra.channels == labelled.channels == 1
    assert load_unlabelled(data_cfg("digits"), labelled) is None


# ------------------------------------------------------------------------------ streaming failures
# A DataLoader worker's failure reaches the training process as one line (loader.py), not as
# DataLoader's "Caught ... in DataLoader worker process 0 / Original Traceback" text.


def streaming_folder(root, per_class: int = 6):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), "L").save(root / label / f"{i}.png")


def test_an_unreadable_file_decoded_by_a_worker_is_one_line_naming_it(tmp_path):
    streaming_folder(tmp_path)
    bad = tmp_path / "cat" / "zz.png"
    bad.write_bytes(b"not a png at all")
    batches = ShardedBatches(load_dataset(data_cfg(tmp_path, in_memory=False, channels=1)), 13, 0, 1, 0, CPU,
                             num_workers=1)  # one batch of all 13 images: the bad one is in it
    with pytest.raises(UserError) as caught:
        next(batches)
    assert str(caught.value) == f"data: cannot read image {bad}: cannot identify image file '{bad}'"


def test_a_batch_of_only_unreadable_files_is_one_line_even_when_skipping(tmp_path):
    (tmp_path / "cat").mkdir()
    for i in range(2):
        (tmp_path / "cat" / f"{i}.png").write_bytes(b"junk")
    data = ImageData(None, torch.zeros(2, dtype=torch.int64), ["cat"], 1, 8, files=sorted((tmp_path / "cat").iterdir()))
    batches = ShardedBatches(data, 2, 0, 1, 0, CPU, num_workers=1, skip_bad=True)
    with pytest.raises(UserError, match=r"^data: a whole batch of images was unreadable$"):
        next(batches)


def _die_in_workers(image, channels, resolution):
    if torch.utils.data.get_worker_info() is not None:  # a worker, as the kernel's OOM killer finds it
        os.kill(os.getpid(), signal.SIGKILL)
    return pil_to_array(image, channels, resolution)


def test_a_worker_killed_by_a_signal_is_one_line_saying_what_to_do(tmp_path, monkeypatch):
    from ganaug.data import folder

    streaming_folder(tmp_path)
    monkeypatch.setattr(folder, "pil_to_array", _die_in_workers)  # the forked worker inherits it
    batches = ShardedBatches(load_dataset(data_cfg(tmp_path, in_memory=False, channels=1)), 4, 0, 1, 0, CPU,
                             num_workers=2)
    with pytest.raises(UserError) as caught:
        next(batches)
    message = str(caught.value)
    assert "\n" not in message
    assert re.match(r"data: DataLoader worker \(pid\(?s?\)? [\d, ]+\) (is killed by signal: Killed|exited unexpectedly)",
                    message), message
    assert "set data.num_workers lower than 2 (0: decode in the training process)" in message


def _a_loader_worker(ready, senders_known):
    from ganaug.data.loader import _leave_stop_signals_to_the_trainer

    if not senders_known:
        del signal.sigwaitinfo  # as on a platform without it (this is a forked process of its own)
    _leave_stop_signals_to_the_trainer(0)
    ready.set()
    time.sleep(120)


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="no signal senders to tell apart")
@pytest.mark.parametrize("senders_known", [True, False], ids=["sigwaitinfo", "without-sigwaitinfo"])
def test_a_loader_worker_outlives_anyone_elses_sigterm_and_ends_on_its_trainers(senders_known):
    """Without sigwaitinfo the worker ignores SIGTERM from anyone: preemption still cannot kill it,
    but nor can the trainer's SIGTERM."""
    import multiprocessing

    from ganaug.data.loader import _stop_signals_held

    context = multiprocessing.get_context("fork")  # how the loader starts its workers here
    ready = context.Event()
    worker = context.Process(target=_a_loader_worker, args=(ready, senders_known), daemon=True)
    with _stop_signals_held():
        worker.start()
    try:
        assert ready.wait(60)
        for stop in (signal.SIGTERM, signal.SIGINT):  # a scheduler's or a terminal's, to the process group
            subprocess.run([sys.executable, "-c", f"import os; os.kill({worker.pid}, {int(stop)})"], check=True)
        worker.join(1)
        assert worker.is_alive()
        worker.terminate()  # the trainer's: torch's and Python's exit stop a worker so
        worker.join(60 if senders_known else 1)
        assert worker.exitcode == (0 if senders_known else None)
    finally:
        worker.kill()


def test_ganaug_train_with_a_killed_worker_ends_in_one_line_and_keeps_its_checkpoint(tmp_path):
    """The whole command: one of two workers dies mid-run (here after the first checkpoint); the user
    sees one line, exit status 2, and the checkpoint already written is intact and resumable. The
    other worker ends with the run: Python's exit joined it forever while workers ignored SIGTERM."""
    streaming_folder(tmp_path / "data", per_class=8)
    script = f"""
import os, signal, sys
import torch
from ganaug.cli import main
from ganaug.data import folder
real, calls = folder.pil_to_array, []
def dying(image, channels, resolution):
    calls.append(1)
    worker = torch.utils.data.get_worker_info()
    if worker is not None and worker.id == 0 and os.path.exists({str(tmp_path / "run" / "checkpoints" / "last.pt")!r}):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(image, channels, resolution)
folder.pil_to_array = dying
sys.exit(main(sys.argv[1:]))
"""
    argv = ["train", "--run-dir", str(tmp_path / "run"), f"data.source={tmp_path / 'data'}", "data.in_memory=false",
            "data.num_workers=2", "data.channels=1", "data.resolution=16", "model.g_channels=8", "model.d_channels=8",
            "model.z_dim=16", "model.embed_dim=8", "train.batch_size=4", "train.steps=200", "ckpt.every=2",
            "log.progress=false", "log.image_every=0", "train.threads=1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=240,
                            env=env, cwd=ROOT)
    errors = [line for line in result.stderr.splitlines() if line.startswith("ganaug train: error: ")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1 and result.stderr.splitlines()[-1] == errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "DataLoader worker" in errors[0] and "run the same command again to resume" in errors[0]
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["step"] >= 2 and state["step"] % 2 == 0


# ------------------------------------------------------------------------------ torchvision downloads


def test_an_offline_download_is_one_line_and_restores_the_socket_timeout(tmp_path, monkeypatch):
    import socket
    import urllib.request

    def no_network(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)  # whatever this machine's network does
    monkeypatch.setattr(urllib.request, "_opener", None)
    before = socket.getdefaulttimeout()
    for name in ("mnist", "cifar10"):
        root = tmp_path / name
        with pytest.raises(UserError) as caught:
            load_dataset(DataConfig(source=name, root=str(root), download=True))
        message = str(caught.value)
        assert message.startswith(f"data.source: {name} is not under data.root='{root}' and downloading it failed (")
        assert "Network is unreachable" in message and "\n" not in message
        assert not [p for p in root.rglob("*") if p.is_file()]  # no half-downloaded file
    assert socket.getdefaulttimeout() == before


def test_a_dataset_already_in_data_root_is_not_downloaded_again(tmp_path, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket, "create_connection", no_network)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 12), ("t10k", 4)):
        write_idx(raw / f"{split}-images-idx3-ubyte", np.zeros((n, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    data = load_dataset(DataConfig(source="mnist", root=str(tmp_path), download=True, resolution=8))
    assert len(data) == 12


# ------------------------------------------------------------------------------ memory


@pytest.mark.parametrize("channels", [0, 1, 3])
def test_images_are_converted_in_chunks_exactly_as_in_one_piece(monkeypatch, channels):
    from ganaug.data import convert

    images = torch.randint(0, 256, (37, 3 if channels == 1 else 1, 9, 7), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    whole = convert.match_channels(convert.resize_batch(images, 16), channels)
    monkeypatch.setattr(convert, "CHUNK_BYTES", 4 * 3 * 16 * 16 * 5)  # five images a chunk
    assert torch.equal(convert.to_model_images(images, 16, channels), whole)


def test_a_dataset_beyond_the_memory_available_is_refused_before_it_is_allocated(monkeypatch):
    from ganaug import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 10 * 2**20)  # 10 MiB
    with pytest.raises(UserError, match=r"^data.source: holding 1797 images of 1x128x128 needs about 28.1 MiB of "
                                        r"memory and 10.0 MiB are available here; .*at most 640 fit"):
        load_dataset(DataConfig(resolution=128))
    assert len(load_dataset(DataConfig(resolution=64))) == 1797  # 7 MiB: fits


def test_native_side_reads_headers_and_says_none_where_the_images_disagree(tmp_path):
    """The side augment works at by default: a named source's, an .npz's (any zip compression, NHW
    or NHWC), a folder's where its images agree; None for anything else, unreadable included."""
    from ganaug.data import native_side

    np.savez(tmp_path / "grey.npz", images=np.zeros((5, 28, 28), np.uint8), labels=np.arange(5))
    np.savez_compressed(tmp_path / "colour.npz", images=np.zeros((5, 32, 32, 3), np.uint8))
    np.savez(tmp_path / "wide.npz", images=np.zeros((5, 28, 30, 3), np.uint8))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    for name in ("cat", "dog"):
        (tmp_path / "same" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (64, 64)).save(tmp_path / "same" / name / f"{i}.png")
    (tmp_path / "mixed" / "cat").mkdir(parents=True)
    Image.new("L", (64, 64)).save(tmp_path / "mixed" / "cat" / "a.png")
    Image.new("RGB", (60, 64)).save(tmp_path / "mixed" / "cat" / "b.png")
    sources = ["digits", "mnist5k", "cifar10", *(str(tmp_path / name) for name in (
        "grey.npz", "colour.npz", "wide.npz", "junk.npz", "same", "mixed", "missing"))]
    assert [native_side(source) for source in sources] == [8, 28, 32, 28, 32, None, None, 64, None, None]
