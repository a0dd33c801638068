"""The results the README and docs/results.md show are what the run records in git give."""

import re

from conftest import ROOT

from trajvid.tools.records import load_records
from trajvid.tools.report import published_texts


def test_the_published_results_are_what_the_records_give():
    """Every figure between the `<!-- results -->` markers of README.md and docs/results.md equals
    what `trajvid report --publish` computes from results/runs/ now (rerun it after `trajvid
    collect`: this fails until the published tables are regenerated)."""
    records = load_records(ROOT)  # every record readable and undamaged
    for path, text in published_texts(ROOT).items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is not what the records give: run `trajvid report --publish`"
    for record in records:  # each record is in the published table
        assert record.name in (ROOT / "docs" / "results.md").read_text(), record.name


def test_the_answer_is_called_so_far_until_every_grid_cell_is_recorded():
    """docs/results.md titles the study's answer "The answer so far" while cells are missing and
    "The answer" once all are recorded (the rule is in tools/study.py; this reads the real grid)."""
    text = (ROOT / "docs" / "results.md").read_text()
    done, size = map(int, re.search(r"\*\*The grid\*\*: (\d+) of (\d+) runs recorded", text).groups())
    assert ("#### The answer so far\n" in text) == (done < size)
    assert ("#### The answer\n" in text) == (done == size)
