"""The ``diffaudit`` command line.

Every subcommand lives in its own module and is imported only when it is run, so ``diffaudit --help``
stays fast. A user mistake (``DiffauditError``) prints ``error: <one sentence>`` and exits 2.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import click

from diffaudit import __version__
from diffaudit.errors import DiffauditError, ModelError
from diffaudit.threads import ENV_VAR, apply_thread_policy, resolve_threads

# name -> "module:attribute" of a click.Command. Add a line here when you add a subcommand.
COMMANDS: dict[str, str] = {
    "compare": "diffaudit.cli.compare:compare_cmd",
    "audit": "diffaudit.cli.audit:audit_cmd",
    "demo": "diffaudit.cli.demo:demo_cmd",
    "embed": "diffaudit.cli.embed:embed_cmd",
    "extract": "diffaudit.cli.extract:extract_cmd",
    "train": "diffaudit.cli.train:train_cmd",
    "sweep": "diffaudit.cli.sweep:sweep_cmd",
    "thresholds": "diffaudit.cli.thresholds:thresholds_cmd",
    "app": "diffaudit.cli.app:app_cmd",
}


DEBUG_ENV = "DIFFAUDIT_DEBUG"  # set to 1 to see the traceback of a failing model's own code


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


def _set_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
    # An eager option callback runs while the group's options are parsed, before the subcommand's module
    # (and torch/faiss with it) is imported: OpenMP reads OMP_WAIT_POLICY only when it is loaded.
    if ctx.resilient_parsing:
        return
    explicit = value is not None or bool(os.environ.get(ENV_VAR, "").strip())
    apply_thread_policy(resolve_threads(value), override=explicit)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Run 'diffaudit COMMAND --help' for a command's options and examples.",
)
@click.version_option(__version__, prog_name="diffaudit")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    is_eager=True,
    expose_value=False,
    callback=_set_threads,
    help="CPU threads to use (default: $DIFFAUDIT_THREADS, else the CPUs this process may use).",
)
def cli() -> None:
    """diffaudit: does a diffusion model generalize, or memorize?

    It measures both thresholds of generalization: distributional convergence (FD, KID,
    precision/recall, moments) and latent-factor recovery (manifold validity, novel-valid
    samples, training-copy extraction).
    """


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the group and maps outcomes to exit statuses.

    0 a complete report and every gate passed (the command returned 0); 1 a gate failed; 2 a user mistake
    (``DiffauditError``); 3 the audited model's own code failed (``ModelError``: it raised, exited, or
    returned ragged, complex or NaN output; its traceback only with ``DIFFAUDIT_DEBUG=1``); 130 interrupted.
    """
    try:
        rv = cli.main(args=argv, prog_name="diffaudit", standalone_mode=False)
    except DiffauditError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(DiffauditError.exit_code)
    except ModelError as e:
        # The audited model's own code failed: its traceback is the model author's, shown only on request.
        if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
            cause = e.__cause__ or e
            traceback.print_exception(type(cause), cause, cause.__traceback__, file=sys.stderr)
        click.echo(f"error: {e}", err=True)
        sys.exit(ModelError.exit_code)
    except click.exceptions.Abort:
        click.echo("error: aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        # Usage errors (unknown option, missing argument) are user mistakes too: one line, exit 2.
        msg = e.format_message()
        if isinstance(e, click.UsageError) and e.ctx is not None:
            msg = f"{msg} (see '{e.ctx.command_path} --help')"
        click.echo(f"error: {msg}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("error: interrupted.", err=True)
        sys.exit(130)
    if isinstance(rv, int) and rv != 0:
        sys.exit(rv)
