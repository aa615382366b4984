# Control-plane image: api, gateway and orchestrator worker (one image, three commands).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md alembic.ini ./
COPY core core
COPY workflows workflows
COPY activities activities
COPY workers workers
COPY gateway gateway
COPY api api
COPY agent agent
COPY inventiv inventiv
RUN pip install .
COPY dashboard/dist dashboard/dist
EXPOSE 8000 8080
CMD ["inventiv", "api"]
