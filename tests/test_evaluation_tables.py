"""Reading margins tables (issue 15 #9: empty or garbage --margins / --baseline-margins files
raised pandas' EmptyDataError / ParserError / UnicodeDecodeError / ArrowInvalid tracebacks)."""

import pandas as pd
import pytest

from pluralign.runs import RunFolderError, read_table


@pytest.mark.parametrize(("name", "content", "message"), [
    ("empty.csv", b"", r"empty.csv: cannot read it as csv \(.*\); pass a well-formed csv table"),
    ("binary.csv", b"\xff\xfe\x00\x81garbage\x00\n\x93", r"binary.csv: cannot read it as csv"),
    ("broken.parquet", b"PAR1 not really", r"broken.parquet: cannot read it as parquet"),
    ("nomargin.csv", b"a,b\n1,2\n", r"nomargin.csv: no 'margin' column; columns: \['a', 'b'\]"),
    ("header.csv", b"margin\n", r"header.csv: no rows"),
])
def test_bad_margins_files_are_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(RunFolderError, match=message):
        read_table(path, required=("margin",))


def test_missing_file_and_a_good_table(tmp_path):
    with pytest.raises(RunFolderError, match=r"missing.csv: no such file"):
        read_table(tmp_path / "missing.csv")
    frame = pd.DataFrame({"margin": [0.5, -1.0], "attr.g": ["a", "b"]})
    frame.to_parquet(tmp_path / "m.parquet")
    frame.to_csv(tmp_path / "m.csv", index=False)
    for path in (tmp_path / "m.parquet", tmp_path / "m.csv"):
        pd.testing.assert_frame_equal(read_table(path, required=("margin",)), frame)
