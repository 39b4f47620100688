"""The orderflow Celery app with Celery's own consumer instead of workers/consumer.py: the control case
of tests/workers/test_consumer.py, which shows that the fault the mend is for still happens."""

from workers.celery_app import app

app.conf.worker_consumer = "celery.worker.consumer:Consumer"

__all__ = ["app"]
