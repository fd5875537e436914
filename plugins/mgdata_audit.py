"""Run audit for `mgllava_data`: an Airflow 3 UI plugin (a FastAPI app plus a navigation entry, Browse → MG-LLaVA data).

The app itself is `mgdata_audit_web/app.py`. This file stays cheap to import on purpose: Airflow loads every plugin in
every task process (to find listeners), and importing FastAPI there cost ~0.7 s of start-up per task instance, about
a quarter of the slot time of a full run's ~1,150 instances (docs/performance.md). The api-server reads
`fastapi_apps` from the plugin instance, which is when the app is imported.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from mgdata_audit_web import URL_PREFIX


class MgdataAuditPlugin(AirflowPlugin):
    name = "mgdata_audit"
    external_views = [
        {
            "name": "MG-LLaVA data",
            "href": URL_PREFIX.lstrip("/") + "/",
            "url_route": "mgdata-audit",
            "destination": "nav",
            "category": "browse",
        }
    ]

    @property
    def fastapi_apps(self) -> list[dict]:  # type: ignore[override]
        from mgdata_audit_web.app import app

        return [{"app": app, "url_prefix": URL_PREFIX, "name": "MG-LLaVA data audit"}]
