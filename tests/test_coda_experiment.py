"""``tools.coda_experiment``: a grid of ``recfl run`` variants on a validation split carved from train, seed-pooled."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lock_holder import held_elsewhere
from scipy.stats import spearmanr

from recfl.core.dataset import PreparedDataset
from recfl.core.errors import RecflError, os_error_line
from recfl.core.pool import assign_roles
from tools.coda_experiment import (
    Grid,
    agreement,
    agreement_markdown,
    check_variants,
    main,
    markdown,
    read_results,
    split_data,
)

from test_pipeline import TINY


@pytest.mark.heavy  # two pipeline runs
def test_the_grid_runs_each_variant_on_validation_and_reruns_only_what_a_variant_changes(tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(TINY)
    grid = tmp_path / "grid.toml"
    grid.write_text(f'config = "{tmp_path / "tiny.toml"}"\nseeds = [0]\n'
                    '[[variant]]\nname = "defaults"\n'
                    '[[variant]]\nname = "keep 30%"\nset = ["filter.keep_fraction=0.3"]\n')
    out = tmp_path / "grid"
    assert main(["--grid", str(grid), "--out", str(out), "--bootstrap", "50"]) == 0

    test, val = PreparedDataset(out / "test-data"), PreparedDataset(out / "val-devices-data")  # the default validation
    assert set(val.test["event_id"]) <= set(test.train["event_id"])  # validation never holds a test event
    assert not set(val.train["event_id"]) & set(test.test["event_id"])
    stage = lambda variant, name: json.loads((out / "val-devices" / variant / "seed-0" / name / "stage.json").read_text())
    for name in ("data", "cloud_model", "fedsubavg", "arm-local"):  # copied from the first variant and skipped
        assert stage("keep-30-", name) == stage("defaults", name)
    assert stage("keep-30-", "arm-coda")["settings"]["filter"]["keep_fraction"] == 0.3
    devices = lambda variant, arm: sorted((out / "val-devices" / variant / "seed-0" / f"arm-{arm}" / f"{arm}.devices").glob("*.npz"))
    kept, rerun = devices("keep-30-", "local"), devices("defaults", "coda")
    assert kept and all(p.stat().st_nlink == 2 for p in kept)  # an unchanged arm's device files are links, not copies
    assert rerun and all(p.stat().st_nlink == 1 for p in rerun)  # a rerun arm wrote new files, never through a link

    table = pd.read_csv(out / "val-devices" / "results.csv")
    assert set(table["variant"]) == {"defaults", "keep 30%"} and set(table["control"]) == {"cloud", "local"}
    assert set(table[table["control"] == "local"]["arm"]) == {"cloud", "fedavg", "fedsubavg", "coda-nofilter", "coda"}
    same = table.set_index(["variant", "control", "arm"])["lift"]
    assert same[("defaults", "cloud", "local")] == same[("keep 30%", "cloud", "local")]  # the local arm did not rerun
    assert "| keep 30% | coda |" in capsys.readouterr().out
    assert not (out / "validation-devices-vs-test.md").exists()
    assert main(["--grid", str(grid), "--out", str(out), "--split", "test", "--bootstrap", "50"]) == 0
    assert "| defaults | coda | cloud |" in (out / "validation-devices-vs-test.md").read_text()


def test_the_held_out_users_validation_holds_out_only_device_users_events(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY + '[pool]\nshare_fraction = 0.4\nsalt = "other"\n')
    grid = Grid(tmp_path / "tiny.toml", (0,), ())
    val, test = (PreparedDataset(split_data(grid, tmp_path / "g", split)) for split in ("val-devices", "test"))
    roles = assign_roles(test.train["user_id"].unique(), 0.4, "other")
    assert len(roles.sharing_users) and set(val.test["user_id"]) == set(roles.device_users)
    assert set(val.test["event_id"]) | set(val.train["event_id"]) == set(test.train["event_id"])  # train alone, all of it
    shared = test.train[test.train["user_id"].isin(roles.sharing_users)]
    assert set(shared["event_id"]) <= set(val.train["event_id"])  # the pool's users keep every training event
    assert val.manifest["holdout_users"] == len(roles.device_users)
    carved = PreparedDataset(split_data(grid, tmp_path / "g", "val"))  # the plain validation holds out everyone's
    assert set(carved.test["user_id"]) > set(roles.device_users)


def test_the_held_out_users_follow_the_pool_roles_of_the_config(tmp_path, capsys):
    config_file = tmp_path / "tiny.toml"
    config_file.write_text(TINY)
    grid = Grid(config_file, (0,), ())
    before = set(PreparedDataset(split_data(grid, tmp_path / "g", "val-devices")).test["user_id"])
    config_file.write_text(TINY + '[pool]\nsalt = "other"\n')  # other roles: the old carve must not be reused
    after = PreparedDataset(split_data(grid, tmp_path / "g", "val-devices"))
    assert set(after.test["user_id"]) != before and after.manifest["holdout"]["salt"] == "other"
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text(f'config = "{config_file}"\nseeds = [0]\n[[variant]]\nname = "more sharing"\n'
                         'set = ["pool.share_fraction=0.8"]\n')
    assert main(["--grid", str(grid_file), "--out", str(tmp_path / "g")]) == 2
    assert ("coda_experiment: error: variant 'more sharing' changes [pool], so its device users are not the ones "
            "--split val-devices holds out; run it with --split val") in capsys.readouterr().err


def test_the_prepared_test_split_is_never_replaced_under_a_grids_results(tmp_path):
    config_file = tmp_path / "tiny.toml"
    config_file.write_text(TINY)
    grid = Grid(config_file, (0,), ())
    test = split_data(grid, tmp_path / "g", "test")
    before = (test / "train.parquet").read_bytes()
    assert split_data(grid, tmp_path / "g", "test") == test  # the same settings: reused
    config_file.write_text(TINY + "[data]\ntest_fraction = 0.3\n")
    with pytest.raises(RecflError, match=r"other data settings .*\(data\.test_fraction: 0\.2 -> 0\.3\); use another --out"):
        split_data(grid, tmp_path / "g", "val-devices")
    config_file.write_text(TINY.replace("users = 120", "users = 130"))  # the generator's sizes are the source
    with pytest.raises(RecflError, match=r"synthetic: .*'users': 120.* -> .*'users': 130"):
        split_data(grid, tmp_path / "g", "test")
    assert (test / "train.parquet").read_bytes() == before


@pytest.mark.parametrize("path", ["{d}", "{d}/", "{d}/u.data", "{rel}"])
def test_any_spelling_of_the_same_source_reuses_the_prepared_split(tmp_path, fixtures, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(fixtures / "ml100k")
    config_file = tmp_path / "c.toml"
    grid = Grid(config_file, (0,), ())
    config_file.write_text(f'[data]\nformat = "movielens-100k"\npath = "{fixtures / "ml100k"}"\n')
    test = split_data(grid, tmp_path / "g", "test")
    config_file.write_text(f'[data]\nformat = "movielens-100k"\npath = "{path.format(d=fixtures / "ml100k", rel="./data//")}"\n')
    assert split_data(grid, tmp_path / "g", "test") == test
    config_file.write_text(f'[data]\nformat = "movielens-100k"\npath = "{fixtures / "ml1m"}"\n')
    with pytest.raises(RecflError, match=r"data\.path: .*ml100k' -> .*ml1m'"):
        split_data(grid, tmp_path / "g", "test")


@pytest.mark.parametrize("manifest", ["{}", "[]", "null", '{"source": "synthetic"}', "{not json"])
def test_a_damaged_prepared_split_is_one_line_and_left_alone(tmp_path, capsys, manifest):
    (tmp_path / "tiny.toml").write_text(TINY)
    grid = tmp_path / "grid.toml"
    grid.write_text(f'config = "{tmp_path / "tiny.toml"}"\nseeds = [0]\n[[variant]]\nname = "defaults"\n')
    split_data(Grid.read(grid), tmp_path / "g", "test")
    (tmp_path / "g" / "test-data" / "manifest.json").write_text(manifest)
    assert main(["--grid", str(grid), "--out", str(tmp_path / "g"), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("coda_experiment: error: ")
    assert err.rstrip().endswith(f"(here: delete {tmp_path / 'g' / 'test-data'} and run the grid again, or use another --out)")
    assert (tmp_path / "g" / "test-data" / "manifest.json").read_text() == manifest


def test_a_setting_the_split_does_not_read_is_no_change(tmp_path):
    config_file = tmp_path / "tiny.toml"
    loo = TINY + '[data]\nsplit = "leave_one_out"\nnegatives = 5\n'
    config_file.write_text(loo)
    grid = Grid(config_file, (0,), ())
    test = split_data(grid, tmp_path / "g", "test")
    config_file.write_text(loo + "test_fraction = 0.5\n")  # leave-one-out holds out one event whatever it says
    assert split_data(grid, tmp_path / "g", "test") == test


def test_two_grids_never_write_one_out_folder_at_once(tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(TINY)
    grid, out = tmp_path / "grid.toml", tmp_path / "g"
    grid.write_text(f'config = "{tmp_path / "tiny.toml"}"\nseeds = [0]\n[[variant]]\nname = "defaults"\n')
    with held_elsewhere(out, "coda_experiment"):  # another grid holds it
        assert main(["--grid", str(grid), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"coda_experiment: error: {out} is in use by another coda_experiment; "
                                               "wait for it to finish or use another --out")
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing prepared or run


def test_a_fault_of_the_machine_is_one_line(tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(TINY)
    grid, blocker = tmp_path / "grid.toml", tmp_path / "a-file"
    grid.write_text(f'config = "{tmp_path / "tiny.toml"}"\nseeds = [0]\n[[variant]]\nname = "defaults"\n')
    blocker.write_text("")
    assert main(["--grid", str(grid), "--out", str(blocker / "grid")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"coda_experiment: error: Not a directory: {blocker / 'grid'}" in err


def test_a_failed_tree_copy_is_one_line_naming_the_first_file():
    failures = [(f"/a/{k}", f"/b/{k}", "[Errno 28] No space left on device") for k in range(3)]
    assert os_error_line(shutil.Error(failures)) == ("copying /a/0 to /b/0: [Errno 28] No space left on device "
                                                     "(and 2 more files)")
    assert os_error_line(FileNotFoundError(2, "No such file or directory", "/x")) == "No such file or directory: /x"


def test_a_bad_grid_is_one_line(tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text('config = "x.toml"\n')
    assert main(["--grid", str(grid), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"coda_experiment: error: --grid {grid}: no [[variant]] tables"


def test_the_grid_wide_set_comes_before_each_variants_own(tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text('config = "x.toml"\nset = ["finetune.votes=0.0"]\n[[variant]]\nname = "a"\n'
                    '[[variant]]\nname = "b"\nset = ["finetune.votes=2.0"]\n')
    assert [v.sets for v in Grid.read(grid).variants] == [("finetune.votes=0.0",), ("finetune.votes=0.0", "finetune.votes=2.0")]
    grid.write_text('config = "x.toml"\nset = "finetune.votes=0.0"\n[[variant]]\nname = "a"\n')
    assert main(["--grid", str(grid), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"coda_experiment: error: --grid {grid}: set must be a list of KEY=VALUE strings"


def test_a_variant_with_a_bad_setting_stops_the_grid_before_anything_runs(tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(TINY)
    grid = tmp_path / "grid.toml"
    grid.write_text(f'config = "{tmp_path / "tiny.toml"}"\n[[variant]]\nname = "ok"\n'
                    '[[variant]]\nname = "bad"\nset = ["finetune.votes=-3"]\n')
    assert main(["--grid", str(grid), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == "coda_experiment: error: config: finetune.votes = -3.0 must be in [0, 100]"
    assert not (tmp_path / "o").exists()


def test_the_table_names_any_metric():
    row = {"variant": "v", "control": "cloud", "arm": "coda", "hr@10": 0.25, "lift": 0.01, "ci_low": -0.01,
           "ci_high": 0.03, "per_seed": [0.01, 0.02], "users": 9}
    text = markdown(pd.DataFrame([row]), "hr@10", "val", (0, 1))
    assert "| v | coda | 0.2500 | cloud | +0.0100 [-0.0100, +0.0300] | +0.0100 / +0.0200 | 9 |" in text


def test_every_shipped_grid_names_a_valid_config_and_valid_settings():
    grids = sorted((Path(__file__).parents[1] / "configs" / "grids").glob("*.toml"))
    assert len(grids) >= 2
    for path in grids:
        grid = Grid.read(path)
        check_variants(replace(grid, config=Path(__file__).parents[1] / grid.config))


def test_agreement_counts_each_distinct_lift_once_and_measures_both_splits():
    def table(lifts):
        return pd.DataFrame([{"variant": v, "control": c, "arm": a, "lift": x} for (v, c, a), x in lifts.items()])

    val = table({("a", "cloud", "coda"): 0.01, ("b", "cloud", "coda"): 0.02, ("c", "cloud", "coda"): 0.04,
                 ("a", "cloud", "fedavg"): 0.03, ("b", "cloud", "fedavg"): 0.03,  # unchanged by the variant: once
                 ("a", "local", "coda"): 0.01, ("b", "local", "coda"): -0.01, ("only-val", "cloud", "coda"): 0.5,
                 ("a", "cloud", "local"): 0.05, ("a", "local", "cloud"): -0.05})  # the mirror of local vs cloud: left out
    test = table({("a", "cloud", "coda"): 0.005, ("b", "cloud", "coda"): 0.01, ("c", "cloud", "coda"): 0.02,
                  ("a", "cloud", "fedavg"): -0.01, ("b", "cloud", "fedavg"): -0.01,
                  ("a", "local", "coda"): 0.002, ("b", "local", "coda"): 0.003, ("a", "cloud", "local"): 0.02, ("a", "local", "cloud"): -0.02})
    pairs, stats = agreement(val, test)
    assert len(pairs) == 7 and "only-val" not in set(pairs["variant"])
    cloud, local = stats.set_index("control").loc["cloud"], stats.set_index("control").loc["local"]
    x, y = np.array([0.01, 0.02, 0.04, 0.03, 0.05]), np.array([0.005, 0.01, 0.02, -0.01, 0.02])
    assert cloud["lifts"] == 5 and cloud["sign_agrees"] == 4
    assert cloud["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1]) and cloud["slope"] == pytest.approx(np.polyfit(x, y, 1)[0])
    assert cloud["spearman"] == pytest.approx(spearmanr(x, y).correlation)
    assert local["lifts"] == 2 and local["sign_agrees"] == 1 and np.isnan(local["pearson"])  # too few to correlate
    text = agreement_markdown(pairs, stats, "gauc")
    assert "| cloud | 5 |" in text and "4 of 5 |" in text and "| b | coda | local | -0.0100 | +0.0030 |" in text


@pytest.mark.parametrize("text,message", [
    ("", "No columns to parse"), ("x,y\n1,2\n", "not a results table (no arm, control, lift, variant column)"),
    ("variant,control,arm,lift\na,cloud,coda,0.1\nb,cloud,coda,high\n", "row 3 has no numeric lift"),
])
def test_a_damaged_results_table_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "results.csv"
    path.write_text(text)
    with pytest.raises(RecflError, match=re.escape(message)):
        read_results(path)
