"""Renderers: pure functions of a Report to text. None of them prints or exits."""
