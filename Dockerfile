# yespo-connector: one image for the merge and deliver stages (and the Yespo stand-in used in demos).
#
#   docker build -t yespo-connector .
#   docker run --rm -v $PWD/deploy/connector.yaml:/etc/yespo-connector/connector.yaml:ro \
#       -e YESPO_API_KEY=... yespo-connector run --config /etc/yespo-connector/connector.yaml --stage all
#
# Two stages: the builder makes a wheel (compiling the decode step's C fast path, hence gcc), the
# runtime image installs only that wheel and its dependencies (confluent-kafka ships manylinux wheels
# with librdkafka inside, so no compiler is needed there).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# README* rather than README.md: the build context must not fail before the README exists;
# setuptools reads it as the long description when it is there.
COPY pyproject.toml setup.py README* ./
COPY connector ./connector
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
# the versions CI passed with (constraints.txt); the test-only packages in it are simply not installed
COPY constraints.txt /wheels/
RUN pip install -c /wheels/constraints.txt /wheels/*.whl && rm -rf /wheels
# A fixed, unprivileged uid so Kubernetes' runAsNonRoot can verify it without a name lookup.
RUN groupadd --system --gid 10001 yespo \
    && useradd --system --uid 10001 --gid yespo --no-create-home --home-dir /nonexistent yespo
# A default config (bootstrap 127.0.0.1:9092); compose and Kubernetes mount their own over it.
COPY deploy/connector.yaml /etc/yespo-connector/connector.yaml
USER 10001:10001
WORKDIR /tmp
# 9464: /metrics, /healthz, /readyz (observability.metrics_port; set metrics_host 0.0.0.0 in a container).
# 8089: the Yespo stand-in, when the image runs `stand-in`.
EXPOSE 9464 8089
ENTRYPOINT ["yespo-connector"]
CMD ["run", "--config", "/etc/yespo-connector/connector.yaml", "--stage", "all"]
