# One image for every process of the stack: spark-edge and each spark-worker pool.
# It holds the runtime dependencies only: no test tools and no embedded broker (the
# `embedded` extra, fakeredis), so a process given no broker URL fails instead of quietly
# serving an in-process broker nobody else can reach.
# Packaging your own services: see "Packaging your own services" in README.md (an image
# FROM this one that adds your package).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first (cached while only the code changes), then the code.
COPY pyproject.toml README.md LICENSE ./
RUN mkdir -p spark \
    && touch spark/__init__.py \
    && pip install . \
    && pip uninstall -y spark-rpc \
    && rm -rf spark build *.egg-info

COPY spark ./spark
COPY workers ./workers
RUN pip install --no-deps . && rm -rf build *.egg-info

# The services import `workers` from /app (the wheel ships only `spark`; spark-worker puts
# its working directory on sys.path), Lua scripts and model file included.
RUN useradd --create-home --uid 10001 spark
USER spark

EXPOSE 8000
CMD ["spark-edge", "--host", "0.0.0.0", "--port", "8000"]
