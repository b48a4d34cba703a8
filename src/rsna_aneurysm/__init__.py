"""Kit for the RSNA Intracranial Aneurysm Detection challenge."""

from __future__ import annotations

__version__ = "0.1.0"
