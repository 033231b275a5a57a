# syntax=docker/dockerfile:1
# Strongroom: one image for `serve`, `worker` and `migrate`.
# No secret is baked in: settings come from the environment and the root key
# from a mounted file (see docker-compose.yml).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/strongroom
ENV PATH=/opt/strongroom/bin:$PATH
WORKDIR /src

# Dependencies first, from the pinned constraints, so a code change does not
# reinstall them.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -c constraints.txt -r /tmp/requirements.txt

COPY README.md ./
COPY api ./api
COPY archiver ./archiver
COPY policy ./policy
COPY retention ./retention
COPY exports ./exports
RUN pip install -c constraints.txt . \
 && pip check


FROM python:3.11-slim
LABEL org.opencontainers.image.title="Strongroom" \
      org.opencontainers.image.description="Compliance archive for WhatsApp Business" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid, so that mounted secrets can be owned by it on the host
# and orchestrators can verify runAsNonRoot.
RUN groupadd --system --gid 10001 strongroom \
 && useradd --system --uid 10001 --gid strongroom --home-dir /var/lib/strongroom \
        --create-home --shell /usr/sbin/nologin strongroom

COPY --from=build /opt/strongroom /opt/strongroom
ENV PATH=/opt/strongroom/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STRONGROOM_DATA_DIR=/var/lib/strongroom

USER 10001:10001
WORKDIR /var/lib/strongroom
EXPOSE 8000

# slim has no curl; the port matches the default command below.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["strongroom"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
