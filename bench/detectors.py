"""Per detector, how much of the utility corpus it leaves alone (over-scrubbing), for the
README's table. Each non-personal value of ``tests/fixtures/privacy-utility.jsonl`` is
scanned by each detector alone; the end-to-end judgement (the planted corpus, searched for in
what reaches a loopback Google) is ``tests/test_privacy_corpus.py``. Usage:

    python bench/detectors.py
"""

from __future__ import annotations

import json
from pathlib import Path

from proxy.sanitize.pii import DEFAULT_DETECTORS, PiiScrubber

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    lines = (ROOT / "tests/fixtures/privacy-utility.jsonl").read_text().splitlines()
    values = [json.loads(line)["value"] for line in lines if line.strip()]
    print(f"{'detector':<12} {'left alone':>11}  changed")
    for name in DEFAULT_DETECTORS:
        scrubber = PiiScrubber([name])
        changed = [v for v in values if scrubber.scrub(v)[1]]
        share = 1 - len(changed) / len(values)
        print(f"{name:<12} {share:>10.1%}  {', '.join(map(repr, changed)) or '-'}")
    everything = PiiScrubber()
    changed = [v for v in values if everything.scrub(v)[1]]
    print(f"{'all':<12} {1 - len(changed) / len(values):>10.1%}  of {len(values)} values")


if __name__ == "__main__":
    main()
