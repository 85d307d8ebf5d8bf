# One image for the code servers, the run pods, the webserver and daemon, and the model
# server (deploy/README.md). Not built on the machine that wrote it: no
# container runtime or registry there.
#   docker build -t REGISTRY/farm-platform:TAG .                      # CPU torch
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#     -t REGISTRY/farm-platform:TAG-cu128 .                            # CUDA torch
# The model server runs it with: farm-platform models serve --host 0.0.0.0 --port 8080
# --grpc-port 8081 (deploy/kserve/inference-service.yaml).
FROM python:3.11-slim-bookworm

# Where pip looks for torch==2.13.0 first: the CPU build by default (a plain PyPI torch is a
# multi-GB CUDA build), a cuXYZ index for GPU nodes.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home

RUN useradd --create-home --uid 10001 farm \
    && mkdir -p /opt/dagster/dagster_home /app \
    && chown farm /opt/dagster/dagster_home

WORKDIR /app
COPY pyproject.toml README.md ./
# The runtime package only: the dev harness (farm_platform_dev) and the `dev` extra never
# come in (farm_platform_tests/unit/test_deploy.py builds the wheel from these files).
COPY farm_platform ./farm_platform
# The same pins as pyproject.toml; torch from the chosen index, everything else from PyPI.
# Editable, as `make` installs it: the package finds models/ and dbt_project/ beside itself
# (farm_platform/config.py, REPO_ROOT).
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX_URL}" \
    && pip install -e ".[serve,deploy]"
# `dagster-webserver`, which Dagster's Helm chart runs for both webservers, is the guarded
# one (deploy/docker/dagster-webserver: refuses mutations sent by GET or from another origin).
COPY deploy/docker/dagster-webserver /usr/local/bin/dagster-webserver
RUN chmod 0755 /usr/local/bin/dagster-webserver

# No model weights in the image: the pods read the models from the bucket
# (FARM_MODELS_DIR=gs://BUCKET/models, deploy/k8s/configmap-env.yaml), so a new model version
# needs no new image. Only the training and evaluation scripts come along. The dbt project
# and its manifest (dagster-dbt loads it at import: prepared here, as `make` does).
COPY models/train.py models/evaluate.py ./models/
COPY dbt_project ./dbt_project
COPY workspace.yaml dagster.yaml ./
RUN dagster-dbt project prepare-and-package --file farm_platform/analytics/dbt_project.py \
    && chown -R farm /app/dbt_project

USER farm
EXPOSE 3030 8080 8081
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "3030", \
     "-m", "farm_platform.images.definitions"]
