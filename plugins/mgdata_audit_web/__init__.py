"""The audit plugin's web app (`app.py`) and templates: imported only by the api-server, through the plugin's
`fastapi_apps` (see `plugins/mgdata_audit.py`); `plugins/.airflowignore` keeps Airflow's plugin loader out of here."""
