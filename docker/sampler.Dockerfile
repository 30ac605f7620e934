# syntax=docker/dockerfile:1
# The CPU sampler image: `ganaug sample` on onnxruntime's CPU build and numpy. No torch, no CUDA
# libraries (docker/sampler-gpu.Dockerfile is the GPU one), and a non-root user: it is meant to
# run next to other people's jobs.
#
#   docker build -f docker/sampler.Dockerfile -t ganaug-sampler:0.1.0 .
#   docker run --rm --user "$(id -u):$(id -g)" \
#       -v "$PWD/runs/demo:/models:ro" -v "$PWD/synthetic:/out" \
#       ganaug-sampler:0.1.0 /models/generator.onnx --per-class 1000 --out /out/digits
FROM python:3.11.15-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# tini as process 1 passes SIGTERM (docker stop, pod deletion) on to ganaug and reaps children;
# a Python process 1 without a SIGTERM handler would ignore the signal until SIGKILL.
# hadolint ignore=DL3008  # the pinned base image fixes the Debian release; tini is its own package
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/ganaug
COPY pyproject.toml README.md LICENSE ./
COPY ganaug ./ganaug
# The canonical CPU sampler install (docker/install-commands.txt): numpy and onnxruntime.
# hadolint ignore=DL3013  # installs this project; its dependency ranges are in pyproject.toml
RUN pip install --no-cache-dir '.[cpu]'

# A fixed numeric user: Kubernetes' runAsNonRoot can check a numeric USER, not a name. /out is
# where output volumes are mounted; a new named volume takes this directory's owner.
RUN groupadd --gid 10001 ganaug \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin ganaug \
    && mkdir -p /models /out \
    && chown 10001:10001 /out
USER 10001:10001
WORKDIR /out

ENTRYPOINT ["/usr/bin/tini", "--", "ganaug", "sample"]
CMD ["--help"]
