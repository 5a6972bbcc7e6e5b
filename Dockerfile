# otelbpf as a container: `make image` builds otelbpf:latest; docker-compose.yml runs it.
#
#   docker run --rm --privileged --pid host \
#     -v /sys/kernel/tracing:/sys/kernel/tracing -v /lib/modules:/lib/modules:ro -v /usr/src:/usr/src:ro \
#     -e OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4317 otelbpf:latest
#
# Configuration is the OTEL_* and OTELBPF_* environment (see `otelbpf run --help`); no file is needed.
ARG BASE_IMAGE=debian:bookworm-slim

# ---- build: a venv at /opt/otelbpf with otelbpf and its runtime dependencies; pip stays behind in this stage.
FROM ${BASE_IMAGE} AS build
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates; \
    rm -rf /var/lib/apt/lists/*

# The dependencies first, read from pyproject.toml alone, so that a source change does not reinstall them;
# setuptools is there to build the package below without a network. .image-ca holds extra CA certificates
# that `make image` copies from the host (a TLS-intercepting proxy in front of PyPI); only this stage's pip
# uses them.
WORKDIR /src
COPY pyproject.toml .image-ca* ./
RUN set -eu; \
    if ls ./*.crt >/dev/null 2>&1; then \
        cat /etc/ssl/certs/ca-certificates.crt ./*.crt > /tmp/build-ca.pem; \
        export PIP_CERT=/tmp/build-ca.pem; \
    fi; \
    python3 -m venv /opt/otelbpf; \
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > requirements.txt; \
    /opt/otelbpf/bin/pip install --no-cache-dir --disable-pip-version-check -q -r requirements.txt 'setuptools>=68'

COPY README.md ./
COPY otelbpf ./otelbpf
# The distribution's bcc is linked in without the rest of dist-packages, as scripts/setup.sh does for .venv.
RUN set -eu; \
    /opt/otelbpf/bin/pip install --no-cache-dir --disable-pip-version-check -q --no-deps --no-build-isolation .; \
    /opt/otelbpf/bin/pip uninstall -y -q setuptools pip; \
    ln -s /usr/lib/python3/dist-packages/bcc \
        "$(/opt/otelbpf/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/bcc"

# ---- the image
FROM ${BASE_IMAGE}
# bcc (libbcc embeds clang and LLVM: no compiler is installed) and the Python it is built for. Debian's
# kernel headers are unpacked to /opt/kernel-headers without installing their package, which would pull in
# kbuild and gcc; the entrypoint links them when the host mounts no headers of its own. Documentation, man
# pages and translations are left out, as the official slim images do.
COPY scripts/kernel-headers.sh /usr/local/lib/otelbpf/kernel-headers.sh
RUN set -eux; \
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
        'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
        > /etc/dpkg/dpkg.cfg.d/otelbpf-slim; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-bpfcc ca-certificates; \
    bash /usr/local/lib/otelbpf/kernel-headers.sh --fetch /opt/kernel-headers; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log

COPY --from=build /opt/otelbpf /opt/otelbpf
# The BPF C sources, read at run time from OTELBPF_BPF_DIR (a wheel does not carry them).
COPY bpf /opt/otelbpf/bpf
COPY scripts/container-entrypoint.sh /usr/local/bin/otelbpf-entrypoint
ENV PATH=/opt/otelbpf/bin:$PATH \
    OTELBPF_BPF_DIR=/opt/otelbpf/bpf
RUN chmod 0755 /usr/local/bin/otelbpf-entrypoint && otelbpf --version && python -c 'import bcc'

ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="otelbpf" \
      org.opencontainers.image.description="Instrumentation-free OpenTelemetry tracing from eBPF kernel hooks" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# otelbpf flushes every finished span and prints its summary on SIGTERM (docker stop) as on SIGINT.
ENTRYPOINT ["/usr/local/bin/otelbpf-entrypoint"]
CMD ["otelbpf", "run"]
