"""The audit plugin's web app (`app.py`) and templates: the app is imported only by the api-server, through the
plugin's `fastapi_apps` (see `plugins/mgdata_audit.py`); `plugins/.airflowignore` keeps Airflow's plugin loader out of
here. This module stays free of imports: the plugin reads `URL_PREFIX` from it in every task process."""

URL_PREFIX = "/mgdata-audit"
