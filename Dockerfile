# The project image: worker, projector, API, topic bootstrap and the development SMTP sink (docker-compose.yml).
#
# Built from the wheel, not from a list of copied folders: the builder stage packages the whole checkout
# (pyproject.toml decides what is in it, .dockerignore keeps tests and caches out), the runtime stage installs
# that wheel. A new top-level package reaches the image without a change here; .ci/check-compose checks that
# the wheel holds every module the processes import.

# PYTHON_IMAGE: the official Python image; .ci/image-smoke builds with a stand-in where that image cannot be had.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 offload \
    && mkdir -p /data/mail && chown -R offload:offload /data

USER offload
WORKDIR /home/offload
EXPOSE 8080
CMD ["offload", "worker"]
