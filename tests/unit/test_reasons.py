"""The one-line reasons that health, logs, events and error answers quote (resilience.reasons)."""

from resilience.reasons import one_line, reason


def test_a_multi_line_text_becomes_one_line_cut_with_an_ellipsis_at_the_limit() -> None:
    page = "<html>\n  <body>502   Bad\tGateway</body>\n</html>" + " x" * 300
    line = one_line(page, limit=40)
    assert "\n" not in line and "\t" not in line and "  " not in line
    assert len(line) == 40 and line.endswith("…") and line.startswith("<html> <body>502 Bad Gateway</body>")
    assert one_line("short enough", limit=12) == "short enough"


def test_an_exception_is_quoted_with_its_type_or_by_its_type_alone() -> None:
    assert reason(ConnectionRefusedError("connect to\n127.0.0.1:5432 refused")) == (
        "ConnectionRefusedError: connect to 127.0.0.1:5432 refused")
    assert reason(TimeoutError()) == "TimeoutError"
