"""The regulators' live map page, served by the app itself (issue 11)."""

from lowalt.web.map import setup_map

__all__ = ["setup_map"]
