"""`fastdit serve` is a registered command: bad options are one line and exit 2, before any
worker or model starts."""

from fastdit.cli import main


def test_serve_bad_options_are_one_line_errors(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing"), "--state-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastdit serve: error:") and "missing" in err[0]
    assert main(["serve", "--model", str(tmp_path), "--job-timeout", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--job-timeout" in err[0]
