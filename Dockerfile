# The toolkit on a CUDA machine. Build and run (data and runs are volumes; configs come from the image):
#   docker build -t clip-backdoor .
#   docker run --gpus all --shm-size 16g -v /data:/data -v $PWD/runs:/app/runs clip-backdoor \
#       fit --config configs/cc3m/pretrain_badnet.yaml --trainer.devices 8
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
       wordnet-base wordnet-sense-index \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
# Dependencies first, so code edits do not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p lightning_app datamodules modules \
    && touch lightning_app/__init__.py datamodules/__init__.py modules/__init__.py \
    && pip install . && pip uninstall -y clip-backdoor-toolkit
COPY . .
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 1000 toolkit \
    && mkdir -p /app/runs /app/data /data && chown -R toolkit /app/runs /app/data /data
USER toolkit
VOLUME ["/data", "/app/runs"]
ENTRYPOINT ["python", "main.py"]
CMD ["--help"]
