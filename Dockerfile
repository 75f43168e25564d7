# One image for every service of the order saga (see docker-compose.yml):
#   API (default):  uvicorn api.app:create_app --factory --host 0.0.0.0 --port 8000
#   worker:         python worker.py [--queue order-process|orders|payments|deliveries]
#   migrations:     python -m store init      (alembic upgrade head; `seed` adds demo dealers)
# Configuration comes from environment variables (settings.py, docs/configuration.md).

# Python minor and Debian release pinned; rebuild regularly for the patch releases.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app

WORKDIR /app

# Dependencies first, from the runtime lock (pyproject.toml's [project] dependencies pinned with
# hashes by `make lock`; no dev extras), so this layer is rebuilt only when the lock changes,
# not on every source change, and every build installs the same, hash-checked files.
COPY requirements/main.txt ./requirements/
RUN pip install --require-hashes -r requirements/main.txt

COPY pyproject.toml README.md ./

# Only what runs: the packages and top-level modules pyproject.toml declares ([tool.setuptools]
# py-modules and packages: keep this list in step), and the Alembic migrations (store/db.py
# finds migrations/ next to store/, so the code runs from /app).
COPY domain ./domain
COPY services ./services
COPY workflows ./workflows
COPY activities ./activities
COPY choreography ./choreography
COPY sagas ./sagas
COPY api ./api
COPY store ./store
COPY migrations ./migrations
COPY worker.py bootstrap.py settings.py cli.py telemetry.py faults.py versions.py alembic.ini ./
# The project itself, from pyproject.toml, pointing at /app (one copy of the code).
RUN pip install --no-deps -e . \
    && mkdir -p /app/data \
    && chown app:app /app/data

# Code owned by root and read-only for the service user; data/ only for a SQLite default.
USER app

EXPOSE 8000
# Liveness of the API; the worker services override it in docker-compose.yml.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]

CMD ["uvicorn", "api.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
