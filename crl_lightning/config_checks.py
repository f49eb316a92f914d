"""Checks of a ``crl`` configuration, each refusing with one line (`ConfigError`) what would silently mislead.

`crl_lightning.cli.CRLCLI` runs them: a config file that is not YAML (`check_config_files`), a ``fit`` that trains
nothing (`check_training_length`), and a model value that a ``ckpt_path``'s hyper-parameters would replace
(`refuse_replaced_model_values`); it warns of bf16 on a CPU that only emulates it (`warn_emulated_bf16`).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "check_config_files", "check_training_length", "cpu_has_native_bf16", "init_default",
           "refuse_replaced_model_values", "warn_emulated_bf16"]


class ConfigError(ValueError):
    """A configuration that ``crl`` refuses; the message names the field and what to set instead."""


def check_training_length(max_epochs: Any, max_steps: Any) -> None:
    """Refuse a ``fit`` that trains nothing: ``max_epochs`` < 1 or ``max_steps`` 0 (`ConfigError`)."""
    if isinstance(max_epochs, int) and max_epochs < 1 and max_epochs != -1 or max_steps == 0:
        key, value = ("trainer.max_steps", max_steps) if max_steps == 0 else ("trainer.max_epochs", max_epochs)
        raise ConfigError(f"{key}: expected at least 1 (or -1 for no limit), got {value}: nothing would be trained, "
                          "and the test after it would be recorded as a result")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AVX-512 BF16 or AMX), as oneDNN reports it."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def warn_emulated_bf16(precision: Any, on_cpu: bool, native_bf16: bool | None = None) -> str | None:
    """Warn (`UserWarning`) when ``trainer.precision`` is bf16 on a CPU without native bf16 instructions.

    Without AVX-512 BF16 or AMX, oneDNN emulates bf16: the CPU CIFAR-10 step of ``preact_resnet20`` ran at 0.07x
    its float32 speed on a 2-core AVX2 EPYC, against 2.09x on one with AVX-512 BF16 (docs/benchmarks.md).

    Args:
        precision: Lightning's ``trainer.precision`` as given (``"bf16-mixed"``, ``"bf16-true"``, ``"32-true"``...).
        on_cpu: whether the Trainer runs on the CPU accelerator.
        native_bf16: whether this CPU has native bf16; None asks `cpu_has_native_bf16`.

    Returns:
        The warning's text, or None when nothing was warned.
    """
    if not on_cpu or not str(precision).startswith("bf16"):
        return None
    if native_bf16 is None:
        native_bf16 = cpu_has_native_bf16()
    if native_bf16:
        return None
    message = (f"trainer.precision {precision}: this CPU has no native bf16 (AVX-512 BF16 or AMX), so bf16 is "
               "emulated and training runs several times slower than in float32 (0.07x measured, "
               "docs/benchmarks.md); set --trainer.precision 32-true")
    warnings.warn(message, UserWarning, stacklevel=2)
    return message


def init_default(model_class: type, name: str) -> Any:
    """The default of init argument ``name`` of ``model_class`` (the first ``__init__`` in its MRO with it)."""
    for cls in model_class.__mro__:
        if "__init__" in vars(cls):
            parameter = inspect.signature(vars(cls)["__init__"]).parameters.get(name)
            if parameter is not None:
                return parameter.default
    return inspect.Parameter.empty


def _first_difference(key: str, expected: Any, got: Any) -> tuple[str, Any, Any]:
    """The innermost ``key.sub.key`` where nested dicts ``expected`` and ``got`` differ, and both values there."""
    if isinstance(expected, dict) and isinstance(got, dict):
        for sub in [*expected, *(k for k in got if k not in expected)]:
            if expected.get(sub) != got.get(sub):
                return _first_difference(f"{key}.{sub}", expected.get(sub), got.get(sub))
    return key, expected, got


def _canonical(value: Any) -> Any:
    """``value`` with every ``class_path`` written as the class's own ``module.qualname`` where it imports.

    ``crl_lightning.losses.CompetingRatioLoss`` (the re-export a config writes) and
    ``crl_lightning.losses.modules.CompetingRatioLoss`` (what a checkpoint saved) are then the same value.
    """
    if isinstance(value, dict):
        out = {k: _canonical(v) for k, v in value.items()}
        path = out.get("class_path")
        if isinstance(path, str) and "." in path:
            import importlib

            module, _, name = path.rpartition(".")
            try:
                cls = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError, ValueError):
                return out
            if isinstance(cls, type):
                out["class_path"] = f"{cls.__module__}.{cls.__qualname__}"
        return out
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _at(init_args: dict[str, Any], key: str) -> Any:
    """The value of ``init_args`` at ``model.init_args.<a>.<b>...`` (``None`` where the path ends early)."""
    value: Any = init_args
    for part in key.split(".")[2:]:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def refuse_replaced_model_values(given: dict[str, Any], loaded: dict[str, Any], ckpt_path: str | Path) -> None:
    """Refuse a model init value that was set and that the ``ckpt_path``'s hyper-parameters replaced.

    LightningCLI reads the hyper-parameters saved in the checkpoint over the parsed config, so ``crl test
    --ckpt_path C --model.init_args.backbone X`` would test C's backbone without a word. A value counts as set
    when it differs from the model class's default (a config or the command line gave it); one equal to the
    default may be unset, and the checkpoint's value then applies as before. Class paths are compared as the
    classes they name (a re-export and the defining module are the same class).

    Args:
        given: the model's config as parsed (``class_path``, ``init_args``), before the checkpoint was read.
        loaded: the same after LightningCLI put the checkpoint's hyper-parameters over it.
        ckpt_path: the checkpoint, for the message.

    Raises:
        ConfigError: one line naming the innermost differing key, e.g. ``model.init_args.backbone: expected
            the checkpoint's value 'preact_resnet20' (C), got 'preact_resnet56'``.
    """
    import importlib

    module, _, name = given["class_path"].rpartition(".")
    model_class = getattr(importlib.import_module(module), name)
    raw_loaded, raw_given = loaded.get("init_args", {}), given.get("init_args", {})
    loaded_args = _canonical(raw_loaded)
    for arg, value in _canonical(raw_given).items():
        if arg in loaded_args and loaded_args[arg] != value and value != init_default(model_class, arg):
            key = _first_difference(f"model.init_args.{arg}", loaded_args[arg], value)[0]
            # the values as written (a config's re-export path, not the canonical one compared)
            _, expected, got = _first_difference(key, _at(raw_loaded, key), _at(raw_given, key))
            raise ConfigError(
                f"{key}: expected the checkpoint's value {expected!r} ({ckpt_path}), got {got!r} (from the command "
                "line or a config); the checkpoint holds that model's weights: give its value or leave the key out"
            )


def check_config_files(argv: Sequence[str]) -> None:
    """Refuse a ``--config FILE`` (or ``--config=FILE``) of ``argv`` that is not valid YAML, naming file and line.

    jsonargparse would report the problem in ``"<unicode string>"``, without the file. A value that is not an
    existing file (a YAML string given inline) is left to jsonargparse.

    Raises:
        ConfigError: ``FILE, line L: expected a YAML config, got a syntax error: <what YAML found>``.
    """
    import yaml

    files = [b for a, b in zip(argv, argv[1:], strict=False) if a == "--config"]
    files += [a.partition("=")[2] for a in argv if a.startswith("--config=")]
    for name in files:
        path = Path(name)
        if not path.is_file():
            continue
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{name}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else name
            problem = " ".join(str(x) for x in (getattr(err, "context", None), getattr(err, "problem", None)) if x)
            raise ConfigError(f"{where}: expected a YAML config, got a syntax error: {problem or err}") from None
