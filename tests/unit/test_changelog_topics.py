"""Every table of the worker has its changelog made before the worker starts (``offload worker`` and the tests'
topics: eventlog.topics.changelog_topics), with the table's partitions.

A changelog left to Faust to create when the worker starts can be missing from the worker's first metadata:
the table then sees it with 0 partitions and every write to it fails the partition check. The job-chunks table
was not listed, and a worker started beside another test's refused every chunked job's header that way
(PartitionsMismatch, dead-lettered: the commit then found no header).
"""

from __future__ import annotations

from config.settings import Settings
from eventlog.topics import changelog_topics
from streams.app import create_app


def test_every_table_of_the_worker_has_its_changelog_made_with_its_partitions() -> None:
    settings = Settings(environment="test", certificate_code_secret_allow_default=True, job_partitions=5,
                        batch_partitions=7, outcome_partitions=3)
    app = create_app(settings)
    tables = {table.changelog_topic.get_topic_name(): table.partitions for table in app.tables.values()}
    made = {spec.name: spec.partitions for spec in changelog_topics(settings)}
    assert tables == made
    assert f"{settings.app_id}-job-chunks-changelog" in tables  # the one that was missing
