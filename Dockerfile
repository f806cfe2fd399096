# edgeppt, CPU image. The wizard is the default command; the CLI is on PATH.
#
#   docker build -t edgeppt .
#   docker run -p 127.0.0.1:8501:8501 -v "$PWD/runs:/data/runs" edgeppt   # the wizard on http://127.0.0.1:8501
#   docker run -v "$PWD/runs:/data/runs" edgeppt edgeppt demo                # or any edgeppt command
#
# The wizard has no authentication (whoever reaches the port can start jobs, read runs and upload files):
# publish it on 127.0.0.1 only, as above, and reach it from another machine through `ssh -L 8501:127.0.0.1:8501`.
# The image holds no keys or secrets (.dockerignore keeps keys/, *.key and .env out) and runs as user 1000.
# The GPU variant (TensorRT engines, CUDA training) is Dockerfile.gpu.
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EDGEPPT_EXAMPLE_BUNDLE=/opt/edgeppt/bundles/animals-src \
    EDGEPPT_RUNS=/data/runs \
    MPLCONFIGDIR=/tmp/matplotlib

# CPU-only torch from PyTorch's CPU index first (no CUDA libraries: a far smaller image). The pin is pyproject's.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /opt/edgeppt
COPY pyproject.toml README.md ./
COPY edgeppt ./edgeppt
COPY source ./source
COPY search ./search
COPY transfer ./transfer
COPY export ./export
COPY pipeline ./pipeline
COPY app ./app
COPY cli ./cli
COPY bundles/animals-src ./bundles/animals-src
# animal-mnist ships the built-in 'animals' images; --no-deps: its own loader would pull TensorFlow.
RUN pip install --no-cache-dir . \
    && pip install --no-cache-dir --no-deps animal-mnist==0.4

RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin edgeppt \
    && mkdir -p /data/runs \
    && chown -R edgeppt:edgeppt /data
USER 1000:1000
WORKDIR /data
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]
# Inside a container the wizard listens on all interfaces so a published port reaches it; publish it on the
# host's 127.0.0.1 only (-p 127.0.0.1:8501:8501): the wizard has no authentication.
CMD ["edgeppt", "app", "--address", "0.0.0.0", "--port", "8501", "--runs", "/data/runs"]
