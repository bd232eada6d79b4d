"""What more than one bench script uses, one small module per kind of thing (images, stats, plotting,
results, config, service, http_load, sweep, pipeline, processes). Scripts import the modules themselves."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout
