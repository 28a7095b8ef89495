import argparse
import dataclasses

import pytest

from iobs.config import add_arguments, csv_list, from_args, from_dict, option, to_dict


@dataclasses.dataclass
class Cfg:
    model: str = option(help="model name", positional=True)
    method: str = option("sparsegpt", "how to prune", choices=("sparsegpt", "wanda"))
    sparsity: float | None = option(None, "fraction pruned", exclusive="target")
    pattern: str | None = option(None, "N:M", exclusive="target")
    nsamples: int = option(32, "calibration sequences", group="calibration")
    per_row: bool = option(False, "per row")
    resume: bool = option(True, "reuse finished blocks")
    eval: list[str] = option(default_factory=list, help="corpora", parse=csv_list)
    lr: float = option(5e-5, "step size", cli_default=None)
    hidden: int = option(7, cli=False)


def _parse(argv):
    p = argparse.ArgumentParser()
    add_arguments(p, Cfg)
    return from_args(Cfg, p.parse_args(argv)), p


def test_defaults_come_from_the_dataclass_only():
    cfg, _ = _parse(["m"])
    assert cfg == Cfg(model="m")


def test_values_switches_lists_and_types():
    cfg, _ = _parse(["m", "--method", "wanda", "--pattern", "2:4", "--nsamples", "8", "--per-row",
                     "--no-resume", "--eval", "a,b,", "--lr", "0.1"])
    assert (cfg.method, cfg.pattern, cfg.sparsity, cfg.nsamples) == ("wanda", "2:4", None, 8)
    assert cfg.per_row is True and cfg.resume is False and cfg.eval == ["a", "b"] and cfg.lr == 0.1
    assert isinstance(cfg.nsamples, int) and cfg.hidden == 7


def test_choices_and_exclusive_groups_are_enforced(capsys):
    with pytest.raises(SystemExit):
        _parse(["m", "--method", "obs"])
    with pytest.raises(SystemExit):
        _parse(["m", "--sparsity", "0.5", "--pattern", "2:4"])
    with pytest.raises(SystemExit):
        _parse(["m", "--hidden", "3"])
    assert "invalid choice" in capsys.readouterr().err


def test_help_shows_the_dataclass_default_and_groups():
    _, p = _parse(["m"])
    text = p.format_help()
    assert "(default 32)" in text and "calibration:" in text and "--no-resume" in text
    assert "default sparsegpt" in text
    assert "(default True)" not in text  # a switch shows no default


def test_help_shows_a_zero_default():
    @dataclasses.dataclass
    class Seeded:
        seed: int = option(0, "random seed")

    p = argparse.ArgumentParser()
    add_arguments(p, Seeded)
    assert "random seed (default 0)" in p.format_help()


def test_dict_round_trip_and_unknown_keys():
    cfg = Cfg(model="m", eval=["x"])
    assert from_dict(Cfg, to_dict(cfg)) == cfg
    with pytest.raises(ValueError, match=r"unknown Cfg fields \['bogus'\]; allowed"):
        from_dict(Cfg, {"model": "m", "bogus": 1})
