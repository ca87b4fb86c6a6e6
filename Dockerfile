# syntax=docker/dockerfile:1
# The Checkpointer image: the server bundled into one file by the project's own build (scripts/build.mjs, which
# `pnpm start` and the tests run too), on Node 24 slim, with no node_modules at all.
#   docker build -t registry.example.com/checkpointer:0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
ARG NODE_IMAGE=node:24-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /src
# pnpm, pinned as scripts/setup.sh pins it.
RUN npm install --global --no-audit --no-fund pnpm@10.34.9
# Dependencies first, so that this layer is reused while only sources change.
COPY package.json pnpm-lock.yaml pnpm-workspace.yaml tsconfig.base.json ./
COPY packages/core/package.json packages/core/package.json
COPY packages/strategies/package.json packages/strategies/package.json
COPY packages/client/package.json packages/client/package.json
COPY packages/cli/package.json packages/cli/package.json
COPY packages/server/package.json packages/server/package.json
RUN pnpm install --frozen-lockfile
COPY scripts/build.mjs scripts/build.mjs
COPY packages packages
RUN pnpm run build

FROM ${NODE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="checkpointer" \
      org.opencontainers.image.description="Checkpoints Kubernetes containers with CRIU through the kubelet and pushes each checkpoint as an OCI image" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="docker.io/library/node:24-slim"
WORKDIR /app
# The bundle is the whole program: every production dependency is inside it, development ones are not. Its chunks/
# hold code loaded only by some configurations (the OTLP exporter).
COPY --from=build /src/dist/server/ /app/
# The memory settings of `pnpm start`, and the compiled code the build wrote beside the bundle (scripts/build.mjs): a
# start from it skips parsing the bundle, about 20 MiB less resident (README). Node keys that cache by user: it serves
# root, the user k8s-manifests run the server as.
ENV NODE_ENV=production \
    MALLOC_ARENA_MAX=1 \
    NODE_COMPILE_CACHE=/app/compile-cache \
    NODE_COMPILE_CACHE_PORTABLE=1
EXPOSE 3333
# Non-root by default. Reading the kubelet's root-owned 0600 checkpoint archives needs uid 0: the DaemonSet in
# k8s-manifests sets runAsUser: 0 with every capability dropped (see the comment there).
USER node
ENTRYPOINT ["node", "--max-semi-space-size=2", "--max-old-space-size=96", "--liftoff-only", "--max-opt=2", "--optimize-for-size", "/app/main.mjs"]
