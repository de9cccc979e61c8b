"""Typed, validated, content-hashed configurations.

Every experiment is described by a :class:`RunConfig` made of small frozen dataclasses
(one per concern: task, model, optimiser). Each field is checked when the object is built,
so a bad notebook parameter stops the notebook before any work starts, with one message
that names the parameter and what is allowed. The content hash of the resolved config
names the run's folder in the run store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Optional, Union

import numpy as np


class ConfigError(ValueError):
    """A parameter has a wrong name, type or value. The message names it."""


# --------------------------------------------------------------------------------------
# Field constraints: each is a predicate plus the words that say what is allowed.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    ok: Callable[[Any], bool]
    allowed: str


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


def _finite_float(value: numbers.Real) -> bool:
    """Whether a float holds ``value`` and it is finite (an int too large for a float is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def interval(lo: float | None = None, hi: float | None = None, *, lo_open=False, hi_open=False) -> Check:
    """Finite numbers between ``lo`` and ``hi`` (None: unbounded). NaN fails every comparison,
    so it is refused by name, and so are infinities."""

    def ok(v):
        if not (isinstance(v, int) or math.isfinite(v)):  # isfinite overflows on a huge int
            return False
        if lo is not None and (v < lo or (lo_open and v == lo)):
            return False
        if hi is not None and (v > hi or (hi_open and v == hi)):
            return False
        return True

    left = "(" if lo_open or lo is None else "["
    right = ")" if hi_open or hi is None else "]"
    lo_s = "-inf" if lo is None else f"{lo:g}"
    hi_s = "inf" if hi is None else f"{hi:g}"
    return Check(ok, f"a number in {left}{lo_s}, {hi_s}{right}")


POSITIVE = interval(0, None, lo_open=True)
NON_NEGATIVE = interval(0, None)
FRACTION = interval(0, 1, lo_open=True, hi_open=True)
#: Hex digits of a config's hash in its run folder's name.
HASH_CHARS = 10
#: The longest run name in UTF-8 bytes: the folder <name>-<hash> must fit a file name (255 bytes on
#: the usual file systems; the store adds nothing to it, its files go inside).
MAX_RUN_NAME_BYTES = 255 - 1 - HASH_CHARS
# A run's folder is <name>-<hash> inside the run store, and must stay inside it. Printable first:
# a lone surrogate cannot be encoded to count its bytes, and a NUL or a newline makes no file name.
RUN_NAME = Check(
    lambda v: bool(v)
    and v.isprintable()
    and len(v.encode()) <= MAX_RUN_NAME_BYTES
    and not any(c in v for c in "/\\")
    and not v.startswith("."),
    f"a non-empty printable label of at most {MAX_RUN_NAME_BYTES} bytes (UTF-8) without '/' or '\\'"
    " that does not start with '.'",
)


def one_of(*values) -> Check:
    return Check(lambda v: v in values, "one of " + ", ".join(repr(v) for v in values))


def spec_field(default=dataclasses.MISSING, *, check: Check | None = None, doc: str = "", **kw):
    """A dataclass field carrying a constraint and a one-line description."""
    meta = {"check": check, "doc": doc}
    if default is dataclasses.MISSING:
        return field(metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


# --------------------------------------------------------------------------------------
# Type checking from annotations (enough for the plain types configs use).
# --------------------------------------------------------------------------------------


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        inner = _type_name(args[0]) if args else "values"
        return f"a tuple/list of {inner}"
    if origin is dict or tp is dict:
        return "a dict"
    if tp is type(None):
        return "None"
    return {int: "an integer", float: "a number", str: "a string", bool: "True/False"}.get(tp, getattr(tp, "__name__", str(tp)))


class FrozenDict(dict):
    """A dict that cannot be changed once made, and hashes by its items: a config's ``sweep`` and
    ``groups``. A config is frozen and named by the hash of its contents; a dict inside it that
    could still change would change a run's settings behind that name, and ``replace`` would
    share it between configs. A plain dict otherwise (JSON, ``==``, ``isinstance``)."""

    def _read_only(self, *args, **kwargs):
        raise TypeError("a config's sweep and groups cannot be changed: make a new config with .replace(...)")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only

    def __hash__(self):
        return hash(tuple(sorted(self.items())))

    def __reduce__(self):  # pickle and copy: rebuilt whole, not item by item
        return type(self), (dict(self),)


def as_list(value) -> list | None:
    """``value`` as a list if it is a list, tuple, range or 1-D NumPy array, else None.

    An array's numbers become Python's (``tolist``), so that the config is written and hashed
    exactly as if the list had been typed. An array of another shape raises TypeError: its
    rows are not the values meant.
    """
    if isinstance(value, (list, tuple, range)):
        return list(value)
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise TypeError(f"a {value.ndim}-D array")
        return value.tolist()
    return None


def _coerce(value, tp):
    """Return ``value`` as type ``tp`` if it is acceptable, else raise TypeError.

    Lenient only where no information is lost: an int (NumPy's too) where an int or a float
    is expected, a NumPy float where a float is, and a list, range or 1-D NumPy array where a
    tuple is expected (YAML and papermill give lists, NumPy gives arrays).
    """
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise TypeError
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg)
            except TypeError:
                continue
        raise TypeError
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if origin is tuple:
        items = as_list(value)
        if items is None:
            raise TypeError
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner) for v in items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise TypeError
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:  # NumPy's integers too (bool is an int, but not what an int field means)
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        raise TypeError
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):  # NumPy's floats too
            try:
                return float(value) + 0.0  # -0.0 as 0.0: equal configs, one hash
            except OverflowError:  # an int beyond float's range: the right type, a value not allowed
                raise ValueError("too large for a float") from None
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if isinstance(tp, type) and issubclass(tp, Spec):
        if isinstance(value, tp):
            return value
        raise TypeError
    return value


class Spec:
    """Base of every config dataclass: validates fields on construction, serialises.

    Subclasses are frozen dataclasses. ``kind`` (the class name) is written into the
    serialised form so that a config read back from ``config.json`` is typed again.
    """

    registry: ClassVar[dict[str, type]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        Spec.registry[cls.__name__] = cls

    def __new__(cls, *args, **kwargs):
        # Before the dataclass's __init__, whose TypeError for a misspelt name lists nothing.
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in kwargs if key not in names]
        if unknown:
            raise ConfigError(
                f"{', '.join(map(repr, unknown))} is not a parameter of {cls.__name__}: allowed: {', '.join(names)}"
            )
        return super().__new__(cls)

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                value = _coerce(value, hints[f.name])
            except TypeError as e:
                if typing.get_origin(hints[f.name]) is Literal:  # a value of the right type, but not one allowed
                    raise ConfigError(f"{f.name} = {value!r} is not allowed: must be {_type_name(hints[f.name])}") from None
                why = f", not {e}" if str(e) else ""  # e.g. an array of the wrong shape
                raise ConfigError(
                    f"{f.name} = {value!r} has the wrong type: expected {_type_name(hints[f.name])}{why}"
                ) from None
            except ValueError as e:
                raise ConfigError(f"{f.name} = {value!r} is not allowed: {e}") from None
            object.__setattr__(self, f.name, value)
            check = f.metadata.get("check")
            if check is not None and value is not None and not check.ok(value):
                raise ConfigError(f"{f.name} = {value!r} is not allowed: must be {check.allowed}")
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; override where a class needs them."""

    # -- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        out: dict[str, Any] = {"kind": type(self).__name__}
        for f in dataclasses.fields(self):
            out[f.name] = _to_plain(getattr(self, f.name))
        return out

    @staticmethod
    def from_dict(d: dict) -> "Spec":
        d = dict(d)
        cls = Spec.registry[d.pop("kind")]
        kwargs = {k: (Spec.from_dict(v) if isinstance(v, dict) and "kind" in v else v) for k, v in d.items()}
        return cls(**cls.upgrade(kwargs))

    @classmethod
    def upgrade(cls, fields: dict) -> dict:
        """A stored config's fields in this version's names (runs written by an older grokcore)."""
        return fields

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @classmethod
    def describe(cls) -> str:
        """One line per parameter: name, type, default and what is allowed."""
        hints = typing.get_type_hints(cls)
        lines = []
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = repr(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = repr(f.default_factory())
            else:
                default = "required"
            check = f.metadata.get("check")
            allowed = f"; {check.allowed}" if check else ""
            lines.append(f"{f.name}: {_type_name(hints[f.name])} = {default}{allowed}. {f.metadata.get('doc', '')}".rstrip())
        return "\n".join(lines)


def _to_plain(v):
    if isinstance(v, Spec):
        return v.to_dict()
    if isinstance(v, tuple):
        return [_to_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _to_plain(x) for k, x in v.items()}
    return v


# --------------------------------------------------------------------------------------
# Optimiser
# --------------------------------------------------------------------------------------


def in_module(name: str, prefix: str) -> bool:
    """Whether parameter ``name`` is the one ``prefix`` names or inside the module it names:
    "blocks.1" holds blocks.1.* but not blocks.10.*, and a trailing dot changes nothing."""
    module = prefix.rstrip(".")
    return name == module or name.startswith(module + ".")


@dataclass(frozen=True)
class AdamW(Spec):
    """AdamW (decoupled weight decay, Loshchilov & Hutter) with a linear warm-up.

    With ``weight_decay = 0`` this is Adam. The learning rate of step t (counted from 0) is
    ``lr * min(1, t / warmup_steps)``, as ``LambdaLR(lambda t: min(t / 10, 1))`` in the
    reference codes (so step 0 only fills Adam's moments).
    """

    lr: float = spec_field(1e-3, check=POSITIVE, doc="learning rate")
    weight_decay: float = spec_field(1.0, check=NON_NEGATIVE, doc="decoupled weight decay")
    betas: tuple[float, ...] = spec_field((0.9, 0.98), doc="Adam (beta1, beta2), each in [0, 1)")
    eps: float = spec_field(1e-8, check=POSITIVE, doc="Adam epsilon")
    warmup_steps: int = spec_field(10, check=NON_NEGATIVE, doc="linear learning-rate warm-up")
    groups: dict = spec_field(
        default_factory=dict,
        doc="per parameter-name prefix, fixed lr / weight_decay, e.g. {'embed': {'lr': 1e-3, 'weight_decay': 0.0}};"
        " the other parameters use (and sweeps change) lr and weight_decay",
    )

    def validate(self):
        for prefix, overrides in self.groups.items():
            if not isinstance(prefix, str) or not prefix.strip("."):
                raise ConfigError(f"groups key {prefix!r} is not allowed: must be a parameter-name prefix such as 'embed'")
            if not isinstance(overrides, dict) or not set(overrides) <= {"lr", "weight_decay"}:
                raise ConfigError(
                    f"groups[{prefix!r}] = {overrides!r} is not allowed: must be a dict with keys lr and/or weight_decay"
                )
            for key, value in overrides.items():
                number = isinstance(value, numbers.Real) and not isinstance(value, bool) and _finite_float(value)
                if not number or value < 0 or (key == "lr" and value == 0):
                    raise ConfigError(f"groups[{prefix!r}][{key!r}] = {value!r} is not allowed: must be a number > 0 (lr) or >= 0")
        # A parameter in two groups would take the values of whichever came last in the dict,
        # an order the hash (of sorted keys) does not see: groups must name disjoint modules.
        for a, b in itertools.combinations(self.groups, 2):
            if in_module(a.rstrip("."), b) or in_module(b.rstrip("."), a):
                raise ConfigError(
                    f"groups keys {a!r} and {b!r} are not allowed together: they share parameters; name disjoint modules"
                )
        # Kept as floats (1 -> 1.0), so that equal groups hash alike, as sweeps do.
        groups = {prefix: FrozenDict({key: float(value) for key, value in overrides.items()}) for prefix, overrides in self.groups.items()}
        object.__setattr__(self, "groups", FrozenDict(groups))
        if len(self.betas) != 2:
            raise ConfigError(f"betas = {self.betas!r} is not allowed: must be two numbers in [0, 1)")
        for b in self.betas:
            if not 0 <= b < 1:
                raise ConfigError(f"betas = {self.betas!r} is not allowed: must be two numbers in [0, 1)")


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------

#: Hyper-parameters that may differ between the members of one vectorised run, and the
#: config section each one lives in (None: the member's own).
#: The trainer applies each one per member (a key added here must be too: tests/test_train.py
#: checks every key against a run that sets it in its section).
SWEEPABLE = {
    "seed": None,
    "split_seed": None,  # the train/validation split's seed, where it should not be the member's seed
    "train_fraction": "task",
    "lr": "optim",
    "weight_decay": "optim",
    "eps": "optim",
    "init_scale": "model",
}


@dataclass(frozen=True)
class RunConfig(Spec):
    """One training run: K members of one architecture trained side by side.

    Members are the product of ``sweep`` (hyper-parameters that differ per member) and
    ``seeds`` consecutive seeds starting at ``seed``. A member's seed fixes its
    initialisation, its batches and, unless ``sweep`` gives ``split_seed`` values, its
    train/validation split: sweeping ``split_seed`` tells the split's part from the rest.
    """

    name: str = spec_field(check=RUN_NAME, doc="a short label; the run folder is <name>-<hash>")
    task: Spec = spec_field(doc="what to learn (grokcore.tasks)")
    model: Spec = spec_field(doc="the architecture (grokcore.models)")
    optim: AdamW = spec_field(default_factory=AdamW, doc="the optimiser")
    steps: int = spec_field(10_000, check=POSITIVE, doc="optimisation steps")
    batch_size: Optional[int] = spec_field(
        None, check=POSITIVE, doc="None: the whole training set (the full batch, unless max_batch_fraction caps it)"
    )
    max_batch_fraction: float = spec_field(
        1.0, check=interval(0, 1, lo_open=True), doc="cap the batch at this fraction of the train set (Power: 0.5)"
    )
    seed: int = spec_field(0, check=NON_NEGATIVE, doc="first seed")
    seeds: int = spec_field(1, check=POSITIVE, doc="number of seeds")
    sweep: dict = spec_field(default_factory=dict, doc="per-member values, e.g. {'lr': [1e-3, 1e-2]}")
    eval_points: int = spec_field(100, check=interval(2, None), doc="log-spaced evaluations")
    eval_every: int = spec_field(0, check=NON_NEGATIVE, doc="also evaluate every this many steps (0: off)")
    checkpoints: int = spec_field(24, check=NON_NEGATIVE, doc="log-spaced weight checkpoints kept for measures")
    checkpoint_every: int = spec_field(0, check=NON_NEGATIVE, doc="also checkpoint every this many steps (0: off)")
    track_norms: tuple[str, ...] = spec_field(
        (), doc="parameter-name prefixes whose L2 norm is recorded at every evaluation, e.g. ('unembed',)"
    )
    stop_at: Optional[float] = spec_field(
        None, check=interval(0, 1, lo_open=True), doc="freeze a member once its validation accuracy reaches this"
    )

    def validate(self):
        from grokcore.tasks.base import Task  # imported here: the tasks import this module

        if not isinstance(self.task, Task):
            raise ConfigError(f"task = {self.task!r} is not allowed: must be a task of grokcore.tasks, e.g. AlgorithmicTask()")
        if isinstance(self.model, Task) or not callable(getattr(self.model, "build", None)):
            raise ConfigError(f"model = {self.model!r} is not allowed: must be a model of grokcore.models, e.g. Transformer()")
        # A model with fewer outputs than the task has answers would fail at step 0 (a target out
        # of range), e.g. ModularMLP (p outputs) on ToyAddition (2p - 1 sums).
        n_outputs = getattr(self.model, "n_outputs", None)  # a model spec without it is not checked
        outputs = n_outputs(self.task.model_dims()) if callable(n_outputs) else None
        if outputs is not None and outputs < self.task.n_classes:
            raise ConfigError(
                f"model = {type(self.model).__name__} is not allowed with task = {type(self.task).__name__}: it has "
                f"{outputs} outputs, and the task's answers are {self.task.n_classes} classes; "
                "must be a model with an output per class, e.g. Transformer() or SumEmbeddingMLP()"
            )
        sweep = {}
        for key, values in self.sweep.items():
            if key not in SWEEPABLE:
                allowed = ", ".join(k for k in SWEEPABLE if k != "seed")  # seeds come from seed= and seeds=
                raise ConfigError(f"sweep key {key!r} is not allowed: must be one of {allowed}")
            allowed = "a non-empty list (or tuple, range, 1-D array)"
            try:
                sweep[key] = as_list(values)
            except TypeError as e:
                raise ConfigError(f"sweep[{key!r}] = {values!r} is not allowed: must be {allowed}, not {e}") from None
            if not sweep[key]:
                raise ConfigError(f"sweep[{key!r}] = {values!r} is not allowed: must be {allowed}")
            if key == "seed":
                raise ConfigError("sweep key 'seed' is not allowed: use seed= and seeds=")
            if key == "split_seed":
                # A split derives seeds from it that must fit in 64 bits (as seed + seeds must).
                whole = [isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in sweep[key]]
                if not all(whole) or not all(0 <= v < 2**32 for v in sweep[key]):
                    raise ConfigError(f"sweep['split_seed'] = {values!r} is not allowed: must be whole numbers in [0, 2**32)")
                sweep[key] = [int(v) for v in sweep[key]]  # NumPy's as Python's, as written and hashed
        if self.seed + self.seeds > 2**32:  # seeds derived from it (a split's) must fit in 64 bits
            raise ConfigError(f"seed = {self.seed} is not allowed with seeds = {self.seeds}: seed + seeds must be at most 2**32")
        for i, prefix in enumerate(self.track_norms):
            if not prefix.strip(".") or prefix in self.track_norms[:i]:
                raise ConfigError(
                    f"track_norms = {self.track_norms!r} is not allowed: must be distinct parameter-name prefixes such as 'unembed'"
                )
        # Each value must be valid where it will be used, and is kept as that section holds
        # it (1 -> 1.0), so that equal sweeps hash alike.
        normalised = {}
        for key, values in sorted(sweep.items()):
            if SWEEPABLE[key] is None:
                normalised[key] = tuple(values)
                continue
            section = getattr(self, SWEEPABLE[key])
            try:
                normalised[key] = tuple(getattr(section.replace(**{key: v}), key) for v in values)
            except ConfigError as e:  # name the sweep, where the value was given
                raise ConfigError(f"sweep[{key!r}] = {values!r}: {e}") from None
        object.__setattr__(self, "sweep", FrozenDict(normalised))

    # -- members ------------------------------------------------------------------------
    def members(self) -> list[dict]:
        """The resolved hyper-parameters of every member, in member order: the sweep's grid
        with its keys in alphabetical order (whatever order they were given in), the last
        key's values changing fastest, and within each grid point the seeds in turn."""
        keys = list(self.sweep)
        out = []
        for combo in itertools.product(*(self.sweep[k] for k in keys)):
            for s in range(self.seeds):
                m = {"seed": self.seed + s}
                for k in SWEEPABLE:
                    if SWEEPABLE[k] is None:
                        continue
                    section = getattr(self, SWEEPABLE[k])
                    if hasattr(section, k):
                        m[k] = getattr(section, k)
                m.update(dict(zip(keys, combo)))
                out.append(m)
        return out

    # -- identity -----------------------------------------------------------------------
    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:HASH_CHARS]

    @property
    def run_name(self) -> str:
        return f"{self.name}-{self.hash()}"


def lr_weight_decay_grid(lr_range, n_lr: int, weight_decay_max: float, n_weight_decay: int) -> dict:
    """A phase-diagram plane as a ``sweep``: ``n_lr`` learning rates log-spaced from the first of
    ``lr_range`` to the second, both included, by ``n_weight_decay`` weight decays evenly spaced
    from 0 to ``weight_decay_max`` (Liu et al. 2022's Figures 6 and 7); a count of 1 gives the
    first end alone (the smallest learning rate, weight decay 0). The arguments are checked by
    the names a notebook gives them, before any work starts."""
    lr_pair = Check(lambda v: len(v) == 2 and all(POSITIVE.ok(x) for x in v) and v[0] <= v[1],
                    "two finite numbers, the smallest and the largest learning rate, with 0 < smallest <= largest")
    count = Check(lambda v: v >= 1, "a whole number >= 1")
    lo, hi = _checked("lr_range", lr_range, tuple[float, ...], lr_pair)
    n_lr = _checked("n_lr", n_lr, int, count)
    n_weight_decay = _checked("n_weight_decay", n_weight_decay, int, count)
    weight_decay_max = _checked("weight_decay_max", weight_decay_max, float, NON_NEGATIVE)
    return {
        "lr": np.geomspace(lo, hi, n_lr).tolist(),
        "weight_decay": np.linspace(0, weight_decay_max, n_weight_decay).tolist(),
    }


def _checked(name: str, value, tp, check: Check):
    """``value`` as type ``tp`` if it is one and passes ``check``; else a ConfigError naming ``name``."""
    try:
        coerced = _coerce(value, tp)
    except (TypeError, ValueError):  # ValueError: an int too large for a float
        coerced = None
    if coerced is None or not check.ok(coerced):
        raise ConfigError(f"{name} = {value!r} is not allowed: must be {check.allowed}")
    return coerced
