"""Read-only views over the catalog: named SQL files (dashboards/sql/*.sql) and a thin Streamlit viewer (app.py)."""
