"""``python -m tltf`` runs the CLI."""

from tltf.cli import main

main()
