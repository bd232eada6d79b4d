"""Load generator: a running deployment over its public HTTP API, swept over concurrency levels.

For each concurrency N, N workers send requests back to back over one shared async HTTP client,
either a fixed number of requests (`--requests`) or for a fixed time (`--duration`), drawing the
images of a folder round-robin and the request kind from a task mix:

- `text`, `spotting`, `fields`, ... (any task name): `POST {url}/ocr?task=...&max_tokens=N`, raw image body
  (`fields` asks for `--fields` with `--fields-max-tokens`: its guided JSON must not be cut);
- `stream`: `POST {url}/v1/chat/completions` with `stream: true` (SSE), time to first token measured;
- `chat`: the same chat completion, not streamed.

Per level it reports requests/s, pages/s, output tokens/s, p50/p95/p99 latency, time to first
token (streams) and errors by status code, then saves the report as JSON and a PNG plot
(throughput and latency vs concurrency). One fixed `--max-tokens` for all, so runs compare.
A worker refused with 429/503 waits the answer's Retry-After before its next request, as a
well-behaved client does: beyond the service's admission limit the refusals are counted, and the
accepted requests' throughput and latency stay those of the admitted load.

    python bench/load.py --url http://127.0.0.1:8000                 # 1 4 16 64, 32 requests per level
    python bench/load.py --duration 15 --mix text=0.6,spotting=0.2,fields=0.1,stream=0.1
    python bench/load.py --concurrency 1 8 --requests 40 --max-tokens 128 --out bench/results/load.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lib import sweep  # noqa: E402
from bench.lib.results import timestamped  # noqa: E402

DEFAULT_MIX = "text=0.6,spotting=0.2,fields=0.1,stream=0.1"


def main(argv: list[str] | None = None) -> dict:
    """Run the sweep, print the table, save JSON + PNG; returns the report (with its paths)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sweep.add_common_arguments(parser, [1, 4, 16, 64], DEFAULT_MIX)
    args = parser.parse_args(argv)
    report = sweep.run_from_args(args)
    sweep.print_errors(report)
    out, png = sweep.save(report, args.out or timestamped("load"), args.plot)
    print(f"saved {out} and {png}")
    return report


if __name__ == "__main__":
    main()
