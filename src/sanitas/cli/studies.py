"""Studies: run a config, reproduce the papers, rebuild a report."""

from __future__ import annotations

import click

from sanitas.cli.app import (COUNT, _quiet_option, main, _csv, _executor_options, _print_claims, _exit_if_failed)


@main.command("run")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="results directory")
@click.option("--quick", is_flag=True, help="apply the config's `quick:` profile (fewer images and experiments)")
@click.option("--images", "-n", type=COUNT, default=None, help="override every experiment's number of images")
@click.option("--only", multiple=True, help="experiment names to run, comma-separated or repeated (the others: not run)")
@_executor_options
@_quiet_option
def run_cmd(config, out, quick, images, only, executor, address, quiet):
    """Run the experiments of a YAML CONFIG (copy one with `sanitas reproduce --show PAPER`)."""
    from sanitas.experiments import run_config

    res = run_config(config, out, quick=quick, images=images, only=[n for o in only for n in _csv(o)] or None,
                     quiet=quiet, executor=executor, address=address)
    click.echo(f"{res.config.get('title', res.paper)}:")
    _print_claims(res.claims)
    click.echo(f"\nclaims: {out}/claims.csv\nreport: {res.report}")
    _exit_if_failed([res])


@main.command()
@click.argument("papers", nargs=-1)
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None, help="results directory")
@click.option("--quick", is_flag=True, help="the small profile (what `make demo` runs: 6.5 min on 2 cores, training its models on 12,000 images included)")
@click.option("--images", "-n", type=COUNT, default=None, help="override every experiment's number of images")
@click.option("--show", is_flag=True, help="print the config of PAPER (YAML) instead of running it")
@click.option("--list", "list_", is_flag=True, help="list the papers and their claims")
@click.option("--dataset", default=None, help="run the same protocol on this dataset instead (e.g. mnist: from disk, "
              "or downloaded and checksum-verified unless SANITAS_OFFLINE is set)")
@_executor_options
@_quiet_option
def reproduce(papers, out, quick, images, show, list_, dataset, executor, address, quiet):
    """Re-run the papers' experiments (PAPERS: names or `all`) and state which claims hold."""
    from sanitas.errors import ConfigError
    from sanitas.experiments import config_text, list_papers, load_config
    from sanitas.experiments import reproduce as run_all

    if list_ or (not papers and not show):
        for name in list_papers():
            cfg = load_config(name)
            n_exp, n_claims = len(cfg["experiments"]), len(cfg.get("claims") or [])
            click.echo(f"{name:<14} {cfg.get('title', '')}  ({n_exp} experiment{'s' * (n_exp != 1)}, "
                       f"{n_claims} claim{'s' * (n_claims != 1)})")
        if not list_:
            click.echo("\nrun: sanitas reproduce all --out DIR   (or a paper name; --quick for the small profile)")
        return
    if show:
        if len(papers) != 1 or papers[0] == "all":
            raise ConfigError(f"--show takes one paper name: one of {list_papers()}")
        click.echo(config_text(papers[0]), nl=False)
        return
    if out is None:
        raise ConfigError("reproduce needs --out DIR (where results, claims.csv and report.html go)")
    runs, claims, report = run_all(list(papers), out, quick=quick, images=images, quiet=quiet, executor=executor,
                                   address=address, dataset=dataset)
    _print_claims(claims)
    click.echo(f"\nclaims: {out}/claims.csv\nreport: {report}")
    _exit_if_failed(runs)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
def report(directory):
    """(Re)build report.html (and the claims) of a results DIRECTORY written by sanitas."""
    from sanitas.experiments.rebuild import rebuild

    path, claims = rebuild(directory)
    if claims is not None:
        _print_claims(claims)
    click.echo(f"report: {path}")


