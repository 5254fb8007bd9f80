"""``tltf backbones``: the registry as a table."""

import click


@click.command("backbones")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def command(as_json):
    """List registry backbones: name, parameters, default input size, number of blocks."""
    import json

    from tltf import backbones

    rows = [{"name": s.name, "params": s.params, "default_size": s.default_size, "min_size": s.min_size,
             "blocks": s.num_blocks, "preprocess": s.preprocess} for s in backbones.REGISTRY.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("backbone", "params", "size", "blocks", "preprocess", box=None)
    for r in rows:
        table.add_row(r["name"], f"{r['params'] / 1e6:.1f}M", str(r["default_size"]), str(r["blocks"]),
                      r["preprocess"])
    Console().print(table)
