# The project image: worker, projector, topic bootstrap and the development SMTP sink (docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# README* may not exist yet; pyproject.toml names it as the long description.
COPY pyproject.toml README* ./
COPY config ./config
COPY schemas ./schemas
COPY security ./security
COPY eventlog ./eventlog
COPY streams ./streams
COPY projections ./projections
COPY adapters ./adapters
COPY content ./content
COPY offload ./offload
COPY devtools ./devtools
# aiosmtpd is only in the `test` extra, but the mailsink service runs devtools.devmail, which needs it.
RUN pip install . "aiosmtpd>=1.4,<2" \
    && useradd --create-home --uid 10001 offload \
    && mkdir -p /data/mail && chown -R offload:offload /data

USER offload
WORKDIR /home/offload
CMD ["offload", "worker"]
