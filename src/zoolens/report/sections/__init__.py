"""One module per analysis, each defining the `Section` the report page shows it with.

`SECTIONS` is the one table: adding an analysis to the report is one module here and one line
below. Its order is the page's order (the demo's run record opens the page).
"""

from __future__ import annotations

from . import (compare, curate, datasets, demo, discover, extract, layerstats, ood, probe,
               rosetta, visualize)
from .base import Facts, Section

__all__ = ["SECTIONS", "Section", "Facts"]

SECTIONS: dict[str, Section] = {s.kind: s for s in (
    demo.SECTION,
    extract.SECTION,
    rosetta.SECTION,
    compare.SECTION,
    probe.SECTION,
    ood.SECTION,
    discover.SECTION,
    visualize.SECTION,
    layerstats.SECTION,
    curate.SECTION,
    datasets.SECTION,
)}
