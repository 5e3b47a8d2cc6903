# Dockerfile -- circled in a container: built with the make targets CI runs,
# shipped on debian:bookworm-slim with only its runtime libraries, run as a
# non-root user on port 8080 (HTTP) and 8081 (gRPC).
#
#   docker build -t circled:0.1.0 .
#   docker run --rm -p 8080:8080 circled:0.1.0
#   docker run --rm -p 8080:8080 circled:0.1.0 --workers 4   # extra flags
#
# The HEALTHCHECK probes port 8080: a container started with another --port
# needs its own --health-cmd.
#
# Build arguments:
#   MAKE_CHECK  make target run in the build stage after `make all`.
#               "test-c" (the default) runs every check suite, as .ci/run
#               does through `make test`, so an image is only produced from a
#               tree whose C tests pass; "all" skips them.
#
# OpenBLAS kernel selection works inside the container: when OpenBLAS'
# runtime detection falls back to a generic core (a CPU newer than the
# packaged OpenBLAS knows, or a hypervisor that hides CPUID bits), circled
# sets OPENBLAS_CORETYPE and re-executes itself through /proc/self/exe
# before loading any kernel (circle_blas_ensure_kernel). That needs nothing
# from the image beyond a readable /proc, which every runtime provides; an
# OPENBLAS_CORETYPE given with `docker run -e` is respected as is.

# ---- build ------------------------------------------------------------------
FROM debian:bookworm AS build

ARG MAKE_CHECK=test-c
ENV DEBIAN_FRONTEND=noninteractive

# make first (as .ci/run does), then the Makefile's own dependency target, in
# a layer of its own so source edits do not reinstall the toolchain.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile circle.pc.in ./
RUN make deps-c && rm -rf /var/lib/apt/lists/*

COPY . .
RUN make all && make "$MAKE_CHECK"

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim

# Only what build/circled links against (checked with ldd below). No curl:
# the HEALTHCHECK speaks HTTP through bash's /dev/tcp, which costs nothing.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libmicrohttpd12 libcjson1 libopenblas0-pthread zlib1g libgrpc29 libprotobuf-c1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 circled \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin circled

# Only the daemon: it links libcircle.a statically, so the image needs neither
# the engine's shared library nor its headers (`make install` is for hosts).
COPY --from=build /src/build/circled /usr/local/bin/circled

# Fail the build, not the first request, if a runtime library is missing.
RUN ldd /usr/local/bin/circled | awk '/not found/ { print; bad = 1 } END { exit bad }'

# The engine runs its own worker pool and sets OpenBLAS to one thread per
# worker; this keeps OpenBLAS from starting a thread per host core at load.
ENV OPENBLAS_NUM_THREADS=1

# Numeric, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 10001:10001
EXPOSE 8080 8081
# circled drains on SIGTERM: stops accepting, finishes in-flight requests,
# exits 0.
STOPSIGNAL SIGTERM

HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r -t 2 _ status _ <&3 && [ \"$status\" = 200 ]"]

ENTRYPOINT ["circled", "--bind", "0.0.0.0", "--port", "8080", "--grpc-port", "8081"]
