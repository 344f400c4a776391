"""The README's generated figures match the results they are generated from."""

import json

from benchmarks.report import BEGIN, END, README, RESULTS, serving_block


def test_readme_serving_figures_are_the_results_file():
    text = README.read_text()
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block == serving_block(json.loads((RESULTS / "serving.json").read_text()))
