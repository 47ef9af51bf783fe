# Multi-stage: the build stage compiles the Cython speedups into wheels (and uvloop from its
# source release, the GIL kept across its waits: third_party/uvloop/build.py); the runtime stage
# installs only those wheels into a slim image and runs as a non-root user.
# The same install steps run in .ci/run (`make wheel` + pip install of the wheels), so CI proves them.
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make wheel PY=python

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home fleetproxy
COPY --from=build /src/dist/wheels /tmp/wheels
RUN pip install --no-cache-dir --no-index /tmp/wheels/*.whl && rm -rf /tmp/wheels \
 && fleetproxy --version
USER fleetproxy
# 8080: data listener (GET /health there is the probe for load balancers and orchestrators).
# 9090: admin (healthz, readyz, metrics, backends, drains, scaling), bound to the container's
# loopback by default, so it is not published: reach it with `docker exec`, or expose it
# deliberately, with a token (without one its POST routes answer 403):
#   docker run -p 8080:8080 -p 9090:9090 -e FLEETPROXY_ADMIN_TOKEN="$(openssl rand -hex 32)" \
#     IMAGE --listen 0.0.0.0:8080 --admin-listen 0.0.0.0:9090 --config /etc/fleetproxy/fleetproxy.yaml
# (or admin.token_file pointing at a mounted secret; POSTs then send Authorization: Bearer <token>).
EXPOSE 8080
# Mount a config at /etc/fleetproxy/fleetproxy.yaml (see examples/), or pass flags instead:
#   docker run -p 8080:8080 IMAGE --listen 0.0.0.0:8080 --backend http://vllm:8000
ENTRYPOINT ["fleetproxy"]
CMD ["--listen", "0.0.0.0:8080", "--admin-listen", "127.0.0.1:9090", "--config", "/etc/fleetproxy/fleetproxy.yaml"]
