# The prometheus-community pattern: a static binary (make static, or promu
# crossbuild) on Prometheus' busybox image, run as nobody.
#   make static && docker build -t subsegment_exporter .
#   docker run -p 9717:9717 subsegment_exporter                      # source exporter
#   docker run -p 9000:9000 -p 9717:9717 subsegment_exporter serve --listen=:9000   # end-of-chain relay
ARG ARCH="amd64"
ARG OS="linux"
FROM quay.io/prometheus/busybox-${OS}-${ARCH}:latest
LABEL maintainer="subsegment_exporter maintainers <maintainers@users.noreply.github.com>"
LABEL org.opencontainers.image.source="https://github.com/subsegment/subsegment_exporter"
LABEL org.opencontainers.image.licenses="Apache-2.0"

ARG ARCH="amd64"
ARG OS="linux"
COPY .build/${OS}-${ARCH}/subsegment_exporter /bin/subsegment_exporter
COPY packaging/subsegment.yml /etc/subsegment_exporter/subsegment.yml

EXPOSE 9717
USER nobody
ENTRYPOINT ["/bin/subsegment_exporter"]
CMD ["serve", "--config.file=/etc/subsegment_exporter/subsegment.yml"]
