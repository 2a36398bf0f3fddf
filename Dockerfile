FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY lowalt lowalt
COPY ingest ingest
COPY geofence geofence
COPY dispatch dispatch
COPY migrations migrations
COPY benchmarks benchmarks
RUN pip install --no-cache-dir . && useradd --system --home /app lowalt
USER lowalt
EXPOSE 8080 7700
ENTRYPOINT ["lowalt"]
CMD ["serve", "--http", "0.0.0.0:8080", "--gateway", "0.0.0.0:7700"]
