# syntax=docker/dockerfile:1
# The training image: ganaug[train,gpu] on the official PyTorch CUDA runtime image, whose torch is
# the release ganaug is tested with. CUDA 13: the CUDA major of torch's default build and of
# onnxruntime-gpu on PyPI (1.31's [cuda] extra asks for nvidia-cuda-runtime~=13.0); one CUDA in
# the image serves both. Used by launch/k8s/trainjob.yaml and pytorchjob.yaml, and by Slurm
# sites that run containers (pyxis/enroot, Apptainer).
#
#   docker build -f docker/train.Dockerfile -t ganaug-train:0.1.0 .
#   docker run --rm --gpus all --ipc=host -v "$PWD/runs:/runs" ganaug-train:0.1.0 \
#       python3 -m ganaug.launch --standalone --nproc-per-node gpu -m ganaug train --run-dir /runs/digits
ARG TORCH_VERSION=2.14.1
ARG CUDA_FLAVOUR=cuda13.0-cudnn9-runtime
FROM pytorch/pytorch:${TORCH_VERSION}-${CUDA_FLAVOUR}
ARG TORCH_VERSION

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/ganaug
COPY pyproject.toml README.md LICENSE ./
COPY ganaug ./ganaug
COPY configs ./configs
# The canonical training install (docker/install-commands.txt), with onnxruntime-gpu (the build a
# GPU host gets; the exporter's checks use its CPU provider). The base image's torch and torchvision satisfy the [train] ranges, so
# pip keeps them and adds the rest. A CPU-only or different torch pulled in by a dependency would
# build fine and train slowly or not at all: the check after it fails the build instead.
# hadolint ignore=DL3013  # installs this project; its dependency ranges are in pyproject.toml
RUN pip install --no-cache-dir '.[train,gpu]' \
    && python -c "import sys, torch; ok = torch.__version__.split('+')[0] == '${TORCH_VERSION}' and torch.version.cuda; sys.exit(0 if ok else 'torch ' + torch.__version__ + ' is not the base image build')"

# Run directories and datasets are volumes (e.g. -v runs:/runs, data.root=/data); the container
# command is the launcher: python3 -m ganaug.launch ... -m ganaug train ... (torchrun; docs/launch.md).
WORKDIR /workspace
CMD ["ganaug", "--help"]
