import json

import pandas as pd
import pytest

from llmrec.training.datasets import load_user_files, read_table
from llmrec.training.schema import SchemaError, validate_interactions, validate_items


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_items_missing_column_names_the_file(items):
    with pytest.raises(SchemaError, match=r"items.jsonl: missing column\(s\) \['title'\]"):
        validate_items(items.drop(columns=["title"]), "items.jsonl")


@pytest.mark.parametrize("title", ["", "   ", None])
def test_items_empty_title_names_the_row(items, title):
    items.loc[3, "title"] = title
    with pytest.raises(SchemaError, match=r"items.parquet, row 4: empty title for item '3'"):
        validate_items(items, "items.parquet")


def test_every_bad_row_is_counted_and_the_first_ones_listed():
    items = pd.DataFrame({"item_id": [str(i) for i in range(30)], "title": [""] * 25 + ["ok"] * 5})
    items.loc[27, "item_id"] = "26"
    with pytest.raises(SchemaError) as e:
        validate_items(items, "items.jsonl")
    message = str(e.value)
    assert message.startswith("items.jsonl: 26 bad rows")
    assert "row 1: empty title for item '0'" in message and "row 10: empty title" in message
    assert "row 11:" not in message and "... and 16 more" in message


def test_items_duplicate_id(items):
    items.loc[5, "item_id"] = "2"
    with pytest.raises(SchemaError, match=r"row 6: duplicate item_id '2'"):
        validate_items(items)


def test_items_optional_fields_default_and_tags_from_string():
    out = validate_items(pd.DataFrame({"item_id": [1, 2], "title": ["a", "b"], "tags": ["x|y", None]}))
    assert out["item_id"].tolist() == ["1", "2"]
    assert out["tags"].tolist() == [["x", "y"], []]
    assert out["content"].tolist() == ["", ""]


def test_interactions_unknown_item(items):
    log = pd.DataFrame({"user_id": ["u", "u"], "item_id": ["1", "99"], "timestamp": [1, 2]})
    with pytest.raises(SchemaError, match=r"log.jsonl, row 2: item_id '99' is not in the items table"):
        validate_interactions(log, items["item_id"], "log.jsonl")


def test_interactions_nan_timestamp_is_an_error_but_disorder_is_fine(items):
    ok = pd.DataFrame({"user_id": ["u", "u"], "item_id": ["1", "2"], "timestamp": [5, 1]})
    assert len(validate_interactions(ok, items["item_id"])) == 2
    bad = ok.assign(timestamp=[5, float("nan")])
    with pytest.raises(SchemaError, match=r"row 2: timestamp nan is missing or not a number"):
        validate_interactions(bad, items["item_id"])


def test_interactions_label_must_be_binary(items):
    log = pd.DataFrame({"user_id": ["u"], "item_id": ["1"], "timestamp": [1], "label": [3]})
    with pytest.raises(SchemaError, match="label 3 must be 0 or 1"):
        validate_interactions(log, items["item_id"])


def test_user_files_jsonl_and_parquet_round_trip(tmp_path, items):
    items_path = tmp_path / "items.parquet"
    items.to_parquet(items_path)
    log = write_jsonl(
        tmp_path / "log.jsonl",
        [{"user_id": "u", "item_id": "1", "timestamp": 1}, {"user_id": "u", "item_id": "2", "timestamp": 2}],
    )
    data = load_user_files(items_path, log)
    assert data.n_users == 1 and len(data.items) == len(items)
    assert data.items["tags"][0] == items["tags"][0]


def test_jsonl_bad_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"user_id": "u"}\n{oops\n')
    with pytest.raises(SchemaError, match=r"log.jsonl, row 2: not valid JSON"):
        read_table(path)


def test_unsupported_format(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a\n")
    with pytest.raises(SchemaError, match="unsupported format '.csv'"):
        read_table(path)
