# The stack test's BASE_IMAGE: Debian's own Python 3.11 on the Debian base the test makes
# locally when the configured base image (python:3.11-slim) cannot be pulled.
ARG DEBIAN_IMAGE=tuneserve-stacktest/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
