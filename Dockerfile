# syntax=docker/dockerfile:1
# fastpull origin. Build: docker build -t fastpull-origin .   Run: see docker-compose.yml.

# Node 22 LTS (Node 20 reached end of life on 2026-04-30). Not 24 yet: better-sqlite3 12 wraps its objects
# in node::ObjectWrap, whose Node 24 destructor aborts the process ("Assertion failed: (env) != nullptr")
# when a statement is collected at exit or outside a JS scope; better-sqlite3 13 fixes it but needs Node 22+.
ARG NODE_IMAGE=node:22-bookworm-slim

# Toolchain for better-sqlite3's native addon (used when no prebuilt binary matches).
FROM ${NODE_IMAGE} AS toolchain
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app

# Compile TypeScript with the full dependency set.
FROM toolchain AS build
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# Production dependencies only; scripts are skipped (prepare would need tsc), then the one native addon is built.
FROM toolchain AS prod-deps
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && npm rebuild better-sqlite3 \
 && npm cache clean --force

FROM ${NODE_IMAGE}
ENV NODE_ENV=production \
    FASTPULL_DATA_DIR=/data \
    FASTPULL_HOST=0.0.0.0 \
    FASTPULL_PORT=8080
WORKDIR /app
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY bin ./bin
COPY migrations ./migrations
COPY public ./public
COPY config/fastpull.example.json config/fastpull.example.yaml ./config/
# The server runs as the node user, uid 1000 (gid 1000), which owns only the data directory; the code stays
# read-only to it. A named volume inherits that owner; a bind-mounted host directory must be given to it
# (chown -R 1000:1000 /srv/fastpull), or the server refuses to start and says so.
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
EXPOSE 8080
# Node has fetch built in, so no curl in the image. /healthz says only "the process answers". During the
# start period it is probed every 2 s (Docker 25+; older engines every 10 s), so a dependent service starts
# within seconds instead of waiting 30 s for the first probe.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --start-interval=2s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.FASTPULL_PORT || 8080) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "bin/fastpull.js"]
CMD ["serve"]
