"""``bicycle plugins``: every registered component and the plugin it came from."""
from __future__ import annotations

import click

from bicycle.commands.reporting import reports_errors


@click.command("plugins")
@reports_errors
def plugins() -> None:
    """List every registered component and the plugin it came from."""
    from bicycle.plugins import get_plugins
    p = get_plugins()
    rows = p.registry.listing()
    width = max(len(r[1]) for r in rows)
    for kind in ("backbone", "injector", "dataset"):
        click.echo(f"{kind}s:")
        for k, name, plugin, desc in rows:
            if k == kind:
                click.echo(f"  {name:<{width}}  [{plugin}]  {desc}")
    click.echo("plugins loaded: " + ", ".join(p.plugin_names()))
