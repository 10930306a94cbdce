"""Typed configuration dataclasses and the preset files shipped with the package."""
