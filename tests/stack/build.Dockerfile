# The stack test's BUILD_IMAGE: its BASE_IMAGE plus what this host's pip needs, in the build stage
# only: the host's CA bundle (a proxy re-signs TLS to the package index) and the torch CPU wheel
# found on disk (TORCH_REQUIREMENT=torch==2.13.0+cpu picks it from /wheels).
ARG PYTHON_IMAGE=tuneserve-stacktest/python:3.11
FROM ${PYTHON_IMAGE}
COPY ca-certificates.crt /etc/ssl/certs/build-ca-certificates.crt
COPY wheels/ /wheels/
ENV PIP_CERT=/etc/ssl/certs/build-ca-certificates.crt PIP_FIND_LINKS=/wheels
