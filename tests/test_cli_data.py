"""The data and train commands end to end, in process, and their one-line errors."""

from __future__ import annotations

import json

from recfl.app.cli import main


def test_describe_prints_json(capsys, fixtures):
    assert main(["data", "describe", "--format", "taobao", "--path", str(fixtures / "taobao.csv")]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows"] == 25 and stats["dropped"] == {"timestamp_out_of_range": 1}


def test_user_errors_are_one_line_with_nonzero_exit(capsys, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3,pv,1511658000\n1,2,3\n")
    assert main(["data", "describe", "--format", "taobao", "--path", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"recfl: error: {bad}:2: expected 5 fields (user_id, item_id, category_id, behavior, timestamp) separated by ',', got 3"
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "not a prepared data set" in capsys.readouterr().err


def test_prepare_then_train(capsys, tmp_path, fixtures):
    out = tmp_path / "ml"
    assert main(["data", "prepare", "--format", "movielens-100k", "--path", str(fixtures / "ml100k"), "--out", str(out),
                 "--test-fraction", "0.25", "--seed", "4"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["seed"] == 4 and manifest["test"]["rows"] == 8
    assert main(["train", "--data", str(out), "--out", str(tmp_path / "model"), "--epochs", "1",
                 "--set", "model.embed_dim=4", "--set", "train.batch_size=8"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["test"]) >= {"auc", "gauc", "logloss"}
    assert (tmp_path / "model" / "spec.json").is_file() and (tmp_path / "model" / "saved_model").is_dir()


def test_synth_writes_a_prepared_set(capsys, tmp_path):
    assert main(["data", "synth", "--users", "50", "--items", "100", "--out", str(tmp_path / "s"), "--seed", "2"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["source"] == "synthetic" and manifest["synthetic"]["users"] == 50 and manifest["synthetic"]["seed"] == 2


def test_out_of_range_options_are_one_line(capsys, tmp_path, fixtures):
    """Values argparse accepts but the stages cannot use end as one line, never a traceback."""
    ml = ["--format", "movielens-100k", "--path", str(fixtures / "ml100k")]
    cases = [
        (["data", "prepare", *ml, "--out", str(tmp_path / "a"), "--test-fraction", "1.5"], "data.test_fraction = 1.5 must be in (0, 1)"),
        (["data", "synth", "--users", "0", "--out", str(tmp_path / "b")], "synthetic.users = 0 must be >= 1"),
        (["data", "synth", "--users", "5", "--out", str(tmp_path / "c"), "--set", "trian.epochs=1"], "unknown section(s) trian"),
        (["data", "prepare", "--format", "nope", "--out", str(tmp_path / "d")], "invalid choice: 'nope'"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("recfl: error: ") and message in err and err.count("\n") == 1, err


def test_damaged_prepared_data_and_foreign_models_are_one_line(capsys, tmp_path, fixtures):
    data, other = tmp_path / "ml", tmp_path / "synth"
    assert main(["data", "prepare", "--format", "movielens-100k", "--path", str(fixtures / "ml100k"), "--out", str(data)]) == 0
    assert main(["data", "synth", "--users", "30", "--items", "60", "--out", str(other)]) == 0
    assert main(["train", "--data", str(other), "--out", str(tmp_path / "m"), "--epochs", "1", "--set", "train.batch_size=0"]) == 2
    assert "train.batch_size = 0 must be >= 1" in capsys.readouterr().err
    assert main(["train", "--data", str(other), "--out", str(tmp_path / "m"), "--epochs", "1", "--set", "model.embed_dim=4"]) == 0
    capsys.readouterr()
    assert main(["predict", "--data", str(data), "--model", str(tmp_path / "m"), "--arm", "x", "--out", str(tmp_path / "p.parquet")]) == 2
    assert "do not match the vocabularies" in capsys.readouterr().err
    (data / "test.parquet").write_bytes(b"not parquet")
    assert main(["predict", "--data", str(data), "--popularity", "--arm", "x", "--out", str(tmp_path / "p.parquet")]) == 2
    err = capsys.readouterr().err
    assert "test.parquet: not a readable Parquet file" in err and err.count("\n") == 1
    (other / "manifest.json").write_text("{broken")
    assert main(["run", "--data", str(other), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "manifest.json: damaged manifest" in err and err.count("\n") == 1


def test_a_missing_file_of_a_prepared_set_is_one_line_in_every_command(capsys, tmp_path):
    data = tmp_path / "s"
    assert main(["data", "synth", "--users", "30", "--items", "60", "--out", str(data)]) == 0
    (data / "vocab" / "items.parquet").unlink()
    capsys.readouterr()
    for argv in (["train", "--data", str(data), "--out", str(tmp_path / "m")],
                 ["predict", "--data", str(data), "--popularity", "--arm", "x", "--out", str(tmp_path / "p.parquet")],
                 ["run", "--data", str(data), "--out", str(tmp_path / "run")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err == f"recfl: error: {data}: incomplete prepared data set (vocab/items.parquet missing); prepare it again\n"
