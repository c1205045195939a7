"""Pictures of the benchmarks: matplotlib (the bench extra) without a display, saved as PNG
into ``docs/img``."""

from __future__ import annotations

import os
from typing import Any

IMG = os.path.join(os.path.dirname(__file__), "..", "docs", "img")


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save(fig: Any, name: str, axes: Any = ()) -> str:
    """Grid and legend on ``axes``, then ``fig`` written to ``docs/img/<name>`` and closed;
    returns the path relative to ``docs/``."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(IMG, name), dpi=90)
    plt.close(fig)
    return f"img/{name}"
