"""Alert delivery: JSON payloads POSTed to a webhook with timeouts, bounded retries and secrets scrubbed.

No Dagster here: the sensors that decide what to report are in conversion_sync.defs.alerts.
"""

from conversion_sync.alerts.webhook import (
    WEBHOOK_URL_ENV,
    WEBSERVER_URL_ENV,
    AlertNotDelivered,
    Delivery,
    post_json,
    run_page_url,
    scrub,
    send_alert,
)

__all__ = [
    "WEBHOOK_URL_ENV",
    "WEBSERVER_URL_ENV",
    "AlertNotDelivered",
    "Delivery",
    "post_json",
    "run_page_url",
    "scrub",
    "send_alert",
]
