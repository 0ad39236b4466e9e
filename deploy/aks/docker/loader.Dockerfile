# visage-loader: the ingest image plus the demo photos, for the one-shot
# visage-demo-loader Job (`visage ingest /demo-faces`).
ARG INGEST_IMAGE=visage-ingest:unset
FROM ${INGEST_IMAGE}
COPY --chown=10001:10001 demo-faces /demo-faces
USER 10001:10001
HEALTHCHECK NONE
ENTRYPOINT []
CMD ["visage", "ingest", "/demo-faces"]
