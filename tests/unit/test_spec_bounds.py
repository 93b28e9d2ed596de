"""Issue 35 item 6: a YAML alias bomb in a spec is refused before any field is read, and no error message
quotes more than a few hundred characters of a value."""
import pytest

from common.config.specs import load_spec
from common.errors import ConfigError
from tiny_detector import SPEC


def _bomb(levels: int, width: int = 9) -> str:
    """`levels` anchors, each a list of `width` aliases of the one before: width**levels strings expanded."""
    lines = [f"x-l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"x-l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_in_a_string_field_is_refused_quickly(tmp_path):
    # 9**6 = 531441 strings once expanded; before the fix the description's type error printed all of them
    # (a 3.7 MB line here; 9**9 took 70 s and 11 GB)
    spec = tmp_path / "bomb.yaml"
    spec.write_text(_bomb(6) + SPEC.format(size=64).replace("    input:", "    description: *l5\n    input:"))
    with pytest.raises(ConfigError) as ei:
        load_spec(spec)
    msg = str(ei.value)
    assert "anchors and aliases expand to more than" in msg and str(spec) in msg, msg[:500]
    assert len(msg) < 500


def test_anchors_the_shipped_specs_use_still_load(tmp_path):
    # x-* anchors merged into variants (the rtdetr spec's pattern) are well under the bound
    spec = tmp_path / "merged.yaml"
    spec.write_text(SPEC.format(size=64).replace("variants:\n  v:\n", "x-pre: &pre {resize: letterbox}\nvariants:\n"
                                                 "  v:\n"))
    assert load_spec(spec).variant("v").preprocess.resize == "letterbox"
    from common.config.specs import MAX_SPEC_VALUES
    assert MAX_SPEC_VALUES >= 10_000


def test_error_messages_quote_at_most_a_few_hundred_characters(tmp_path):
    spec = tmp_path / "long.yaml"
    spec.write_text(SPEC.format(size=64).replace("pad_value: 114", "pad_value: " + "x" * 1_000_000))
    with pytest.raises(ConfigError) as ei:
        load_spec(spec)
    msg = str(ei.value)
    assert "pad_value: expected float, got 'xxx" in msg and len(msg) < 500, msg[:500]
    # a wide nested value (not an alias bomb) is cut as well
    from common.errors import quote
    assert len(quote([[list(range(1000))] * 1000] * 1000)) <= 200
    assert quote("short") == "'short'"
