"""The typed arm registry (``recfl.core.arms``): lookups, and the pipeline and ``recfl personalize`` built from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from recfl.app import api
from recfl.app.cli import build_parser
from recfl.app.pipeline import RunContext, stages
from recfl.app.sections import load_config
from recfl.core.arms import ARMS, CODA, CONTROL, DEVICE_ARMS, Arm, arm_named, names
from recfl.core.errors import RecflError
from recfl.core.federated.process import ALGORITHMS


def test_lookup_by_name_and_a_clear_error_listing_the_choices():
    assert all(arm_named(arm.name) is arm for arm in ARMS)
    assert arm_named("coda", DEVICE_ARMS) is CODA and CODA.personalized and CODA.candidates and CODA.filtered
    with pytest.raises(RecflError, match=r"^unknown arm 'coda-filter'; choose one of cloud, fedavg, fedsubavg, local, "
                                         r"coda-nofilter, coda$"):
        arm_named("coda-filter")
    with pytest.raises(RecflError, match=r"^unknown arm 'fedavg'; choose one of cloud, local, coda-nofilter, coda$"):
        arm_named("fedavg", DEVICE_ARMS)


def test_an_inconsistent_arm_is_refused():
    with pytest.raises(ValueError, match="only a personalized arm takes candidates"):
        Arm("scored", model="cloud_model", candidates=True)
    with pytest.raises(ValueError, match="only one with candidates filters"):
        Arm("filtered-alone", filtered=True)


@pytest.mark.parametrize("start", ["cloud_model", "fedsubavg"])
def test_the_pipeline_has_one_stage_per_arm_reading_what_its_properties_say(start):
    pipeline = {stage.name: stage for stage in stages(start)}
    assert [name for name in pipeline if name.startswith("arm-")] == [f"arm-{name}" for name in names(ARMS)]
    assert pipeline["ab"].depends == tuple(f"arm-{name}" for name in names(ARMS))
    assert {arm.model for arm in ARMS if arm.model in ALGORITHMS} == set(ALGORITHMS)  # each federated model is an arm
    ctx = RunContext(Path("unused"), load_config(None, []))
    for arm in ARMS:
        stage = pipeline[f"arm-{arm.name}"]
        assert stage.depends[0] == (start if arm.personalized else arm.model) and stage.depends[0] in pipeline
        assert ("candidates" in stage.depends) == arm.candidates
        settings = stage.settings(ctx)
        assert ("finetune" in settings, "filter" in settings) == (arm.personalized, arm.filtered)


def test_personalize_offers_the_device_arms_and_the_api_refuses_another_before_any_work(capsys, tmp_path):
    assert names(DEVICE_ARMS) == ("cloud", "local", "coda-nofilter", "coda") and DEVICE_ARMS[0] is CONTROL
    with pytest.raises(SystemExit):
        build_parser().parse_args(["personalize", "--help"])
    assert f"--arm {{{','.join(names(DEVICE_ARMS))}}}" in capsys.readouterr().out
    with pytest.raises(RecflError, match="unknown arm 'fedsubavg'; choose one of cloud, local, coda-nofilter, coda"):
        api.personalize(None, tmp_path / "no-model", "fedsubavg", tmp_path / "pred.parquet")
    assert not any(tmp_path.iterdir())
