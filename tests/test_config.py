"""Config loading: TOML, env overrides, one-line errors naming the key and the file."""

from __future__ import annotations

import dataclasses
import re
import secrets
import tomllib
from pathlib import Path

import pytest

from newsletter import config
from newsletter.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_loads_with_its_defaults() -> None:
    settings = config.load(EXAMPLE, environ={})
    assert settings.smtp.port == 25
    assert [c.slug for c in settings.categories][:2] == ["news", "case-studies"]


def test_every_setting_is_documented_in_the_example_and_nothing_else() -> None:
    """Each key the loader knows appears in config.example.toml (commented or set)."""
    text = EXAMPLE.read_text(encoding="utf-8")
    uncommented = "\n".join(
        re.sub(r"^# ?", "", line)
        for line in text.splitlines()
        if not line.startswith("# ") or re.match(r"^# ?(\[|\w+ = )", line)
    )
    documented = tomllib.loads(uncommented)
    for section, cls in {**config.SECTIONS, **config.ARRAYS}.items():
        assert section in documented, f"[{section}] missing from config.example.toml"
        table = documented[section][0] if isinstance(documented[section], list) else documented[section]
        for f in dataclasses.fields(cls):
            assert f.name in table, f"[{section}] {f.name} missing from config.example.toml"
        assert set(table) <= {f.name for f in dataclasses.fields(cls)}, f"[{section}] documents unknown keys"


def test_env_overrides_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[smtp]\nport = 25\n")
    settings = config.load(
        path,
        environ={
            "NEWSLETTER_SMTP_PORT": "2525",
            "NEWSLETTER_SMTP_STARTTLS": "true",
            "NEWSLETTER_DATABASE_URL": "sqlite:////tmp/x.db",
            "NEWSLETTER_SECRET_KEY": "from-env",
        },
    )
    assert settings.smtp.port == 2525
    assert settings.smtp.starttls is True
    assert settings.database_url == "sqlite:////tmp/x.db"
    assert settings.newsletter.secret_key == "from-env"


def test_relative_sqlite_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, '[database]\nurl = "sqlite:///data/n.db"\n'), environ={})
    assert settings.database_url == f"sqlite:///{tmp_path}/data/n.db"


def test_secrets_are_hidden_in_reprs(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, '[smtp]\npassword = "hunter2"\n'), environ={})
    assert "hunter2" not in repr(settings)
    assert settings.smtp.password.reveal() == "hunter2"


def test_the_smtp_password_is_not_a_string_and_never_shows(tmp_path: Path) -> None:
    settings = config.load(
        write(tmp_path, '[smtp]\nusername = "u"\nstarttls = true\n'), environ={"NEWSLETTER_SMTP_PASSWORD": "hunter2"}
    )
    password = settings.smtp.password
    assert not isinstance(password, str)
    shown = [repr(settings), str(password), f"{password}", f"{password!s:>20}", repr(settings.smtp)]
    assert all("hunter2" not in text for text in shown)
    assert password.reveal() == "hunter2"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '[smtp]\nusername = "u"\n',
            "[smtp] username is set but neither starttls nor ssl is: the password would cross "
            "the network in clear; set starttls = true (port 587) or ssl = true (port 465), or auth_without_tls = true "
            "for a relay on this host; fix {path}",
        ),
        (
            "[smtp]\nstarttls = true\nssl = true\n",
            "[smtp] starttls and ssl are both true: use ssl for port 465 (TLS "
            "from the start) or starttls for port 587, not both; fix {path}",
        ),
    ],
)
def test_smtp_settings_that_would_leak_or_contradict_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        config.load(path, environ={})
    assert str(err.value) == message.format(path=path)
    assert config.load(path, environ={"NEWSLETTER_SMTP_AUTH_WITHOUT_TLS": "true", "NEWSLETTER_SMTP_SSL": "false"})


@pytest.mark.parametrize(
    "text, environ, message",
    [
        ("[smtp]\nprot = 25\n", {}, "[smtp] unknown key 'prot' in {path}; see config.example.toml for the keys"),
        ('[smtp]\nport = "abc"\n', {}, "[smtp] port 'abc' is not a whole number; fix {path}"),
        (
            "",
            {"NEWSLETTER_SMTP_PORT": "abc"},
            "[smtp] port (from NEWSLETTER_SMTP_PORT) 'abc' is not a whole number; "
            "fix the environment variable NEWSLETTER_SMTP_PORT",
        ),
        ('[[categories]]\nname = "News"\n', {}, "[[categories]] #1 missing required key 'slug' in {path}"),
        (
            '[delivery]\ntransport = "pigeon"\n',
            {},
            "[delivery] transport 'pigeon' must be one of smtp, outbox; fix {path}",
        ),
        (
            "[delivery]\nsender_lease_seconds = 0\n",
            {},
            "[delivery] sender_lease_seconds must be at least 1; fix {path}",
        ),
        (
            '[newsletter]\ntimezone = "Mars/Olympus"\n',
            {},
            "[newsletter] timezone 'Mars/Olympus' is not a known time zone (e.g. 'Europe/Berlin'); fix {path}",
        ),
        ("[smpt]\n", {}, "unknown section [smpt] in {path}; see config.example.toml for the sections"),
        ("", {"NEWSLETTER_SMTP_PROT": "1"}, "environment variable NEWSLETTER_SMTP_PROT names no setting [smtp] prot"),
    ],
)
def test_bad_config_is_one_line_naming_key_and_file(
    tmp_path: Path, text: str, environ: dict[str, str], message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        config.load(path, environ=environ)
    assert str(exc.value) == message.format(path=path)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[smtp\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: not valid TOML"):
        config.load(path, environ={})


@pytest.mark.parametrize(
    "line, message",
    [
        (
            'base_url = "127.0.0.1:8000"',
            "[newsletter] base_url '127.0.0.1:8000' must be an absolute http(s) URL like 'https://news.example.com'; "
            "fix {path}",
        ),
        (
            'base_url = "ftp://x"',
            "[newsletter] base_url 'ftp://x' must be an absolute http(s) URL like 'https://news.example.com'; "
            "fix {path}",
        ),
        (
            'base_url = "http://news.example.com"',
            "[newsletter] base_url 'http://news.example.com' must use https (plain http only on localhost); fix {path}",
        ),
        (
            'from_address = "not an address"',
            "[newsletter] from_address 'not an address' is not an email address "
            "(An email address must have an @-sign.); write it like 'Trade Weekly <news@example.com>'; fix {path}",
        ),
        (
            'reply_to = "a@example.com, b@example.com"',
            "[newsletter] reply_to 'a@example.com, b@example.com' is not an email address (expected one address); "
            "write it like 'Trade Weekly <news@example.com>'; fix {path}",
        ),
    ],
)
def test_settings_that_break_every_message_are_refused(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, f"[newsletter]\n{line}\n")
    with pytest.raises(ConfigError) as exc:
        config.load(path, environ={})
    assert str(exc.value) == message.format(path=path)


@pytest.mark.parametrize(
    "base_url",
    [
        "https://news.example.com",
        "https://example.com/news/",
        "http://localhost:8000",
        "http://127.0.0.1:8000",
        "http://[::1]:8000",
    ],
)
def test_https_or_local_http_base_urls_are_accepted(tmp_path: Path, base_url: str) -> None:
    settings = config.load(write(tmp_path, f'[newsletter]\nbase_url = "{base_url}"\n'), environ={})
    assert settings.newsletter.base_url == base_url


def test_a_mistyped_secret_never_shows_its_value(tmp_path: Path) -> None:
    path = write(tmp_path, "[smtp]\npassword = 98127364\n")
    with pytest.raises(ConfigError) as exc:
        config.load(path, environ={})
    assert str(exc.value) == f"[smtp] password (value hidden) is not a string; fix {path}"


def test_config_option_on_a_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        config.load(tmp_path, environ={})
    assert str(exc.value) == (
        f"{tmp_path} is a folder; pass the config file itself, e.g. --config {tmp_path / 'config.toml'}"
    )


def test_smtp_send_refuses_the_examples_placeholders_and_the_outbox_accepts_them(tmp_path: Path) -> None:
    key = {"NEWSLETTER_SECRET_KEY": secrets.token_urlsafe(32)}
    example = config.load(EXAMPLE, environ=key)
    with pytest.raises(ConfigError) as exc:
        config.check_ready_to_send(example)
    assert str(exc.value) == (
        "[newsletter] from_address is still the example's placeholder "
        "'Trade Weekly <newsletter@example.com>'; set your own in config.toml before sending "
        'through SMTP (or use [delivery] transport = "outbox")'
    )
    own_sender = dataclasses.replace(
        example, newsletter=dataclasses.replace(example.newsletter, from_address="News <news@publisher.example>")
    )
    with pytest.raises(ConfigError, match=r"^\[newsletter\] postal_address is still the example's placeholder"):
        config.check_ready_to_send(own_sender)
    own_postal = dataclasses.replace(
        own_sender,
        newsletter=dataclasses.replace(own_sender.newsletter, postal_address="Publisher Ltd, 2 Real Road, Realtown"),
    )
    with pytest.raises(ConfigError, match=r"^\[newsletter\] base_url is still the example's placeholder"):
        config.check_ready_to_send(own_postal)
    config.check_ready_to_send(config.load(EXAMPLE, environ={**key, "NEWSLETTER_DELIVERY_TRANSPORT": "outbox"}))


def test_nothing_is_sent_without_a_postal_address(tmp_path: Path) -> None:
    settings = config.load(
        write(tmp_path, '[newsletter]\npostal_address = " "\n[delivery]\ntransport = "outbox"\n'),
        environ={"NEWSLETTER_SECRET_KEY": secrets.token_urlsafe(32)},
    )
    with pytest.raises(ConfigError) as exc:
        config.check_ready_to_send(settings)
    assert str(exc.value) == (
        "[newsletter] postal_address is empty; every message must show the publisher's "
        "postal address: set it in config.toml"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("[desk]\nsession_hours = 0\n", "[desk] session_hours 0.0 must be more than 0; fix {path}"),
        ("[desk]\nlogin_window_minutes = -5\n", "[desk] login_window_minutes -5.0 must be more than 0; fix {path}"),
        ("[desk]\nlogin_delay_seconds = -1\n", "[desk] login_delay_seconds -1.0 must be 0 or more; fix {path}"),
        (
            "[desk]\nlogin_failures_before_delay = -1\n",
            "[desk] login_failures_before_delay -1 must be 0 or more; fix {path}",
        ),
        (
            "[desk]\nlogin_failures_limit = 3\n",
            "[desk] login_failures_limit 3 must be more than login_failures_before_delay (3); fix {path}",
        ),
        ('[desk]\nsession_hours = "12h"\n', "[desk] session_hours '12h' is not a number; fix {path}"),
        (
            "[desk]\nsesion_hours = 1\n",
            "[desk] unknown key 'sesion_hours' in {path}; see config.example.toml for the keys",
        ),
        (
            "[tracking]\nscanner_burst_seconds = -1\n",
            "[tracking] scanner_burst_seconds -1.0 must be 0 (no burst check) or more; fix {path}",
        ),
        (
            "[tracking]\nclicks = false\nper_subscriber = true\n",
            "[tracking] per_subscriber = true needs clicks = true (there are no tracked links to record); fix {path}",
        ),
        ('[tracking]\nper_subscriber = "yes"\n', "[tracking] per_subscriber 'yes' is not true or false; fix {path}"),
        (
            "[tracking]\nopens = true\n",
            "[tracking] unknown key 'opens' in {path}; see config.example.toml for the keys",
        ),
    ],
)
def test_desk_and_tracking_values_are_checked(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        config.load(path, environ={})
    assert str(err.value) == message.format(path=path)
