"""Found by the sixteenth outside attack round (testers with only the README
and the docs: settings, URIs, the command line and secrets; scale-out;
process lifetime and long runs), each kept as a test."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

from enrichlog import AsyncEnricher, configure_logging, get_logger
from enrichlog.cli.stats import read_stats
from enrichlog.exceptions import EnricherConfigError, EnrichlogError
from enrichlog.transport import spool_dir_problem
from enrichlog.transport.codec import decode_event, encode_event, fit_event
from enrichlog.transport.nats import spool_folder
from tests.faults.runner import run_script
from tests.helpers import run_cli

SECRET = "S3cr3t-XYZ"


@pytest.mark.parametrize(
    "url",
    [
        f"http://bob:{SECRET}/metrics",  # @host forgotten: the password reads as a port
        f"http://bob:{SECRET}/word@127.0.0.1:9464/metrics",  # an unescaped '/'
        f"http://bob:{SECRET}#XYZ@127.0.0.1:9464/metrics",  # an unescaped '#'
        f"http://bob:{SECRET}?x@127.0.0.1:9464/metrics",  # an unescaped '?'
    ],
)
def test_stats_url_error_does_not_quote_a_password_urllib_read_as_a_port(url: str) -> None:
    # The address was masked, but urllib's reason after it quoted the
    # password, or its part before the '/', '#' or '?': "nonnumeric port:
    # 'S3cr3t-XYZ'".
    with pytest.raises(EnrichlogError) as caught:
        read_stats(url=url, timeout=2.0)

    message = str(caught.value)
    assert "S3cr3t" not in message, message
    assert "nonnumeric port: '***'" in message


def test_check_notes_an_enricher_options_name_that_no_uri_enricher_has(tmp_path: Path) -> None:
    # check said "ok" and nothing more; configure_logging() then refused the
    # same environment ("enricher_options names 'user', which no configured
    # enricher is called"). check cannot see enrichers defined in code, so
    # it notes the name rather than failing.
    env = {
        "ENRICHLOG_ENRICHERS": "static://?plan=pro&name=users",
        "ENRICHLOG_ENRICHER_OPTIONS__USER__TIMEOUT": "0.2",
    }
    result = run_cli(tmp_path, "check", env=env)

    assert 0 == result.returncode, result.stderr
    assert (
        "note: enricher_options names 'user', which no enricher of ENRICHLOG_ENRICHERS is "
        "called (did you mean 'users'?)" in result.stdout
    )


@pytest.mark.parametrize(
    ("uri", "culprit"),
    [
        (f"static://?a=1&name=app:{SECRET}@db", "name 'app:***@db'"),
        (f"static://?a=1&name=password={SECRET}", "name 'password=***'"),
        (
            f"static://?a=1&dependencies=postgres-lookup://app:{SECRET}@db/app",
            "dependencies entry 'postgres-lookup://app:***@db/app'",
        ),
    ],
)
def test_a_name_holding_a_secret_is_refused_without_showing_it(
    uri: str, culprit: str, tmp_path: Path
) -> None:
    # A URI pasted where a name goes was masked in the URI column of plan but
    # shown in clear in its name column, in health(), the container's repr,
    # Prometheus labels and the missing-dependency error.
    with pytest.raises(EnricherConfigError) as caught:
        configure_logging(enrichers=[uri], output=io.StringIO())
    message = "".join(traceback.format_exception(caught.value))
    assert SECRET not in message
    assert culprit in str(caught.value)
    assert "holds what reads as a secret" in str(caught.value)

    result = run_cli(tmp_path, "plan", env={"ENRICHLOG_ENRICHERS": uri})
    assert 1 == result.returncode
    assert SECRET not in result.stdout + result.stderr


def test_a_name_holding_a_secret_is_refused_in_code_too() -> None:
    class Lookup(AsyncEnricher):
        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            return event_dict

    with pytest.raises(EnricherConfigError, match=r"name 'db:\*\*\*@host' holds") as caught:
        Lookup(name=f"db:{SECRET}@host")
    assert SECRET not in str(caught.value)
    with pytest.raises(EnricherConfigError, match="dependencies entry") as caught:
        Lookup(dependencies=[f"redis-lookup://:{SECRET}@cache/0"])
    assert SECRET not in str(caught.value)


def test_an_enricher_options_name_holding_a_secret_is_masked() -> None:
    key = f"postgres-lookup://app:{SECRET}@db/app"
    with pytest.raises(EnricherConfigError) as caught:
        configure_logging(
            enrichers=["static://?a=1"],
            enricher_options={key: {"timeout": 0.2}},
            output=io.StringIO(),
        )
    assert SECRET not in str(caught.value)
    assert "enricher_options names 'postgres-lookup://app:***@db/app'" in str(caught.value)


@pytest.mark.parametrize("inside_a_file", [False, True])
def test_a_spool_dir_that_cannot_be_written_is_refused_at_configure_time(
    tmp_path: Path, inside_a_file: bool
) -> None:
    # It passed check and configure_logging; while the broker was away every
    # event was then dropped ('spool_dropped': 100 of 100, 0 written).
    a_file = tmp_path / "afile"
    a_file.write_text("")
    spool_dir = str(a_file / "spool" if inside_a_file else a_file)
    transport = "nats://127.0.0.1:1?stream=t16_spool&subject=t16.spool"

    with pytest.raises(EnricherConfigError) as caught:
        configure_logging(transport=transport, spool_dir=spool_dir, output=io.StringIO())
    assert f"spool_dir {spool_dir!r}: {str(a_file)!r} is not a directory" in str(caught.value)

    env = {"ENRICHLOG_TRANSPORT": transport, "ENRICHLOG_SPOOL_DIR": spool_dir}
    result = run_cli(tmp_path, "check", env=env)
    assert 1 == result.returncode
    assert f"error: spool_dir {spool_dir!r}" in result.stderr


def test_a_spool_dir_still_to_be_created_is_accepted_and_not_created(tmp_path: Path) -> None:
    spool_dir = tmp_path / "not" / "yet"
    problem = spool_dir_problem(str(spool_dir))

    assert problem is None
    assert [] == list(tmp_path.iterdir())  # the probe's file is gone, nothing created


@pytest.mark.parametrize("subject", ["t16.x%00y", "t16.x%01y", "t16.x%7Fy"])
def test_a_subject_with_a_control_character_is_refused(subject: str, tmp_path: Path) -> None:
    # A NUL passed check, made the stream, then failed configure_logging
    # with a bare "ValueError: embedded null byte" from the spool's mkdir.
    transport = f"nats://127.0.0.1:1?stream=t16_nul&subject={subject}"
    with pytest.raises(EnricherConfigError, match="query key 'subject'"):
        configure_logging(transport=transport, spool_dir=str(tmp_path), output=io.StringIO())

    result = run_cli(tmp_path, "check", env={"ENRICHLOG_TRANSPORT": transport})
    assert 1 == result.returncode
    assert "query key 'subject'" in result.stderr


def test_a_subject_that_reads_as_a_path_is_spooled_inside_spool_dir(tmp_path: Path) -> None:
    # Spooled in <spool_dir>/<subject>: a subject '/tmp/.../outside' put the
    # spool outside spool_dir, at that path; 'a/b' nested inside 'a''s.
    outside = tmp_path / "outside"
    spool_dir = tmp_path / "spool"
    container = configure_logging(
        transport=f"nats://127.0.0.1:1?stream=t16_path&subject={outside}",
        spool_dir=str(spool_dir),
        shutdown_timeout=1.0,
        output=io.StringIO(),
    )
    get_logger().info("spooled")
    report = container.shutdown()

    assert 1 == report.spooled
    assert not outside.exists()
    assert [spool_folder(str(outside))] == [path.name for path in spool_dir.iterdir()]
    assert "/" not in spool_folder("a/b")
    assert "logs.app" == spool_folder("logs.app")  # a plain subject, as before


@pytest.mark.parametrize(
    "event_id", ["E" * 1_100_000, {"nested": "E" * 1_100_000}], ids=["text", "nested"]
)
def test_an_applications_own_large_event_id_is_cut_to_fit_not_dropped(event_id: Any) -> None:
    # The docs: an event larger than the server's maximum payload is "not
    # dropped", its largest values cut. An application's own event_id (its
    # data, written unchanged) was kept whole: the event could not fit and
    # was dropped, counted as rejected.
    payload = encode_event({"event": "ev", "level": "info", "seq": 7, "event_id": event_id})
    fitted = fit_event(payload, 1_000_000)
    fields = decode_event(fitted)

    assert len(fitted) <= 1_000_000
    assert (fields["event"], fields["seq"]) == ("ev", 7)
    assert fields["event_id"].endswith("…")
    assert ["event_id"] == list(fields["truncated_fields"])


def test_the_same_sigterm_sent_twice_still_drains_every_event(tmp_path: Path) -> None:
    # coreutils' timeout signals the process, then its process group, a few
    # microseconds apart: the second SIGTERM was taken for a process manager
    # insisting, and ended the process with its queue (64 of 677 written).
    out = tmp_path / "out.log"

    run = run_script("sigterm.py", out, "twice", env={"DELAY": "0.01"})

    assert -signal.SIGTERM == run.returncode, run.stderr
    assert run.summary["pending"] > 0
    assert run.summary["logged"] == len(out.read_bytes().splitlines())


def test_a_second_sigterm_after_the_window_still_ends_the_process_at_once(
    tmp_path: Path,
) -> None:
    # The way to insist is kept: a drain of about 3 s cut short at 0.6 s.
    out = tmp_path / "out.log"

    run = run_script("sigterm.py", out, "insist", env={"DELAY": "0.05", "INSIST": "0.6"})

    assert -signal.SIGTERM == run.returncode, run.stderr
    assert run.seconds < 2.5
    assert len(out.read_bytes().splitlines()) < run.summary["logged"]


def test_a_line_logged_by_a_finaliser_at_exit_is_written_to_a_file(tmp_path: Path) -> None:
    # An object's __del__ that logs as the interpreter exits: the file,
    # closed by the exit drain, was reopened with the bare name open(),
    # which the interpreter had removed (NameError): 1 line of 51 written,
    # and 1 failure reported.
    out = tmp_path / "out.log"
    script = tmp_path / "finaliser.py"
    script.write_text(
        "import sys\n"
        "from enrichlog import configure_logging, get_logger\n"
        "configure_logging(output=sys.argv[1])\n"
        "log = get_logger()\n"
        "class Connection:\n"
        "    def __init__(self, i, log=log):\n"
        "        self.i, self.log = i, log\n"
        "    def __del__(self):\n"
        "        self.log.info('connection closed', i=self.i)\n"
        "POOL = [Connection(i) for i in range(50)]\n"
        "log.info('main done')\n"
    )
    run = subprocess.run(
        [sys.executable, str(script), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert 0 == run.returncode, run.stderr
    assert "" == run.stderr
    assert 51 == len(out.read_bytes().splitlines())


# -- found by the re-test of the round's fixes ---------------------------------------------


@pytest.mark.parametrize(
    ("url", "decoded"),
    [
        ("http://admin:S3cr%2Ft", "S3cr/t"),
        ("http://admin:S3cr%C3%A9t", "S3crét"),
        ("http://:Kq7W%40Jx8Z/metrics", "Kq7W@Jx8Z"),
    ],
)
def test_stats_url_error_does_not_quote_a_password_urllib_decoded(url: str, decoded: str) -> None:
    # urllib decodes the host before it complains: the percent-encoded
    # password was scrubbed, the decoded one shown.
    with pytest.raises(EnrichlogError) as caught:
        read_stats(url=url, timeout=2.0)
    assert decoded not in str(caught.value)
    assert "nonnumeric port: '***'" in str(caught.value)


def test_a_fragment_in_a_mistyped_secret_key_is_not_echoed() -> None:
    # 'passwrod' is no secret name, so 'passwrod=S3cr#t' was shown whole in
    # the fragment error; every query value is masked there now.
    uri = "postgres-lookup://app@db.internal/app?table=users&columns=plan&passwrod=S3cr#t"
    with pytest.raises(EnricherConfigError, match="a fragment") as caught:
        configure_logging(enrichers=[uri], output=io.StringIO())
    assert "S3cr" not in str(caught.value)


@pytest.mark.parametrize("shape", ["dangling", "loop", "subject-folder-is-a-file", "too-long"])
def test_a_spool_dir_the_first_probe_let_through_is_refused(tmp_path: Path, shape: str) -> None:
    # Each passed check and configure_logging; with the broker away, 100 of
    # 100 events were then dropped ('File exists', 'Too many levels of
    # symbolic links'), or configure_logging raised a bare OSError.
    spool_dir = tmp_path / "spool"
    if shape == "dangling":
        spool_dir.symlink_to(tmp_path / "not-mounted" / "spool")
    elif shape == "loop":
        (tmp_path / "other").symlink_to(spool_dir)
        spool_dir.symlink_to(tmp_path / "other")
    elif shape == "subject-folder-is-a-file":
        spool_dir.mkdir()
        (spool_dir / "t16.spool").write_text("")
    else:
        spool_dir = tmp_path / ("x" * 300)
    transport = "nats://127.0.0.1:1?stream=t16_spool&subject=t16.spool"

    with pytest.raises(EnricherConfigError, match="spool_dir"):
        configure_logging(transport=transport, spool_dir=str(spool_dir), output=io.StringIO())
    env = {"ENRICHLOG_TRANSPORT": transport, "ENRICHLOG_SPOOL_DIR": str(spool_dir)}
    result = run_cli(tmp_path, "check", env=env)
    assert 1 == result.returncode
    assert "error: spool_dir" in result.stderr
    assert spool_dir_problem("/tmp/a\x00b") == "spool_dir '/tmp/a\\x00b' holds a NUL character"


def test_check_notes_no_enricher_options_name_for_a_producer_whose_workers_enrich(
    tmp_path: Path,
) -> None:
    # Its configure_logging accepts the name (the workers' enrichers have
    # it), so the note saying it refuses it was wrong.
    env = {
        "ENRICHLOG_TRANSPORT": "nats://127.0.0.1:1?stream=t16_note&subject=t16.note",
        "ENRICHLOG_ENRICHER_OPTIONS__USER__TIMEOUT": "0.2",
    }
    result = run_cli(tmp_path, "check", env=env)

    assert 0 == result.returncode, result.stderr
    assert "note:" not in result.stdout


def test_mistyped_common_keys_and_knobs_get_the_closest_name() -> None:
    uri = "postgres-lookup://app@127.0.0.1/db?table=users&columns=plan&tiemout=1"
    with pytest.raises(EnricherConfigError, match=r"'tiemout' \(did you mean 'timeout'\?\)"):
        configure_logging(enrichers=[uri], output=io.StringIO())
    with pytest.raises(EnricherConfigError, match=r"tiemout: .*\(did you mean 'timeout'\?\)"):
        configure_logging(enricher_options={"user": {"tiemout": 1}}, output=io.StringIO())
