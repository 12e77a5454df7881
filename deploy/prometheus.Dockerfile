# Prometheus for the cpu target, built without any registry: Debian 12's prometheus package on the local
# Debian image (the gpu target pulls prom/prometheus). Same flags and configuration file as the gpu stack.
ARG DEBIAN_IMAGE=localhost/llmrec/debian:12
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/*
RUN mkdir -p /prometheus && chown prometheus:prometheus /prometheus
USER prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
