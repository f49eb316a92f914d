"""What the ``crl`` command prints: one-line errors, and no tips or known-harmless warnings from its libraries.

Only `crl_lightning.cli.console_main` (the ``crl`` console script) calls `quiet_console` and `error_message`:
importing the package changes no warning filter and no logger, so library users see what their libraries say.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import re
import shlex
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "HARMLESS_WARNINGS",
    "TRACEBACK_ENV",
    "error_message",
    "interrupted_message",
    "parse_error_message",
    "quiet_console",
    "unknown_options_message",
]

#: Environment variable that makes ``crl`` show the full traceback of an error (as ``--traceback`` does).
TRACEBACK_ENV = "CRL_TRACEBACK"

#: Warnings that ``crl`` hides, as (regular expression matched at the start of the message, category):
#: torch's deprecation of ``LeafSpec``, which Lightning's ``_pytree`` still uses (nothing a user can change),
#: Lightning's notice that it logs with a CSVLogger when TensorBoard is not installed (it does), and
#: ModelCheckpoint's notice that the ``ckpt_path`` came from another folder: every ``crl`` run logs into a new
#: ``version_N`` folder, so a resumed ``crl fit`` (and any ``crl test --ckpt_path``) always has another one.
#: The resumed ModelCheckpoint keeps ``best_model_path`` and ranks the checkpoints it saves itself afresh.
#: Also: LightningCLI's notice that ``args`` and ``sys.argv`` are both given, which ``crl study``/``crl cv`` do on
#: purpose (each run is a `build_cli` call inside the command), and the notice that a checkpoint holds the state
#: of ``crl study``'s `PairingFingerprint` only (a callback of the study's fit, not needed to test or predict).
HARMLESS_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"LightningCLI's args parameter is intended to run from within Python", UserWarning),
    (r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided during "
     r"`Trainer` instantiation\. Please add the following callbacks: \['PairingFingerprint'\]\.", UserWarning),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    (r"Starting from v1\.9\.0, `tensorboardX` has been removed as a dependency", UserWarning),
    (r"The dirpath has changed from .* therefore `best_model_score`", UserWarning),
)
#: The start of Lightning's own line on Ctrl-C, which ``crl`` replaces with `interrupted_message`.
_INTERRUPT_LINE = "\nDetected KeyboardInterrupt, attempting graceful shutdown"
#: The loggers of Lightning's ``rank_zero_info``, which prints its tips to install litlogger/litmodels.
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                      "lightning_fabric.utilities.rank_zero")
_PACKAGE_DIR = Path(__file__).resolve().parent
#: Lines of jsonargparse's parse errors that say no more than which types a field accepts and what it got.
_GENERIC_LINES = (r"Parser key |Given value|Subtypes: |Errors:|Expected a <class |Does not validate against any of "
                  r"the Union subtypes|Expected a path but |Expected a dot import path string"
                  r"|Problem with given class_path")


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(("💡 Tip:", _INTERRUPT_LINE))


def quiet_console() -> None:
    """Hide `HARMLESS_WARNINGS`, Lightning's "💡 Tip:" lines and its Ctrl-C line here (the ``crl`` command only)."""
    for message, category in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _not_a_tip not in logger.filters:
            logger.addFilter(_not_a_tip)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _worker_error(text: str) -> tuple[str, bool] | None:
    """The original message of an error that a DataLoader worker re-raised in the main process, or ``None``.

    torch re-raises it as ``Caught <Type> in DataLoader worker process <n>.`` followed by the worker's whole
    traceback; returns ``("<message> (in DataLoader worker process <n>)", own)``, ``own`` when this package
    defines the error's type (its message then stands without the type's name).
    """
    found = re.match(r"Caught (\w+) (in DataLoader worker process \d+)\.\nOriginal Traceback", text)
    if found is None:
        return None
    qualified = re.findall(rf"^([\w.]*\b{found[1]}): (.*)$", text, re.M)
    if not qualified:
        return None
    name, message = qualified[-1]
    own = name.startswith("crl_lightning.")
    return f"{message.strip()} ({found[2]})" if own else f"{found[1]}: {message.strip()} ({found[2]})", own


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from (``__cause__``, else an unsuppressed ``__context__``)."""
    chain = [err]
    while True:
        last = chain[-1]
        nxt = last.__cause__ or (None if last.__suppress_context__ else last.__context__)
        if nxt is None or nxt in chain:
            return chain
        chain.append(nxt)


def _raised_here(err: BaseException) -> bool:
    """True when the innermost frame of ``err``'s traceback is in this package (a message of our own)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE_DIR)


def error_message(err: BaseException) -> str:
    """The one line that ``crl`` prints after ``crl: error: `` for ``err``.

    * a command-line or config parse error (``argparse.ArgumentError``, from jsonargparse): `parse_error_message`;
    * any other error: the message of the outermost exception of the chain (``raise ... from``) that this
      package raised (so the project's own message when a class failed to build inside jsonargparse, not
      jsonargparse's dump of the whole config), after the name of the class that failed to build
      (``ImageClassifier: backbone: ...``) when jsonargparse names it; without such an exception, the innermost
      one's message after its type (``RuntimeError: ...``);
    * an error that a DataLoader worker re-raised: the worker's own message, not its traceback (`_worker_error`).

    Args:
        err: the exception that ended the command.

    Returns:
        One line, without a final newline.
    """
    if isinstance(err, argparse.ArgumentError):
        return parse_error_message(str(err))
    chain = _chain(err)
    i = next((i for i, e in enumerate(chain) if _raised_here(e)), len(chain) - 1)
    text = _one_line(str(chain[i].args[0]) if isinstance(chain[i], KeyError) and chain[i].args else str(chain[i]))
    worker = _worker_error(str(chain[i]))
    if worker is not None:
        text = _one_line(worker[0])
    elif not _raised_here(chain[i]) or not text:
        text = f"{type(chain[i]).__name__}: {text}" if text else type(chain[i]).__name__
    built = re.search(r"class_path='([\w.]+)'", str(chain[i - 1])) if i > 0 else None
    return f"{built[1].rpartition('.')[2]}: {text}" if built else text


def parse_error_message(message: str) -> str:
    """One line from jsonargparse's (multi-line, nested) message of a command-line or config parse error.

    The innermost ``Parser key`` gives the field (nested keys joined with ``.init_args.``, e.g.
    ``model.init_args.criterion``); then come jsonargparse's own specific lines (``Option 'alpah' is not
    accepted``, an ambiguous class name), else the types the field accepts and its ``Given value``
    (``trainer.max_epochs: expected int, got 'abc'``). A registry name given as a criterion (``crl``) says
    which class path to write instead. A message without that structure is joined into one line.

    Args:
        message: ``str()`` of jsonargparse's ``ArgumentError``.

    Returns:
        One line, without a final newline.
    """
    keys = re.findall(r'Parser key "([^"]+)"', message)
    innermost = message[message.rfind("Parser key"):] if keys else message
    given = re.search(r"Given value: (.*)", innermost)
    if not keys or given is None:
        return _one_line(re.sub(r'Parser key "([^"]+)":', r"\1:", message))
    field = keys[0] + "".join(f".init_args.{k}" for k in keys[1:])
    value = given[1].strip()
    if field.endswith(".criterion"):
        hint = _criterion_hint(value)
        if hint:
            return f"{field}: {hint}"
    unknown = re.search(r"Problem with given class_path '([\w.]+)':\s+Option '(\w+)' is not accepted", innermost)
    if unknown:
        key = f"{field}.init_args.{unknown[2]}"
        close = _closest(unknown[2], _init_keys(unknown[1]))
        return f"{key}: unknown option" + (f" (did you mean {field}.init_args.{close}?)" if close else "")
    lines = (line.strip().removeprefix("- ") for line in innermost.splitlines()[1:])
    specific = [line for line in lines if line and not re.match(_GENERIC_LINES, line)]
    if specific:
        return f"{field}: {' '.join(specific)}" + ("" if value.startswith("NestedArg(") else f" (got {value!r})")
    expected: list[str] = []
    for names in re.findall(r"Subtypes: \[(.*)\]", innermost) + re.findall(r"Expected a (<class '[\w.]+'>)", innermost):
        expected += [n for n in re.findall(r"<class '([\w.]+)'>", names) if n != "NoneType" and n not in expected]
    expected = [f"a {n} subclass (a class path or class name)" if "." in n else n for n in expected]
    return f"{field}: expected {' or '.join(expected) or 'another value'}, got {value!r}"


def _closest(given: str, options: Iterable[str]) -> str | None:
    """The option closest to ``given`` (difflib), or ``None`` when none is close."""
    close = difflib.get_close_matches(given, list(options), n=1)
    return close[0] if close else None


def _init_keys(class_path: str) -> list[str]:
    """The init arguments that jsonargparse accepts for ``class_path`` (``**kwargs`` forwarded to a base included)."""
    import importlib

    from jsonargparse import ArgumentParser

    module, _, name = class_path.rpartition(".")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(getattr(importlib.import_module(module), name), fail_untyped=False)
    return sorted({action.dest.split(".")[0] for action in parser._actions} - {"help"})


def unknown_options_message(message: str, options: Iterable[str]) -> str | None:
    """One line for argparse's ``unrecognized arguments: ...``: each unknown option and the closest known one.

    Args:
        message: the parse error's message.
        options: the option strings the parser knows (``--trainer.max_epochs``, ...).

    Returns:
        E.g. ``--trainer.max_epoch: unknown option (did you mean --trainer.max_epochs?)``, or ``None`` for any
        other message.
    """
    if not message.startswith("unrecognized arguments: "):
        return None
    known = sorted(set(options))
    given = [arg.split("=", 1)[0] for arg in message.removeprefix("unrecognized arguments: ").split()
             if arg.startswith("-")]
    lines = [f"{arg}: unknown option" + (f" (did you mean {close}?)" if (close := _closest(arg, known)) else "")
             for arg in given]
    return "; ".join(lines) or message


def interrupted_message(argv: Sequence[str]) -> str:
    """The line ``crl`` ends with after Ctrl-C: how to go on with the command ``crl ARGV``.

    ``crl fit`` resumes from the newest ``last.ckpt`` (``--ckpt_path last``, replacing any ``--ckpt_path``);
    ``crl study`` and ``crl cv`` resume when run again; any other command is run again.

    Args:
        argv: the command line after ``crl``.
    """
    args = list(argv)
    if args[:1] == ["fit"]:
        kept = [a for i, a in enumerate(args) if not a.startswith("--ckpt_path")
                and not (i > 0 and args[i - 1] == "--ckpt_path")]
        return ("interrupted; to resume from the last epoch end (the last.ckpt of a ModelCheckpoint with "
                f"save_last: true): crl {shlex.join([*kept, '--ckpt_path', 'last'])}")
    if args[:1] in (["study"], ["cv"]):
        return f"interrupted; finished runs are kept, and running it again resumes: crl {shlex.join(args)}"
    return f"interrupted; run it again: crl {shlex.join(args)}"


def _criterion_hint(value: str) -> str | None:
    """What to write instead of a criterion registry name (``crl``), or ``None`` for any other value."""
    from crl_lightning import losses
    from crl_lightning.losses.registry import criterion_class, list_criteria

    if value not in list_criteria():
        return None
    cls = criterion_class(value)
    path = f"crl_lightning.losses.{cls.__name__}" if getattr(losses, cls.__name__, None) is cls else \
        f"{cls.__module__}.{cls.__qualname__}"
    return (f"expected a loss class path, e.g. {path} (or the class name {cls.__name__}), got the registry name "
            f"{value!r}; registry names are for create_criterion() and `crl study --criteria`")
