-- A second database on the same Postgres for the MLflow tracking store (the first, prefect, is POSTGRES_DB).
CREATE DATABASE mlflow;
