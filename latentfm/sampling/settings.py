"""One typed description of how to sample, validated once; every caller passes it through.

The library default is midpoint at 8 NFE without guidance: on the Fashion-MNIST models of BENCHMARKS.md it had
the lowest Fréchet distance of the 8-NFE solvers (0.80 against Euler's 0.92 and Heun's 2.47 for the DiT;
0.50 against Euler's 0.61 for the UNet, both with guidance 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import Field, asdict, dataclass, field, fields, replace
from typing import Any

from latentfm.errors import LatentFMError
from latentfm.sampling.program import SearchedSchedule, schedule_from_text
from latentfm.sampling.schedules import Schedule, explicit_steps
from latentfm.sampling.solvers import FIXED_SOLVERS, turbo_rules

ADAPTIVE_SOLVERS = ("dopri5",)
DEFAULT_SOLVER = "midpoint"
DEFAULT_NFE = 8
ADAPTIVE_TOLERANCE = 1e-5
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune")


def _setting(default: Any, kind: str, help: str, metavar: str | None = None, flag: bool = True) -> Any:
    """A field of ``SamplerSettings`` with what its readers need: ``kind`` says how a value is read from YAML,
    JSON or command-line text (``value_of``); ``help`` and ``metavar`` make its command-line flag."""
    metadata = {"kind": kind, "help": help, "metavar": metavar, "flag": flag}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class SamplerSettings:
    """Solver, budget, schedule and guidance of a sampling run: the one declaration of the sampler.

    The config's ``sample`` section (``from_values``), the evaluation report (``to_values``) and the command-line
    flags of ``sample``, ``eval`` and the other sampling commands (``latentfm.cli.options``) are all made from
    these fields; a new field with its ``_setting`` appears in each of them.

    Attributes:
        solver: a fixed-step solver (``euler``, ``heun``, ``midpoint``, ``rk4``, ``ab2``, ``ab3``, ``pc``), the
            stochastic ``sde``, ``fewstep`` (a model of ``latentfm train-fewstep``: one call per step, told the
            step) or the adaptive ``dopri5``; ignored when ``schedule`` is a ``SearchedSchedule`` (the whole recipe).
        nfe: a budget of velocity calls per sample (the largest step count that fits is used), or
        steps: a number of solver steps. With neither (and a named schedule) a fixed-step solver gets
            ``DEFAULT_NFE``.
        schedule: a named schedule (``uniform``, ``shift:S``, ``edm:RHO``, ``cosine``), an explicit list of times
            from 0 to 1, or a ``SearchedSchedule``.
        noise: the ``sde`` solver's noise strength ``H`` >= 0 (``sampling.solvers.sde_step``; 0: Euler).
        cfg: the classifier-free guidance weight (1: none).
        guidance_interval: ``(t_low, t_high)``: guidance only for t inside it, the conditional velocity alone
            elsewhere (Kynkäänniemi et al. 2024); None or ``(0, 1)``: everywhere.
        options: ``skip_last=True`` (Heun ends with an Euler step) or ``rtol``/``atol`` (dopri5).
        turbo: a FlowTurbo program ``H{n}P{m}R{k}`` (n Heun, m pseudo-corrector, k refiner steps on the named
            ``schedule``'s grid of n + m + k steps) instead of ``solver`` and a budget; refiner steps need a
            velocity refiner beside the model.
        compile: a ``torch.compile`` mode (``default``, ``reduce-overhead``: CUDA graphs, ``max-autotune``): each
            kind of step is compiled as a whole (guidance, network and update), once per kind and process.

    Example:
        >>> SamplerSettings().budget, SamplerSettings(solver="euler", steps=4).budget
        (8, None)
        >>> SamplerSettings(solver="dopri5", nfe=8)
        Traceback (most recent call last):
        ...
        latentfm.errors.LatentFMError: dopri5 is adaptive: give options rtol/atol, not steps, nfe or a schedule
    """

    solver: str = _setting(DEFAULT_SOLVER, "text", f"{', '.join(FIXED_SOLVERS)} or {', '.join(ADAPTIVE_SOLVERS)}")
    nfe: int | None = _setting(None, "count", "velocity evaluations per sample")
    steps: int | None = _setting(None, "count", "solver steps (instead of --nfe)")
    schedule: Schedule | SearchedSchedule = _setting(
        "uniform", "schedule", "uniform, shift:S, edm:RHO, cosine, a list 0,0.4,1 or a search-schedule JSON file"
    )
    noise: float = _setting(
        0.0,
        "number",
        "the sde solver's noise strength H: 0 is Euler, larger replaces more of the noise estimate",
        metavar="H",
    )
    cfg: float = _setting(1.0, "number", "classifier-free guidance weight, 1 = none")
    guidance_interval: tuple[float, float] | None = _setting(
        None, "interval", "guide only for t in [LOW, HIGH] (t = 0 is the noise), or all", metavar="LOW,HIGH"
    )
    options: dict[str, Any] = _setting(
        {}, "mapping", "skip_last (heun) or rtol, atol (dopri5); config only", flag=False
    )
    turbo: str | None = _setting(
        None,
        "text",
        "a FlowTurbo program, e.g. H1P5R3: n Heun, m pseudo-corrector and k refiner steps on the --schedule grid "
        "(replaces --solver/--nfe/--steps; refiner steps need --refiner)",
        metavar="HnPmRk",
    )
    compile: str | None = _setting(
        None,
        "text",
        "torch.compile each kind of sampling step as a whole (MODE: default, reduce-overhead, max-autotune)",
        metavar="MODE",
    )

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_MODES:
            modes = ", ".join(mode for mode in COMPILE_MODES if mode)
            raise LatentFMError(f"compile={self.compile!r} is not a torch.compile mode; use one of {modes}")
        self._check_noise()
        if self.turbo is not None:
            self._check_turbo()
            return
        self._check_solver()
        self._check_budget()
        self._check_options()
        self._check_guidance()

    def _check_noise(self) -> None:
        if not math.isfinite(self.noise) or self.noise < 0:
            raise LatentFMError(f"noise={self.noise} must be a finite number >= 0 (0: no noise, Euler)")
        if self.noise and (self.solver != "sde" or self.turbo is not None or self.searched):
            raise LatentFMError(f"noise={self.noise} is the sde solver's; give solver=sde, or noise=0")

    def _check_guidance(self) -> None:
        if not math.isfinite(self.cfg) or self.cfg < 0:
            raise LatentFMError(f"cfg={self.cfg} must be a finite number >= 0 (1 means no guidance)")
        low, high = self.guidance_interval or (0.0, 1.0)
        if not 0.0 <= low <= high <= 1.0:
            raise LatentFMError(f"guidance_interval={self.guidance_interval} must satisfy 0 <= low <= high <= 1")

    @property
    def budget(self) -> int | None:
        """The NFE budget a fixed-step solver spends: ``nfe``, or ``DEFAULT_NFE`` when neither ``steps`` nor an
        explicit schedule fixes the step count."""
        if self.fixed_step and self.nfe is None and self.steps is None and explicit_steps(self.schedule) is None:
            return DEFAULT_NFE
        return self.nfe

    @property
    def rules(self) -> list[str] | None:
        """The per-step rules of a turbo program (None otherwise)."""
        return None if self.turbo is None else turbo_rules(self.turbo)

    @property
    def searched(self) -> bool:
        """True when the schedule is a searched program (times and rules)."""
        return isinstance(self.schedule, SearchedSchedule)

    @property
    def adaptive(self) -> bool:
        """True for an adaptive solver (dopri5)."""
        return self.solver in ADAPTIVE_SOLVERS and not self.searched

    @property
    def fixed_step(self) -> bool:
        """True for a named fixed-step solver on a named or explicit schedule."""
        return not self.searched and not self.adaptive and self.turbo is None

    def with_(self, **changes: Any) -> SamplerSettings:
        """A copy with ``changes`` (validated again). A budget given here (``nfe`` or ``steps``) replaces the
        other; a change to an adaptive solver, an explicit or a searched schedule drops the old budget."""
        if changes.get("turbo") is not None:  # the program is the whole budget
            changes = {"solver": DEFAULT_SOLVER, "nfe": None, "steps": None, "options": {}, **changes}
        elif any(changes.get(name) is not None for name in ("solver", "nfe", "steps")) and "turbo" not in changes:
            changes["turbo"] = None
        if changes.get("steps") is not None and "nfe" not in changes:
            changes["nfe"] = None
        if changes.get("nfe") is not None and "steps" not in changes:
            changes["steps"] = None
        drops_budget = changes.get("solver") in ADAPTIVE_SOLVERS or not isinstance(changes.get("schedule", ""), str)
        if drops_budget:
            changes = {"nfe": None, "steps": None, **changes}
        if "solver" in changes and changes["solver"] not in ADAPTIVE_SOLVERS and self.adaptive:
            changes = {"options": {}, **changes}
        if changes.get("solver", "sde") != "sde" or changes.get("turbo") is not None:
            changes = {"noise": 0.0, **changes}  # the noise strength is the sde solver's
        return replace(self, **changes)

    def with_given(self, called: Callable[[str, Any], str] | None = None, **values: Any) -> SamplerSettings:
        """``with_`` of the ``values`` that are not None (command-line flags left out keep these settings), each
        read by ``value_of`` (text as the command line gives it, or a value as YAML and JSON hold it);
        ``called(name, value)`` says how an error names a bad one (default ``name=value``).

        Example:
            >>> SamplerSettings(cfg=2.0).with_given(nfe="4", cfg=None, guidance_interval="0.25,1")
            SamplerSettings(solver='midpoint', nfe=4, steps=None, schedule='uniform', noise=0.0, cfg=2.0, \
guidance_interval=(0.25, 1.0), options={}, turbo=None, compile=None)
            >>> SamplerSettings().with_given(lambda name, value: f"--{name} {value}", nfe="0")
            Traceback (most recent call last):
            ...
            latentfm.errors.LatentFMError: --nfe 0: must be at least 1
        """
        called = called or (lambda name, value: f"{name}={value!r}")
        read = {name: value_of(name, value, called(name, value)) for name, value in values.items() if value is not None}
        return self.with_(**read)

    @classmethod
    def from_values(cls, values: Any, where: str = "sample") -> SamplerSettings:
        """Settings from a mapping of field values, as a config's ``sample`` section or a report holds them
        (unset fields keep the defaults); an unknown key or a bad value is one line naming ``where.key``.

        Example:
            >>> SamplerSettings.from_values({"solver": "euler", "nfe": 4, "guidance_interval": [0.25, 1]}).budget
            4
            >>> SamplerSettings.from_values({"nfe": 0})
            Traceback (most recent call last):
            ...
            latentfm.errors.LatentFMError: config key sample.nfe=0: must be at least 1
        """
        if not isinstance(values, dict):
            raise LatentFMError(f"config key {where}: expected a mapping of sampler settings, got {values!r}")
        names = [item.name for item in fields(cls)]
        unknown = sorted(set(values) - set(names), key=str)
        if unknown:
            raise LatentFMError(f"unknown config key {where}.{unknown[0]}; valid keys here: {', '.join(names)}")
        read = {
            name: value_of(name, value, f"config key {where}.{name}={value!r}")
            for name, value in values.items()
            if value is not None
        }
        try:
            return cls(**read)
        except LatentFMError as error:
            raise LatentFMError(f"config key {where}: {error}") from None

    def to_values(self) -> dict[str, Any]:
        """These settings as plain YAML/JSON values (a searched schedule inline), read back by ``from_values``.

        Example:
            >>> values = SamplerSettings(schedule=[0, 0.5, 1.0], cfg=2.0).to_values()
            >>> values["schedule"], SamplerSettings.from_values(values).schedule
            ([0.0, 0.5, 1.0], [0.0, 0.5, 1.0])
        """
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        schedule = values["schedule"]
        if isinstance(schedule, SearchedSchedule):
            values["schedule"] = asdict(schedule)
        elif not isinstance(schedule, str):
            values["schedule"] = [float(t) for t in schedule]
        if values["guidance_interval"] is not None:
            values["guidance_interval"] = list(values["guidance_interval"])
        return {**values, "options": dict(values["options"])}

    def _check_turbo(self) -> None:
        turbo_rules(self.turbo)
        if self.solver in ("sde", "fewstep"):
            raise LatentFMError(f"turbo={self.turbo} is a program of Heun and refiner steps; it takes no {self.solver}")
        if self.nfe is not None or self.steps is not None or self.options:
            raise LatentFMError(
                f"turbo={self.turbo}: the program fixes the steps and NFE; give no nfe, steps or options"
            )
        if self.searched:
            raise LatentFMError(f"turbo={self.turbo} runs on a named or explicit grid, not a searched schedule")
        if explicit_steps(self.schedule) not in (None, len(turbo_rules(self.turbo))):
            raise LatentFMError(f"turbo={self.turbo} takes {len(turbo_rules(self.turbo))} steps; the schedule has more")
        self._check_guidance()

    def _check_solver(self) -> None:
        if not self.searched and self.solver not in FIXED_SOLVERS + ADAPTIVE_SOLVERS:
            known = ", ".join(FIXED_SOLVERS + ADAPTIVE_SOLVERS)
            raise LatentFMError(f"solver={self.solver!r} is unknown; use one of {known}")

    def _check_budget(self) -> None:
        if self.steps is not None and self.nfe is not None:
            raise LatentFMError("give either steps or an nfe budget, not both")
        for name in ("steps", "nfe"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise LatentFMError(f"{name}={value} must be at least 1")
        if self.adaptive and (self.steps is not None or self.nfe is not None or self.schedule != "uniform"):
            raise LatentFMError(f"{self.solver} is adaptive: give options rtol/atol, not steps, nfe or a schedule")

    def _check_options(self) -> None:
        allowed = set() if self.searched else {"rtol", "atol"} if self.adaptive else {"skip_last"}
        unknown = sorted(set(self.options) - allowed)
        if unknown:
            uses = "a searched schedule takes no options"
            if not self.searched:
                uses = f"{self.solver} takes {', '.join(sorted(allowed))}"
            raise LatentFMError(f"sampling option {unknown[0]!r} does not apply: {uses}")
        if self.options.get("skip_last") and self.solver != "heun":
            raise LatentFMError(f"skip_last applies to heun only, not {self.solver!r}")


def interval_from_text(text: str) -> tuple[float, float]:
    """A guidance interval as the command line gives it: ``LOW,HIGH`` or ``all`` (the whole of [0, 1]).

    Example:
        >>> interval_from_text("0.25,1"), interval_from_text("all")
        ((0.25, 1.0), (0.0, 1.0))
    """
    if text == "all":
        return (0.0, 1.0)
    try:
        low, high = (float(value) for value in text.split(","))
    except ValueError:
        raise LatentFMError("give LOW,HIGH such as 0.25,1, or all") from None
    return (low, high)


def interval_text(interval: tuple[float, float] | None) -> str:
    """A guidance interval as ``--guidance-interval`` writes it (``all`` for None or the whole of [0, 1]).

    Example:
        >>> interval_text((0.25, 1.0)), interval_text((0.0, 1.0)), interval_text(None)
        ('0.25,1', 'all', 'all')
    """
    if interval is None or tuple(interval) == (0.0, 1.0):
        return "all"
    return f"{interval[0]:g},{interval[1]:g}"


def command_line_fields() -> list[Field]:
    """The fields of ``SamplerSettings`` that are command-line flags (``--guidance-interval`` for
    ``guidance_interval``), with their ``help`` and ``metavar`` in ``metadata``."""
    return [item for item in fields(SamplerSettings) if item.metadata["flag"]]


def value_of(name: str, value: Any, called: str | None = None) -> Any:
    """The value of field ``name`` from command-line text or a YAML/JSON value, by the field's kind: a count
    (``"8"`` or 8), a number, text, a schedule (``schedule_from_text``, a list of times or a searched program's
    mapping), a guidance interval (``interval_from_text`` or two numbers) or a mapping of options. A bad value is
    one line that starts with ``called`` (default ``name=value``).

    Example:
        >>> value_of("nfe", "8"), value_of("schedule", "0,0.5,1"), value_of("guidance_interval", [0.25, 1])
        (8, [0.0, 0.5, 1.0], (0.25, 1.0))
        >>> value_of("cfg", "strong", "--cfg strong")
        Traceback (most recent call last):
        ...
        latentfm.errors.LatentFMError: --cfg strong: expected a number
    """
    try:
        return _read(SamplerSettings.__dataclass_fields__[name].metadata["kind"], value)
    except (LatentFMError, ValueError, TypeError) as error:
        raise LatentFMError(f"{called or f'{name}={value!r}'}: {error}") from None


def _read(kind: str, value: Any) -> Any:
    """``value`` as a field of ``kind`` holds it; raises with the reason alone."""
    if kind == "count":
        count = _parsed(int, value, "a whole number") if isinstance(value, str) else value
        if isinstance(count, bool) or not isinstance(count, int):
            raise LatentFMError("expected a whole number")
        if count < 1:
            raise LatentFMError("must be at least 1")
        return count
    if kind == "number":
        number = _parsed(float, value, "a number") if isinstance(value, str) else value
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise LatentFMError("expected a number")
        return float(number)
    if kind == "schedule":
        return _schedule_of(value)
    if kind == "interval":
        if isinstance(value, str):
            return interval_from_text(value)
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise LatentFMError("expected LOW,HIGH or a list of two numbers")
        return (float(value[0]), float(value[1]))
    expected = dict if kind == "mapping" else str
    if not isinstance(value, expected):
        raise LatentFMError(f"expected {'a mapping' if kind == 'mapping' else 'text'}")
    return value


def _parsed(read: type, text: str, what: str) -> Any:
    try:
        return read(text)
    except ValueError:
        raise LatentFMError(f"expected {what}") from None


def _schedule_of(value: Any) -> Schedule | SearchedSchedule:
    """A schedule from text, a list of times, or a searched program's mapping (as ``to_values`` writes it)."""
    if isinstance(value, SearchedSchedule):
        return value
    if isinstance(value, str):
        return schedule_from_text(value)
    if isinstance(value, dict):
        return SearchedSchedule(**value)
    if isinstance(value, (list, tuple)) and all(isinstance(t, (int, float)) for t in value):
        return [float(t) for t in value]
    raise LatentFMError("expected a name, a list of times or a searched program")
