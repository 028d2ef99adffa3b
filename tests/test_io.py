"""pluralign.io: atomic writes and the config YAML reader."""

import json
import math
import os
import re
import stat

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from pluralign.errors import ConfigError
from pluralign.io import (
    atomic_path,
    parse_yaml,
    read_yaml_mapping,
    write_json,
)


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300))
def test_scientific_notation_reads_as_float(x):
    """Python's repr gives e.g. '1e-05'; plain yaml.safe_load would return the string."""
    text = repr(x)  # Python spells 1e-05 without a dot
    assert parse_yaml(f"lr: {text}")["lr"] == pytest.approx(x, rel=1e-15, abs=0)


def test_yaml11_behaviour_kept_for_everything_else():
    doc = "a: 1e-3\nb: 5E+2\nc: 3\nd: 1e3x\ne: yes\nf: [2e-1, 0.5]\ng: '1e-3'"
    assert yaml.safe_load(doc)["a"] == "1e-3"          # the trap being fixed
    assert parse_yaml(doc) == {"a": 1e-3, "b": 500.0, "c": 3, "d": "1e3x", "e": True,
                               "f": [0.2, 0.5], "g": "1e-3"}
    assert yaml.safe_load("x: 1e-3")["x"] == "1e-3"    # SafeLoader itself is not modified


def test_parse_yaml_refuses_python_objects():
    with pytest.raises(yaml.YAMLError):
        parse_yaml("!!python/object/apply:os.system ['true']")


def test_atomic_path_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("{half")
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_write_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "m.json", {"x": math.nan})
    assert not (tmp_path / "m.json").exists()


def test_read_yaml_mapping_names_the_file_for_every_failure(tmp_path):
    from pluralign.errors import ConfigError
    from pluralign.io import read_yaml_mapping

    good, empty, bad, listy = (tmp_path / n for n in ("a.yaml", "b.yaml", "c.yaml", "d.yaml"))
    good.write_text("lr: 1e-3\n")
    empty.write_text("")
    bad.write_text("a: [1, 2\n")
    listy.write_text("- 1\n- 2\n")
    assert read_yaml_mapping(good, "x") == {"lr": 0.001}
    assert read_yaml_mapping(empty, "x") == {}
    for path, message in [(tmp_path / "missing.yaml", "cannot read config"),
                          (bad, "invalid YAML"), (listy, "expected a mapping of demo settings")]:
        with pytest.raises(ConfigError, match=message) as exc:
            read_yaml_mapping(path, "demo settings")
        assert str(path) in str(exc.value)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_files_follow_the_umask_like_open(tmp_path, umask):
    """Issue 15 #11: mkstemp's 0600 used to leak into every file whatever the umask."""
    old = os.umask(umask)
    try:
        write_json(tmp_path / "metrics.json", {"a": 1})
        (tmp_path / "plain.txt").write_text("x")  # the reference: a normal open()
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("value", ["[0", "!0", '"', "{a: 1", "!!python/name:os.system"])
def test_overrides_with_invalid_yaml_name_the_override(value):
    """Issue 15 #9: 'data inspect --option pairs=[0' raised a raw yaml ParserError; overrides
    are now ``key=value`` for every command and go through one parser."""
    from pluralign.config import apply_overrides

    with pytest.raises(ConfigError, match=re.escape(f"override 'pairs={value}': invalid YAML")):
        apply_overrides({}, [f"pairs={value}"])


def test_non_utf8_config_names_the_file(tmp_path):
    """Issue 15 #9: a Latin-1 YAML file raised a raw UnicodeDecodeError (train, sft, synthetic,
    pal, simulate, demo all read configs through read_yaml_mapping)."""
    path = tmp_path / "recipe.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"recipe.yaml: not UTF-8 text \(byte 0xe9 at "
                                          r"offset 9\); save the file as UTF-8"):
        read_yaml_mapping(path, "fields")
