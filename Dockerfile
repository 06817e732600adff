# qatune, CPU image: training (single process or torchrun/gloo), evaluation, serving, and the steps of the
# Kubeflow pipeline (`qatune pipeline compile --image <this image>`).
#
#   docker build -t qatune:latest .
#   docker run --rm -v $PWD/runs:/opt/qatune/runs qatune:latest \
#       qatune train --config configs/squad_lora.yaml train=/data/train.json ...
#
# The image holds kfp so the pipeline's Lightweight Python Components run without installing anything
# at run time, and the bundled MiniLM model (alias `minilm`) so nothing is downloaded either.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false \
    HF_HUB_DISABLE_TELEMETRY=1 \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

WORKDIR /opt/qatune

# CPU-only PyTorch wheels (no CUDA libraries: a much smaller image), before qatune so this layer is cached
ARG TORCH_VERSION=
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch${TORCH_VERSION:+==$TORCH_VERSION}"

COPY pyproject.toml README.md ./
COPY qatune ./qatune
RUN pip install ".[pipelines,minilm]" && python -c "import qatune, kfp, torch; print('qatune ok, torch', torch.__version__)"

# configs and the bundled sample data: relative paths in configs/ resolve from this working directory
COPY configs ./configs

# non-root; the KFP v2 launcher writes step outputs under /gcs, /minio or /s3 (by artifact store), so
# those exist and belong to this user
RUN useradd --create-home --uid 1000 qatune \
    && mkdir -p /opt/qatune/runs /gcs /minio /s3 \
    && chown -R qatune /opt/qatune /gcs /minio /s3
USER qatune
ENV HOME=/home/qatune

CMD ["qatune", "--help"]
