"""`offload export --format parquet`: its options, and a clear message when the analytics extra is missing."""

from __future__ import annotations

import sys

import pytest

from offload.cli import build_parser, main


def test_partition_is_short_for_partition_by_company_and_date(tmp_path):
    parser = build_parser()
    assert parser.parse_args(["export", "--format", "parquet", "--partition", str(tmp_path)]).partition_by == (
        "company,date")
    assert parser.parse_args(["export", "--format", "parquet", "--partition-by", "date", str(tmp_path)]
                             ).partition_by == "date"
    assert parser.parse_args(["export", str(tmp_path)]).partition_by is None


def test_parquet_without_the_analytics_extra_says_how_to_install_it_before_reading_anything(tmp_path, monkeypatch):
    # A module set to None in sys.modules cannot be imported: what a machine without pyarrow sees.
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    # Nothing answers on this port: reaching Kafka first would fail differently (and slowly).
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    out = tmp_path / "export"
    with pytest.raises(SystemExit) as exc:
        main(["export", "--format", "parquet", "--partition", str(out)])
    assert str(exc.value) == "Parquet export needs pyarrow: pip install 'manireports-offload[analytics]'"
    assert not out.exists()


def test_partitions_need_the_parquet_format(tmp_path):
    with pytest.raises(SystemExit, match="--partition-by needs --format parquet"):
        main(["export", "--partition", str(tmp_path / "csv")])
