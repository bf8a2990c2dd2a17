"""cli.config: the TOML config file, every setting's validation, durations and retention."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditlog.cli.config import SETTINGS, Config, load_config, parse_duration, parse_retention
from auditlog.engine.errors import AuditLogError, ConfigError
from auditlog.engine.settings import MIN_RETENTION_DAYS, StoreSettings


def write(tmp_path: Path, text: str | bytes, name: str = "auditlog.toml") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def load(tmp_path: Path, text: str | bytes) -> Config:
    return load_config(write(tmp_path, text))


def refused(tmp_path: Path, text: str | bytes) -> str:
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, text)
    msg = str(ei.value)
    assert "\n" not in msg  # one line for the CLI
    assert ei.value.exit_code == 2
    return msg


# ----------------------------------------------------------------------------- valid files


def test_no_file_gives_defaults():
    c = load_config(None)
    assert c == Config()
    assert (
        c.node_id,
        c.retention_days,
        c.segment_max_bytes,
        c.segment_max_age,
        c.fsync,
        c.server_listen,
        c.source,
    ) == (None, 365, 64 * 1024 * 1024, 86400.0, "always", "127.0.0.1:8080", None)
    assert c.store_settings() == StoreSettings()


def test_empty_file_gives_defaults(tmp_path):
    c = load(tmp_path, "")
    assert c == Config(source=str(tmp_path / "auditlog.toml"))
    assert c.retention_days == 365 and c.fsync == "always"


def test_full_valid_file(tmp_path):
    c = load(
        tmp_path,
        """
# a complete node configuration
node_id = "gw-2"
retention_days = 400
segment_max_bytes = 8388608
segment_max_age = "12h"
fsync = "interval"

[server]
listen = "0.0.0.0:9090"

[cluster]
listen = "0.0.0.0:9443"
ca = "/etc/auditlog/ca.pem"
cert = "/etc/auditlog/gw-2.pem"
key = "/etc/auditlog/gw-2.key"
peer_timeout = 2.5

[[cluster.peers]]
node = "gw-1"
url = "https://gw-1:9443"

[syslog]
target = "tcp://siem:6514"
sd_id = "audit@32473"
""",
    )
    assert c.node_id == "gw-2"
    assert c.retention_days == 400
    assert c.segment_max_bytes == 8 * 1024 * 1024
    assert c.segment_max_age == 12 * 3600
    assert c.fsync == "interval"
    assert c.server_listen == "0.0.0.0:9090"
    assert c.source == str(tmp_path / "auditlog.toml")
    # tables for later layers stay available, untouched
    assert c.raw["cluster"]["peers"] == [{"node": "gw-1", "url": "https://gw-1:9443"}]
    assert c.cluster.listen == "0.0.0.0:9443" and c.cluster.peer_timeout == 2.5
    assert [(p.node, p.url) for p in c.cluster.peers] == [("gw-1", "https://gw-1:9443")]
    assert c.cluster.ca == "/etc/auditlog/ca.pem" and c.cluster.checkpoint_interval == 60.0
    assert c.raw["syslog"]["target"] == "tcp://siem:6514"
    s = c.store_settings()
    assert (s.segment_max_bytes, s.segment_max_age, s.fsync, s.retention_days) == (
        8 * 1024 * 1024,
        43200.0,
        "interval",
        400,
    )


def test_config_is_frozen(tmp_path):
    c = load(tmp_path, "fsync = 'none'\n")
    with pytest.raises(AttributeError):
        c.fsync = "always"  # type: ignore[misc]


def test_bom_is_not_toml(tmp_path):
    # a UTF-8 BOM is not valid TOML; refused with a clear message, never a traceback
    msg = refused(tmp_path, b"\xef\xbb\xbffsync = 'none'\n")
    assert "TOML" in msg


def test_settings_declared_once_with_help():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    assert {"node_id", "retention_days", "segment_max_bytes", "segment_max_age", "fsync", "server.listen"} <= set(names)
    for s in SETTINGS:
        assert s.help and callable(s.check)
        if s.default is not None:
            assert s.check(s.default, s.name) == s.default


# ----------------------------------------------------------------------------- retention_days


@pytest.mark.parametrize(
    "value, expected",
    [
        ("90", 90),
        ("365", 365),
        ("3650", 3650),
        ('"forever"', None),
        ('"Forever"', None),
        ('" forever "', None),
        ('"120"', 120),
    ],
)
def test_retention_days_valid(tmp_path, value, expected):
    c = load(tmp_path, f"retention_days = {value}\n")
    assert c.retention_days == expected
    assert c.store_settings().retention_days == expected


@pytest.mark.parametrize("value", ["89", "30", "0", "-1", '"30"'])
def test_retention_days_under_90_refused_saying_so(tmp_path, value):
    msg = refused(tmp_path, f"retention_days = {value}\n")
    assert "retention_days" in msg and "90" in msg and "at least" in msg


@pytest.mark.parametrize("value", ["90.5", "true", '"never"', '"1y"', "[365]", "{}", '""'])
def test_retention_days_wrong_type_refused(tmp_path, value):
    msg = refused(tmp_path, f"retention_days = {value}\n")
    assert "retention_days" in msg and "forever" in msg


def test_parse_retention_direct():
    assert parse_retention("forever") is None
    assert parse_retention(MIN_RETENTION_DAYS) == MIN_RETENTION_DAYS
    with pytest.raises(ConfigError, match="--retention-days must be at least 90"):
        parse_retention("45", "--retention-days")
    with pytest.raises(ConfigError):
        parse_retention(True)
    with pytest.raises(ConfigError):
        parse_retention(None)


# ----------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    "text, seconds",
    [
        ('"1d"', 86400.0),
        ('"12h"', 43200.0),
        ('"30m"', 1800.0),
        ('"45s"', 45.0),
        ('"2w"', 1209600.0),
        ('"500ms"', 0.5),
        ('"1.5h"', 5400.0),
        ('" 3 d "', 259200.0),
        ('"90"', 90.0),
        ("86400", 86400.0),
        ("0.25", 0.25),
    ],
)
def test_segment_max_age_durations(tmp_path, text, seconds):
    c = load(tmp_path, f"segment_max_age = {text}\n")
    assert c.segment_max_age == seconds
    assert isinstance(c.segment_max_age, float)


@pytest.mark.parametrize(
    "text", ['"1x"', '"d"', '"-1d"', '"0d"', '"0"', "0", "-5", "true", '""', '"1 day"', '"1D"', "[1]"]
)
def test_segment_max_age_invalid(tmp_path, text):
    msg = refused(tmp_path, f"segment_max_age = {text}\n")
    assert "segment_max_age" in msg


def test_parse_duration_direct():
    assert parse_duration("1d", "x") == 86400
    assert parse_duration(3, "x") == 3.0
    with pytest.raises(ConfigError, match="peer_timeout"):
        parse_duration("soon", "peer_timeout")
    with pytest.raises(ConfigError):
        parse_duration(False, "x")


# ----------------------------------------------------------------------------- other settings


@pytest.mark.parametrize(
    "value, ok",
    [
        ("4096", True),
        ("67108864", True),
        ("4095", False),
        ("0", False),
        ("-4096", False),
        ('"64MiB"', False),
        ("4096.0", False),
        ("true", False),
    ],
)
def test_segment_max_bytes(tmp_path, value, ok):
    text = f"segment_max_bytes = {value}\n"
    if ok:
        assert load(tmp_path, text).segment_max_bytes == int(value)
    else:
        assert "segment_max_bytes" in refused(tmp_path, text)


@pytest.mark.parametrize("value", ["always", "interval", "none"])
def test_fsync_modes(tmp_path, value):
    assert load(tmp_path, f'fsync = "{value}"\n').fsync == value


@pytest.mark.parametrize("value", ['"ALWAYS"', '"sometimes"', '""', "true", "1"])
def test_fsync_invalid(tmp_path, value):
    msg = refused(tmp_path, f"fsync = {value}\n")
    assert "fsync" in msg and "always, interval, none" in msg


@pytest.mark.parametrize("value", ['"gw1"', '"a"', '"node-0-x"', '"' + "a" * 63 + '"'])
def test_node_id_valid(tmp_path, value):
    assert load(tmp_path, f"node_id = {value}\n").node_id == value.strip('"')


@pytest.mark.parametrize("value", ['"GW1"', '"-gw"', '"gw_1"', '""', '"' + "a" * 64 + '"', "7", '"gw1\\n"'])
def test_node_id_invalid(tmp_path, value):
    msg = refused(tmp_path, f"node_id = {value}\n")
    assert "node" in msg


@pytest.mark.parametrize(
    "value, ok", [('"127.0.0.1:8080"', True), ('"[::1]:80"', True), ("8080", False), ('""', False), ("[]", False)]
)
def test_server_listen(tmp_path, value, ok):
    text = f"[server]\nlisten = {value}\n"
    if ok:
        assert load(tmp_path, text).server_listen == value.strip('"')
    else:
        assert "server.listen" in refused(tmp_path, text)


@pytest.mark.parametrize(
    "value, seconds", [("60", 60.0), ('"5m"', 300.0), ('"90s"', 90.0), ("0", None), ('"soon"', None), ("true", None)]
)
def test_server_checkpoint_interval(tmp_path, value, seconds):
    text = f"[server]\ncheckpoint_interval = {value}\n"
    if seconds is None:
        assert "server.checkpoint_interval" in refused(tmp_path, text)
        return
    cfg = load(tmp_path, text)
    assert cfg.server.checkpoint_interval == seconds
    assert cfg.node_config().service.checkpoint_interval == seconds  # what serve's job uses
    assert load(tmp_path, "").node_config().service.checkpoint_interval == 60.0


# ----------------------------------------------------------------------------- broken files


@pytest.mark.parametrize(
    "text, expect",
    [
        ("colour = 'blue'\n", "unknown setting 'colour'"),
        ("retention-days = 365\n", "unknown setting 'retention-days'"),
        ("Fsync = 'none'\n", "unknown setting 'Fsync'"),
        ("[storage]\nfsync = 'none'\n", "unknown setting 'storage'"),
    ],
)
def test_unknown_keys_refused_naming_the_known_ones(tmp_path, text, expect):
    msg = refused(tmp_path, text)
    assert expect in msg
    assert "retention_days" in msg and "fsync" in msg


@pytest.mark.parametrize(
    "text",
    [
        "retention_days = [\n",
        "not toml\n",
        "a = 1\na = 2\n",
        "[server\n",
        "x = 'unterminated\n",
        "retention_days = 365 365\n",
    ],
)
def test_invalid_toml(tmp_path, text):
    msg = refused(tmp_path, text)
    assert "not valid TOML" in msg and "auditlog.toml" in msg


@pytest.mark.parametrize("junk", [b"\xff\xfe\x00\x01binary", bytes(range(256)), b"\x89PNG\r\n\x1a\n"])
def test_binary_junk(tmp_path, junk):
    msg = refused(tmp_path, junk)
    assert "auditlog.toml" in msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_unreadable_file(tmp_path, monkeypatch):
    p = write(tmp_path, "fsync = 'none'\n")

    def deny(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(ConfigError, match="cannot read config file .*Permission denied"):
        load_config(p)


def test_config_error_is_an_auditlog_error():
    assert issubclass(ConfigError, AuditLogError)


@pytest.mark.parametrize(
    "table, needle",
    [
        ('[cluster]\nlisten = "127.0.0.1:9443"\n', "ca, cert and key"),
        ("[cluster]\nbogus = 1\n", "bogus"),
        ('[cluster]\npeer_timeout = "abc"\n', "peer_timeout"),
        (
            '[cluster]\nca="a"\ncert="b"\nkey="c"\n[[cluster.peers]]\nnode = "gw-1"\nurl = "http://gw-1:9443"\n',
            "https://",
        ),
        ('[cluster]\nca="a"\ncert="b"\nkey="c"\n[[cluster.peers]]\nnode = "GW 1"\nurl = "https://x:1"\n', "node id"),
        ('[cluster]\nca="a"\ncert="b"\nkey="c"\n[[cluster.peers]]\nnode = "gw-1"\n', "node and url"),
    ],
)
def test_cluster_table_checked(tmp_path, table, needle):
    assert needle in refused(tmp_path, table.encode())


@pytest.mark.parametrize(
    "text, needle",
    [
        ("server = 'x'\n", "[server] must be a table"),
        ("[server]\nbogus = 1\n", "bogus"),
        ("[syslog]\nsd_id = 'x@1'\n", "needs target"),
        ("[syslog]\ntarget = 'http://siem:514'\n", "udp://"),
        ("[syslog]\ntarget = 'tcp://siem'\n", "udp://"),
        ("[syslog]\ntarget = 'tcp://siem:514'\nsd_id = 'no-at-sign'\n", "sd_id"),
        ("[syslog]\ntarget = 'tcp://siem:514'\nformat = 'cef'\n", "rfc5424"),
        ("[syslog]\ntarget = 'tcp://siem:514'\nca = 'ca.pem'\n", "tls://"),
        ("[syslog]\ntarget = 'udp://siem:514'\nudp_max_bytes = 100\n", "udp_max_bytes"),
    ],
)
def test_server_and_syslog_tables_checked(tmp_path, text, needle):
    assert needle in refused(tmp_path, text.encode())


def test_syslog_table_loaded(tmp_path):
    c = load(
        tmp_path,
        "[syslog]\ntarget = 'tls://siem.example:6514'\nca = 'ca.pem'\nsd_id = 'gw@99999'\n"
        "[server]\nlisten = '127.0.0.1:9000'\nunix_socket = 'audit.sock'\n",
    )
    assert c.syslog.target == "tls://siem.example:6514" and c.syslog.sd_id == "gw@99999"
    assert c.syslog.ca == str(tmp_path / "ca.pem")
    assert c.server_listen == "127.0.0.1:9000" and c.server_unix_socket == str(tmp_path / "audit.sock")


# ----------------------------------------------------------------------------- declared once


def _readme_config_keys() -> set[str]:
    """The keys of the README's sample config (commented-out ones too), dotted by table."""
    import re

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = text.split("## Configuration", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    keys, table = set(), ""
    for line in block.splitlines():
        m = re.match(r"^\[\[?([a-z_.]+)\]\]?", line)
        if m:
            table = m.group(1)
            continue
        m = re.match(r"^#?\s*([a-z_]+)\s*=", line)
        if m:
            if table == "cluster.peers":
                keys.add("cluster.peers")
            else:
                keys.add(f"{table}.{m.group(1)}" if table else m.group(1))
    return keys


def test_every_declared_setting_is_in_the_readme_and_nothing_else():
    assert _readme_config_keys() == {s.name for s in SETTINGS}


def test_settings_objects_take_their_defaults_from_the_rows():
    """The defaults users get are the rows' defaults: no second copy in a settings class."""
    from dataclasses import fields

    from auditlog.cli.config import TABLES
    from auditlog.engine.settings import STORE_SETTINGS
    from auditlog.export.syslog import SyslogSettings
    from auditlog.query.cluster.settings import ClusterSettings
    from auditlog.query.http.settings import ServerSettings

    objects = {
        "": StoreSettings(),
        "server": ServerSettings(),
        "cluster": ClusterSettings(),
        "syslog": SyslogSettings(target="udp://siem:514"),
    }
    rows = {"": STORE_SETTINGS, **TABLES}
    for table, obj in objects.items():
        by_key = {s.key: s for s in rows[table]}
        declared = {f.name for f in fields(obj)}
        assert set(by_key) - {"target"} <= declared, table
        for key, s in by_key.items():
            if key != "target":
                assert getattr(obj, key) == s.default, (table, key)
    # and the file's defaults are those objects
    c = load_config(None)
    assert c.store == StoreSettings() and c.server == ServerSettings()


def test_no_default_is_written_twice_in_the_code():
    """The settings classes take each configurable default from its row, never a literal
    of their own, and the config loader writes none: a second copy is how defaults drift."""
    import ast

    from auditlog.cli.config import TABLES
    from auditlog.engine.settings import STORE_SETTINGS

    root = Path(__file__).resolve().parent.parent
    classes = {
        ("engine/settings.py", "StoreSettings"): STORE_SETTINGS,
        ("query/http/settings.py", "ServerSettings"): TABLES["server"],
        ("query/cluster/settings.py", "ClusterSettings"): TABLES["cluster"],
        ("export/syslog.py", "SyslogSettings"): TABLES["syslog"],
    }
    for (file, name), rows in classes.items():
        tree = ast.parse((root / file).read_text())
        cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name)
        keys = {s.key for s in rows if s.required is None}  # a required one has no default
        fields_with_rows = [
            n
            for n in cls.body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.target.id in keys
        ]
        assert {n.target.id for n in fields_with_rows} == keys, name
        for n in fields_with_rows:
            assert isinstance(n.value, ast.Subscript), (
                f"{file}: {name}.{n.target.id} has a default of its own, not its row's"
            )
    defaults = {s.default for s in SETTINGS if s.default is not None and not isinstance(s.default, (bool, tuple))}
    tree = ast.parse((root / "cli/config.py").read_text())
    again = [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and not isinstance(n.value, bool) and n.value in defaults
    ]
    assert again == [], f"cli/config.py repeats defaults: {again}"


# ----------------------------------------------------------------------------- retired settings


def test_a_retired_setting_is_ignored_with_a_warning(tmp_path):
    """``line_files`` (a read cache earlier versions kept) is no longer a setting: a file
    that still has it is read as before, and the CLI says why the key does nothing."""
    from helpers_engine import init_dir, invoke_cli

    cfg = load(tmp_path, 'fsync = "none"\nline_files = false\n')
    assert cfg.store == StoreSettings(fsync="none") and len(cfg.notes) == 1
    assert "line_files" in cfg.notes[0] and "ignored" in cfg.notes[0]
    d, _ = init_dir(tmp_path / "data")
    r = invoke_cli(
        d.root, "append", "--user", "a", "--action", "auth.login", config=write(tmp_path, "line_files = true\n")
    )
    assert r.exit_code == 0, r.output
    assert r.stderr.count("warning:") == 1 and "line_files is no longer a setting" in r.stderr
    assert "line_files" not in refused(tmp_path, "line_files = 1\ncolour = 1\n").split("(known")[1]
