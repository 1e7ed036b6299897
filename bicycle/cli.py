"""``bicycle`` command line: assembles the commands of :mod:`bicycle.commands`. Errors become one clear line and a
non-zero exit (usage errors exit 2)."""
from __future__ import annotations

import click

from bicycle.commands import add_commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bicycle")
def main() -> None:
    """bicycle: multimodal image-to-image translation (BicycleGAN)."""


add_commands(main)

if __name__ == "__main__":
    main()
