# The one mlref image: pipeline components, transformer, predictor, CronJobs and the MLflow
# server all run from it. CPU torch by default (kind, CPU clusters). For a GPU cluster build
# the CUDA variant from a PyTorch CUDA index, whose wheels bring the CUDA libraries (the node
# needs the NVIDIA driver and device plugin), tag it <version>-cuda and install the chart with
# helm/mlref/values-gpu.yaml, which also makes the training step ask for nvidia.com/gpu:
#   docker build --build-arg TORCH_INDEX=cu128 -t ghcr.io/mlref/mlref:0.1.0-cuda .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/mlref
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY mlref mlref
COPY components components
COPY pipelines pipelines
COPY serving serving
COPY feature_repo feature_repo
RUN /opt/mlref/bin/pip install --index-url "https://download.pytorch.org/whl/${TORCH_INDEX}" \
        --extra-index-url https://pypi.org/simple -c constraints.txt "torch==2.13.0" \
 && /opt/mlref/bin/pip install -c constraints.txt .

FROM ${PYTHON_IMAGE}
# Java for Spark (engine.data=spark): a data step's driver and its executor pods. pyspark
# brings Spark's jars, its Kubernetes scheduler included; executors reach object storage
# through fsspec like every step, so the image carries no Hadoop S3 connector (hadoop-aws).
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 mlref \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp mlref
COPY --from=build /opt/mlref /opt/mlref
COPY --chown=10001:10001 feature_repo /opt/mlref-feature-repo
# A read-only root filesystem: everything written goes to /tmp (an emptyDir in the pods).
ENV PATH=/opt/mlref/bin:$PATH \
    HOME=/tmp \
    MLREF_WORK_DIR=/tmp/mlref \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 5000
# Spark's executor pods run the image with the argument `executor` (as Spark's own image's
# entrypoint.sh takes it) and start the executor JVM; every other command runs as given.
ENTRYPOINT ["/opt/mlref/bin/python", "-m", "mlref.k8s.spark"]
CMD ["mlref", "--help"]
