# Butler in a container. Build: `docker build -t butler-qlik .`; run with your config file:
#   docker run -v /path/to/production.yaml:/config/production.yaml:ro \
#     -p 8080:8080 -p 9997:9997/udp -p 9998:9998/udp butler-qlik
# The config must listen on 0.0.0.0 and keep its state files under /var/lib/butler (README, "Packaging and
# running as a service"); compose.yaml runs Butler with Mosquitto and Redis.

# The builder stage makes Butler's wheel, so that the image holds neither the sources nor build tools.
FROM python:3.11-slim AS builder
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src/ src/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir dist .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BUTLER_HEALTH_URL=http://127.0.0.1:8080/health
# A fixed, numeric id, so that the owner of a mounted state folder can be set on the host.
RUN groupadd --system --gid 10001 butler \
 && useradd --system --uid 10001 --gid butler --home-dir /var/lib/butler --create-home --shell /usr/sbin/nologin butler
WORKDIR /opt/butler
COPY requirements-lock.txt ./
COPY --from=builder /build/dist/ dist/
# Dependencies as wheels only, at the tested versions: the slim image has no compiler, and needs none.
RUN pip install --no-cache-dir --only-binary :all: -c requirements-lock.txt dist/*.whl
WORKDIR /var/lib/butler
USER 10001:10001
EXPOSE 8080 9997/udp 9998/udp
# No curl in the slim image: Python asks /health. Set BUTLER_HEALTH_URL when the config uses another port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['BUTLER_HEALTH_URL'], timeout=4)"]
CMD ["butler", "serve", "-c", "/config/production.yaml"]
