"""SamplerSettings is the one declaration of the sampler: the config's ``sample`` section, the command-line flags,
the evaluation settings and the reports are all made from its fields."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

import pytest

from latentfm.cli.app import build_parser
from latentfm.cli.options import add_sampler_arguments, sampler_settings
from latentfm.config import config_to_dict, load_config
from latentfm.errors import LatentFMError
from latentfm.evaluation import EvalSettings
from latentfm.sampling import SamplerSettings, SearchedSchedule, command_line_fields

# One value per field, none of them a default, as the command line writes it and as the settings hold it.
TEXT = {
    "solver": ("heun", "heun"),
    "nfe": ("6", 6),
    "schedule": ("shift:3", "shift:3"),
    "cfg": ("2.5", 2.5),
    "guidance_interval": ("0.25,1", (0.25, 1.0)),
    "compile": ("max-autotune", "max-autotune"),
}
SAMPLING_COMMANDS = ("sample", "inpaint", "upsample", "eval")


def test_every_field_is_declared_with_how_it_is_read():
    for item in fields(SamplerSettings):
        assert item.metadata["kind"] and item.metadata["help"], f"declare {item.name} with _setting"


@pytest.mark.parametrize("command", SAMPLING_COMMANDS)
def test_every_command_line_field_is_a_flag_of_every_sampling_command(command):
    parser = build_parser()
    help_text = parser._subparsers._group_actions[0].choices[command].format_help()
    for item in command_line_fields():
        assert f"--{item.name.replace('_', '-')}" in help_text, f"{command} lacks the flag of {item.name}"


def test_flags_reach_the_settings_field_by_field():
    parser = argparse.ArgumentParser()
    add_sampler_arguments(parser)
    argv = [arg for name, (text, _) in TEXT.items() for arg in (f"--{name.replace('_', '-')}", text)]
    settings = sampler_settings(parser.parse_args(argv), SamplerSettings())
    assert {name: getattr(settings, name) for name in TEXT} == {name: value for name, (_, value) in TEXT.items()}
    untouched = sampler_settings(parser.parse_args([]), SamplerSettings(cfg=3.0, solver="euler"))
    assert untouched == SamplerSettings(cfg=3.0, solver="euler")  # flags left out keep the recipe


def test_turbo_and_steps_flags():
    parser = argparse.ArgumentParser()
    add_sampler_arguments(parser)
    assert sampler_settings(parser.parse_args(["--steps", "3"]), SamplerSettings()).steps == 3
    assert sampler_settings(parser.parse_args(["--turbo", "H1P2R0"]), SamplerSettings(nfe=4)).rules is not None
    with pytest.raises(LatentFMError, match="--turbo H1P2R0 is a whole sampler: drop --nfe"):
        sampler_settings(parser.parse_args(["--turbo", "H1P2R0", "--nfe", "4"]), SamplerSettings())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nfe", "0"], "--nfe 0: must be at least 1"),
        (["--nfe", "eight"], "--nfe eight: expected a whole number"),
        (["--cfg", "strong"], "--cfg strong: expected a number"),
        (["--guidance-interval", "0.2"], "--guidance-interval 0.2: give LOW,HIGH such as 0.25,1, or all"),
        (["--schedule", "0,x,1"], "--schedule 0,x,1: a list of times looks like 0,0.3,0.7,1"),
        (["--solver", "leapfrog"], "solver='leapfrog' is unknown"),
    ],
)
def test_a_bad_flag_is_one_line_naming_it(argv, message):
    parser = argparse.ArgumentParser()
    add_sampler_arguments(parser)
    with pytest.raises(LatentFMError) as error:
        sampler_settings(parser.parse_args(argv), SamplerSettings())
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_the_config_section_is_the_settings_and_round_trips():
    overrides = [f"sample.{name}={text}" for name, (text, _) in TEXT.items()]
    config = load_config(None, [*overrides, "sample.options={skip_last: true}"])
    assert isinstance(config.sample, SamplerSettings)
    assert {name: getattr(config.sample, name) for name in TEXT} == {name: v for name, (_, v) in TEXT.items()}
    assert config.sample.options == {"skip_last": True}
    again = load_config(
        None, [f"sample.{key}={json.dumps(value)}" for key, value in config_to_dict(config)["sample"].items()]
    )
    assert again.sample == config.sample


def test_a_searched_schedule_is_written_inline_and_read_back():
    program = SearchedSchedule(times=[0.0, 0.4, 1.0], rules=["euler", "heun"], nfe=3)
    settings = SamplerSettings(schedule=program, cfg=2.0)
    values = settings.to_values()
    assert values["schedule"]["rules"] == ["euler", "heun"]
    assert SamplerSettings.from_values(values) == settings


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sample.bogus=1", "unknown config key sample.bogus; valid keys here: solver, nfe"),
        ("sample.nfe=0", "config key sample.nfe=0: must be at least 1"),
        ("sample.cfg=strong", "config key sample.cfg='strong': expected a number"),
        ("sample.solver=leapfrog", "config key sample: solver='leapfrog' is unknown"),
        ("sample.options=3", "config key sample.options=3: expected a mapping"),
    ],
)
def test_a_bad_sample_key_names_itself(override, message):
    with pytest.raises(LatentFMError, match=message.replace("(", r"\(")):
        load_config(None, [override])


def test_the_old_per_class_key_still_loads():
    config = load_config(None, ["sample.per_class=3", "sample.nfe=4"])
    assert config.train.sample_per_class == 3 and config.sample.nfe == 4


def test_eval_settings_hold_one_sampler():
    settings = EvalSettings("runs/r", "ref.npz", "clf.safetensors", SamplerSettings(solver="euler", nfe=4))
    values = settings.to_values()
    assert values["sampler"] == SamplerSettings(solver="euler", nfe=4).to_values()
    assert not {item.name for item in fields(SamplerSettings)} & set(values), "sampler fields live in sampler only"
