# Airflow image for mgllava-data: the official 3.3.2 image plus our pinned dependencies and this project.
#
# Why not the official install recipe (`--constraint https://raw.githubusercontent.com/apache/airflow/
# constraints-3.3.2/constraints-3.11.txt`)? That URL is not reachable from our build environments, and
# without constraints pip backtracks for many minutes over the lock-stepped AWS stack
# (boto3/botocore/aiobotocore/s3fs). We ship our own lock instead: constraints.txt, generated with
# `uv pip compile` (see its header). apache-airflow stays pinned in the install command, as the Airflow
# docs require when extending the image, so pip can never swap the Airflow version underneath us.
#
# Keep the tag, AIRFLOW_VERSION and the pin below equal to `apache-airflow==` in requirements.txt;
# tests/deployment/test_compose.py checks this.
FROM apache/airflow:3.3.2-python3.11

ENV AIRFLOW_VERSION=3.3.2

USER airflow

# Dependencies first, so editing include/ does not invalidate this (slow) layer.
COPY --chown=airflow:0 requirements.txt constraints.txt pyproject.toml /opt/airflow/project/
RUN pip install --no-cache-dir "apache-airflow==3.3.2" \
        -r /opt/airflow/project/requirements.txt \
        -c /opt/airflow/project/constraints.txt

# The project itself, editable: site-packages points at /opt/airflow/project/include, which
# docker-compose.yaml bind-mounts from ./include, so library edits apply without a rebuild.
# --no-deps: everything it needs is already installed from the lock above.
COPY --chown=airflow:0 include/ /opt/airflow/project/include/
RUN pip install --no-cache-dir --no-deps -e /opt/airflow/project
