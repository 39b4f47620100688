"""The worker's heartbeat file (`workers.celery_app.HeartbeatFile`, read by the images'
healthcheck): a file that cannot be written is logged, never an error that stops the worker."""

from __future__ import annotations

import logging

import pytest

from workers.celery_app import HeartbeatFile

pytestmark = pytest.mark.pure


def test_a_heartbeat_file_that_cannot_be_written_is_logged_and_the_worker_goes_on(tmp_path, caplog):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    heartbeat = HeartbeatFile(blocker / "worker.heartbeat")
    with caplog.at_level(logging.WARNING, logger="workers.celery_app"):
        heartbeat.start()
        heartbeat.remove()
    assert "not touched" in caplog.text
    assert "not removed" in caplog.text  # logged, not raised into Celery's worker_shutdown


def test_the_heartbeat_file_is_touched_at_most_every_interval_and_removed_at_shutdown(tmp_path):
    path = tmp_path / "var" / "worker.heartbeat"
    heartbeat = HeartbeatFile(path)
    heartbeat.start()
    first = path.stat().st_mtime_ns
    heartbeat.beat()  # within the interval: not touched again
    assert path.stat().st_mtime_ns == first
    heartbeat.remove()
    assert not path.exists()
