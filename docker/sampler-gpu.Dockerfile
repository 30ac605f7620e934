# syntax=docker/dockerfile:1
# The GPU sampler image: `ganaug sample` on onnxruntime-gpu (CUDA and TensorRT providers) and
# numpy, no torch, the same non-root user and entrypoint as the CPU image (sampler.Dockerfile).
# The base is NVIDIA's CUDA runtime image with cuDNN: onnxruntime-gpu links against CUDA and
# cuDNN libraries it does not ship, and it needs the CUDA major it was built for (13 for the
# releases on PyPI today; CUDA_IMAGE picks another base for an older onnxruntime-gpu).
#
#   docker build -f docker/sampler-gpu.Dockerfile -t ganaug-sampler-gpu:0.1.0 .
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" \
#       -v "$PWD/runs/demo:/models:ro" -v "$PWD/synthetic:/out" \
#       ganaug-sampler-gpu:0.1.0 /models/generator.onnx --per-class 1000 --out /out/digits
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# Ubuntu's Python in a virtual environment (the system one refuses pip installs, PEP 668);
# tini as process 1 passes SIGTERM on to ganaug (see sampler.Dockerfile).
# hadolint ignore=DL3008  # the pinned base image fixes the Ubuntu release; these are its packages
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv tini \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /opt/ganaug
COPY pyproject.toml README.md LICENSE ./
COPY ganaug ./ganaug
# The canonical GPU sampler install (docker/install-commands.txt): numpy and onnxruntime-gpu.
# hadolint ignore=DL3013  # installs this project; its dependency ranges are in pyproject.toml
RUN pip install --no-cache-dir '.[gpu]'

# The same fixed numeric user as the CPU image (Kubernetes' runAsNonRoot checks a numeric USER).
RUN groupadd --gid 10001 ganaug \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin ganaug \
    && mkdir -p /models /out \
    && chown 10001:10001 /out
USER 10001:10001
WORKDIR /out

ENTRYPOINT ["/usr/bin/tini", "--", "ganaug", "sample"]
CMD ["--help"]
