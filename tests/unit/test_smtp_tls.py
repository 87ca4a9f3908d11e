"""OFFLOAD_SMTP_CA_FILE: a CA file the worker cannot use stops it at start, saying which file and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.email.smtp import SmtpProvider
from tests.support.tls import server_tls


def provider(ca_file: Path) -> SmtpProvider:
    return SmtpProvider("127.0.0.1", 2525, mail_from="noreply@moodle.example.org", starttls=True, ca_file=str(ca_file))


def test_a_missing_or_unusable_ca_file_is_refused_with_its_name(tmp_path: Path) -> None:
    missing, not_pem = tmp_path / "missing.pem", tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=rf"cannot load the relay's CA certificates from {missing}: .*No such file"):
        provider(missing)
    with pytest.raises(ValueError, match=rf"from {not_pem}: .*NO_CERTIFICATE_OR_CRL_FOUND"):
        provider(not_pem)


def test_a_ca_file_is_trusted_and_names_are_still_checked(tmp_path: Path) -> None:
    context = provider(server_tls(tmp_path).ca_file)._tls_context
    assert context is not None and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "Offload test CA"),),)]
