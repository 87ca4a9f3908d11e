"""A replay builds most rows in a decoder process of its own (projections/decoder.py); when that process dies,
the replay decodes the rest itself and the read models come out the same."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from bench.replay import job_log, write_log
from offload.replay import replay
from projections import decoder
from tests.support.observe import READ_MODEL_TABLES, read_models

pytestmark = pytest.mark.integration


def _dies(records):  # run in the decoder process in place of decoder.build
    os._exit(3)


def test_replay_survives_its_decoder_process_dying(settings_factory, topics_for, monkeypatch, caplog) -> None:
    settings = settings_factory()
    topics_for(settings)
    written = asyncio.run(write_log(settings, job_log("decoder-job", 1_000)))

    stats = asyncio.run(replay(settings, f"{settings.projection_schema}_a"))
    assert stats.events == written
    assert stats.built_apart >= 1_000  # every outcome's row and the first run's batches came from the decoder
    rows = read_models(settings, f"{settings.projection_schema}_a")

    monkeypatch.setattr(decoder, "build", _dies)  # the process is forked from this one, so it runs _dies too
    with caplog.at_level(logging.WARNING, logger="projections.projector"):
        stats = asyncio.run(replay(settings, f"{settings.projection_schema}_b"))
    assert "replay decoder process lost" in caplog.text
    assert (stats.events, stats.built_apart) == (written, 0)
    again = read_models(settings, f"{settings.projection_schema}_b")
    assert len(again["job_recipients"]) == 1_000
    for table in READ_MODEL_TABLES:
        assert again[table] == rows[table], table
